"""What the Robustness explorer computes for display: the comparison's metric words and chart (columns, bars
with our intervals), the commands that train a table's missing models, Figure 7's two series, and a transfer
run with its one-line summary. Inputs are comparison.compare_with_paper / tradeoff_points frames and
protocols.transfer rows."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pandas as pd
import torch
from torch import nn

from randmask.attacks.base import Progress
from randmask.experiments.protocols import transfer
from randmask.views.catalog import ModelEntry
from randmask.views.tables import comparison_column


# ------------------------------------------------------------------------------------------------ tables tab
def metric_names(comp: pd.DataFrame) -> str:
    """The metrics a comparison holds, in words and sorted: 'clean accuracy, defense rate'."""
    return ", ".join(sorted(set(comp["metric"].str.replace("_", " "))))


def has_ours(comp: pd.DataFrame) -> bool:
    """Whether any row of the comparison has a number of ours."""
    return bool(comp["ours"].notna().any())


def train_commands(missing: Sequence[tuple[str, str]]) -> str:
    """comparison.untrained_targets' (model, command) pairs as one shell script, a command a line."""
    return "\n".join(command for _, command in missing)


def _columns(comp: pd.DataFrame) -> pd.Series:
    return pd.Series([comparison_column(a, m) for a, m in zip(comp["attack"], comp["metric"], strict=True)],
                     index=comp.index, dtype=object)


def chart_columns(comp: pd.DataFrame) -> tuple[list[str], int]:
    """(the comparison's columns in table order, the one the chart opens on: the first with a number of ours,
    else the first)."""
    columns = _columns(comp)
    names = list(dict.fromkeys(columns))
    with_ours = [c for c in names if comp.loc[columns == c, "ours"].notna().any()]
    return names, names.index(with_ours[0]) if with_ours else 0


def chart_bars(comp: pd.DataFrame, column: str) -> dict:
    """One column of the comparison as the chart's bars: per target the paper's percent and, where any target
    has one, ours with the lengths of its 95% interval's error bars ("ours" None otherwise)."""
    part = comp[_columns(comp) == column]
    bars = {"target": part["target"], "paper": part["paper"], "ours": None, "plus": None, "minus": None}
    if part["ours"].notna().any():
        bars.update(ours=part["ours"], plus=part["ours_high"] - part["ours"], minus=part["ours"] - part["ours_low"])
    return bars


# ------------------------------------------------------------------------------------------------ Figure 7
def option_index(options: Sequence[str], preferred: str) -> int:
    """Where a selectbox opens: at `preferred` when it is offered, else at the first option."""
    return list(options).index(preferred) if preferred in options else 0


def label_positions(x: Sequence[float], y: Sequence[float], side: str = "top right", other: str = "bottom left",
                    near: float = 0.07, spans: tuple[float, float] | None = None) -> list[str]:
    """A plotly textposition per point: `side`, except `other` for a point whose label would sit on a neighbour's
    (both within `near` of the axes' spans, default the points' own, and that neighbour labelled on `side`).
    Figure 7's points fall from upper left to lower right, so the default sides stand across that line."""
    xs, ys = [float(v) for v in x], [float(v) for v in y]
    span_x, span_y = spans or ((max(xs) - min(xs) if xs else 0.0), (max(ys) - min(ys) if ys else 0.0))
    span_x, span_y = span_x or 1.0, span_y or 1.0
    positions = [side] * len(xs)
    order = sorted(range(len(xs)), key=lambda i: (xs[i], ys[i]))
    for k, i in enumerate(order):
        for j in order[:k]:
            close = abs(xs[i] - xs[j]) / span_x < near and abs(ys[i] - ys[j]) / span_y < near
            if close and positions[j] == side:
                positions[i] = other
                break
    return positions


def tradeoff_series(points: pd.DataFrame) -> dict[str, dict | None]:
    """tradeoff_points as Figure 7's two series, "paper" and "ours" (None without points of ours): clean
    accuracy (x), defense rate (y), the drop ratio as each point's label and where it sits (label_positions),
    and for ours the lengths of both intervals' error bars."""
    paper, ours = points[points["origin"] == "paper"], points[points["origin"] == "ours"]
    spans = (float(points["clean_accuracy"].max() - points["clean_accuracy"].min()) if len(points) else 0.0,
             float(points["defense_rate"].max() - points["defense_rate"].min()) if len(points) else 0.0)
    result: dict[str, dict | None] = {
        "paper": {"x": paper["clean_accuracy"], "y": paper["defense_rate"], "text": [f"{r:g}" for r in paper["ratio"]],
                  "position": label_positions(paper["clean_accuracy"], paper["defense_rate"], spans=spans)},
        "ours": None}
    if not ours.empty:
        result["ours"] = {"x": ours["clean_accuracy"], "y": ours["defense_rate"],
                          "text": [f"{r:g}" for r in ours["ratio"]],
                          "position": label_positions(ours["clean_accuracy"], ours["defense_rate"], "bottom left",
                                                      "top right", spans=spans),
                          "x_plus": ours["clean_high"] - ours["clean_accuracy"],
                          "x_minus": ours["clean_accuracy"] - ours["clean_low"],
                          "y_plus": ours["defense_high"] - ours["defense_rate"],
                          "y_minus": ours["defense_rate"] - ours["defense_low"]}
    return result


# ------------------------------------------------------------------------------------------------ run tab
CRAFT_BATCH = 10  # images an app transfer run attacks at once: a count every few seconds, not one at the end

def run_transfer(models: Mapping[str, nn.Module], entries: Sequence[ModelEntry], targets: Sequence[str],
                 attack: str, x: torch.Tensor, y: torch.Tensor, *, n: int, dataset: str,
                 progress: Progress | None = None, stage: Callable[[str], None] | None = None) -> list[dict]:
    """protocols.transfer from the first model (catalog.transfer_entries' order; `models` holds the entries'
    models by display name, in the same order) to those whose keys are in `targets`, the source included only
    when it is a target too; n images for every attack, CW included. The attack takes CRAFT_BATCH images at a
    time, so `progress` counts them as they are crafted; `stage` hears each step in words."""
    names = list(models)
    wanted = [name for name, e in zip(names, entries, strict=True) if e.key in targets]
    return transfer(models[names[0]], {k: models[k] for k in wanted}, [attack], x, y, source_name=names[0], n=n,
                    n_cw=n, dataset=dataset, progress=progress, stage=stage, craft_batch=CRAFT_BATCH)


def transfer_summary(rows: Sequence[Mapping]) -> str | None:
    """A transfer run's first line: the attack, its source, how many images were attacked and how many fooled
    the source (and so were shown to the targets); None for rows without a defense rate."""
    attacked = [r for r in rows if r["metric"] == "defense_rate"]
    if not attacked:
        return None
    first = attacked[0]
    return (f"**{first['attack']}** from **{first['source']}**: {first['n_attacked']} images attacked, "
            f"{first['n']} fooled the source and were passed on."
            + (" With none to pass on, there is no defense rate to measure." if not first["n"] else ""))
