"""The zoo in the README (`zoo table`): every shipped model with its accuracy, its gap to Normal beside the paper's,
its training time and recipe, and the width ladder's clean gaps."""

from __future__ import annotations

import math
from pathlib import Path

from randmask.core.errors import RandmaskError
from randmask.core.notation import DEFAULT_WIDTH
from randmask.core.settings import readme_path
from randmask.experiments.evaluate import markdown_table, percent_text
from randmask.experiments.train_config import asdict_json
from randmask.results import zoo as zoo_plan  # ZOO read when used: a test swaps in a small plan
from randmask.results.paper import model_key
from randmask.results.zoo import (
    CHECK_N,
    MNIST_EPOCHS,
    SOURCE,
    ZOO_ROOT,
    planned_config,
    recipe_differences,
    shipped_configs,
)


def _paper_clean(paper) -> dict[str, float]:
    """The paper's clean accuracy (percent, Table 7) by model key."""
    return {} if paper is None else {
        model_key(r["target"]): r["percent"]
        for r in paper[(paper["table"] == 7) & (paper["metric"] == "clean_accuracy")].to_dict("records")}


def clean_gap_markdown(zoo: Path = ZOO_ROOT, paper=None) -> list[str]:
    """Issue 34's clean gap: each model of the width ladder, its clean accuracy and gap to Normal ResNet-18 at every
    width shipped (the gap to Normal of the same width), beside the paper's (width 64, 350 epochs)."""
    shipped = {name: config for name, config in shipped_configs(zoo)}
    ladder = [e for e in zoo_plan.ZOO if e.dataset == "cifar10" and not e.matched_to and e.seed == e.mask_seed == 0
              and e.notation in {n.notation for n in zoo_plan.ZOO if n.role == "width ladder"}]
    widths = sorted({e.width for e in ladder if e.name in shipped})
    accuracy = {(e.notation, e.width): shipped[e.name]["clean_accuracy"] for e in ladder if e.name in shipped}
    paper_clean = _paper_clean(paper)
    rows = []
    for notation in dict.fromkeys(e.notation for e in zoo_plan.ZOO if e.role == "width ladder"):
        theirs, paper_normal = paper_clean.get(model_key(notation)), paper_clean.get("Normal ResNet-18")
        row = [notation, percent_text(theirs) if theirs is not None else "–",
               f"{theirs - paper_normal:+.1f}" if None not in (theirs, paper_normal) else "–"]
        for width in widths:
            acc, normal = accuracy.get((notation, width)), accuracy.get(("Normal ResNet-18", width))
            row += [percent_text(100 * acc) if acc is not None else "–",
                    f"{100 * (acc - normal):+.1f}" if None not in (acc, normal) else "–"]
        rows.append(row)
    header = ["model", "paper clean %", "paper gap"]
    for width in widths:
        header += [f"width {width} clean %", f"width {width} gap"]
    return [markdown_table(header, rows)]


