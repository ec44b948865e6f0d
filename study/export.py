"""Tables for organisers: per answer, per item, per condition, per participant, and CIFAR-10H.

Statistics use only answers of participants who are not excluded and not surplus (beyond an item's first k);
practice answers are listed in responses.csv but never counted. `share_source_pred` is the share of humans who chose the label the
attacked (source) model predicted on that image: the "humans fooled the same way" measure.

All tables of one export are read in one read transaction (they agree even while participants answer).
The CSVs have fixed decimals, and every text cell a spreadsheet would run as a formula is defused;
`datapackage.json` and `README.md` describe every file and column (export_schema).
"""
from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import sqlite_utils

from .allocation import surplus_response_ids
from .db import read_snapshot
from .design import Study, get_study, list_studies
from .export_schema import MIN_PARTICIPANTS_FOR_INTERVAL, column, datapackage, readme
from .sets import CLEAN, FORMULA_STARTS, PRED_PREFIX
from .stats import fleiss_kappa, krippendorff_alpha_nominal, majority, proportion_ci

PRED_CLASS_PREFIX = "pred_class:"
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)

N_CLASSES = 10


def responses_frame(db: sqlite_utils.Database, study: Study) -> pd.DataFrame:
    rows = db.execute(
        """
        SELECT r.id, p.uid, p.excluded, a.position, i.id, i.role, i.condition, i.attack, i.source_model,
               i.test_index, i.true_label, i.source_pred, r.label, r.rt_ms, r.shown_ms, r.mode, r.input, r.created_at,
               (SELECT count(*) FROM servings s WHERE s.assignment_id = r.assignment_id AND s.served_at < r.created_at)
        FROM responses r
        JOIN assignments a ON a.id = r.assignment_id
        JOIN participants p ON p.id = r.participant_id
        JOIN items i ON i.id = r.item_id
        WHERE p.study_id = ?
        ORDER BY r.id
        """, [study.id]).fetchall()
    columns = ["response_id", "participant", "excluded", "position", "item_id", "role", "condition", "attack",
               "source_model", "test_index", "true_label", "source_pred", "label", "rt_ms", "shown_ms", "mode",
               "input", "answered_at", "earlier_servings"]
    frame = pd.DataFrame(rows, columns=columns)
    # pages that were sent the image before the one it was answered on; none recorded: stored before servings were
    frame["earlier_servings"] = pd.array([n - 1 if n else None for n in frame["earlier_servings"]], dtype="Int64")
    frame["excluded"] = frame["excluded"].astype(bool)
    # answers beyond an item's first k (participants admitted past the need): kept, but not in the statistics
    frame.insert(frame.columns.get_loc("excluded") + 1, "surplus",
                 frame["response_id"].isin(surplus_response_ids(db, study)).astype(bool))
    frame["source_pred"] = frame["source_pred"].astype("Int64")
    classes = list(study.classes)
    frame.insert(frame.columns.get_loc("true_label") + 1, "true_class", [classes[i] for i in frame["true_label"]])
    frame.insert(frame.columns.get_loc("source_pred") + 1, "source_pred_class", _class_names(frame["source_pred"], classes))
    frame.insert(frame.columns.get_loc("label") + 1, "label_class", [classes[i] for i in frame["label"]])
    frame.insert(frame.columns.get_loc("label_class") + 1, "correct", frame["label"] == frame["true_label"])
    agrees = (frame["label"] == frame["source_pred"]).astype("boolean")
    frame.insert(frame.columns.get_loc("correct") + 1, "agrees_source", agrees.where(frame["source_pred"].notna()))
    return frame


def _class_names(labels: pd.Series, classes: list[str]) -> list[str]:
    return ["" if pd.isna(i) else classes[int(i)] for i in labels]


