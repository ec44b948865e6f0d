"""Verdicts: each of the paper's claims judged from results/*.csv by Wilson intervals, never by point estimates
alone (supported, partly supported, contradicted, mixed, no clear difference, untested)."""

from __future__ import annotations

from pathlib import Path

from randmask.plan import (
    CONTROL_ATTACKS,
    CONTROL_SOURCES,
    MATCHED,
    RESAMPLED,
    TRANSFER_SOURCES,
    WHITEBOX_SMALL,
    load_result,
)


def _rate(frame, target: str, attack: str | None = None, metric: str = "defense_rate") -> dict | None:
    if frame is None:
        return None
    part = frame[(frame["target"] == target) & (frame["metric"] == metric)]
    if attack is not None:
        part = part[part["attack"] == attack]
    return part.iloc[0].to_dict() if len(part) else None


def compare(a: dict | None, b: dict | None) -> str:
    """'higher', 'lower' or 'no clear difference' for proportion a vs b (Wilson intervals not overlapping)."""
    if a is None or b is None or not a.get("n") or not b.get("n"):
        return "untested"
    if a["ci_low"] > b["ci_high"]:
        return "higher"
    if a["ci_high"] < b["ci_low"]:
        return "lower"
    return "no clear difference"


def rises_with_ratio(rates: list[dict]) -> str:
    """Whether rates ordered by drop ratio rise, judged by Wilson intervals rather than by point estimates:
    'yes' when the highest ratio is clearly above the lowest and no step is clearly down."""
    if len(rates) < 2:
        return "untested (one ratio)"
    if any(compare(b, a) == "lower" for a, b in zip(rates, rates[1:], strict=False)):
        return "no (a step is clearly down)"
    return "yes" if compare(rates[-1], rates[0]) == "higher" else "not clearly (intervals overlap)"


def verdict(outcomes: list[str], expected: str) -> str:
    """Summarise pairwise comparisons against the direction the paper claims ('higher' or 'lower')."""
    opposite = {"higher": "lower", "lower": "higher"}[expected]
    if not outcomes or "untested" in outcomes:
        return "untested"
    if all(o == expected for o in outcomes):
        return "supported"
    if expected in outcomes and opposite not in outcomes:
        return "partly supported"
    if opposite in outcomes and expected not in outcomes:
        return "contradicted"
    return "mixed" if expected in outcomes else "no clear difference"


def _fmt(row: dict | None) -> str:
    return "–" if row is None else f"{100 * row['accuracy']:.1f}% (n={int(row['n'])})"


def main_transfer(out: Path) -> tuple:
    """(frame, source name, paper table) of the first transfer experiment with results, in TRANSFER_SOURCES
    order; (None, None, None) when none has run."""
    for key, _, _, name, table in TRANSFER_SOURCES:
        frame = load_result(out, key)
        if frame is not None:
            return frame, name, table
    return None, None, None