def zoo_markdown(zoo: Path = ZOO_ROOT, paper=None) -> list[str]:
    """Every shipped model with its measured accuracy, its gap to Normal beside the paper's gap, time and size."""
    configs, subset = shipped_configs(zoo), f"clean_accuracy_first{CHECK_N}"
    paper_clean = _paper_clean(paper)
    paper_normal = paper_clean.get("Normal ResNet-18")
    planned = {e.name: e for e in zoo_plan.ZOO}

    def width(name: str, config: dict) -> int:
        return planned[name].width if name in planned else int(config.get("recipe", {}).get("width", DEFAULT_WIDTH))

    # each model's gap is to the Normal ResNet-18 of its own width
    normal = {(c["dataset"], width(name, c)): c.get("clean_accuracy") for name, c in configs
              if c.get("notation") == "Normal ResNet-18" and c.get("seed", 0) == 0
              and not (name in planned and planned[name].matched_to) and not (name not in planned and c.get("label"))}
    rows, total = [], 0
    for name, c in configs:
        size = sum(f.stat().st_size for f in (zoo / name).iterdir() if f.is_file())
        total += size
        acc, base = c.get("clean_accuracy"), normal.get((c.get("dataset"), width(name, c)))
        low, high = c.get("clean_accuracy_ci95") or (math.nan, math.nan)
        # a control's label ('Normal ResNet-18 (4 epochs)') has no paper row: it must not borrow Normal's; a wider
        # net is the paper's model (the paper's own width is 64)
        entry = planned.get(name)
        key = entry.notation if entry is not None and not entry.matched_to else c.get("label") or c.get("notation")
        theirs = paper_clean.get(model_key(key)) if c.get("dataset") == "cifar10" else None
        paper_gap = theirs - paper_clean["Normal ResNet-18"] if None not in (theirs, paper_normal) else None
        rows.append([name, c.get("role") or "", str(c.get("recipe", {}).get("epochs", c.get("epochs_trained", ""))),
                     f"{percent_text(100 * acc)} [{percent_text(100 * low)}, {percent_text(100 * high)}]" if acc is not None else "–",
                     percent_text(100 * c[subset]) if subset in c else "–",
                     f"{100 * (acc - base):+.1f}" if acc is not None and base is not None else "–",
                     f"{paper_gap:+.1f}" if paper_gap is not None else "–",
                     percent_text(c.get("train_time_s", math.nan) / 60), f"{size / 1e6:.2f}",
                     f"{c['threads']} of {c.get('host_cpus', '?')}" if "threads" in c else "–",
                     recipe_status(name, c)])
    plan = asdict_json(planned_config(zoo_plan.ZOO[0]))
    lines = ["Planned recipe of the compared CIFAR-10 models (quick preset): " + ", ".join(
        f"{k}={plan[k]}" for k in RECIPE_SHOWN) + f"; black-box sources: {_settings(SOURCE)}; MNIST models: "
        f"epochs={MNIST_EPOCHS}. Train time is wall-clock on the machine that trained it (a shared 2-core CPU), "
        "with the torch threads it used: two one-thread trainings side by side each take longer than one alone.", ""]
    lines += [markdown_table(["model", "role", "epochs", "clean % [95% CI] (full test set, as shipped)", f"first {CHECK_N} %",
                      "gap to Normal", "paper's gap (Table 7)", "train time (min)", "size (MB)",
                      "threads (of CPUs)", "recipe (precision as run)"], rows), "",
              f"{len(rows)} models, {total / 1e6:.1f} MB in all (fp16 weights).", ""]
    return lines


RECIPE_SHOWN = ("width", "epochs", "batch_size", "lr", "schedule", "warmup", "momentum", "nesterov", "weight_decay",
                "label_smoothing", "augment", "precision", "channels_last")


def _settings(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())


def recipe_status(name: str, config: dict) -> str:
    """'as planned (<precision>)', or the settings in which a shipped model's recipe differs from its plan."""
    entry = next((e for e in zoo_plan.ZOO if e.name == name), None)
    recorded = config.get("recipe")
    if entry is None or not recorded:
        return "–" if entry is None else "unknown (no recipe recorded)"
    differ = recipe_differences(recorded, asdict_json(planned_config(entry)))
    return f"{f'older: {_settings(differ)}' if differ else 'as planned'} ({config.get('autocast', '?')})"


README_MARKERS = ("<!-- zoo-table: generated by `python -m randmask zoo table --update-readme` -->",
                  "<!-- /zoo-table -->")


def update_readme(table: str, readme: Path | None = None) -> Path:
    """Replace the text between README's zoo-table markers with `table`."""
    readme = readme or readme_path()
    text = readme.read_text()
    start, end = text.find(README_MARKERS[0]), text.find(README_MARKERS[1])
    if start < 0 or end < start:
        raise RandmaskError(f"{readme} has no zoo-table markers {README_MARKERS}")
    head = text[:start + len(README_MARKERS[0])]
    readme.write_text(f"{head}\n{table.strip()}\n{text[end:]}")
    return readme
