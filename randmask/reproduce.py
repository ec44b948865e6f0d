"""`python -m randmask reproduce --preset quick`: rerun the paper's experiments on the shipped zoo, write
`results/*.csv` and a generated `REPRODUCTION.md` with the paper's numbers beside ours and a verdict per claim.

Every experiment names the zoo models it needs; one whose models are not trained yet is listed as pending in the
report instead of failing the run. Sample sizes are smaller than the paper's (see PRESETS); every number carries
n and a Wilson 95% interval.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from randmask import protocols
from randmask.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_model
from randmask.data import PROJECT_ROOT, load_tensors
from randmask.evaluate import markdown_table, percent_text, write_csv
from randmask.zoo import ZOO, zoo_markdown

if TYPE_CHECKING:
    import pandas as pd

Progress = Callable[[str, int, int], None]

PRESETS = {
    # paper: 5000 images for FGSM/PGD, 1000 for CW, 5000 for shuffle, the full test set for noise
    # n_pool: test images to draw from (None = the whole test set)
    "paper": dict(n_pool=None, n=5000, n_cw=1000, n_whitebox=10000, n_noise=10000, n_shuffle=5000, n_beyond=1000,
                  cw="CW40", square="Square{eps}", apgd="APGD{eps}", beyond_eps=(4, 8, 16), shuffle_confidence=0.99),
    "quick": dict(n_pool=None, n=500, n_cw=100, n_whitebox=500, n_noise=2000, n_shuffle=500, n_beyond=200,
                  cw="CW40(search=10, steps=100)", square="Square{eps}(queries=1000)", apgd="APGD{eps}(steps=50)",
                  # at eps 16 both attacks take every net to ~0%: smaller budgets show where the nets differ
                  beyond_eps=(4, 8, 16),
                  # label smoothing 0.1 caps our quick nets' softmax near 0.9: none reaches the paper's 0.99
                  shuffle_confidence=0.8),
}
TABLE2_TARGETS = ["Normal ResNet-18", "0.3-Shallow", "0.5-Shallow", "0.7-Shallow", "0.85-Shallow", "0.9-Shallow",
                  "0.5-Deep", "0.7-Deep", "0.5-ShallowDC", "0.5-ShallowSM", "0.9-Shallow×2", "0.85-ShallowEN"]
WHITEBOX_SMALL = 30  # points; the paper calls its own largest PGD gain in Table 4 (+25.0, 0.7-Shallow PGD2) small
NOISE_MODELS = ["Normal ResNet-18", "0.5-Shallow", "0.7-Shallow", "0.9-Shallow"]
FIGURE7_ATTACKS = ["FGSM16", "PGD16", "CW40"]


def zoo_name(notation: str, dataset: str = "cifar10", seed: int = 0, mask_seed: int = 0) -> str:
    from randmask.notation import slug

    suffix = f"-s{seed}m{mask_seed}" if (seed, mask_seed) != (0, 0) else ""
    return f"{dataset}/{slug(notation)}{suffix}"


# every transfer table also gets the controls and the rest of Table 7 (zoo stages 5 and 6) as they land
TRANSFER_TARGETS = [*(zoo_name(n) for n in TABLE2_TARGETS), *(e.name for e in ZOO if e.stage >= 5)]
# the accuracy-matched Normal of each masked net, and the resampled (dropout) twin of the fixed mask
MATCHED = {e.matched_to: e for e in ZOO if e.matched_to}
RESAMPLED = {"0.7-Shallow": "0.7-ShallowDropout"}
CONTROL_SOURCES = ["table2_transfer", "table11_transfer"]  # DenseNet-121 and VGG-19, as the issue asks
CONTROL_ATTACKS = ["FGSM16", "PGD16", "CW40"]


@dataclass
class Experiment:
    key: str
    title: str
    paper_table: int | None
    needs: list[str]  # zoo names that must exist
    wants: list[str] = field(default_factory=list)  # zoo names used when present
    run: Callable | None = None
    own_section: bool = True  # False: another section of the report presents its results


class Zoo:
    """Lazy, cached model loading from a zoo folder."""

    def __init__(self, root: Path) -> None:
        self.root, self._cache = root, {}

    def has(self, name: str) -> bool:
        return (self.root / name / WEIGHTS_FILE).exists()

    def __getitem__(self, name: str) -> tuple[nn.Module, dict]:
        if name not in self._cache:
            self._cache[name] = load_model(self.root / name)
        return self._cache[name]

    def config(self, name: str) -> dict:
        """A model's config.json, read without loading its weights."""
        return json.loads((self.root / name / CONFIG_FILE).read_text())

    def model(self, name: str) -> nn.Module:
        return self[name][0]

    def label(self, name: str) -> str:
        """The name reports use: the notation, or the zoo's label where that alone is ambiguous (a matched control)."""
        config = self[name][1]
        return config.get("label") or config["notation"]