def verdicts(out: Path, settings: dict) -> list[tuple[str, str, str]]:
    """(claim, verdict, evidence) for the paper's seven claims, its gray-box reading and our check beyond the
    paper, computed from results/*.csv."""
    (t2, source, _), t3, t4 = main_transfer(out), load_result(out, "table3_shuffle"), load_result(out, "table4_whitebox")
    noise = load_result(out, "figure3_noise")
    attack = "PGD16"
    found = []

    # (1) shallow masks raise black-box robustness, increasingly with the ratio
    normal = _rate(t2, "Normal ResNet-18", attack)
    ladder = [(r, _rate(t2, f"{r:g}-Shallow", attack)) for r in (0.3, 0.5, 0.7, 0.85, 0.9)]
    ladder = [(r, row) for r, row in ladder if row is not None]
    if normal and ladder:
        above = [compare(row, normal) for _, row in ladder]
        rising = rises_with_ratio([row for _, row in ladder])
        result = verdict(above, "higher")
        if result == "supported" and rising != "yes":
            result = "partly supported"
        evidence = f"{attack} from {source}: Normal {_fmt(normal)}; " + ", ".join(
            f"{r:g}-Shallow {_fmt(row)}" for r, row in ladder) + f"; rises with the ratio: {rising}"
        found.append(("Shallow masks raise black-box robustness, more with higher ratio", result, evidence))
    else:
        found.append(("Shallow masks raise black-box robustness, more with higher ratio", "untested",
                      "needs a transfer source (DenseNet-121, VGG-19 or a second ResNet-18), Normal and "
                      "r-Shallow models"))

    # (2) shallow beats deep at equal ratio
    pairs = [(r, _rate(t2, f"{r:g}-Shallow", attack), _rate(t2, f"{r:g}-Deep", attack)) for r in (0.5, 0.7)]
    pairs = [p for p in pairs if p[1] and p[2]]
    outcome = [compare(s, d) for _, s, d in pairs]
    found.append(("Shallow beats deep at equal ratio", verdict(outcome, "higher"),
                  f"{attack} from {source}: " + "; ".join(f"{r:g}: Shallow {_fmt(s)} vs Deep {_fmt(d)}"
                                                          for r, s, d in pairs) if pairs else "needs models"))

    # (3) Random Mask beats channel drop (DC) and same mask (SM)
    rm = _rate(t2, "0.5-Shallow", attack)
    dc, sm = _rate(t2, "0.5-ShallowDC", attack), _rate(t2, "0.5-ShallowSM", attack)
    clean = {k: _rate(t2, k, None, "clean_accuracy") for k in ("0.5-Shallow", "0.5-ShallowDC", "0.5-ShallowSM")}
    if rm and (dc or sm):
        vs = [compare(rm, other) for other in (dc, sm) if other]
        found.append(("Random Mask beats channel drop (DC) and same mask (SM)", verdict(vs, "higher"),
                      f"{attack} from {source}: 0.5-Shallow {_fmt(rm)}, DC {_fmt(dc)}, SM {_fmt(sm)}; clean: "
                      + ", ".join(f"{k} {_fmt(v)}" for k, v in clean.items())))
    else:
        found.append(("Random Mask beats channel drop (DC) and same mask (SM)", "untested", "needs models"))

    # (4) ensembles improve accuracy and robustness: the masked EN, and the Normal EN (ensembling alone) beside it
    outcomes, evidence = [], []
    for single_name in ("0.85-Shallow", "Normal ResNet-18"):
        single, ens = _rate(t2, single_name, attack), _rate(t2, f"{single_name}EN", attack)
        if single and ens:
            c1, c2 = (_rate(t2, name, None, "clean_accuracy") for name in (single_name, f"{single_name}EN"))
            outcomes += [compare(ens, single), compare(c2, c1)]
            evidence.append(f"{single_name} {_fmt(single)} vs EN {_fmt(ens)}, clean {_fmt(c1)} vs {_fmt(c2)}")
    if outcomes:
        found.append(("Ensembles (EN) improve accuracy and robustness", verdict(outcomes, "higher"),
                      f"{attack} from {source}: " + "; ".join(evidence)))
    else:
        found.append(("Ensembles (EN) improve accuracy and robustness", "untested", "needs the five EN members"))

    # (5) better noise robustness
    if noise is not None and noise["target"].nunique() > 1:
        sigma = 24.0
        at = noise[noise["sigma"] == sigma]
        base = at[at["target"] == "Normal ResNet-18"].iloc[0].to_dict()
        others = [r for r in at.to_dict("records") if r["target"] != "Normal ResNet-18"]
        outcomes = [compare(r, base) for r in others]
        found.append(("Random Mask nets are more robust to Gaussian noise", verdict(outcomes, "higher"),
                      f"σ={sigma:g}/255: Normal {_fmt(base)}; " + ", ".join(f"{r['target']} {_fmt(r)}" for r in others)))
    else:
        found.append(("Random Mask nets are more robust to Gaussian noise", "untested", "needs masked models"))

    # (6) lower patch-shuffle accuracy
    if t3 is not None:
        per_k = [(k, _rate(t3, "0.7-Shallow", f"shuffle{k}x{k}", "accuracy"),
                  _rate(t3, "Normal ResNet-18", f"shuffle{k}x{k}", "accuracy")) for k in (2, 4, 8)]
        outcomes = [compare(m, n) for _, m, n in per_k]
        found.append(("Random Mask nets do worse on patch-shuffled images", verdict(outcomes, "lower"),
                      "; ".join(f"k={k}: 0.7-Shallow {_fmt(m)} vs Normal {_fmt(n)}" for k, m, n in per_k)))
    else:
        found.append(("Random Mask nets do worse on patch-shuffled images", "untested", "needs 0.7-Shallow"))

    # (7) small white-box gains only
    if t4 is not None:
        pgd = [a for a in t4["attack"].dropna().unique() if a.startswith("PGD")]
        gaps = []
        for a in pgd:
            m, n = _rate(t4, "0.7-Shallow", a, "accuracy"), _rate(t4, "Normal ResNet-18", a, "accuracy")
            if m and n:
                gaps.append((a, 100 * (m["accuracy"] - n["accuracy"])))
        small = all(abs(g) < WHITEBOX_SMALL for _, g in gaps)
        found.append(("White-box gains are small", "supported" if gaps and small else "contradicted" if gaps
                      else "untested", f"(small: < {WHITEBOX_SMALL} points) " + ", ".join(
                          f"{a}: 0.7-Shallow − Normal = {g:+.1f} points" for a, g in gaps)))
    else:
        found.append(("White-box gains are small", "untested", "needs 0.7-Shallow"))

    found.append(_graybox_verdict(load_result(out, "table5_graybox")))
    found += control_verdicts(out)

    # beyond the paper: does 0.9-Shallow's edge survive APGD-CE and a query-only attack (Square)?
    beyond = load_result(out, "beyond_apgd_square")
    claim = "Beyond the paper: 0.9-Shallow stays more robust than Normal under APGD-CE and Square (query-only)"
    if beyond is not None:
        attacks = [a for a in beyond["attack"].dropna().unique() if a]
        pairs = [(a, _rate(beyond, "0.9-Shallow", a, "accuracy"), _rate(beyond, "Normal ResNet-18", a, "accuracy"))
                 for a in attacks]
        pairs = [p for p in pairs if p[1] and p[2]]
        found.append((claim, verdict([compare(m, n) for _, m, n in pairs], "higher"), "; ".join(
            f"{a}: 0.9-Shallow {_fmt(m)} vs Normal {_fmt(n)}" for a, m, n in pairs) or "needs models"))
    else:
        found.append((claim, "untested", "needs Normal and 0.9-Shallow"))
    return found


