"""The study's results laid out: Plotly figures, tables as text, and `python -m study report`'s one
self-contained HTML file (plotly.js inlined, images as data URIs), from the numbers study.results computes. The
organiser page's Results tab shows the same sections. No Streamlit import here.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .results import Results
from .sets import PRED_PREFIX, decode_png

IMAGE_SCALE = 6  # 32 px images shown at 192 px, nearest neighbour (never smoothed)
GOOD, BAD, NEUTRAL = "#1b9e77", "#d95f02", "#7570b3"


# ------------------------------------------------------------------------------------------------ figures
def _pct(value: float) -> str:
    return "–" if not np.isfinite(value) else f"{100 * value:.1f}%"


def _interval(low: float, high: float) -> str:
    return f"{_pct(low)}–{_pct(high)}" if np.isfinite(low) and np.isfinite(high) else "–"


def accuracy_figure(results: Results) -> go.Figure:
    frame = results.accuracy
    fig = go.Figure()
    if frame.empty:
        return fig
    colors = [NEUTRAL if s == "CIFAR-10H" else GOOD for s in frame["source"]]
    fig.add_bar(x=frame["condition"], y=frame["accuracy"], marker_color=colors, name="accuracy (Wilson 95% CI)",
                error_y={"type": "data", "symmetric": False, "array": frame["wilson_hi"] - frame["accuracy"],
                         "arrayminus": frame["accuracy"] - frame["wilson_lo"]},
                text=[_pct(v) for v in frame["accuracy"]], textposition="inside", insidetextanchor="start",
                customdata=np.stack([frame["n_answers"], frame["n_participants"].astype("Float64").fillna(np.nan)],
                                    axis=1),
                hovertemplate="%{x}: %{y:.1%} of %{customdata[0]} answers<extra></extra>")
    boot = frame[np.isfinite(frame["bootstrap_lo"].astype(float))]
    if len(boot):
        fig.add_scatter(x=boot["condition"], y=boot["accuracy"], mode="markers", name="participant bootstrap 95% CI",
                        marker={"color": "black", "symbol": "line-ew-open", "size": 14},
                        error_y={"type": "data", "symmetric": False, "array": boot["bootstrap_hi"] - boot["accuracy"],
                                 "arrayminus": boot["accuracy"] - boot["bootstrap_lo"], "color": "black"})
    fig.update_layout(title="Human accuracy per condition", yaxis={"range": [0, 1.05], "tickformat": ".0%"},
                      height=420, legend={"orientation": "h", "y": -0.25})
    return fig


def fooled_figure(results: Results) -> go.Figure:
    frame = results.fooled
    fig = go.Figure()
    if frame.empty:
        return fig
    fig.add_bar(x=frame["condition"], y=frame["share_of_wrong"], marker_color=BAD,
                name="wrong answers choosing the model's label (Wilson 95% CI)",
                error_y={"type": "data", "symmetric": False, "array": frame["wilson_hi"] - frame["share_of_wrong"],
                         "arrayminus": frame["share_of_wrong"] - frame["wilson_lo"]},
                text=[f"{_pct(s)} of {n}" for s, n in zip(frame["share_of_wrong"], frame["n_wrong"], strict=True)],
                textposition="inside", insidetextanchor="start")
    chance = float(frame["chance_share_of_wrong"].iloc[0])
    fig.add_hline(y=chance, line_dash="dash", line_color="black", annotation_text=f"chance ({_pct(chance)})",
                  annotation_position="top left")
    fig.update_layout(title="Did people pick the label the attacked model was fooled into?",
                      yaxis={"range": [0, 1.05], "tickformat": ".0%", "title": "share of wrong answers"},
                      height=420, legend={"orientation": "h", "y": -0.25})
    return fig


def agreement_figure(results: Results) -> go.Figure:
    frame = results.agreement
    fig = go.Figure()
    for model, rows in (frame.groupby("model", sort=True) if not frame.empty else []):
        fig.add_bar(x=rows["condition"], y=rows["kappa"], name=model,
                    error_y={"type": "data", "symmetric": False, "array": rows["kappa_hi"] - rows["kappa"],
                             "arrayminus": rows["kappa"] - rows["kappa_lo"]},
                    customdata=rows["n_items"], hovertemplate="%{x}: κ = %{y:.2f} over %{customdata} items")
    fig.update_layout(title="Agreement of the human majority label with each model (Cohen's κ, 95% CI)",
                      barmode="group", yaxis={"range": [-1, 1], "title": "κ"}, height=420,
                      legend={"orientation": "h", "y": -0.25})
    return fig


def confusion_figure(results: Results) -> go.Figure:
    conditions = list(results.confusion)
    classes = list(results.study.classes)
    fig = make_subplots(rows=1, cols=max(1, len(conditions)), subplot_titles=conditions, shared_yaxes=True,
                        horizontal_spacing=0.03)
    for col, condition in enumerate(conditions, start=1):
        counts = results.confusion[condition]
        with np.errstate(invalid="ignore", divide="ignore"):
            share = counts / counts.sum(axis=1, keepdims=True)
        fig.add_heatmap(z=np.nan_to_num(share), x=classes, y=classes, zmin=0, zmax=1, colorscale="Blues",
                        customdata=counts, showscale=col == len(conditions), row=1, col=col,
                        hovertemplate="true %{y}, chosen %{x}: %{customdata} answers (%{z:.0%} of the row)"
                                      "<extra></extra>")
        fig.update_xaxes(title_text="chosen label", tickangle=45, row=1, col=col)
    fig.update_yaxes(title_text="true class", autorange="reversed", row=1, col=1)
    fig.update_layout(title="Confusion per condition (share of each true class's answers)",
                      height=460, width=None)
    return fig


def rt_figure(results: Results) -> go.Figure:
    fig = go.Figure()
    answers = results.answers[results.answers["rt_ms"].notna()]
    for condition in results.study.conditions:
        times = answers.loc[answers["condition"] == condition, "rt_ms"]
        fig.add_violin(y=times / 1000, name=condition, box_visible=True, meanline_visible=True, points=False,
                       spanmode="hard")
    # a log axis labels its minor ticks with bare digits ("9 8 7 …"); name round seconds instead
    ticks = [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500]
    fig.update_layout(title="Reaction times per condition", height=420, showlegend=False,
                      yaxis={"title": "seconds (log scale)", "type": "log", "tickvals": ticks,
                             "ticktext": [f"{t:g}" for t in ticks]})
    return fig


def label_histogram(results: Results, row: pd.Series) -> go.Figure:
    """One image's human label counts; the true class and the models' labels are marked."""
    classes = list(results.study.classes)
    counts = [int(row[f"n_{c}"]) for c in classes]
    true = int(row["true_label"])
    source = row["source_pred"]
    colors = [GOOD if c == true else BAD if pd.notna(source) and c == int(source) else "#bbbbbb"
              for c in range(len(classes))]
    fig = go.Figure(go.Bar(x=counts, y=classes, orientation="h", marker_color=colors,
                           hovertemplate="%{y}: %{x} people<extra></extra>"))
    fig.update_layout(title={"text": f"{row['condition']}: test image {int(row['test_index'])}", "font": {"size": 13}},
                      height=260, margin={"l": 10, "r": 10, "t": 40, "b": 30}, yaxis={"autorange": "reversed"},
                      xaxis={"title": "people", "dtick": 1 if max(counts) <= 10 else None})
    return fig


def model_labels(results: Results, row: pd.Series) -> str:
    """'true: cat · Normal ResNet-18 (attacked): dog · 0.9-Shallow: cat' for one image."""
    classes = results.study.classes
    parts = [f"true: {classes[int(row['true_label'])]}"]
    if pd.notna(row["source_pred"]):
        parts.append(f"{row['source_model']} (attacked): {classes[int(row['source_pred'])]}")
    for column in row.index:
        if column.startswith(PRED_PREFIX) and pd.notna(row[column]) and column[len(PRED_PREFIX):] != row["source_model"]:
            parts.append(f"{column[len(PRED_PREFIX):]}: {classes[int(row[column])]}")
    return " · ".join(parts)


def enlarged(png: bytes, scale: int = IMAGE_SCALE) -> np.ndarray:
    """The image scaled up by whole pixels (nearest neighbour): every original pixel stays a sharp square."""
    image = decode_png(png)
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def figures(results: Results) -> dict[str, go.Figure]:
    """Every figure of the report, by name (images' label histograms as top-1, top-2, ...)."""
    made = {"accuracy": accuracy_figure(results), "fooled": fooled_figure(results),
            "agreement": agreement_figure(results), "confusion": confusion_figure(results),
            "reaction-times": rt_figure(results)}
    for n, (_, row) in enumerate(results.top.iterrows(), start=1):
        made[f"top-{n}"] = label_histogram(results, row)
    return made


# ------------------------------------------------------------------------------------------------ tables
def accuracy_table(results: Results) -> pd.DataFrame:
    """The accuracy rows as text: intervals as 'lo–hi', and the reason where there is no bootstrap interval."""
    frame = results.accuracy
    return pd.DataFrame({
        "condition": frame["condition"], "answers": frame["n_answers"],
        "participants": [("–" if pd.isna(n) else str(n)) for n in frame["n_participants"]],
        "accuracy": [_pct(v) for v in frame["accuracy"]],
        "Wilson 95% CI": [_interval(lo, hi) for lo, hi in zip(frame["wilson_lo"], frame["wilson_hi"], strict=True)],
        "participant bootstrap 95% CI": [_interval(lo, hi) if np.isfinite(lo) else (note or "–")
                                         for lo, hi, note in zip(frame["bootstrap_lo"], frame["bootstrap_hi"],
                                                                 frame["note"], strict=True)],
        f"vs {frame['condition'].iloc[0]}": ["–" if not np.isfinite(d) else f"{100 * d:+.1f} points, p = {p:.2g}"
                                              for d, p in zip(frame["difference_vs_reference"],
                                                              frame["p_vs_reference"], strict=True)],
    }) if not frame.empty else pd.DataFrame()


def fooled_table(results: Results) -> pd.DataFrame:
    frame = results.fooled
    if frame.empty:
        return pd.DataFrame()
    return pd.DataFrame({
        "condition": frame["condition"], "images the model got wrong": frame["n_items_fooled"],
        "answers": frame["n_answers"], "chose the model's label": [_pct(v) for v in frame["share_adversarial"]],
        "wrong answers": frame["n_wrong"], "of wrong, chose the model's label": [_pct(v) for v in frame["share_of_wrong"]],
        "Wilson 95% CI": [_interval(lo, hi) for lo, hi in zip(frame["wilson_lo"], frame["wilson_hi"], strict=True)],
        "chance": [_pct(v) for v in frame["chance_share_of_wrong"]],
        "note": frame["note"],
    })


def agreement_table(results: Results) -> pd.DataFrame:
    frame = results.agreement
    if frame.empty:
        return pd.DataFrame()

    def number(v: float) -> str:
        return "–" if not np.isfinite(v) else f"{v:.2f}"

    return pd.DataFrame({
        "condition": frame["condition"], "model": frame["model"], "items": frame["n_items"],
        "ties left out": frame["n_ties_left_out"], "same label": [_pct(v) for v in frame["agreement"]],
        "Cohen's κ": [number(v) for v in frame["kappa"]],
        "95% CI": [f"{number(lo)} to {number(hi)}" if np.isfinite(lo) else "–"
                   for lo, hi in zip(frame["kappa_lo"], frame["kappa_hi"], strict=True)],
    })


IMAGES_HEADING = "Images that fooled people most"
IMAGES_NOTE = ("Each image as people saw it, 6x, unsmoothed; beside it how many people chose each label: green the "
               "true class, orange the attacked model's label.")


def headline(results: Results) -> str:
    return (f"Study {results.study.slug}: {len(results.answers)} answers to trial images from "
            f"{results.answers['participant'].nunique()} participants (excluded participants and practice left out).")


def sections(results: Results) -> list[tuple[str, str, pd.DataFrame | None, str]]:
    """(heading, note, table or None, figure name) in the order the report and the Results tab show them."""
    return [
        ("Human accuracy", "Wilson interval over answers; the participant bootstrap resamples whole participants; "
         "each condition against the first by a two-sided two-proportion z-test over answers.",
         accuracy_table(results), "accuracy"),
        ("Wrong answers and the attacked model's label",
         "Images the attacked model got wrong: how many wrong human answers chose exactly its label; by chance "
         f"1 in {len(results.study.classes) - 1}.", fooled_table(results), "fooled"),
        ("Agreement with the models", "Human majority label per image (images with a tied majority left out) "
         "against each model's label; asymptotic 95% interval from statsmodels.", agreement_table(results),
         "agreement"),
        ("Confusion", "", None, "confusion"),
        ("Reaction times", "", None, "reaction-times"),
    ]


# ------------------------------------------------------------------------------------------------ HTML report
def _png_data_uri(image: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _table_html(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "<p>No answers yet.</p>"
    return frame.to_html(index=False, escape=True, border=0, classes="results")


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1240px; margin: 1em auto; padding: 0 1em; color: #222; }
table.results { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 14px; }
table.results th, table.results td { padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: left; }
.image-row { display: flex; gap: 1.5em; align-items: center; margin-bottom: 1em; }
.image-row img { image-rendering: crisp-edges; image-rendering: pixelated; width: 192px; height: 192px; }
.image-row .hist { flex: 1; min-width: 320px; }
.note { color: #555; }
"""


def report_html(results: Results, made: dict[str, go.Figure] | None = None) -> str:
    """The whole report as one HTML file: plotly.js inlined, images as data URIs, no request leaves the file."""
    from plotly.offline import get_plotlyjs

    made = figures(results) if made is None else made
    study = results.study

    def figure(name: str) -> str:
        return made[name].to_html(full_html=False, include_plotlyjs=False, div_id=f"figure-{name}",
                                  config={"displaylogo": False, "responsive": True})

    parts = [f"<h1>Results: {html.escape(study.title or study.slug)}</h1>", f"<p>{html.escape(headline(results))}</p>"]
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in results.notes]
    for heading, note, table, name in sections(results):
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if note:
            parts.append(f'<p class="note">{html.escape(note)}</p>')
        if table is not None:
            parts.append(_table_html(table))
        parts.append(figure(name))
    parts.append(f'<h2>{IMAGES_HEADING}</h2><p class="note">{IMAGES_NOTE}</p>')
    if results.top.empty:
        parts.append("<p>No image was labelled wrongly yet.</p>")
    for n, (_, row) in enumerate(results.top.iterrows(), start=1):
        parts.append(f'<div class="image-row"><figure><img alt="test image {int(row["test_index"])}" '
                     f'src="{_png_data_uri(enlarged(row["png"]))}"><figcaption>'
                     f"{html.escape(model_labels(results, row))}</figcaption></figure>"
                     f'<div class="hist">{figure(f"top-{n}")}</div></div>')
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>Results: {html.escape(study.slug)}</title><style>{STYLE}</style>"
            f"<script>{get_plotlyjs()}</script></head><body>{''.join(parts)}</body></html>")


def write_pngs(made: dict[str, go.Figure], folder: str | Path) -> list[Path]:
    """Each figure as folder/<name>.png through kaleido; [] when kaleido is not installed."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return []
    written = []
    for name, fig in made.items():
        path = Path(folder) / f"{name}.png"
        fig.write_image(path, width=1200, height=fig.layout.height or 500)
        written.append(path)
    return written