# Black-box transfer, one experiment per source: (key, title, source in the zoo, the paper's name, paper table).
# Verdicts and Figure 7 use the first source present: DenseNet-121 is the paper's main one (Table 2 is drawn from
# its Table 7); VGG-19 (Table 11) and a second Normal ResNet-18 (Table 8) are cheaper to train here.
TRANSFER_SOURCES = [
    ("table2_transfer", "Table 2 · transfer from DenseNet-121 (the paper's Tables 2 and 7)",
     zoo_name("DenseNet-121"), "DenseNet-121", 7),
    ("table11_transfer", "Table 11 · transfer from VGG-19", zoo_name("VGG-19"), "VGG-19", 11),
    ("table8_transfer", "Table 8 · transfer from another ResNet-18 (Normal, seed 1)",
     zoo_name("Normal ResNet-18", seed=1), "ResNet-18", 8),
    ("table9_transfer", "Table 9 · transfer from ResNet-50", zoo_name("ResNet-50"), "ResNet-50", 9),
    ("table10_transfer", "Table 10 · transfer from SENet-18", zoo_name("SENet-18"), "SENet-18", 10),
]


def experiments(settings: dict, cache: Path | None = None) -> list[Experiment]:
    """The plan: which protocol, on which zoo models, with which sizes; crafted sets are reused from `cache`."""
    s = settings
    densenet, mnist_densenet = zoo_name("DenseNet-121"), zoo_name("DenseNet-121", "mnist")
    normal = zoo_name("Normal ResNet-18")

    def transfer_from(source: str, source_name: str):
        def run(zoo: Zoo, x, y, progress):
            targets = {zoo.label(n): zoo.model(n) for n in TRANSFER_TARGETS if zoo.has(n) and n != source}
            return protocols.transfer(zoo.model(source), targets, ["FGSM16", "PGD16", "PGD32", s["cw"]], x, y,
                                      source_name=source_name, n=s["n"], n_cw=s["n_cw"], dataset="cifar10",
                                      paper_names={s["cw"]: "CW40"}, progress=progress, cache=cache)
        return run

    def table1(zoo: Zoo, x, y, progress):
        names = [normal, zoo_name("0.85-Shallow"), zoo_name("0.85-ShallowEN")]
        targets = {zoo.label(n): zoo.model(n) for n in names if zoo.has(n)}
        return protocols.madry(zoo.model(zoo_name("Normal ResNet-18", seed=1)), targets, x, y,
                               source_name="naturally trained net", n=s["n"], dataset="cifar10", progress=progress,
                               cache=cache)

    def table3(zoo: Zoo, x, y, progress):
        models = {zoo.label(n): zoo.model(n) for n in (normal, zoo_name("0.7-Shallow"))}
        return protocols.shuffle(models, x, y, n=s["n_shuffle"], min_confidence=s.get("shuffle_confidence", 0.99),
                                 dataset="cifar10", progress=progress)

    def table4(zoo: Zoo, x, y, progress):
        names = [normal, zoo_name("0.5-Shallow"), zoo_name("0.7-Shallow"), *table4_controls]
        models = {zoo.label(n): zoo.model(n) for n in names if zoo.has(n)}
        return protocols.whitebox(models, list(protocols.WHITEBOX_ATTACKS), x[:s["n_whitebox"]],
                                  y[:s["n_whitebox"]], dataset="cifar10", progress=progress, cache=cache)

    def table5(zoo: Zoo, x, y, progress):
        sources = {zoo.label(n): zoo.model(n) for n in (normal, zoo_name("0.5-Shallow"), zoo_name("0.7-Shallow"))
                   if zoo.has(n)}
        plan = {"Normal ResNet-18 (other init)": zoo_name("Normal ResNet-18", seed=1),
                "0.7-Shallow (other init)": zoo_name("0.7-Shallow", seed=1),
                "0.7-ShallowDIF": zoo_name("0.7-Shallow", mask_seed=1),
                "DenseNet-121": densenet, "VGG-19": zoo_name("VGG-19")}
        targets = {label: zoo.model(n) for label, n in plan.items() if zoo.has(n)}
        rows = protocols.graybox(sources, targets, x, y, n=s["n"], dataset="cifar10", progress=progress,
                                 cache=cache)
        for row in rows:  # the paper's columns name a target model by its base notation plus what sets it apart
            label = row["target"]  # from the base model of its notation, whichever source attacked it
            if label.endswith((" (other init)", "DIF")):
                row["relation"] = "DIF" if label.endswith("DIF") else "other init"
            elif row["metric"] != "clean_accuracy":
                row["relation"] = protocols.relation(zoo[zoo_name(row["source"])][1], zoo[plan[label]][1])
            row["target"] = label.replace(" (other init)", "").replace("DIF", "")
        return rows

    def table6(zoo: Zoo, x, y, progress):
        xm, ym = load_tensors("mnist", "test", n=s.get("n_pool"))
        names = [zoo_name(n, "mnist") for n in ("Normal ResNet-18", "0.5-Shallow", "0.7-Shallow", "0.9-Shallow")]
        targets = {zoo.label(n): zoo.model(n) for n in names if zoo.has(n)}
        return protocols.mnist(zoo.model(mnist_densenet), targets, xm, ym, source_name="DenseNet-121", n=s["n"],
                               progress=progress, cache=cache)

    def figure3(zoo: Zoo, x, y, progress):
        models = {zoo.label(n): zoo.model(n) for n in map(zoo_name, NOISE_MODELS) if zoo.has(n)}
        return protocols.noise(models, x[:s["n_noise"]], y[:s["n_noise"]], dataset="cifar10", progress=progress)

    def beyond(zoo: Zoo, x, y, progress):
        models = {zoo.label(n): zoo.model(n) for n in (normal, zoo_name("0.9-Shallow"), *beyond_controls)
                  if zoo.has(n)}
        attacks = list(dict.fromkeys(t.format(eps=e) for t in (s["apgd"], s["square"]) for e in s.get("beyond_eps", (16,))))
        rows = protocols.whitebox(models, attacks, x[:s["n_beyond"]], y[:s["n_beyond"]],
                                  dataset="cifar10", progress=progress, cache=cache)
        for row in rows:
            row["protocol"] = "beyond"
        return rows

    def controls(zoo: Zoo, x, y, progress):
        models = {zoo.label(n): zoo.model(n) for n in [normal, *control_pairs] if zoo.has(n)}
        return protocols.logit_scale(models, x[:s["n"]], y[:s["n"]], dataset="cifar10")

    table4_controls = [MATCHED["0.7-Shallow"].name, zoo_name(RESAMPLED["0.7-Shallow"])]
    beyond_controls = [MATCHED["0.9-Shallow"].name]
    control_pairs = [n for masked in MATCHED for n in (zoo_name(masked), MATCHED[masked].name)]
    control_pairs += [zoo_name(n) for n in RESAMPLED.values()]
    control_needs = [normal, zoo_name("0.7-Shallow"), MATCHED["0.7-Shallow"].name]  # the first pair decides it runs
    transfers = [Experiment(key, title, table, [source, normal],
                            [n for n in TRANSFER_TARGETS if n != source], transfer_from(source, name))
                 for key, title, source, name, table in TRANSFER_SOURCES]
    return [
        *transfers,
        Experiment("table1_madry", "Table 1 · Madry et al.'s black-box setting", 1,
                   [zoo_name("Normal ResNet-18", seed=1), normal, zoo_name("0.85-Shallow")],
                   [zoo_name("0.85-ShallowEN")], table1),
        Experiment("table3_shuffle", "Table 3 · patch shuffle (CIFAR-10 here, ImageNet in the paper)", 3,
                   [normal, zoo_name("0.7-Shallow")], [], table3),
        Experiment("table4_whitebox", "Table 4 · white-box attacks", 4,
                   [normal, zoo_name("0.7-Shallow")], [zoo_name("0.5-Shallow"), *table4_controls], table4),
        Experiment("table5_graybox", "Table 5 · gray-box transfer (FGSM16)", 5,
                   [normal, zoo_name("0.7-Shallow"), zoo_name("Normal ResNet-18", seed=1)],
                   [zoo_name("0.5-Shallow"), zoo_name("0.7-Shallow", seed=1), zoo_name("0.7-Shallow", mask_seed=1),
                    densenet, zoo_name("VGG-19")], table5),
        Experiment("table6_mnist", "Table 6 · MNIST black-box (DenseNet-121 source)", 6,
                   [mnist_densenet, zoo_name("Normal ResNet-18", "mnist")],
                   [zoo_name(n, "mnist") for n in ("0.5-Shallow", "0.7-Shallow", "0.9-Shallow")], table6),
        Experiment("figure3_noise", "Figure 3 · Gaussian noise", None, [normal],
                   [zoo_name(n) for n in NOISE_MODELS], figure3),
        Experiment("beyond_apgd_square", "Beyond the paper · APGD-CE and Square Attack (white-box / query)", None,
                   [normal, zoo_name("0.9-Shallow")], beyond_controls, beyond),
        Experiment("controls_logit_scale", "Clean accuracy and logit scale of the masked nets and their controls",
                   None, control_needs, [n for n in control_pairs if n not in control_needs], controls, own_section=False),
    ]


