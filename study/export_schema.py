"""What every column of an export means: its Table Schema type, its decimals and a description.

The same table writes the CSVs (fixed decimals), the Frictionless `datapackage.json` (Data Package with
Table Schema, https://specs.frictionlessdata.io/) and the README that travel with every export, so the files
and their description cannot drift apart. Columns named after a class or a model (`n_<class>`,
`pred:<model>`, `pred_class:<model>`) are described by their prefix.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping

import pandas as pd

MIN_PARTICIPANTS_FOR_INTERVAL = 5  # fewer: an interval would mostly describe a few people, so none is given
SHARE_DECIMALS, MS_DECIMALS, NORM_DECIMALS = 4, 1, 2
CLASS_NOTE = "CIFAR-10 class number 0-9 (names in the *_class column beside it)"
INTERVAL_NOTE = (f"95% percentile bootstrap interval over items (whole items resampled); empty when fewer than "
                 f"{MIN_PARTICIPANTS_FOR_INTERVAL} participants answered in this condition, since an interval from "
                 f"so few people would look more certain than it is")

# name: (Table Schema type, decimals for numbers or None, description)
COLUMNS: dict[str, tuple[str, int | None, str]] = {
    "response_id": ("integer", None, "answer id in the study database"),
    "participant": ("string", None, "our random participant id (no external id)"),
    "excluded": ("boolean", None, "the organiser excluded this participant: left out of every statistic"),
    "surplus": ("boolean", None, "an answer beyond the image's first k labels from included participants (more "
                                 "people answered than the study needed): kept, but left out of every statistic"),
    "position": ("integer", None, "0-based place of the image in the participant's list"),
    "item_id": ("integer", None, "image id in the study database"),
    "role": ("string", None, "trial (study image), catch (clean attention check) or practice (with feedback)"),
    "condition": ("string", None, "clean, or <attack>-vs-<source model>; a '(CIFAR-10H)' suffix marks the "
                                  "CIFAR-10H annotators' row for the same images"),
    "attack": ("string", None, "attack name, or clean"),
    "source_model": ("string", None, "the model the attack was made against (empty for clean images)"),
    "test_index": ("integer", None, "index of the image in the CIFAR-10 test set"),
    "true_label": ("integer", None, "true " + CLASS_NOTE),
    "true_class": ("string", None, "true class name"),
    "source_pred": ("integer", None, "the source model's prediction on the shown image, " + CLASS_NOTE),
    "source_pred_class": ("string", None, "class name of source_pred"),
    "label": ("integer", None, "the participant's answer, " + CLASS_NOTE),
    "label_class": ("string", None, "class name of the answer"),
    "correct": ("boolean", None, "answer equals the true label"),
    "agrees_source": ("boolean", None, "answer equals the source model's prediction (empty without one)"),
    "rt_ms": ("number", MS_DECIMALS, "reaction time in milliseconds, measured in the browser from image onset"),
    "shown_ms": ("number", MS_DECIMALS, "milliseconds the image was really on screen (time-limited studies)"),
    "mode": ("string", None, "presentation: unlimited or timed"),
    "input": ("string", None, "how the answer was given: keyboard, click (trial widget) or button (simple version)"),
    "answered_at": ("datetime", None, "when the answer was stored, ISO 8601 UTC"),
    "earlier_servings": ("integer", None, "how many pages (browser sessions: a reload or a server restart starts a "
                                          "new one) had been sent this image before the page it was answered on. "
                                          "0: answered where it first came. Above 0: a possible repeat - the "
                                          "participant may have seen the image before (on screen, or held ready as "
                                          "one of the next two) and even answered it there if that answer was "
                                          "lost. Empty: answered before servings were recorded (schema 3 files)"),
    "linf_255": ("number", NORM_DECIMALS, "L-infinity norm of shown minus original image, in 0-255 pixel units "
                                          "(16 means 16/255)"),
    "l2_255": ("number", NORM_DECIMALS, "L2 norm of shown minus original image, in 0-255 pixel units"),
    "png_sha256": ("string", None, "SHA-256 of the PNG shown to participants"),
    "n_labels": ("integer", None, "answers counted for this image (excluded participants and practice left out)"),
    "human_majority": ("integer", None, "most chosen label (smallest on ties; empty without answers), " + CLASS_NOTE),
    "human_majority_class": ("string", None, "class name of human_majority"),
    "majority_tie": ("boolean", None, "several labels share the top count"),
    "share_true": ("number", SHARE_DECIMALS, "share of answers naming the true class, 0-1"),
    "share_source_pred": ("number", SHARE_DECIMALS, "share of answers naming the source model's prediction, 0-1 "
                                                    "(the 'fooled the same way' measure)"),
    "n_items": ("integer", None, "images in this role and condition"),
    "n_items_labelled": ("integer", None, "of those, images with at least one counted answer"),
    "n_answers": ("integer", None, "counted answers"),
    "n_participants": ("integer", None, "participants with counted answers (empty for CIFAR-10H rows)"),
    "human_accuracy": ("number", SHARE_DECIMALS, "share of counted answers naming the true class, 0-1"),
    "human_accuracy_lo": ("number", SHARE_DECIMALS, "lower end of human_accuracy's " + INTERVAL_NOTE),
    "human_accuracy_hi": ("number", SHARE_DECIMALS, "upper end of human_accuracy's " + INTERVAL_NOTE),
    "share_source_pred_lo": ("number", SHARE_DECIMALS, "lower end of share_source_pred's " + INTERVAL_NOTE),
    "share_source_pred_hi": ("number", SHARE_DECIMALS, "upper end of share_source_pred's " + INTERVAL_NOTE),
    "majority_accuracy": ("number", SHARE_DECIMALS, "share of labelled images whose human majority is the true class"),
    "fleiss_kappa": ("number", SHARE_DECIMALS, "Fleiss' kappa over images with >= 2 answers (empty unless every "
                                               "such image has the same number of answers)"),
    "krippendorff_alpha": ("number", SHARE_DECIMALS, "Krippendorff's alpha (nominal) over images with >= 2 answers"),
    "median_rt_ms": ("number", MS_DECIMALS, "median reaction time in milliseconds"),
    "external_id": ("string", None, "the id from the participant's link (e.g. Prolific PID): personal data, "
                                    "do not publish"),
    "external_study_id": ("string", None, "Prolific STUDY_ID from the link"),
    "external_session_id": ("string", None, "Prolific SESSION_ID from the link"),
    "joined_at": ("datetime", None, "first visit, ISO 8601 UTC"),
    "consent_at": ("datetime", None, "consent given, ISO 8601 UTC"),
    "completed_at": ("datetime", None, "last image answered, ISO 8601 UTC"),
    "last_seen_at": ("datetime", None, "last page view, ISO 8601 UTC"),
    "exclusion_reason": ("string", None, "the organiser's reason for the exclusion"),
    "n_answered": ("integer", None, "images answered"),
    "catch_total": ("integer", None, "catch images assigned"),
    "catch_correct": ("integer", None, "catch images answered correctly"),
    "catch_answered": ("integer", None, "catch images answered"),
    "practice_correct": ("integer", None, "practice images answered correctly"),
    "practice_total": ("integer", None, "practice images assigned"),
    "catch_accuracy": ("number", SHARE_DECIMALS, "catch_correct / catch_answered, 0-1"),
    "cifar10h_n": ("integer", None, "CIFAR-10H annotations of this test image"),
    "cifar10h_share_true": ("number", SHARE_DECIMALS, "share of CIFAR-10H annotations naming the true class, 0-1"),
    "cifar10h_majority": ("integer", None, "CIFAR-10H's most chosen label, " + CLASS_NOTE),
    "cifar10h_majority_class": ("string", None, "class name of cifar10h_majority"),
    "total_variation": ("number", SHARE_DECIMALS, "total variation distance between our and CIFAR-10H's label "
                                                  "distributions, 0-1"),
}
PREFIXED: tuple[tuple[str, tuple[str, int | None, str]], ...] = (
    ("pred_class:", ("string", None, "class name of that model's prediction")),
    ("pred:", ("integer", None, "that model's prediction on the shown image, " + CLASS_NOTE)),
    ("n_", ("integer", None, "counted answers naming that class")),
)
FILES = {
    "responses.csv": "one row per answer (practice included, excluded participants flagged)",
    "items.csv": "one row per catch or trial image: label counts, human majority, every model's prediction",
    "summary.csv": "one row per role and condition: human accuracy and agreement with the source model",
    "participants.csv": "one row per participant: progress, catch and practice accuracy (holds external ids)",
    "cifar10h.csv": "clean images: our label distribution beside CIFAR-10H's (Peterson et al. 2019, CC BY-NC-SA 4.0)",
}


def column(name: str) -> tuple[str, int | None, str]:
    """(type, decimals, description) of a column; ValueError for a column no one described."""
    if name in COLUMNS:
        return COLUMNS[name]
    for prefix, spec in PREFIXED:
        if name.startswith(prefix):
            return spec
    raise ValueError(f"export column {name!r} has no description in study.export_schema")


def _resource_name(file: str) -> str:
    return re.sub(r"[^a-z0-9._-]", "-", file.removesuffix(".csv").lower())


def datapackage(frames: Mapping[str, pd.DataFrame], name: str, title: str) -> str:
    """The Frictionless Data Package descriptor (JSON text) of one export: every file and every column."""
    resources = []
    for file, frame in frames.items():
        fields = []
        for col in frame.columns:
            kind, decimals, text = column(str(col))
            field = {"name": str(col), "type": kind, "description": text}
            if kind == "datetime":
                field["format"] = "any"  # ISO 8601 with milliseconds and +00:00
            if decimals is not None:
                field["description"] = f"{text} ({decimals} decimals)"
            fields.append(field)
        resources.append({
            "name": _resource_name(file), "path": file, "profile": "tabular-data-resource", "format": "csv",
            "mediatype": "text/csv", "encoding": "utf-8", "description": FILES.get(file, ""),
            "schema": {"fields": fields, "missingValues": [""]},
        })
    package = {"profile": "tabular-data-package", "name": _resource_name(name) or "study-export",
               "title": f"Human study export: {title}", "resources": resources}
    return json.dumps(package, indent=2, ensure_ascii=False) + "\n"


def readme(frames: Mapping[str, pd.DataFrame], title: str) -> str:
    """A short README for the export folder or zip."""
    lines = [f"# Human study export: {title}", "",
             "Answers of a crowd study on adversarial CIFAR-10 images (do images made to fool Random-Mask networks "
             "fool people too?). Every column of every file is described in datapackage.json (Frictionless Data "
             "Package, Table Schema).", "", "Files:", ""]
    lines += [f"- {file}: {FILES.get(file, '')}" for file in frames]
    lines += ["", "Conventions:", "",
              "- UTF-8 CSV, comma separated, one header row; an empty cell means missing or undefined.",
              f"- Shares are 0-1 with {SHARE_DECIMALS} decimals, times in milliseconds with {MS_DECIMALS}, "
              f"perturbation norms in 0-255 pixel units (columns *_255) with {NORM_DECIMALS}.",
              "- Class numbers 0-9 are CIFAR-10's; a *_class column beside each gives the name.",
              "- Statistics leave out practice answers and excluded participants.",
              f"- Intervals are empty when fewer than {MIN_PARTICIPANTS_FOR_INTERVAL} participants answered.",
              "- A text cell that would start with = + - @, tab or carriage return (and is not a number) is written "
              "with a leading ' so that spreadsheets show it instead of running it as a formula.",
              "- participants.csv holds the ids from participants' links: do not publish it.", ""]
    return "\n".join(lines)