def _items_base(db: sqlite_utils.Database, study: Study) -> pd.DataFrame:
    rows = db.execute(
        "SELECT id, role, condition, attack, source_model, test_index, true_label, source_pred, linf, l2, png_sha256 "
        "FROM items WHERE study_id = ? AND role != 'practice' ORDER BY id", [study.id]).fetchall()
    frame = pd.DataFrame(rows, columns=["item_id", "role", "condition", "attack", "source_model", "test_index",
                                        "true_label", "source_pred", "linf_255", "l2_255", "png_sha256"])
    frame["source_pred"] = frame["source_pred"].astype("Int64")
    frame.insert(frame.columns.get_loc("source_pred") + 1, "source_pred_class",
                 _class_names(frame["source_pred"], list(study.classes)))
    preds = db.execute(
        "SELECT ip.item_id, ip.model, ip.pred FROM item_predictions ip JOIN items i ON i.id = ip.item_id "
        "WHERE i.study_id = ?", [study.id]).fetchall()
    if preds:
        wide = pd.DataFrame(preds, columns=["item_id", "model", "pred"]).pivot(index="item_id", columns="model", values="pred")
        wide.columns = [f"{PRED_PREFIX}{m}" for m in wide.columns]
        frame = frame.merge(wide.astype("Int64"), left_on="item_id", right_index=True, how="left")
        for name in wide.columns:
            model = name[len(PRED_PREFIX):]
            frame.insert(frame.columns.get_loc(name) + 1, f"{PRED_CLASS_PREFIX}{model}",
                         _class_names(frame[name], list(study.classes)))
    return frame


def label_counts(responses: pd.DataFrame, item_ids) -> np.ndarray:
    """(items, 10) counts of the labels given to each item, rows in the order of item_ids."""
    row_of = {int(i): r for r, i in enumerate(item_ids)}
    counts = np.zeros((len(row_of), N_CLASSES), dtype=np.int64)
    for item_id, label in zip(responses["item_id"], responses["label"], strict=True):
        if int(item_id) in row_of:
            counts[row_of[int(item_id)], int(label)] += 1
    return counts


def items_frame(db: sqlite_utils.Database, study: Study, responses: pd.DataFrame | None = None) -> pd.DataFrame:
    responses = responses_frame(db, study) if responses is None else responses
    used = responses[~responses["excluded"] & ~responses["surplus"] & (responses["role"] != "practice")]
    frame = _items_base(db, study)
    counts = label_counts(used, frame["item_id"])
    classes = list(study.classes)
    n = counts.sum(axis=1)
    frame.insert(frame.columns.get_loc("true_label") + 1, "true_class", [classes[i] for i in frame["true_label"]])
    frame["n_labels"] = n
    for c, name in enumerate(classes):
        frame[f"n_{name}"] = counts[:, c]
    majorities = [majority(row) for row in counts]
    frame["human_majority"] = pd.array([m for m, _ in majorities], dtype="Int64")
    frame["human_majority_class"] = [classes[m] if m is not None else "" for m, _ in majorities]
    frame["majority_tie"] = [t for _, t in majorities]
    with np.errstate(invalid="ignore", divide="ignore"):
        frame["share_true"] = counts[np.arange(len(frame)), frame["true_label"].to_numpy()] / n
        source = frame["source_pred"].to_numpy(dtype=float, na_value=np.nan)
        has_source = ~np.isnan(source)
        share_source = np.full(len(frame), np.nan)
        idx = np.flatnonzero(has_source)
        share_source[idx] = counts[idx, source[idx].astype(int)] / n[idx]
    frame["share_source_pred"] = share_source
    return frame


def _agreement(counts: np.ndarray) -> tuple[float, float]:
    rated = counts[counts.sum(axis=1) >= 2]
    alpha = krippendorff_alpha_nominal(rated) if len(rated) else float("nan")
    try:
        kappa = fleiss_kappa(rated)
    except ValueError:
        kappa = float("nan")  # unequal numbers of ratings per item: report alpha only
    return kappa, alpha


