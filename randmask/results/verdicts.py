"""Verdicts: each claim of the paper, and each our controls test, judged from results/*.csv by the one rule in
verdict_rule.py."""

from __future__ import annotations

from pathlib import Path

from randmask.core.stats import wilson_interval
from randmask.results.paper import shallow_ratio
from randmask.results.plan import (
    ACCURACY_CONTROLS,
    CONTROL_ATTACKS,
    CONTROL_SOURCES,
    RESAMPLED,
    TRANSFER_SOURCES,
    load_result,
)
from randmask.results.verdict_rule import (
    BASE_WIDTH,
    Comparison,
    at_width,
    claim_verdict,
    compare,
    find_rate,
    named,
    rate_n,
    rate_text,
)


def main_transfer(out: Path) -> tuple:
    """(frame, source name, paper table) of the first transfer experiment with results, in TRANSFER_SOURCES
    order; (None, None, None) when none has run."""
    for key, _, _, name, table in TRANSFER_SOURCES:
        frame = load_result(out, key)
        if frame is not None:
            return frame, name, table
    return None, None, None


def shallow_ladder(frame, attack: str, width: int = BASE_WIDTH) -> list[tuple[float, dict]]:
    """(ratio, defense-rate row) of every r-Shallow net at `width` under `attack`, by ratio (Normal excluded)."""
    if frame is None:
        return []
    ladder = {}
    for row in frame[(frame["metric"] == "defense_rate") & (frame["attack"] == attack)].to_dict("records"):
        model = at_width(str(row["target"]), width)
        ratio = shallow_ratio(model) if model else None
        if ratio:
            ladder[ratio] = row
    return sorted(ladder.items())


def rises_up_to(ladder: list[tuple[float, dict]]) -> float | None:
    """The highest ratio whose rate clearly exceeds (Wilson intervals apart) every lower ratio's: where the rise
    stops being visible; None with fewer than two ratios."""
    if len(ladder) < 2:
        return None
    top = ladder[0][0]
    for i, (ratio, row) in enumerate(ladder[1:], 1):
        if all(compare(row, lower) == "higher" for _, lower in ladder[:i]):
            top = ratio
    return top


RAISE_CLAIM = "Shallow masks raise transfer robustness above Normal at every drop ratio (PGD16)"
RISE_CLAIM = ("Transfer robustness rises with the drop ratio: each ratio defends more often than the next lower "
              "one (PGD16)")
DEEP_CLAIM = "Shallow masks beat deep ones at the same ratio (0.5 and 0.7, PGD16)"
DC_SM_CLAIM = "At ratio 0.5, Random Mask beats channel drop (DC) and the same mask (SM) (PGD16)"
EN_CLEAN_CLAIM = "Ensembles (EN) raise clean accuracy over one member"
EN_ROBUST_CLAIM = "Ensembles (EN) raise transfer robustness over one member (PGD16)"
NOISE_CLAIM = "Random Mask nets keep more images correct under Gaussian noise (σ = 24/255)"
SHUFFLE_CLAIM = "0.7-Shallow does worse than Normal on patch-shuffled images (k = 2, 4, 8)"
WHITEBOX_CLAIM = ("White-box (Table 4): Random Mask nets keep more images correct than Normal under FGSM and PGD "
                  "aimed at each net (the paper: small gains)")
ATTACK = "PGD16"