def reproduce(preset: str = "quick", zoo_root: Path | None = None, out: Path | None = None,
              only: list[str] | None = None, overrides: dict | None = None,
              progress: Progress | None = None, cache: Path | None | bool = True) -> dict:
    """Run every experiment whose models exist; write results/<key>.csv and REPRODUCTION.md under `out`.

    Crafted adversarial sets are kept in `cache` (True: $RANDMASK_CACHE or runs/crafted; False/None: none) and
    reused while source, attack and images are unchanged, so a rerun after a new zoo model only evaluates it.
    """
    from randmask.errors import RandmaskError
    from randmask.zoo import ZOO_ROOT

    if preset not in PRESETS:
        raise RandmaskError(f"unknown reproduce preset {preset!r}; known: {', '.join(PRESETS)}")
    settings = {**PRESETS[preset], **(overrides or {})}
    zoo = Zoo(Path(zoo_root or ZOO_ROOT))
    out = Path(out or PROJECT_ROOT)
    (out / "results").mkdir(parents=True, exist_ok=True)
    x, y = load_tensors("cifar10", "test", n=settings.get("n_pool"))
    status: dict[str, dict] = {}
    if cache is True:
        from randmask.explore import crafted_cache_root

        cache = crafted_cache_root()
    for exp in experiments(settings, cache or None):
        if only and exp.key not in only:
            continue
        missing = [n for n in exp.needs if not zoo.has(n)]
        if missing:
            status[exp.key] = {"ran": False, "missing": missing}
            continue
        began = time.time()
        torch.manual_seed(0)
        rows = exp.run(zoo, x, y, (lambda d, t, k=exp.key: progress(k, d, t)) if progress else None)
        write_csv(rows, out / "results" / f"{exp.key}.csv")
        status[exp.key] = {"ran": True, "rows": len(rows), "seconds": round(time.time() - began, 1),
                           "absent": [n for n in exp.wants if not zoo.has(n)]}
    report = render_report(out, settings, preset, status, zoo)
    (out / "REPRODUCTION.md").write_text(report)
    return status