ACCURACY_CLAIM = "Controls: transfer robustness is not explained by lower clean accuracy"
RESAMPLED_CLAIM = "Controls: a fixed mask beats a resampled one (dropout with the same pattern)"


def _paper_rate(frame, target: str, attack: str) -> dict | None:
    """A defense-rate row by the paper's attack name (CW40 is run as 'CW40(search=10)' in the quick preset)."""
    if frame is None:
        return None
    column = frame["paper_attack"] if "paper_attack" in frame.columns else frame["attack"]
    part = frame[(frame["target"] == target) & (frame["metric"] == "defense_rate") & (column == attack)]
    return part.iloc[0].to_dict() if len(part) else None


def control_pairs_compared(out: Path, sources: list[str] | None = None) -> list[dict]:
    """Each masked net beside its control, per source (transfer table keys; default: the verdicts' two, from
    CONTROL_SOURCES) and attack of the controls: rows with the two rates and their comparison ('higher' = the
    masked net defends more, by non-overlapping Wilson intervals)."""
    pairs = [(m, MATCHED[m].label, "accuracy-matched Normal") for m in MATCHED]
    pairs += [(m, r, "resampled mask") for m, r in RESAMPLED.items()]
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


RESAMPLED_ATTACKED_CLAIM = ("Controls: under white-box and query attacks too, a fixed mask beats a "
                            "resampled one")
ATTACKED_TABLES = {"table4_whitebox": "Table 4", "beyond_apgd_square": "APGD-CE / Square"}


def _attacked_accuracy(frame, model: str) -> dict[str, dict]:
    """A model's accuracy under each attack aimed at itself (rows with source == target), by attack."""
    if frame is None:
        return {}
    part = frame[(frame["source"] == model) & (frame["metric"] == "accuracy")]
    if "target" in part.columns:
        part = part[part["target"] == model]
    return {row["attack"]: row for row in part.to_dict("records")}


def resampled_under_attack(out: Path) -> tuple[str, str, str]:
    """The fixed-versus-resampled control read off the attacks aimed at each net itself (Table 4 and the
    APGD-CE / Square check): does the fixed mask keep more images correct than the resampled one?"""
    masked, control = next(iter(RESAMPLED.items()))
    outcomes, parts = [], []
    for key, label in ATTACKED_TABLES.items():
        frame = load_result(out, key)
        mine, theirs = _attacked_accuracy(frame, masked), _attacked_accuracy(frame, control)
        shown = []
        for attack in [a for a in mine if a in theirs]:
            outcome = compare(mine[attack], theirs[attack])
            outcomes.append(outcome)
            note = "" if outcome == "no clear difference" else f" ({outcome})"
            ours, theirs_rate = 100 * mine[attack]["accuracy"], 100 * theirs[attack]["accuracy"]
            shown.append(f"{attack} {ours:.1f} vs {theirs_rate:.1f}{note}")
        if shown:
            n = int(max(row["n"] for row in mine.values()))
            parts.append(f"{label} (n = {n}): " + ", ".join(shown))
    if not outcomes:
        needs = f"needs {masked} and {control} in Table 4 or the APGD/Square check"
        return RESAMPLED_ATTACKED_CLAIM, "untested", needs
    return RESAMPLED_ATTACKED_CLAIM, verdict(outcomes, "higher"), (
        f"accuracy % under attack, {masked} vs {control}: " + "; ".join(parts))


def control_verdicts(out: Path) -> list[tuple[str, str, str]]:
    """The claims the controls test: two from the DenseNet-121 and VGG-19 transfer tables, one from the
    attacks aimed at each net itself."""
    rows = control_pairs_compared(out)
    found = []
    for claim, kind, needs in ((ACCURACY_CLAIM, "accuracy-matched Normal",
                                "needs the accuracy-matched Normal ResNet-18s in the zoo"),
                               (RESAMPLED_CLAIM, "resampled mask", "needs 0.7-ShallowDropout in the zoo")):
        mine = [r for r in rows if r["kind"] == kind]
        tested = [r for r in mine if r["outcome"] != "untested"]  # CW rows with n = 0 (fooled no source image)
        if not tested:
            found.append((claim, "untested", needs))
            continue
        evidence = "; ".join(f"{r['attack']} from {r['source']}: {r['model']} {_fmt(r['model_rate'])} vs "
                             f"{r['control']} {_fmt(r['control_rate'])}" for r in tested)
        skipped = len(mine) - len(tested)
        if skipped:
            evidence += f" ({skipped} comparison(s) with n = 0 left out)"
        found.append((claim, verdict([r["outcome"] for r in tested], "higher"), evidence))
    found.append(resampled_under_attack(out))
    return found


GRAYBOX_CLAIM = "Gray-box (Table 5): Random Mask helps against a same-structure source; other init and DIF alike"


def _graybox_verdict(t5) -> tuple[str, str, str]:
    """The paper's Table 5 reading: FGSM16 from a net to its same-structure twin (other init) fools a Random Mask
    net less often than a Normal one, and a twin with other masks (DIF) fares like the other-init twin."""
    rows = [] if t5 is None or "relation" not in t5.columns else t5[t5["metric"] == "defense_rate"].to_dict("records")

    def twin(notation: str, relation: str) -> dict | None:
        return next((r for r in rows if r["source"] == r["target"] == notation and r["relation"] == relation), None)

    normal, masked = twin("Normal ResNet-18", "other init"), twin("0.7-Shallow", "other init")
    dif = twin("0.7-Shallow", "DIF")
    if not (normal and masked):
        return GRAYBOX_CLAIM, "untested", "needs Normal ResNet-18 and 0.7-Shallow with a second seed"
    result = verdict([compare(masked, normal)], "higher")
    alike = compare(dif, masked) if dif else "untested"
    if result == "supported" and alike != "no clear difference":
        result = "partly supported"
    reading = {"no clear difference": "alike", "untested": "DIF twin not yet trained"}.get(alike, f"DIF {alike}")
    return GRAYBOX_CLAIM, result, (f"FGSM16 from a net to its other-init twin: Normal {_fmt(normal)}, 0.7-Shallow "
                                   f"{_fmt(masked)}; to its other-mask twin (DIF): {_fmt(dif)} ({reading})")