def verdicts(out: Path, settings: dict, width: int = BASE_WIDTH) -> list[tuple[str, str, str]]:
    """(claim, verdict, evidence) for every claim at one width (the zoo's unless given), computed from
    results/*.csv by RULE."""
    (t2, source, _), t3, t4 = main_transfer(out), load_result(out, "table3_shuffle"), load_result(out, "table4_whitebox")
    at = f"{ATTACK} from {source}: "
    normal_name = named("Normal ResNet-18", width)
    normal = find_rate(t2, normal_name, ATTACK)
    ladder = shallow_ladder(t2, ATTACK, width)
    found = [claim_verdict(RAISE_CLAIM, [Comparison(f"{r:g}-Shallow vs Normal", row, normal) for r, row in ladder]
                    if normal else [], at, "needs a transfer source, Normal and r-Shallow models")]
    steps = [Comparison(f"{r:g} vs {lower:g}", row, low_row)
             for (lower, low_row), (r, row) in zip(ladder, ladder[1:], strict=False)]
    top = rises_up_to(ladder)
    stop = "" if top is None else (f"; rises clearly up to {top:g} (above every lower ratio); " + (
        f"no higher ratio ({', '.join(f'{r:g}' for r, _ in ladder if r > top)}) is clearly above all lower ones"
        if top < ladder[-1][0] else "to the highest ratio"))
    found.append(claim_verdict(RISE_CLAIM, steps, at, "needs two r-Shallow models", stop))

    pairs = [(r, find_rate(t2, named(f"{r:g}-Shallow", width), ATTACK), find_rate(t2, named(f"{r:g}-Deep", width), ATTACK))
             for r in (0.5, 0.7)]
    found.append(claim_verdict(DEEP_CLAIM, [Comparison(f"{r:g}-Shallow vs {r:g}-Deep", s, d) for r, s, d in pairs
                                     if s and d], at))

    rm = find_rate(t2, named("0.5-Shallow", width), ATTACK)
    others = [(k, find_rate(t2, named(f"0.5-Shallow{k}", width), ATTACK)) for k in ("DC", "SM")]
    clean = {k: find_rate(t2, named(k, width), None, "clean_accuracy") for k in ("0.5-Shallow", "0.5-ShallowDC", "0.5-ShallowSM")}
    found.append(claim_verdict(DC_SM_CLAIM, [Comparison(f"0.5-Shallow vs {k}", rm, row) for k, row in others if rm and row],
                        at, suffix="; clean: " + ", ".join(f"{k} {rate_text(v)}" for k, v in clean.items())))

    clean_pairs, robust_pairs = [], []
    for single_name in ("0.85-Shallow", "Normal ResNet-18"):
        one, ens = named(single_name, width), named(f"{single_name}EN", width)
        c1, c2 = find_rate(t2, one, None, "clean_accuracy"), find_rate(t2, ens, None, "clean_accuracy")
        r1, r2 = find_rate(t2, one, ATTACK), find_rate(t2, ens, ATTACK)
        if c1 and c2:
            clean_pairs.append(Comparison(f"{single_name}EN vs {single_name}", c2, c1))
        if r1 and r2:
            robust_pairs.append(Comparison(f"{single_name}EN vs {single_name}", r2, r1))
    found.append(claim_verdict(EN_CLEAN_CLAIM, clean_pairs, "clean accuracy: ", "needs the five EN members"))
    found.append(claim_verdict(EN_ROBUST_CLAIM, robust_pairs, at, "needs the five EN members"))

    noise = load_result(out, "figure3_noise")
    sigma, comparisons = 24.0, []
    if noise is not None:
        level = noise[noise["sigma"] == sigma]
        rows = {r["target"]: r for r in level.to_dict("records")}
        base = rows.get(normal_name)
        comparisons = [Comparison(f"{at_width(t, width)} vs Normal", r, base) for t, r in rows.items()
                       if base and t != normal_name and at_width(t, width)]
    found.append(claim_verdict(NOISE_CLAIM, comparisons, f"σ={sigma:g}/255: ", "needs Normal and masked models"))

    per_k = [(k, find_rate(t3, named("0.7-Shallow", width), f"shuffle{k}x{k}", "accuracy"),
              find_rate(t3, normal_name, f"shuffle{k}x{k}", "accuracy")) for k in (2, 4, 8)]
    found.append(claim_verdict(SHUFFLE_CLAIM, [Comparison(f"k={k}: 0.7-Shallow vs Normal", m, n, "lower")
                                        for k, m, n in per_k if m and n], needs="needs Normal and 0.7-Shallow"))

    normal_attacked, normal_clean = _attacked(t4, normal_name)
    comparisons = []
    for masked in ("0.5-Shallow", "0.7-Shallow"):
        mine, mine_clean = _attacked(t4, named(masked, width))
        comparisons += [_attacked_comparison(f"{a}: {masked} vs Normal", mine[a], normal_attacked[a], mine_clean,
                                             normal_clean) for a in mine if a in normal_attacked]
    found.append(claim_verdict(WHITEBOX_CLAIM, comparisons, "accuracy under attack over all images: ",
                        "needs Normal and 0.5- or 0.7-Shallow in Table 4"))

    found += _graybox_verdicts(load_result(out, "table5_graybox"), width)
    found += control_verdicts(out, width)
    found.append(_beyond_verdict(load_result(out, "beyond_apgd_square"), width))
    return found


BEYOND_CLAIM = ("Beyond the paper: 0.9-Shallow keeps more images correct than Normal under APGD-CE and Square "
                "(query-only)")


def _beyond_verdict(frame, width: int) -> tuple[str, str, str]:
    mine, mine_clean = _attacked(frame, named("0.9-Shallow", width))
    theirs, theirs_clean = _attacked(frame, named("Normal ResNet-18", width))
    comparisons = [_attacked_comparison(f"{a}: 0.9-Shallow vs Normal", mine[a], theirs[a], mine_clean, theirs_clean)
                   for a in mine if a in theirs]
    return claim_verdict(BEYOND_CLAIM, comparisons, "accuracy under attack over all images: ",
                  "needs Normal and 0.9-Shallow")