# ------------------------------------------------------------------------------------------ report
def _load(out: Path, key: str):
    import pandas as pd

    path = out / "results" / f"{key}.csv"
    return pd.read_csv(path) if path.exists() else None


def zoo_trained_keys(zoo: Zoo, dataset: str = "cifar10") -> set[str]:
    """The zoo's trained models of a data set, as the paper's tables name them (explore.trained_model_keys)."""
    from randmask.explore import discover_models, trained_model_keys

    catalog = discover_models(zoo.root, include_untrained=False)
    return trained_model_keys([e for e in catalog.for_dataset(dataset) if e.source == "zoo"])


def untrained_lines(comp: pd.DataFrame, listed: set[tuple[str, ...]] | None = None) -> list[str]:
    """The report's word on a table's models that are not trained here (their rows show only the paper's
    numbers): which they are and the command that trains each; a list already given (in `listed`, which this
    updates) is referred to instead of repeated."""
    from randmask.explore import untrained_targets

    missing = untrained_targets(comp)
    if not missing:
        return []
    names = ", ".join(f"`{target}`" for target, _ in missing)
    key = tuple(target for target, _ in missing)
    if listed is not None:
        if key in listed:
            return [f"Not trained here, so only the paper has numbers for them: the same {len(missing)} models "
                    "as above (the commands that train them are there).", ""]
        listed.add(key)
    return [f"Not trained here, so only the paper has numbers for them ({len(missing)} models): {names}. "
            "The commands that train them (your models land where the app's picker and its *Run a transfer "
            "evaluation* tab find them):", "", "```bash", *[command for _, command in missing], "```", ""]


def _side_by_side(out: Path, key: str, table: int, paper, trained: set[str] | None = None,
                  listed: set[tuple[str, ...]] | None = None) -> str:
    from randmask.explore import compare_with_paper, model_key, result_target_key, results_without_paper

    ours = _load(out, key)
    if ours is None:
        return ""
    full = compare_with_paper(paper, ours, table, trained)
    merged = full[full["ours"].notna()]
    clean = {model_key(r["target"]): r for r in merged.to_dict("records") if r["metric"] == "clean_accuracy"}
    ours_clean = {result_target_key(r): r for r in ours.to_dict("records") if r.get("metric") == "clean_accuracy"}

    def clean_of(target: str) -> tuple[str, str]:
        mine, theirs = ours_clean.get(model_key(target)), clean.get(model_key(target))
        return (percent_text(100 * mine["accuracy"]) if mine else "–", percent_text(theirs["paper"]) if theirs else "–")

    records = merged.to_dict("records")
    attacked = [r for r in records if r["metric"] != "clean_accuracy"]
    several = len({r["source"] for r in attacked if r["source"]}) > 1  # e.g. Table 5: say which made each row

    def cells(r: dict, source: str, clean_cells: list[str]) -> list[str]:
        return [*([source] if several else []), r["target"], r["attack"] or "clean", percent_text(r["paper"]),
                _interval(r["ours"], r["ours_low"], r["ours_high"]), f"{int(r['n'])}", f"{r['difference']:+.1f}", *clean_cells]

    rows = [cells(r, r["source"], list(clean_of(r["target"]))) for r in attacked]
    rows += [cells(r, "", ["", ""]) for r in records if r["metric"] == "clean_accuracy"]
    header = [*(["source"] if several else []), "target", "attack", "paper %", "ours % [95% CI]", "n",
              "ours − paper", "our clean %", "paper clean %"]
    text = markdown_table(header, rows) if rows else ""
    extra = [[r["source"], r["target"], r["attack"], _interval_text(r), f"{int(r['n'])}", clean_of(r["target"])[0]]
             for r in results_without_paper(paper, ours, table)]
    if extra:
        text += ("\n\nAlso measured, with no number in the paper's table:\n\n"
                 + markdown_table(["source", "target", "attack", "ours % [95% CI]", "n", "our clean %"], extra))
    lines = untrained_lines(full, listed) if trained is not None else []
    return text + ("\n\n" + "\n".join(lines).rstrip() if text and lines else "")


def _interval_text(row: dict) -> str:
    """'55.6 [51.2, 59.9]' from a result row's fractions; '–' where n = 0 left no estimate."""
    if not row["n"] or row["accuracy"] != row["accuracy"]:
        return "–"
    return _interval(100 * row["accuracy"], 100 * row["ci_low"], 100 * row["ci_high"])


def _interval(percent: float, low: float, high: float) -> str:
    return f"{percent_text(percent)} [{percent_text(low)}, {percent_text(high)}]"


def _ours_only(out: Path, key: str, columns: tuple[str, ...] = ("source", "target", "attack")) -> str:
    frame = _load(out, key)
    if frame is None:
        return ""
    rows = [[*(str(r[c]) if isinstance(r[c], str) else "" for c in columns),
             f"{100 * r['accuracy']:.1f} [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]", str(int(r["n"]))]
            for r in frame.to_dict("records")]
    return markdown_table([*columns, "accuracy % [95% CI]", "n"], rows)


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
        frame = _load(out, key)
        if frame is not None:
            return frame, name, table
    return None, None, None


def verdicts(out: Path, settings: dict) -> list[tuple[str, str, str]]:
    """(claim, verdict, evidence) for the paper's seven claims, its gray-box reading and our check beyond the
    paper, computed from results/*.csv."""
    (t2, source, _), t3, t4 = main_transfer(out), _load(out, "table3_shuffle"), _load(out, "table4_whitebox")
    noise = _load(out, "figure3_noise")
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

    # (4) ensembles improve accuracy and robustness
    single, ens = _rate(t2, "0.85-Shallow", attack), _rate(t2, "0.85-ShallowEN", attack)
    if single and ens:
        c1, c2 = _rate(t2, "0.85-Shallow", None, "clean_accuracy"), _rate(t2, "0.85-ShallowEN", None, "clean_accuracy")
        found.append(("Ensembles (EN) improve accuracy and robustness",
                      verdict([compare(ens, single), compare(c2, c1)], "higher"),
                      f"{attack} from {source}: 0.85-Shallow {_fmt(single)} vs EN {_fmt(ens)}; clean {_fmt(c1)} vs {_fmt(c2)}"))
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

    found.append(_graybox_verdict(_load(out, "table5_graybox")))
    found += control_verdicts(out)

    # beyond the paper: does 0.9-Shallow's edge survive APGD-CE and a query-only attack (Square)?
    beyond = _load(out, "beyond_apgd_square")
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


def control_pairs_compared(out: Path) -> list[dict]:
    """Each masked net beside its control, per source and attack of the controls: rows with the two rates and
    their comparison ('higher' = the masked net defends more, by non-overlapping Wilson intervals)."""
    pairs = [(m, MATCHED[m].label, "accuracy-matched Normal") for m in MATCHED]
    pairs += [(m, r, "resampled mask") for m, r in RESAMPLED.items()]
    rows = []
    for key in CONTROL_SOURCES:
        frame = _load(out, key)
        source = next(name for k, _, _, name, _ in TRANSFER_SOURCES if k == key)
        for masked, control, kind in pairs:
            for attack in CONTROL_ATTACKS:
                a, b = _paper_rate(frame, masked, attack), _paper_rate(frame, control, attack)
                if a is None or b is None:
                    continue
                rows.append({"kind": kind, "source": source, "attack": attack, "model": masked, "control": control,
                             "model_rate": a, "control_rate": b, "outcome": compare(a, b)})
    return rows