SUMMARY_COLUMNS = ["role", "condition", "n_items", "n_items_labelled", "n_answers", "n_participants", "human_accuracy",
                   "human_accuracy_lo", "human_accuracy_hi", "share_source_pred", "share_source_pred_lo",
                   "share_source_pred_hi", "majority_accuracy", "fleiss_kappa", "krippendorff_alpha", "median_rt_ms"]


def summary_frame(db: sqlite_utils.Database, study: Study, responses: pd.DataFrame | None = None,
                  items: pd.DataFrame | None = None, *, cifar10h: np.ndarray | None = None, n_boot: int = 2000,
                  seed: int = 0) -> pd.DataFrame:
    """One row per (role, condition): human accuracy and agreement with the source model, each with a
    95% cluster-bootstrap interval over items, plus inter-rater agreement and response times."""
    responses = responses_frame(db, study) if responses is None else responses
    items = items_frame(db, study, responses) if items is None else items
    used = responses[~responses["excluded"] & ~responses["surplus"] & (responses["role"] != "practice")]
    rows = []
    for (role, condition), group in items.groupby(["role", "condition"], sort=True):
        answers = used[used["item_id"].isin(group["item_id"])]
        per_item = [g for _, g in answers.groupby("item_id")]
        acc, acc_lo, acc_hi = proportion_ci([g["correct"].to_numpy() for g in per_item], n_boot=n_boot, seed=seed)
        with_source = [g["agrees_source"].dropna().to_numpy(dtype=float) for g in per_item]
        agree, agree_lo, agree_hi = proportion_ci(with_source, n_boot=n_boot, seed=seed)
        counts = np.stack([group[f"n_{c}"].to_numpy() for c in study.classes], axis=1)
        kappa, alpha = _agreement(counts)
        rated = group["n_labels"] > 0
        maj_acc = float((group.loc[rated, "human_majority"] == group.loc[rated, "true_label"]).mean()) if rated.any() else float("nan")
        rows.append({
            "role": role, "condition": condition, "n_items": len(group), "n_items_labelled": int(rated.sum()),
            "n_answers": len(answers), "n_participants": answers["participant"].nunique(),
            "human_accuracy": acc, "human_accuracy_lo": acc_lo, "human_accuracy_hi": acc_hi,
            "share_source_pred": agree, "share_source_pred_lo": agree_lo, "share_source_pred_hi": agree_hi,
            "majority_accuracy": maj_acc, "fleiss_kappa": kappa, "krippendorff_alpha": alpha,
            "median_rt_ms": float(answers["rt_ms"].median()) if answers["rt_ms"].notna().any() else float("nan"),
        })
        if cifar10h is not None and (group["attack"] == CLEAN).all() and rated.any():
            ref = cifar10h[group.loc[rated, "test_index"].to_numpy()]
            true = group.loc[rated, "true_label"].to_numpy()
            # CIFAR-10H accuracy on the same images, with the same item-cluster bootstrap
            ref_groups = [np.repeat([1.0, 0.0], [r[t], r.sum() - r[t]]) for r, t in zip(ref, true, strict=True)]
            h_acc, h_lo, h_hi = proportion_ci(ref_groups, n_boot=n_boot, seed=seed)
            kappa_h, alpha_h = _agreement(ref)
            rows.append({
                "role": role, "condition": f"{condition} (CIFAR-10H)", "n_items": len(group),
                "n_items_labelled": int(rated.sum()), "n_answers": int(ref.sum()), "n_participants": np.nan,
                "human_accuracy": h_acc, "human_accuracy_lo": h_lo, "human_accuracy_hi": h_hi,
                "share_source_pred": np.nan, "share_source_pred_lo": np.nan, "share_source_pred_hi": np.nan,
                "majority_accuracy": float((ref.argmax(axis=1) == true).mean()), "fleiss_kappa": kappa_h,
                "krippendorff_alpha": alpha_h, "median_rt_ms": np.nan,
            })
    frame = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    frame["n_participants"] = frame["n_participants"].astype("Int64")
    # an interval from one or a few people would read as certainty: none below the minimum (CIFAR-10H rows
    # have no participant count here, each of their images has ~50 annotators)
    few = (frame["n_participants"] < MIN_PARTICIPANTS_FOR_INTERVAL).fillna(False).to_numpy(dtype=bool)
    frame.loc[few, [c for c in SUMMARY_COLUMNS if c.endswith(("_lo", "_hi"))]] = np.nan
    return frame


