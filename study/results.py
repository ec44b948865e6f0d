"""What the study found, as tables and Plotly figures: shared by the organiser page's Results tab and
`python -m study report` (one self-contained HTML file). No Streamlit import here.

Per trial condition: human accuracy (Wilson interval over answers; a participant-level bootstrap interval
only from MIN_BOOT_PARTICIPANTS participants on), how often wrong answers chose the label the attacked
model was fooled into against chance (1 / (classes - 1)), Cohen's kappa of the human majority label with
each model, confusion matrices, reaction times, and the images that fooled people most. Statistics use
answers of participants who are not excluded, never practice answers nor surplus ones (beyond an item's k).
"""
from __future__ import annotations

import base64
import html
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import sqlite_utils
from plotly.subplots import make_subplots
from scipy.stats import norm
from statsmodels.stats.inter_rater import cohens_kappa
from statsmodels.stats.proportion import proportion_confint

from .design import Study
from .export import items_frame, responses_frame
from .sets import CLEAN, PRED_PREFIX, decode_png
from .stats import proportion_ci

MIN_BOOT_PARTICIPANTS = 10  # fewer clusters than this make a percentile bootstrap overconfident
TOP_IMAGES = 6
IMAGE_SCALE = 6  # 32 px images shown at 192 px, nearest neighbour (never smoothed)
GOOD, BAD, NEUTRAL = "#1b9e77", "#d95f02", "#7570b3"


@dataclass
class Results:
    study: Study
    accuracy: pd.DataFrame  # one row per trial condition (+ the CIFAR-10H baseline on the clean images)
    fooled: pd.DataFrame  # attacked conditions: wrong answers choosing the model's adversarial label
    agreement: pd.DataFrame  # condition x model: Cohen's kappa of the human majority with the model
    confusion: dict[str, np.ndarray]  # condition -> (true class, chosen label) answer counts
    answers: pd.DataFrame  # the answers the statistics use (trial items, included participants)
    top: pd.DataFrame  # the images that fooled people most, with their label counts
    notes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.answers.empty