def control_verdicts(out: Path) -> list[tuple[str, str, str]]:
    """The two claims the controls test, from the DenseNet-121 and VGG-19 transfer tables."""
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


def shallow_ratio(name) -> float | None:
    """0 for Normal ResNet-18, r for 'r-Shallow', None for anything else (Deep, DC, ×n, EN, other nets)."""
    from randmask.explore import model_key

    key = model_key(name)
    if key == "Normal ResNet-18":
        return 0.0
    match = re.fullmatch(r"(\d*\.\d+)-Shallow", key)
    return float(match.group(1)) if match else None


def paper_points(paper, table: int) -> dict[tuple[float, str], float]:
    """{(ratio, attack key): percent} of Normal and every r-Shallow in a paper table; attack key '' is clean
    accuracy."""
    from randmask.explore import attack_key

    found: dict[tuple[float, str], float] = {}
    for row in [] if paper is None else paper[paper["table"] == table].to_dict("records"):
        ratio = shallow_ratio(row["target"])
        if ratio is not None:
            found[(ratio, attack_key(row["attack"]) if row["metric"] != "clean_accuracy" else "")] = row["percent"]
    return found


def figure7(out: Path, paper) -> tuple[list[dict], dict[str, list[tuple[float, float, float]]]]:
    """Figure 7 from the main transfer results: (rows, paper curve). Rows: for each attack, Normal (ratio 0) and
    every r-Shallow's defense rate beside its clean accuracy, with the paper's two numbers for the same source
    and ratio where it has them (paper values in percent, ours as fractions like every results file). Paper
    curve: attack -> [(ratio, clean %, defense %)] over every ratio of the paper's table for that source."""
    from randmask.explore import attack_key

    frame, source, table = main_transfer(out)
    if frame is None:
        return [], {}
    paper_at = paper_points(paper, table)
    clean = {r["target"]: r for r in frame[frame["metric"] == "clean_accuracy"].to_dict("records")}
    matched = {e.label: e.matched_to for e in MATCHED.values()}  # accuracy-matched Normals: points on the same axes
    rows = []
    for row in frame[frame["metric"] == "defense_rate"].to_dict("records"):
        target = row["target"]
        ratio = shallow_ratio(target) if target not in matched else None
        attack = row.get("paper_attack") if isinstance(row.get("paper_attack"), str) else row["attack"]
        if (ratio is None and target not in matched) or target not in clean:
            continue
        rows.append({"protocol": "figure7", "dataset": row.get("dataset", "cifar10"), "source": source,
                     "target": target, "ratio": ratio, "matched_to": matched.get(target, ""), "attack": attack,
                     "metric": "defense_rate", "n": row["n"], "accuracy": row["accuracy"], "ci_low": row["ci_low"],
                     "ci_high": row["ci_high"], "clean_accuracy": clean[target]["accuracy"],
                     "clean_n": clean[target]["n"],
                     "paper_defense_rate": None if ratio is None else paper_at.get((ratio, attack_key(attack))),
                     "paper_clean_accuracy": None if ratio is None else paper_at.get((ratio, ""))})
    curve = {a: sorted((r, paper_at[(r, "")], v) for (r, k), v in paper_at.items()
                       if k == attack_key(a) and (r, "") in paper_at) for a in FIGURE7_ATTACKS}
    return sorted(rows, key=lambda r: (r["attack"], r["ratio"] is None, r["ratio"] or 0.0, r["target"])), curve


def write_figures(out: Path, paper) -> dict[str, str]:
    """results/figure7_ratio.csv and the report's PNGs under results/plots; {section key: relative PNG path}."""
    import pandas as pd

    from randmask import plots
    from randmask.explore import compare_with_paper

    made: dict[str, str] = {}
    folder = out / "results" / "plots"
    shutil.rmtree(folder, ignore_errors=True)  # figures of experiments that no longer ran must not linger

    def keep(key: str, fig) -> None:
        made[key] = str(plots.save(fig, folder / f"{key}.png").relative_to(out))

    noise = _load(out, "figure3_noise")
    if noise is not None:
        keep("figure3_noise", plots.noise_figure(noise))
    rows, curve = figure7(out, paper)
    (out / "results" / "figure7_ratio.csv").unlink(missing_ok=True)
    if rows:
        write_csv(rows, out / "results" / "figure7_ratio.csv")
        frame = pd.DataFrame(rows)
        attacks = [a for a in FIGURE7_ATTACKS if a in set(frame["attack"])]
        if attacks:
            keep("figure7_ratio", plots.ratio_figure(frame, attacks, curve))
    if paper is not None:
        for exp in experiments(PRESETS["quick"]):
            ours = _load(out, exp.key)
            if exp.paper_table is None or ours is None:
                continue
            merged = compare_with_paper(paper, ours, exp.paper_table)
            if merged["ours"].notna().any():
                keep(exp.key, plots.side_by_side_figure(merged, exp.title))
    return made


def render_report(out: Path, settings: dict, preset: str, status: dict, zoo: Zoo) -> str:
    from randmask.explore import load_paper_tables, table_dataset

    paper = load_paper_tables()
    figures = write_figures(out, paper)
    trained = {dataset: zoo_trained_keys(zoo, dataset) for dataset in ("cifar10", "mnist")}
    listed: set[tuple[str, ...]] = set()  # lists of untrained models already given, with their commands
    lines = ["# Reproduction report", "",
             "Generated by `python -m randmask reproduce --preset " + preset + "` from the zoo in `assets/zoo`; "
             "do not edit by hand. Our nets are narrow (width 16) and trained briefly on a 2-core CPU, so "
             "compare each robustness number with the clean accuracy beside it. Accuracies are percentages with "
             "Wilson 95% intervals.", "",
             "Sample sizes: " + ", ".join(f"{k}={v}" for k, v in settings.items()) + ".", ""]
    lines += ["## Verdicts", "", markdown_table(["claim", "verdict", "evidence"],
                                        [list(v) for v in verdicts(out, settings)]), ""]
    for exp in [e for e in experiments(settings) if e.own_section]:
        state = status.get(exp.key) or ({"ran": True, "absent": [n for n in exp.wants if not zoo.has(n)]}
                                         if (out / "results" / f"{exp.key}.csv").exists() else None)
        lines += [f"## {exp.title}", ""]
        if not state or not state.get("ran"):
            missing = (state or {}).get("missing") or [n for n in exp.needs if not zoo.has(n)]
            lines += [f"Pending: the zoo lacks {', '.join(f'`{m}`' for m in missing)}." if missing else
                      f"Not run yet: `python -m randmask reproduce --preset {preset} --only {exp.key}`.", ""]
            continue
        body = (_side_by_side(out, exp.key, exp.paper_table, paper, trained[table_dataset(exp.paper_table)],
                              listed) if exp.paper_table and paper is not None else "")
        lines += [body or _ours_only(out, exp.key), ""] + _unfooled_note(out, exp.key)
        if exp.key in figures:
            lines += [f"![{exp.title}]({figures[exp.key]})", ""]
        lines += [f"Data: `results/{exp.key}.csv`.", ""]
        lines += _budget_note(zoo, exp)
        if state.get("absent"):
            lines += ["Not yet in the zoo: " + ", ".join(f"`{m}`" for m in state["absent"]) + ".", ""]
    lines += _controls_section(out)
    lines += _figure7_section(out, figures)
    lines += ["## Zoo", "", *zoo_markdown(zoo.root, paper)]
    return "\n".join(lines)


def _budget_note(zoo: Zoo, exp: Experiment) -> list[str]:
    """Warn when the models an experiment compares were trained for different numbers of epochs (a shipped
    model of an older recipe that has not been retrained yet): their robustness is not comparable at face value."""
    exempt = {e.name for e in ZOO if e.is_source or e.matched_to}  # sources and matched controls differ by design
    compared = [n for n in exp.needs + exp.wants if zoo.has(n) and n not in exempt]
    epochs = {n: zoo.config(n).get("recipe", {}).get("epochs") for n in compared}
    if len(set(epochs.values())) <= 1:
        return []
    return ["**Mixed training budgets**: " + ", ".join(f"`{n}` {e} epochs" for n, e in epochs.items())
            + ". Retrain the older ones (`python -m randmask zoo train`) before reading this table as a comparison.",
            ""]


def _unfooled_note(out: Path, key: str) -> list[str]:
    """Say so when an attack fooled the source on none of the images it attacked (CW with a large kappa on nets
    whose logit gaps stay far below kappa): its rows have n = 0 and no interval."""
    frame = _load(out, key)
    if frame is None or "n_attacked" not in frame.columns:
        return []
    dead = frame[(frame["metric"] == "defense_rate") & (frame["n"] == 0) & (frame["n_attacked"] > 0)]
    notes = []
    for attack, part in dead.groupby("attack"):
        gap = part["source_logit_gap"].iloc[0] if "source_logit_gap" in part.columns else math.nan
        scale = (f"the source's median gap between its top two logits on these images is {gap:.2f}" if gap == gap
                 else "our briefly trained narrow nets keep the gap between their top two logits small")
        kappa = re.match(r"CW(\d+)", attack)
        notes.append(f"{attack} fooled the source on none of the {int(part['n_attacked'].iloc[0])} images it attacked, "
                     f"so its rows have n = 0. For CW this means the margin κ is beyond the source's logit scale: "
                     f"{scale}{f', far below κ = {kappa[1]}' if kappa else ''}.\n")
    return notes