def clean_correct_rate(attacked: dict, clean: dict | None) -> dict | None:
    """Accuracy under attack over the images the model classifies correctly without attack: images correct under
    attack ÷ images correct clean, with its Wilson interval (exact where the attack leaves wrong images wrong)."""
    if clean is None or not rate_n(clean) or rate_n(clean) != rate_n(attacked):
        return None
    n, correct = int(clean["correct"]), min(int(attacked["correct"]), int(clean["correct"]))
    if not n:
        return {"n": 0, "correct": 0, "accuracy": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    low, high = wilson_interval(correct, n)
    return {"n": n, "correct": correct, "accuracy": correct / n, "ci_low": low, "ci_high": high}


def _attacked_comparison(label: str, a: dict, b: dict, a_clean: dict | None, b_clean: dict | None) -> Comparison:
    """A comparison of accuracies under attack over all images, the clean-correct rates named beside them."""
    ca, cb = clean_correct_rate(a, a_clean), clean_correct_rate(b, b_clean)
    note = f" [over clean-correct images: {rate_text(ca)} vs {rate_text(cb)}]" if ca and cb else ""
    return Comparison(label, a, b, note=note)


ACCURACY_CLAIM = ("Controls: transfer robustness is not fully explained by lower clean accuracy: each masked net "
                  "defends more often than a Normal net stopped early at its clean accuracy")
ACCURACY_LONG_CLAIM = ("Controls: nor by a shorter schedule: each masked net defends more often than a Normal net trained "
                       "as long (40 epochs) to its clean accuracy (or, at a narrower width, below it), on fewer images or "
                       "at a narrower width")
EARLY, AS_LONG = "accuracy-matched Normal, stopped early", "accuracy-matched Normal, trained as long"
RESAMPLED_CLAIM = ("Controls: under FGSM16 transfer, a fixed mask (0.7-Shallow) defends more often than a resampled "
                   "one (0.7-ShallowDropout)")
RESAMPLED_OTHER_CLAIM = "Controls: under PGD16 and CW40 transfer, a fixed mask defends more often than a resampled one"


def _paper_rate(frame, target: str, attack: str) -> dict | None:
    """A defense-rate row by the paper's attack name (CW40 is run as 'CW40(search=10)' in the quick preset)."""
    if frame is None:
        return None
    column = frame["paper_attack"] if "paper_attack" in frame.columns else frame["attack"]
    part = frame[(frame["target"] == target) & (frame["metric"] == "defense_rate") & (column == attack)]
    return part.iloc[0].to_dict() if len(part) else None


def control_pairs_compared(out: Path, sources: list[str] | None = None, width: int = BASE_WIDTH) -> list[dict]:
    """Each masked net beside its control, per source (transfer table keys; default: the verdicts' two, from
    CONTROL_SOURCES) and attack of the controls: rows with the two rates and their comparison ('higher' = the
    masked net defends more, by non-overlapping Wilson intervals). At a width, the accuracy-matched controls are
    those matched to a net of that width (a control's own width may be narrower); the resampled twin is the
    fixed mask's at the same width."""
    pairs = [(named(masked, width), e.label, AS_LONG if e.trained_as_long else EARLY)
             for m, es in ACCURACY_CONTROLS.items() if (masked := at_width(m, width)) is not None for e in es]
    pairs += [(named(m, width), named(r, width), "resampled mask") for m, r in RESAMPLED.items()]
    rows = []
    for key in sources or CONTROL_SOURCES:
        frame = load_result(out, key)
        source = next(name for k, _, _, name, _ in TRANSFER_SOURCES if k == key)
        for masked, control, kind in pairs:
            for attack in CONTROL_ATTACKS:
                a, b = _paper_rate(frame, masked, attack), _paper_rate(frame, control, attack)
                if a is None or b is None:
                    continue
                rows.append({"kind": kind, "source": source, "attack": attack, "model": masked, "control": control,
                             "model_rate": a, "control_rate": b, "outcome": compare(a, b)})
    return rows


RESAMPLED_ATTACKED_CLAIM = ("Controls: under attacks aimed at each net (Table 4, APGD-CE, Square), a fixed mask "
                            "keeps more images correct than a resampled one")
ATTACKED_TABLES = {"table4_whitebox": "Table 4", "beyond_apgd_square": "APGD-CE / Square"}


def _attacked(frame, model: str) -> tuple[dict[str, dict], dict | None]:
    """A model's accuracy under each attack aimed at itself (rows with source == target), by attack, and its clean
    accuracy on the same images."""
    if frame is None:
        return {}, None
    part = frame[frame["source"] == model]
    if "target" in part.columns:
        part = part[part["target"] == model]
    clean = frame[(frame["target"] == model) & (frame["metric"] == "clean_accuracy")]
    return ({row["attack"]: row for row in part[part["metric"] == "accuracy"].to_dict("records")},
            clean.iloc[0].to_dict() if len(clean) else None)


def resampled_under_attack(out: Path, width: int = BASE_WIDTH) -> tuple[str, str, str]:
    """The fixed-versus-resampled control read off the attacks aimed at each net itself (Table 4 and the
    APGD-CE / Square check): does the fixed mask keep more images correct than the resampled one?"""
    masked, control = next(iter(RESAMPLED.items()))
    comparisons = []
    for key, label in ATTACKED_TABLES.items():
        frame = load_result(out, key)
        (mine, mine_clean), (theirs, theirs_clean) = _attacked(frame, named(masked, width)), _attacked(frame, named(control, width))
        comparisons += [_attacked_comparison(f"{label} {attack}", mine[attack], theirs[attack], mine_clean,
                                             theirs_clean) for attack in mine if attack in theirs]
    return claim_verdict(RESAMPLED_ATTACKED_CLAIM, comparisons, f"accuracy under attack over all images, {masked} vs "
                  f"{control}: ", f"needs {masked} and {control} in Table 4 or the APGD/Square check")


def control_verdicts(out: Path, width: int = BASE_WIDTH) -> list[tuple[str, str, str]]:
    """The claims the controls test: three from the DenseNet-121 and VGG-19 transfer tables, one from the
    attacks aimed at each net itself."""
    rows = control_pairs_compared(out, width=width)
    found = []
    for claim, kind, attacks, needs in (
            (ACCURACY_CLAIM, EARLY, CONTROL_ATTACKS, "needs the early-stopped Normal ResNet-18s in the zoo"),
            (ACCURACY_LONG_CLAIM, AS_LONG, CONTROL_ATTACKS,
             "needs the Normal ResNet-18s trained as long to each masked net's accuracy in the zoo"),
            (RESAMPLED_CLAIM, "resampled mask", ["FGSM16"], "needs 0.7-ShallowDropout in the zoo"),
            (RESAMPLED_OTHER_CLAIM, "resampled mask", ["PGD16", "CW40"], "needs 0.7-ShallowDropout in the zoo")):
        found.append(claim_verdict(claim, [Comparison(f"{r['attack']} from {r['source']}: {r['model']} vs {r['control']}",
                                               r["model_rate"], r["control_rate"])
                                    for r in rows if r["kind"] == kind and r["attack"] in attacks], needs=needs))
    found.append(resampled_under_attack(out, width))
    return found


GRAYBOX_CLAIM = ("Gray-box (Table 5): against FGSM16 from its other-init twin, 0.7-Shallow defends more often than "
                 "Normal")
GRAYBOX_DIF_CLAIM = "Gray-box (Table 5): a 0.7-Shallow twin with other masks (DIF) defends as its other-init twin"


def _graybox_verdicts(t5, width: int = BASE_WIDTH) -> list[tuple[str, str, str]]:
    """The paper's Table 5 reading: FGSM16 from a net to its same-structure twin (other init) fools a Random Mask
    net less often than a Normal one, and a twin with other masks (DIF) fares like the other-init twin."""
    rows = [] if t5 is None or "relation" not in t5.columns else t5[t5["metric"] == "defense_rate"].to_dict("records")

    def twin(model: str, relation: str) -> dict | None:
        notation = named(model, width)
        return next((r for r in rows if r["source"] == r["target"] == notation and r["relation"] == relation), None)

    normal, masked, dif = twin("Normal ResNet-18", "other init"), twin("0.7-Shallow", "other init"), twin("0.7-Shallow", "DIF")
    first = [Comparison("0.7-Shallow vs Normal", masked, normal)] if masked and normal else []
    second = [Comparison("other masks (DIF) vs other init", dif, masked, "alike")] if dif and masked else []
    return [claim_verdict(GRAYBOX_CLAIM, first, "FGSM16 from a net to its other-init twin: ",
                   "needs Normal ResNet-18 and 0.7-Shallow with a second seed"),
            claim_verdict(GRAYBOX_DIF_CLAIM, second, "FGSM16 from 0.7-Shallow to its twins: ",
                   "needs 0.7-Shallow's other-init and other-mask (DIF) twins")]