def wilson(successes: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval for successes/n (NaN, NaN when n is 0)."""
    if n == 0:
        return float("nan"), float("nan")
    low, high = proportion_confint(successes, n, alpha=0.05, method="wilson")
    return float(low), float(high)


def difference_test(right_a, n_a, right_b, n_b) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided pooled two-proportion z-test of share a vs share b, vectorised over arrays of counts (the same
    test as statsmodels' proportions_ztest): (a - b, p-value). NaN where a share is undefined; p = 1 where both
    shares are 0 or 1 (no variance, no evidence)."""
    right_a, right_b = np.asarray(right_a, dtype=float), np.asarray(right_b, dtype=float)
    n_a, n_b = np.asarray(n_a, dtype=float), np.asarray(n_b, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        share_a, share_b = right_a / n_a, right_b / n_b
        pooled = (right_a + right_b) / (n_a + n_b)
        se = np.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
        z = (share_a - share_b) / se
    p = np.where(se > 0, 2 * norm.sf(np.abs(z)), 1.0)
    return share_a - share_b, np.where(np.isfinite(share_a) & np.isfinite(share_b), p, np.nan)


def participant_bootstrap(answers: pd.DataFrame, outcome: pd.Series, *, min_participants: int, n_boot: int,
                          seed: int) -> tuple[float, float]:
    """Percentile bootstrap over participants of the pooled share of `outcome`; NaN below min_participants."""
    groups = [g.to_numpy(dtype=float) for _, g in outcome.groupby(answers.loc[outcome.index, "participant"])]
    if len(groups) < max(2, min_participants):
        return float("nan"), float("nan")
    _, low, high = proportion_ci(groups, n_boot=n_boot, seed=seed)
    return low, high


def _too_few(n: int, min_participants: int) -> str:
    return f"participant bootstrap needs {max(2, min_participants)} participants, {n} so far"


def _accuracy(answers: pd.DataFrame, items: pd.DataFrame, conditions: list[str], cifar10h: np.ndarray | None,
              min_participants: int, n_boot: int, seed: int) -> pd.DataFrame:
    rows = []
    for condition in conditions:
        mine = answers[answers["condition"] == condition]
        n, correct, people = len(mine), int(mine["correct"].sum()), mine["participant"].nunique()
        lo, hi = wilson(correct, n)
        b_lo, b_hi = participant_bootstrap(mine, mine["correct"], min_participants=min_participants, n_boot=n_boot,
                                           seed=seed)
        rows.append({"condition": condition, "source": "this study", "n_answers": n, "n_correct": correct,
                     "n_participants": people,
                     "accuracy": correct / n if n else np.nan, "wilson_lo": lo, "wilson_hi": hi,
                     "bootstrap_lo": b_lo, "bootstrap_hi": b_hi,
                     "note": "" if np.isfinite(b_lo) or n == 0 else _too_few(people, min_participants)})
        group = items[(items["condition"] == condition) & (items["role"] == "trial")]
        if cifar10h is not None and (group["attack"] == CLEAN).all() and len(group):
            ref = cifar10h[group["test_index"].to_numpy()]
            right = int(ref[np.arange(len(group)), group["true_label"].to_numpy()].sum())
            total = int(ref.sum())
            lo, hi = wilson(right, total)
            rows.append({"condition": f"{condition} (CIFAR-10H)", "source": "CIFAR-10H", "n_answers": total,
                         "n_correct": right,
                         "n_participants": pd.NA, "accuracy": right / total if total else np.nan, "wilson_lo": lo,
                         "wilson_hi": hi, "bootstrap_lo": np.nan, "bootstrap_hi": np.nan,
                         "note": "CIFAR-10H annotators, same images"})
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame["n_participants"] = frame["n_participants"].astype("Int64")
        # each condition against the first (clean) one: the test the planner plans for
        ours = frame[frame["source"] == "this study"]
        ref = ours.iloc[0]
        diff, p = difference_test(ours["n_correct"], ours["n_answers"], ref["n_correct"], ref["n_answers"])
        frame["difference_vs_reference"] = pd.Series(diff, index=ours.index)
        frame["p_vs_reference"] = pd.Series(p, index=ours.index)
        frame.loc[ours.index[0], ["difference_vs_reference", "p_vs_reference"]] = np.nan
    return frame


def _fooled(answers: pd.DataFrame, conditions: list[str], n_classes: int, min_participants: int, n_boot: int,
            seed: int) -> pd.DataFrame:
    """Among answers to images the source model got wrong: how many were wrong, and how many of those chose
    exactly the model's label. By chance a wrong answer picks it 1 time in (classes - 1)."""
    chance = 1 / (n_classes - 1)
    rows = []
    for condition in conditions:
        mine = answers[answers["condition"] == condition]
        if mine["source_pred"].isna().all():
            continue  # clean images, or a set without the attacked model's labels
        fooled_items = mine[mine["source_pred"].notna() & (mine["source_pred"] != mine["true_label"])]
        wrong = fooled_items[~fooled_items["correct"]]
        chose = wrong["label"] == wrong["source_pred"]
        n_wrong, n_chose = len(wrong), int(chose.sum())
        lo, hi = wilson(n_chose, n_wrong)
        b_lo, b_hi = participant_bootstrap(wrong, chose.astype(float), min_participants=min_participants,
                                           n_boot=n_boot, seed=seed)
        note = ""
        if fooled_items.empty:
            note = "the attacked model was not fooled on these images"
        elif n_wrong and not np.isfinite(b_lo):
            note = _too_few(wrong["participant"].nunique(), min_participants)
        rows.append({"condition": condition, "n_items_fooled": int(fooled_items["item_id"].nunique()),
                     "n_answers": len(fooled_items),
                     "share_adversarial": n_chose / len(fooled_items) if len(fooled_items) else np.nan,
                     "n_wrong": n_wrong, "n_chose_adversarial": n_chose,
                     "share_of_wrong": n_chose / n_wrong if n_wrong else np.nan, "wilson_lo": lo, "wilson_hi": hi,
                     "bootstrap_lo": b_lo, "bootstrap_hi": b_hi, "chance_share_of_wrong": chance, "note": note})
    return pd.DataFrame(rows)


def kappa_with_interval(humans: np.ndarray, model: np.ndarray, n_classes: int) -> tuple[float, float, float]:
    """Cohen's kappa of two label vectors with statsmodels' asymptotic 95% interval (clipped to [-1, 1]);
    NaN when undefined (fewer than 2 items, or one label only on both sides); the interval is NaN where its
    variance is zero (full agreement), rather than a point."""
    if len(humans) < 2:
        return float("nan"), float("nan"), float("nan")
    table = np.zeros((n_classes, n_classes))
    np.add.at(table, (humans, model), 1)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        result = cohens_kappa(table)
    kappa, low, high = float(result.kappa), float(result.kappa_low), float(result.kappa_upp)
    if not np.isfinite(kappa):
        return float("nan"), float("nan"), float("nan")
    if not (np.isfinite(low) and np.isfinite(high)) or high - low <= 0:
        return kappa, float("nan"), float("nan")  # zero variance (e.g. full agreement): no honest interval
    return kappa, max(-1.0, low), min(1.0, high)


def _models(items: pd.DataFrame) -> list[str]:
    return [c[len(PRED_PREFIX):] for c in items.columns if c.startswith(PRED_PREFIX)]


def _agreement(items: pd.DataFrame, conditions: list[str], n_classes: int) -> pd.DataFrame:
    """Per condition and model: kappa of the human majority label (items without a tie) with the model's label."""
    rows = []
    for condition in conditions:
        group = items[(items["condition"] == condition) & (items["role"] == "trial") & (items["n_labels"] > 0)]
        clear = group[~group["majority_tie"]]
        if group.empty:
            continue
        source_model = group["source_model"].iloc[0]
        predictions: dict[str, pd.Series] = {}
        if group["source_pred"].notna().any():
            predictions[f"{source_model} (attacked)"] = clear["source_pred"]
        for model in _models(items):
            if not (model == source_model and predictions) and clear[f"{PRED_PREFIX}{model}"].notna().any():
                predictions[model] = clear[f"{PRED_PREFIX}{model}"]
        for model, preds in predictions.items():
            known = preds.notna()
            humans = clear.loc[known, "human_majority"].to_numpy(dtype=int)
            machine = preds[known].to_numpy(dtype=int)
            kappa, low, high = kappa_with_interval(humans, machine, n_classes)
            rows.append({"condition": condition, "model": model, "n_items": len(humans),
                         "n_ties_left_out": int(group["majority_tie"].sum()),
                         "agreement": float((humans == machine).mean()) if len(humans) else np.nan,
                         "kappa": kappa, "kappa_lo": low, "kappa_hi": high})
    return pd.DataFrame(rows)


def _top(items: pd.DataFrame, db: sqlite_utils.Database, count: int) -> pd.DataFrame:
    """Trial items people got wrong most: first by the share choosing the attacked model's label, then by the
    share of wrong answers; with the PNG and label counts."""
    rated = items[(items["role"] == "trial") & (items["n_labels"] > 0)].copy()
    rated["share_wrong"] = 1 - rated["share_true"]
    model_fooled = rated["source_pred"].notna() & (rated["source_pred"] != rated["true_label"])
    # where the model was right, its label is the true one: choosing it is no sign of being fooled
    rated["share_adversarial"] = rated["share_source_pred"].where(model_fooled.astype(bool), 0.0).fillna(0.0)
    fooling = rated[rated["share_wrong"] > 0].sort_values(
        ["share_adversarial", "share_wrong", "n_labels", "item_id"], ascending=[False, False, False, True]).head(count)
    pngs = {}
    for item_id in fooling["item_id"]:
        pngs[int(item_id)] = db.execute("SELECT png FROM items WHERE id = ?", [int(item_id)]).fetchone()[0]
    fooling["png"] = [pngs[int(i)] for i in fooling["item_id"]]
    return fooling.reset_index(drop=True)


def compute_results(db: sqlite_utils.Database, study: Study, *, cifar10h: np.ndarray | None = None,
                    n_boot: int = 2000, seed: int = 0, min_participants: int = MIN_BOOT_PARTICIPANTS,
                    top: int = TOP_IMAGES) -> Results:
    """Every table the Results tab and the report show, from the database as it is now."""
    responses = responses_frame(db, study)
    items = items_frame(db, study, responses)
    answers = responses[~responses["excluded"] & ~responses["surplus"] & (responses["role"] == "trial")].copy()
    n_classes = len(study.classes)
    attacks = dict(zip(items["condition"], items["attack"], strict=True))
    # clean first (the CIFAR-10H baseline beside it), then the attacked conditions in the study's order
    conditions = sorted(study.conditions, key=lambda c: attacks.get(c) != CLEAN)
    confusion = {}
    for condition in conditions:
        mine = answers[answers["condition"] == condition]
        matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
        np.add.at(matrix, (mine["true_label"].to_numpy(dtype=int), mine["label"].to_numpy(dtype=int)), 1)
        confusion[condition] = matrix
    notes = []
    people = answers["participant"].nunique()
    if people < min_participants:
        notes.append(f"{people} participant(s) so far: intervals over participants need {min_participants}; "
                     "the Wilson intervals treat answers as independent.")
    if cifar10h is None:
        notes.append("No CIFAR-10H baseline (counts not given).")
    return Results(
        study=study,
        accuracy=_accuracy(answers, items, conditions, cifar10h, min_participants, n_boot, seed),
        fooled=_fooled(answers, conditions, n_classes, min_participants, n_boot, seed),
        agreement=_agreement(items, conditions, n_classes),
        confusion=confusion, answers=answers, top=_top(items, db, top), notes=notes)


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