def _figure7_section(out: Path, figures: dict[str, str]) -> list[str]:
    lines = ["## Figure 7 · defense rate vs clean accuracy over drop ratios", ""]
    frame = _load(out, "figure7_ratio")
    if frame is None:
        return lines + ["Pending: needs transfer results for Normal and r-Shallow models.", ""]
    rows = [[f"{r['ratio']:g}" if r["ratio"] == r["ratio"] else f"{r['target']}, matched to {r['matched_to']}",
             r["attack"], f"{percent_text(100 * r['clean_accuracy'])}", percent_text(r["paper_clean_accuracy"]),
             _interval(100 * r['accuracy'], 100 * r['ci_low'], 100 * r['ci_high']),
             percent_text(r["paper_defense_rate"]), str(int(r["n"]))] for r in frame.to_dict("records")]
    lines += [f"Source: {frame['source'].iloc[0]}; ratio 0 is Normal ResNet-18; the accuracy-matched Normals (see "
              "Controls) are drawn as diamonds on the same axes. Paper values from the same source's table.", "",
              markdown_table(["ratio", "attack", "our clean %", "paper clean %", "our defense % [95% CI]", "paper defense %",
                      "n"], rows), ""]
    if "figure7_ratio" in figures:
        lines += [f"![Figure 7]({figures['figure7_ratio']})", ""]
    return lines + ["Data: `results/figure7_ratio.csv`.", ""]


def _controls_section(out: Path) -> list[str]:
    """What the controls are, in plain words, and each masked net beside them."""
    lines = ["## Controls · lower accuracy, and fixed versus resampled masks", "",
             "Our masked nets are less accurate than Normal, and a less accurate or merely different net may be "
             "fooled less often by images made against another net whatever its mask. Two controls separate this "
             "from the mask itself:", "",
             "- **Accuracy-matched Normal**: the same Normal ResNet-18, width and recipe (one-cycle schedule, "
             "augmentation, label smoothing, all 50,000 training images), trained for fewer epochs so that its "
             "clean accuracy lands within 1.5 points of 0.7-Shallow's or 0.9-Shallow's. A shorter schedule of the "
             "same shape leaves a net under-fitted on the whole data set, as the masked nets are, where a smaller "
             "training subset would leave it over-fitted on fewer images. Its logit scale is compared too, since "
             "transfer and CW40 depend on it.",
             "- **Resampled mask** (`0.7-ShallowDropout`): the same shallow blocks, places (after BatchNorm, before "
             "ReLU) and per-channel ratio as 0.7-Shallow, but a fresh mask at every training step, rescaled as "
             "dropout is and off at test time. Fixed versus resampled is the only difference.", ""]
    scale = _load(out, "controls_logit_scale")
    if scale is None:
        lines += ["Logit scale not measured yet: `python -m randmask reproduce --preset quick --only "
                  "controls_logit_scale`.", ""]
    else:
        rows = [[r["target"], _interval(100 * r["accuracy"], 100 * r["ci_low"], 100 * r["ci_high"]),
                 f"{r['logit_gap_median']:.2f} [{r['logit_gap_q25']:.2f}, {r['logit_gap_q75']:.2f}]",
                 f"{100 * r['mean_top_probability']:.1f}", str(int(r["n"]))] for r in scale.to_dict("records")]
        lines += ["Clean accuracy and logit scale on the first test images (the gap between the two largest logits: "
                  "median [quartiles]):", "",
                  markdown_table(["model", "clean % [95% CI]", "top-two logit gap", "mean top probability %", "n"],
                                 rows), "", "Data: `results/controls_logit_scale.csv`.", ""]
    compared = control_pairs_compared(out)
    if compared:
        rows = [[r["source"], r["attack"], r["model"], _interval_text(r["model_rate"]), r["control"],
                 _interval_text(r["control_rate"]), r["outcome"]] for r in compared]
        lines += ["Defense rates (images that fooled the source and not the target), from the transfer tables:", "",
                  markdown_table(["source", "attack", "masked net", "defense % [95% CI]", "control",
                                  "defense % [95% CI]", "masked vs control"], rows), ""]
    else:
        lines += ["Pending: the controls are not in the zoo yet (`python -m randmask zoo train`).", ""]
    return lines
