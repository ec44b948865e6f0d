"""PNG figures for the reproduction report (matplotlib, headless): noise curves (Figure 3), defense rate vs clean
accuracy over drop ratios (Figure 7), and ours-vs-paper bars for each table. Inputs are results/*.csv frames."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

OURS, PAPER = "#1f77b4", "#d62728"
WIDER = ("#2ca02c", "#9467bd", "#8c564b")  # ours at widths above the zoo's, in Figure 7


def save(fig, path: Path) -> Path:
    """Write a PNG whose bytes depend only on the figure (no software/version stamp), then close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path


def noise_figure(frame):
    """Accuracy vs Gaussian-noise sigma, one line per model with its 95% band."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for target, part in frame.sort_values("sigma").groupby("target", sort=False):
        ax.plot(part["sigma"], 100 * part["accuracy"], marker="o", ms=3, label=target)
        ax.fill_between(part["sigma"], 100 * part["ci_low"], 100 * part["ci_high"], alpha=0.2)
    n = int(frame["n"].max())
    ax.set(xlabel="noise σ (of 255)", ylabel="accuracy %", ylim=(0, 100),
           title=f"Figure 3 · accuracy under clipped Gaussian noise (n={n} per point)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def ratio_figure(frame, attacks: list[str], paper_curve: dict[str, list[tuple[float, float, float]]]):
    """Figure 7: defense rate against clean accuracy for Normal and each r-Shallow, ours beside the paper's
    curve over all its ratios (paper_curve: attack -> [(ratio, clean %, defense %)])."""
    fig, axes = plt.subplots(1, len(attacks), figsize=(5.2 * len(attacks), 4.4), squeeze=False)
    for ax, attack in zip(axes[0], attacks, strict=True):
        rows = frame[frame["attack"] == attack]
        part = rows[rows["ratio"].notna()].sort_values("ratio")
        controls = rows[rows["ratio"].isna()]  # accuracy-matched Normals: same axes, no ratio
        if len(controls):
            cx, cy = 100 * controls["clean_accuracy"], 100 * controls["accuracy"]
            ax.errorbar(cx, cy, yerr=[cy - 100 * controls["ci_low"], 100 * controls["ci_high"] - cy], fmt="D",
                        color="black", capsize=3, label="accuracy-matched Normal")
            for _, row in controls.iterrows():
                ax.annotate(f"N≈{row['matched_to'].split('-')[0]}", (100 * row["clean_accuracy"], 100 * row["accuracy"]),
                            textcoords="offset points", xytext=(6, -4), fontsize=8)
        widths = sorted(part["width"].unique()) if "width" in part.columns else [None]
        for width, color in zip(widths, [OURS, *WIDER], strict=False):  # one curve per width (issue 34)
            at = part if width is None else part[part["width"] == width]
            x, y = 100 * at["clean_accuracy"], 100 * at["accuracy"]
            ax.errorbar(x, y, yerr=[y - 100 * at["ci_low"], 100 * at["ci_high"] - y], fmt="o-", color=color,
                        capsize=3, label="ours" if len(widths) == 1 else f"ours, width {width}")
        curve = paper_curve.get(attack, [])
        ax.plot([c for _, c, _ in curve], [d for _, _, d in curve], "*--", color=PAPER, ms=9, label="paper")
        for _, row in part.iterrows():
            ax.annotate(f"{row['ratio']:g}", (100 * row["clean_accuracy"], 100 * row["accuracy"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=8, color=OURS)
        for ratio, clean, defense in curve:
            ax.annotate(f"{ratio:g}", (clean, defense), textcoords="offset points", xytext=(4, -10), fontsize=8,
                        color=PAPER)
        source = part["source"].iloc[0] if len(part) else ""
        ax.set(xlabel="clean test accuracy %", ylabel="defense rate %", title=f"{attack} from {source}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Figure 7 · robustness vs accuracy over drop ratios (0 = Normal)")
    return fig


def side_by_side_figure(merged, title: str):
    """Horizontal bars, one per (target, attack): ours with its 95% interval, the paper's value as a star.
    Where the rows come from several sources (Table 5), each label starts with its source."""
    rows = merged[merged["ours"].notna()].reset_index(drop=True)
    records = rows.to_dict("records")
    several = len({r.get("source") or "" for r in records if r.get("metric") != "clean_accuracy"}) > 1

    def label(r: dict) -> str:  # white-box rows (source = target, Table 4) need no arrow
        source = r.get("source") or ""
        arrow = f"{source} → " if several and source and source != r["target"] else ""
        return f"{arrow}{r['target']} · {r['attack'] or 'clean'}"

    labels = [label(r) for r in records]
    ypos = np.arange(len(rows))[::-1]
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.26 * max(len(rows), 1)))
    ax.barh(ypos, rows["ours"], color=OURS, alpha=0.75, label="ours (95% CI)",
            xerr=[rows["ours"] - rows["ours_low"], rows["ours_high"] - rows["ours"]], error_kw={"lw": 0.8})
    ax.plot(rows["paper"], ypos, "*", color=PAPER, ms=8, label="paper")
    ax.set_yticks(ypos, labels, fontsize=7)
    ax.set(xlim=(0, 100), xlabel="%", title=title)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig
