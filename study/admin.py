"""Organiser views: live progress and exclusions."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import sqlite_utils

from .db import write_transaction
from .design import Study, StudyConfig, create_study, get_study, log
from .export import participants_frame
from .sets import META_FILE, condition_name


@dataclass(frozen=True)
class Overview:
    participants: int
    consented: int
    completed: int
    excluded: int
    answers: int
    labels_needed: int  # trial items x k
    labels_done: int  # answers to trial items by included participants, capped at k per item
    per_condition: pd.DataFrame  # condition, items, min/max labels per item, labels done / needed

    @property
    def fraction_done(self) -> float:
        return self.labels_done / self.labels_needed if self.labels_needed else 1.0


def overview(db: sqlite_utils.Database, study: Study) -> Overview:
    p_total, p_consent, p_done, p_excl = db.execute(
        "SELECT count(*), count(consent_at), count(completed_at), coalesce(sum(excluded), 0) FROM participants WHERE study_id = ?",
        [study.id]).fetchone()
    answers = db.execute("SELECT count(*) FROM responses r JOIN participants p ON p.id = r.participant_id WHERE p.study_id = ?",
                         [study.id]).fetchone()[0]
    rows = db.execute(
        """
        SELECT i.condition, i.id,
               (SELECT count(*) FROM responses r JOIN participants p ON p.id = r.participant_id
                WHERE r.item_id = i.id AND p.excluded = 0)
        FROM items i WHERE i.study_id = ? AND i.role = 'trial'
        """, [study.id]).fetchall()
    per_item = pd.DataFrame(rows, columns=["condition", "item_id", "labels"])
    k = study.labels_per_item
    per_item["capped"] = per_item["labels"].clip(upper=k)
    per_condition = per_item.groupby("condition").agg(
        items=("item_id", "count"), min_labels=("labels", "min"), max_labels=("labels", "max"),
        labels_done=("capped", "sum")).reset_index()
    per_condition["labels_needed"] = per_condition["items"] * k
    return Overview(p_total, p_consent, p_done, int(p_excl), answers, int(len(per_item) * k),
                    int(per_item["capped"].sum()), per_condition)


def set_excluded(db: sqlite_utils.Database, slug: str, participant_uid: str, excluded: bool, reason: str = "") -> None:
    """Exclude (or re-include) a participant: their answers leave the statistics, and their items are
    offered to new participants again."""
    with write_transaction(db):
        study = get_study(db, slug)
        cursor = db.execute("UPDATE participants SET excluded = ?, exclusion_reason = ? WHERE study_id = ? AND uid = ?",
                            [int(excluded), reason[:200] if excluded else None, study.id, participant_uid])
        if cursor.rowcount != 1:
            raise LookupError(f"no participant {participant_uid!r} in study {slug}")
        log(db, study.id, "exclude" if excluded else "include", json.dumps({"participant": participant_uid, "reason": reason[:200]}))


def failing_catch(db: sqlite_utils.Database, study: Study, min_accuracy: float) -> list[str]:
    """Participants (uids, not yet excluded) whose catch-trial accuracy is below min_accuracy."""
    frame = participants_frame(db, study)
    failing = frame[(frame["catch_answered"] > 0) & (frame["catch_accuracy"] < min_accuracy) & ~frame["excluded"]]
    return failing["participant"].tolist()


def exclude_failing(db: sqlite_utils.Database, slug: str, participant_uids: list[str], threshold: float) -> None:
    """Exclude each of these participants, giving the catch-trial threshold they fell below as the reason."""
    for uid in participant_uids:
        set_excluded(db, slug, uid, True, f"catch accuracy below {threshold:.2f}")


def find_sets(root: str | Path, depth: int = 3) -> pd.DataFrame:
    """Set folders (a meta.csv inside) under root, at most `depth` levels down, for the Create form: folder,
    conditions and image count, read from meta.csv alone (create_study checks each set fully). Folders whose
    meta.csv cannot be read are listed with the reason instead of conditions."""
    root = Path(root)
    found = []
    if root.is_dir():
        for level in range(depth + 1):
            for meta in sorted(root.glob("/".join(["*"] * level + [META_FILE]))):
                found.append(_set_summary(meta.parent))
    return pd.DataFrame(found, columns=["folder", "conditions", "images"])


def _set_summary(folder: Path) -> dict:
    try:
        meta = pd.read_csv(folder / META_FILE, dtype=str, keep_default_na=False, nrows=100_000)
        conditions = sorted({condition_name(a, s) for a, s in zip(meta["attack"], meta["source"], strict=True)})
        return {"folder": str(folder), "conditions": ", ".join(conditions), "images": len(meta)}
    except (OSError, ValueError, KeyError, pd.errors.ParserError) as e:
        return {"folder": str(folder), "conditions": f"unreadable: {type(e).__name__}", "images": 0}


def study_from_form(*, slug: str, title: str, sets: str, catch_set: str, practice_set: str, labels_per_item: int,
                    items_per_participant: int, catch_per_participant: int, presentation_ms: int, completion_code: str,
                    redirect_url: str, picked_sets: list[str] = ()) -> tuple[StudyConfig, list[str], str | None, str | None]:
    """The organiser's Create form as create_study's arguments: (config, set folders, catch set, practice set).
    Text is stripped, an empty optional field is None, 0 ms means images stay until answered, and the set
    folders are the text area's non-empty lines, then the sets picked from the list of found ones."""
    config = StudyConfig(slug=slug.strip(), title=title.strip(), labels_per_item=int(labels_per_item),
                         items_per_participant=int(items_per_participant),
                         catch_per_participant=int(catch_per_participant),
                         presentation_ms=int(presentation_ms) or None, completion_code=completion_code.strip() or None,
                         redirect_url=redirect_url.strip() or None)
    folders = [line.strip() for line in sets.splitlines() if line.strip()]
    folders += [f for f in picked_sets if f not in folders]
    return config, folders, catch_set.strip() or None, practice_set.strip() or None


def create_from_form(db: sqlite_utils.Database, **form) -> StudyConfig:
    """Create the study the Create form describes (study_from_form's fields); returns its config. Raises
    DesignError or SetError for a form create_study refuses."""
    config, folders, catch_set, practice_set = study_from_form(**form)
    create_study(db, config, folders, catch_set, practice_set)
    return config
