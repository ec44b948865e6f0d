"""What the study found, as tables of numbers (`compute_results`): shared by the organiser page's Results tab
and `python -m study report`, which lay them out through study.report (figures, text tables, one self-contained
HTML file). No Streamlit import here.

Per trial condition: human accuracy (Wilson interval over answers; a participant-level bootstrap interval
only from MIN_BOOT_PARTICIPANTS participants on), how often wrong answers chose the label the attacked
model was fooled into against chance (1 / (classes - 1)), Cohen's kappa of the human majority label with
each model, confusion matrices, reaction times, and the images that fooled people most. Statistics use
answers of participants who are not excluded, never practice answers nor surplus ones (beyond an item's k).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import sqlite_utils
from scipy.stats import norm
from statsmodels.stats.inter_rater import cohens_kappa
from statsmodels.stats.proportion import proportion_confint

from .design import Study
from .export import items_frame, responses_frame
from .sets import CLEAN, PRED_PREFIX
from .stats import proportion_ci

MIN_BOOT_PARTICIPANTS = 10  # fewer clusters than this make a percentile bootstrap overconfident
TOP_IMAGES = 6


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
