"""Figure 7's numbers (defense rate beside clean accuracy over the drop ratio, with the paper's points) and the
report's PNGs under results/plots."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from randmask.core.notation import DEFAULT_WIDTH, NotationError, parse_ref
from randmask.experiments.evaluate import write_csv
from randmask.results import plots
from randmask.results.comparison import compare_with_paper
from randmask.results.paper import attack_key, shallow_ratio
from randmask.results.plan import FIGURE7_ATTACKS, MATCHED, PRESETS, experiments, load_result
from randmask.results.verdicts import main_transfer


def paper_points(paper, table: int) -> dict[tuple[float, str], float]:
    """{(ratio, attack key): percent} of Normal and every r-Shallow in a paper table; attack key '' is clean
    accuracy."""
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
    frame, source, table = main_transfer(out)
    if frame is None:
        return [], {}
    paper_at = paper_points(paper, table)
    clean = {r["target"]: r for r in frame[frame["metric"] == "clean_accuracy"].to_dict("records")}
    matched = {e.label: e.matched_to for e in MATCHED.values()}  # accuracy-matched Normals: points on the same axes
    rows = []
    for row in frame[frame["metric"] == "defense_rate"].to_dict("records"):
        target = row["target"]
        ratio, width = _ratio_and_width(target) if target not in matched else (None, DEFAULT_WIDTH)
        attack = row.get("paper_attack") if isinstance(row.get("paper_attack"), str) else row["attack"]
        if (ratio is None and target not in matched) or target not in clean:
            continue
        rows.append({"protocol": "figure7", "dataset": row.get("dataset", "cifar10"), "source": source,
                     "target": target, "ratio": ratio, "width": width, "matched_to": matched.get(target, ""),
                     "attack": attack,
                     "metric": "defense_rate", "n": row["n"], "accuracy": row["accuracy"], "ci_low": row["ci_low"],
                     "ci_high": row["ci_high"], "clean_accuracy": clean[target]["accuracy"],
                     "clean_n": clean[target]["n"],
                     "paper_defense_rate": None if ratio is None else paper_at.get((ratio, attack_key(attack))),
                     "paper_clean_accuracy": None if ratio is None else paper_at.get((ratio, ""))})
    curve = {a: sorted((r, paper_at[(r, "")], v) for (r, k), v in paper_at.items()
                       if k == attack_key(a) and (r, "") in paper_at) for a in FIGURE7_ATTACKS}
    return sorted(rows, key=lambda r: (r["attack"], r["width"], r["ratio"] is None, r["ratio"] or 0.0,
                                       r["target"])), curve


def _ratio_and_width(target: str) -> tuple[float | None, int]:
    """Figure 7's drop ratio of a results target and its width: ('0.7-Shallow@w32') -> (0.7, 32); a ratio of None
    for anything off the r-Shallow family or a second seed."""
    try:
        ref = parse_ref(target)
    except NotationError:
        return None, DEFAULT_WIDTH
    return (shallow_ratio(ref.notation) if ref.seed == ref.mask_seed == 0 else None), ref.width


def write_figures(out: Path, paper) -> dict[str, str]:
    """results/figure7_ratio.csv and the report's PNGs under results/plots; {section key: relative PNG path}."""
    made: dict[str, str] = {}
    folder = out / "results" / "plots"
    shutil.rmtree(folder, ignore_errors=True)  # figures of experiments that no longer ran must not linger

    def keep(key: str, fig) -> None:
        made[key] = str(plots.save(fig, folder / f"{key}.png").relative_to(out))

    noise = load_result(out, "figure3_noise")
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
            ours = load_result(out, exp.key)
            if exp.paper_table is None or ours is None:
                continue
            merged = compare_with_paper(paper, ours, exp.paper_table)
            if merged["ours"].notna().any():
                keep(exp.key, plots.side_by_side_figure(merged, exp.title))
    return made