def cifar10h_frame(items: pd.DataFrame, cifar10h: np.ndarray, classes) -> pd.DataFrame:
    """Clean items: our human label distribution next to CIFAR-10H's for the same test image."""
    clean = items[(items["attack"] == CLEAN) & (items["n_labels"] > 0)]
    ours = np.stack([clean[f"n_{c}"].to_numpy() for c in classes], axis=1).astype(float)
    ref = cifar10h[clean["test_index"].to_numpy()].astype(float)
    true = clean["true_label"].to_numpy()
    ours_p = ours / ours.sum(axis=1, keepdims=True)
    ref_p = ref / ref.sum(axis=1, keepdims=True)
    classes = list(classes)
    ref_majority = ref.argmax(axis=1)
    return pd.DataFrame({
        "item_id": clean["item_id"].to_numpy(), "role": clean["role"].to_numpy(), "test_index": clean["test_index"].to_numpy(),
        "true_label": true, "true_class": [classes[t] for t in true], "n_labels": ours.sum(axis=1).astype(int),
        "share_true": ours_p[np.arange(len(true)), true],
        "human_majority": clean["human_majority"].to_numpy(), "human_majority_class": clean["human_majority_class"].to_numpy(),
        "cifar10h_n": ref.sum(axis=1).astype(int), "cifar10h_share_true": ref_p[np.arange(len(true)), true],
        "cifar10h_majority": ref_majority, "cifar10h_majority_class": [classes[m] for m in ref_majority],
        "total_variation": 0.5 * np.abs(ours_p - ref_p).sum(axis=1),
    })


def participants_frame(db: sqlite_utils.Database, study: Study) -> pd.DataFrame:
    """Per participant: progress, catch and practice accuracy, exclusion. Contains external ids: admin only."""
    rows = db.execute(
        """
        SELECT p.uid, p.external_id, p.external_study_id, p.external_session_id, p.joined_at, p.consent_at,
               p.completed_at, p.last_seen_at, p.excluded, p.exclusion_reason,
               count(a.id),
               count(r.id),
               coalesce(sum(i.role = 'catch'), 0),
               coalesce(sum(i.role = 'catch' AND r.label = i.true_label), 0),
               coalesce(sum(i.role = 'catch' AND r.id IS NOT NULL), 0),
               coalesce(sum(i.role = 'practice' AND r.label = i.true_label), 0),
               coalesce(sum(i.role = 'practice'), 0)
        FROM participants p
        LEFT JOIN assignments a ON a.participant_id = p.id
        LEFT JOIN items i ON i.id = a.item_id
        LEFT JOIN responses r ON r.assignment_id = a.id
        WHERE p.study_id = ?
        GROUP BY p.id ORDER BY p.id
        """, [study.id]).fetchall()
    frame = pd.DataFrame(rows, columns=[
        "participant", "external_id", "external_study_id", "external_session_id", "joined_at", "consent_at",
        "completed_at", "last_seen_at", "excluded", "exclusion_reason", "n_items", "n_answered", "catch_total",
        "catch_correct", "catch_answered", "practice_correct", "practice_total"])
    frame["excluded"] = frame["excluded"].astype(bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        frame["catch_accuracy"] = frame["catch_correct"] / frame["catch_answered"].replace(0, np.nan)
    return frame


def export_frames(db: sqlite_utils.Database, study: Study, *, cifar10h: np.ndarray | None = None, n_boot: int = 2000,
                  seed: int = 0) -> dict[str, pd.DataFrame]:
    """Every table of one study's export, all read in one snapshot of the database."""
    with read_snapshot(db):
        responses = responses_frame(db, study)
        items = items_frame(db, study, responses)
        frames = {
            "responses.csv": responses,
            "items.csv": items,
            "summary.csv": summary_frame(db, study, responses, items, cifar10h=cifar10h, n_boot=n_boot, seed=seed),
            "participants.csv": participants_frame(db, study),
        }
    if cifar10h is not None:
        frames["cifar10h.csv"] = cifar10h_frame(items, cifar10h, study.classes)
    return frames


DESCRIPTION_FILES = ("datapackage.json", "README.md")  # written beside the CSVs of every export


def described_files(frames: Mapping[str, pd.DataFrame], study: Study | None = None) -> dict[str, bytes]:
    """{file name: bytes} of one export: the CSVs, datapackage.json and README.md."""
    name, title = (study.slug, study.title) if study is not None else ("study-export", "study")
    files = {file: csv_bytes(frame) for file, frame in frames.items()}
    package, about = DESCRIPTION_FILES
    files[package] = datapackage(frames, name, title).encode("utf-8")
    files[about] = readme(frames, title).encode("utf-8")
    return files


def export_study(db: sqlite_utils.Database, out_dir: str | Path, slug: str | None = None, *,
                 cifar10h: np.ndarray | None = None, n_boot: int = 2000, seed: int = 0) -> list[Path]:
    """Write the files of one study (or of every study, each in out_dir/<slug>/, when slug is None and
    there are several). Every study is read in the same snapshot. Returns the written paths."""
    out_dir = Path(out_dir)
    with read_snapshot(db):
        studies = [get_study(db, slug)] if slug else list_studies(db)
        if not studies:
            raise LookupError("the database holds no study")
        exports = [(study, export_frames(db, study, cifar10h=cifar10h, n_boot=n_boot, seed=seed)) for study in studies]
    written = []
    for study, frames in exports:
        target = out_dir if len(studies) == 1 else out_dir / study.slug
        target.mkdir(parents=True, exist_ok=True)
        for name, data in described_files(frames, study).items():
            (target / name).write_bytes(data)
            written.append(target / name)
    return written


def defuse(text: str) -> str:
    """A text cell a spreadsheet would run as a formula (starting with = + - @, tab or CR, and not a number)
    gets a leading single quote, as OWASP's CSV injection guidance advises."""
    if text.startswith(FORMULA_STARTS) and not _NUMBER.fullmatch(text):
        return "'" + text
    return text


def csv_text(frame: pd.DataFrame) -> str:
    """One export table as CSV text: described numbers with their fixed decimals, every text cell and column
    name defused."""
    out = frame.copy()
    for col in out.columns:
        try:
            kind, decimals, _ = column(str(col))
        except ValueError:
            kind, decimals = "", None
        if kind == "number" and decimals is not None:
            values = pd.to_numeric(out[col], errors="coerce")
            out[col] = ["" if pd.isna(v) else f"{v:.{decimals}f}" for v in values]
        elif not (pd.api.types.is_numeric_dtype(out[col]) or pd.api.types.is_bool_dtype(out[col])):
            out[col] = pd.Series([defuse(v) if isinstance(v, str) else v for v in out[col]], index=out.index,
                                 dtype=object)
    out.columns = [defuse(str(c)) for c in out.columns]
    # RFC 4180 line ends: the writer then quotes any cell holding a CR too, not only one holding a LF
    return out.to_csv(index=False, lineterminator="\r\n")


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """One export table as the CSV a download button offers (UTF-8, no index column)."""
    return csv_text(frame).encode("utf-8")


def export_zip(frames: Mapping[str, pd.DataFrame], study: Study | None = None) -> bytes:
    """Every export table as one zip, a CSV per table under its name (export_frames' keys), with
    datapackage.json and README.md describing them."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in described_files(frames, study).items():
            zf.writestr(name, data)
    return buffer.getvalue()
