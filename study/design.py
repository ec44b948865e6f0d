"""Creating, listing, closing studies."""
from __future__ import annotations

import json
import math
import re
import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import sqlite_utils

from .assign import AllocationError, Candidate, choose_items
from .db import StudyDBError, write_transaction
from .sets import CIFAR10_CLASSES, CLEAN, FORMULA_STARTS, SetItem, read_set, sha256
from .validate import KEY_RE

# Always used with fullmatch: `$` alone would accept a trailing newline.
SLUG_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
CODE_RE = re.compile(r"[A-Za-z0-9_-]{1,40}")
URL_RE = re.compile(r"https://[^\s<>\"'\\]{1,500}")
DEFAULT_INACTIVE_MIN = 5.0

DEFAULT_CONSENT = (
    "You are invited to take part in a research study on how people recognise small photos. "
    "You will see {images} tiny (32x32 pixel) images and choose which of ten object classes each shows. "
    "It takes about {minutes} minutes. Taking part is voluntary; you may stop at any time by closing the page. "
    "We store your answers, your response times and the participant id from your link; nothing else. "
    "The anonymised answers may be published for research."
)
# what studies created before the length was filled in store: read as the default, with their own length
LEGACY_CONSENT = DEFAULT_CONSENT.replace("{images} ", "").replace("{minutes}", "10")
SECONDS_PER_IMAGE, SECONDS_AROUND = 5, 60  # a generous pace per image; consent, instructions and the end page
DEFAULT_INSTRUCTIONS = (
    "Each image shows one of ten things: airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck. "
    "Pick the class you think it shows, using the buttons or the number keys 0-9. "
    "Some images are noisy or hard; go with your first impression. "
    "First come a few practice images with feedback, then the study itself."
)


class DesignError(ValueError):
    """The requested study cannot be built from the given sets and numbers."""


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class StudyConfig:
    slug: str
    title: str = ""
    labels_per_item: int = 3  # k: labels each trial item should get
    items_per_participant: int = 12  # trial items per participant, split equally over the conditions
    items_per_condition: int | None = None  # items drawn per condition (default: the smallest condition's size)
    catch_per_participant: int = 2
    presentation_ms: int | None = None  # None: image stays until answered
    # unanswered items of a participant with no answer for this long go back to the pool
    abandon_after_min: float = DEFAULT_INACTIVE_MIN
    completion_code: str | None = None
    redirect_url: str | None = None
    conditions: list[str] | None = None  # keep only these conditions (default: all in the sets)
    seed: int = 0
    consent_text: str = ""  # empty: DEFAULT_CONSENT with this study's number of images and minutes
    instructions_text: str = DEFAULT_INSTRUCTIONS
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if not isinstance(self.slug, str) or not SLUG_RE.fullmatch(self.slug):
            raise DesignError(f"study name {self.slug!r}: use 1-40 lowercase letters, digits and '-', starting with a letter or digit")
        if not isinstance(self.title, str) or self.title.startswith(FORMULA_STARTS):
            raise DesignError(f"title {self.title!r:.40}: text not starting with = + - @, tab or CR "
                              f"(a spreadsheet would run it as a formula)")
        for name in ("labels_per_item", "items_per_participant"):
            if int(getattr(self, name)) < 1:
                raise DesignError(f"{name} must be >= 1")
        if self.catch_per_participant < 0:
            raise DesignError("catch_per_participant must be >= 0")
        if self.items_per_condition is not None and self.items_per_condition < 1:
            raise DesignError("items_per_condition must be >= 1")
        if self.presentation_ms is not None and not 10 <= self.presentation_ms <= 10_000:
            raise DesignError("presentation_ms must be between 10 and 10000 (or unset for unlimited)")
        if self.abandon_after_min <= 0:
            raise DesignError("abandon_after_min must be > 0")
        if self.completion_code is not None and not CODE_RE.fullmatch(self.completion_code):
            raise DesignError("completion code: 1-40 letters, digits, '_' or '-'")
        if self.redirect_url is not None and not URL_RE.fullmatch(self.redirect_url):
            raise DesignError("redirect URL must start with https:// and contain no spaces, quotes or line breaks")


def _pick_per_condition(by_condition: dict[str, list[SetItem]], per_condition: int, rng: np.random.Generator) -> dict[str, list[SetItem]]:
    """Draw `per_condition` items per condition, preferring test images present in every condition
    (so conditions are compared on the same images)."""
    common = set.intersection(*({i.test_index for i in items} for items in by_condition.values()))
    common_order = sorted(common)
    common_rank = {t: r for r, t in enumerate(rng.permutation(common_order).tolist())} if common_order else {}
    picked = {}
    for condition, items in by_condition.items():
        tie = rng.random(len(items))
        ranked = sorted(range(len(items)), key=lambda j: (common_rank.get(items[j].test_index, len(common_rank)), tie[j]))
        picked[condition] = [items[j] for j in ranked[:per_condition]]
    return picked


def create_study(db: sqlite_utils.Database, config: StudyConfig, sets: list[str | Path],
                 catch_set: str | Path | None = None, practice_set: str | Path | None = None) -> int:
    """Build a study from set folders; returns its id. Everything is checked before anything is written."""
    check_numbers(config)
    config.validate()
    if not sets:
        raise DesignError("give at least one set folder for the study's conditions")
    trial_folders = {Path(path).resolve() for path in sets}
    for option, extra in (("--catch-set", catch_set), ("--practice-set", practice_set)):
        if extra and Path(extra).resolve() in trial_folders:  # its images would be both trials and checks
            raise DesignError(f"{option} {extra} is also a trial set (--set): give it a separate set of clean images")
    by_condition: dict[str, list[SetItem]] = {}
    trial_pairs = [(item, str(path)) for path in sets for item in read_set(path)]
    for item, _ in trial_pairs:
        by_condition.setdefault(item.condition, []).append(item)
    seen_keys: set[tuple[str, int]] = set()
    for item, path in trial_pairs:
        key = (item.condition, item.test_index)
        if key in seen_keys:
            raise DesignError(f"condition {item.condition}: test index {item.test_index} appears in more than one set ({path})")
        seen_keys.add(key)
    if config.conditions:
        unknown = sorted(set(config.conditions) - set(by_condition))
        if unknown:
            raise DesignError(f"conditions {unknown} not in the sets (found: {sorted(by_condition)})")
        by_condition = {c: by_condition[c] for c in config.conditions}
    conditions = sorted(by_condition)
    n_conditions = len(conditions)
    if config.items_per_participant % n_conditions:
        raise DesignError(f"items_per_participant={config.items_per_participant} must be a multiple of the "
                          f"{n_conditions} conditions {conditions} (balance within each participant)")
    trials_per_condition = config.items_per_participant // n_conditions
    smallest = min(len(v) for v in by_condition.values())
    per_condition = config.items_per_condition or smallest
    if per_condition > smallest:
        raise DesignError(f"items_per_condition={per_condition} but condition "
                          f"{min(by_condition, key=lambda c: len(by_condition[c]))} has only {smallest} items")
    if trials_per_condition > per_condition:
        raise DesignError(f"each participant needs {trials_per_condition} items per condition but a condition has only {per_condition}")
    rng = np.random.default_rng(config.seed)
    picked = _pick_per_condition(by_condition, per_condition, rng)
    folder_of = {(item.condition, item.test_index): path for item, path in trial_pairs}

    catch_pairs = [(i, str(catch_set)) for i in read_set(catch_set)] if catch_set else []
    if config.catch_per_participant and not catch_pairs:
        raise DesignError("catch trials requested but no catch set given (build one with `python -m study clean-set`)")
    practice_pairs = [(i, str(practice_set)) for i in read_set(practice_set)] if practice_set else []
    for item, path in catch_pairs + practice_pairs:
        if item.attack != CLEAN:
            raise DesignError(f"{path}: catch and practice images must be clean (attack 'clean'), found {item.attack!r}")
    if len(practice_pairs) > 10:
        raise DesignError(f"{len(practice_pairs)} practice images; use at most 10")
    study_origins = {i.test_index for items in picked.values() for i in items} | {i.test_index for i, _ in catch_pairs}
    overlap = sorted({i.test_index for i, _ in practice_pairs} & study_origins)
    if overlap:
        raise DesignError(f"practice images reuse test images of the study itself: {overlap[:10]}")

    # Dry run of the allocation on an empty study: proves one participant's list exists.
    candidates: list[Candidate] = []
    n = 0
    for c in conditions:
        for i in picked[c]:
            candidates.append(Candidate(n, "trial", c, i.test_index, 0))
            n += 1
    for i, _ in catch_pairs:
        candidates.append(Candidate(n, "catch", "", i.test_index, 0))
        n += 1
    try:
        choose_items(candidates, conditions, trials_per_condition, config.catch_per_participant,
                     config.labels_per_item, np.random.default_rng(0))
    except AllocationError as e:
        raise DesignError(str(e)) from e

    code = config.completion_code or secrets.token_hex(4).upper()
    link_key = new_link_key()
    design = {**asdict(config), "conditions": conditions, "trials_per_condition": trials_per_condition,
              "items_per_condition": per_condition, "sets": [str(p) for p in sets],
              "catch_set": str(catch_set) if catch_set else None, "practice_set": str(practice_set) if practice_set else None,
              "practice_images": len(practice_pairs)}
    with write_transaction(db):
        if db.execute("SELECT 1 FROM studies WHERE slug = ?", [config.slug]).fetchone():
            raise DesignError(f"a study named {config.slug!r} already exists")
        study_id = db["studies"].insert({
            "slug": config.slug, "title": config.title or config.slug, "status": "open", "created_at": utc_now(),
            "seed": int(config.seed), "labels_per_item": int(config.labels_per_item),
            "trials_per_condition": trials_per_condition, "catch_per_participant": int(config.catch_per_participant),
            "presentation_ms": config.presentation_ms, "abandon_after_min": float(config.abandon_after_min),
            "completion_code": code, "redirect_url": config.redirect_url, "link_key": link_key,
            "classes_json": json.dumps(list(CIFAR10_CLASSES)), "design_json": json.dumps(design),
        }).last_pk
        rows = [("trial", item, folder_of[(c, item.test_index)]) for c in conditions for item in picked[c]]
        rows += [("catch", item, path) for item, path in catch_pairs]
        rows += [("practice", item, path) for item, path in practice_pairs]
        for role, item, path in rows:
            item_id = db["items"].insert({
                "study_id": study_id, "role": role, "condition": CLEAN if role != "trial" else item.condition,
                "attack": item.attack, "source_model": item.source_model, "test_index": item.test_index,
                "true_label": item.true_label, "source_pred": item.source_pred, "linf": item.linf, "l2": item.l2,
                "png": item.png, "png_sha256": sha256(item.png), "set_dir": path, "set_file": item.file,
            }).last_pk
            if item.predictions:
                db["item_predictions"].insert_all(
                    [{"item_id": item_id, "model": m, "pred": p} for m, p in item.predictions.items()])
        log(db, study_id, "create", json.dumps({"items": len(rows), "conditions": conditions}))
    return study_id


def new_link_key() -> str:
    """The random key a participant link must carry (128 bits, URL-safe)."""
    return secrets.token_urlsafe(16)


def log(db: sqlite_utils.Database, study_id: int | None, action: str, detail: str = "") -> None:
    db.execute("INSERT INTO admin_log (study_id, at, action, detail) VALUES (?, ?, ?, ?)",
               [study_id, utc_now(), action, detail])


@dataclass(frozen=True)
class Study:
    id: int
    slug: str
    title: str
    status: str
    seed: int
    labels_per_item: int
    trials_per_condition: int
    catch_per_participant: int
    presentation_ms: int | None
    abandon_after_min: float
    completion_code: str
    redirect_url: str | None
    classes: tuple[str, ...]
    design: dict
    link_key: str

    @property
    def conditions(self) -> list[str]:
        return list(self.design["conditions"])

    @property
    def images_per_participant(self) -> int:
        """Practice, trial and catch images one participant sees (practice unknown for studies made before it
        was stored: 0)."""
        return (self.trials_per_condition * len(self.conditions) + self.catch_per_participant
                + int(self.design.get("practice_images", 0)))

    @property
    def consent_text(self) -> str:
        text = self.design.get("consent_text")
        if text and text != LEGACY_CONSENT:
            return text
        images = self.images_per_participant
        minutes = max(2, math.ceil((images * SECONDS_PER_IMAGE + SECONDS_AROUND) / 60))
        return DEFAULT_CONSENT.format(images=images, minutes=minutes)

    @property
    def instructions_text(self) -> str:
        return self.design.get("instructions_text") or DEFAULT_INSTRUCTIONS


_STUDY_COLUMNS = ("id, slug, title, status, seed, labels_per_item, trials_per_condition, catch_per_participant, "
                  "presentation_ms, abandon_after_min, completion_code, redirect_url, classes_json, design_json, link_key")


def _int(value: object, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _parsed(text: object, field: str, problems: list[str]) -> object:
    if not isinstance(text, str):
        problems.append(f"{field} is stored as {type(text).__name__}, not JSON text")
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        problems.append(f"{field} is not valid JSON")
        return None


def study_row_problems(row: tuple) -> list[str]:
    """Every stored field of a studies row (in _STUDY_COLUMNS order) checked for type and range before use;
    one line per problem (SQLite stores any type in any column, so the schema alone cannot promise them)."""
    (_id, slug, title, status, seed, labels, per_condition, catch, presentation_ms, abandon, code, redirect,
     classes_json, design_json, link_key) = row
    problems = []
    checks = [("slug", isinstance(slug, str) and SLUG_RE.fullmatch(slug), "1-40 lowercase letters, digits and '-'"),
              ("title", isinstance(title, str), "text"), ("status", status in ("open", "closed"), "open or closed"),
              ("seed", _int(seed, 0), "an integer >= 0"), ("labels_per_item", _int(labels, 1), "an integer >= 1"),
              ("trials_per_condition", _int(per_condition, 1), "an integer >= 1"),
              ("catch_per_participant", _int(catch, 0), "an integer >= 0"),
              ("presentation_ms", presentation_ms is None or _int(presentation_ms, 1), "null or an integer >= 1"),
              ("abandon_after_min", isinstance(abandon, int | float) and not isinstance(abandon, bool)
               and math.isfinite(abandon) and abandon > 0, "a positive number"),
              ("completion_code", isinstance(code, str), "text"),
              ("redirect_url", redirect is None or isinstance(redirect, str), "null or text"),
              ("link_key", isinstance(link_key, str) and KEY_RE.fullmatch(link_key), "16-64 letters, digits, - or _")]
    problems += [f"{field} is {_shown(value)}, expected {expected}" for (field, ok, expected), value in
                 zip(checks, (slug, title, status, seed, labels, per_condition, catch, presentation_ms, abandon, code,
                              redirect, link_key), strict=True) if not ok]
    classes = _parsed(classes_json, "classes_json", problems)
    if not (isinstance(classes, list) and len(classes) == len(CIFAR10_CLASSES)
            and all(isinstance(c, str) and c for c in classes) and len(set(classes)) == len(classes)):
        if not problems or not problems[-1].startswith("classes_json"):
            problems.append(f"classes_json is not a list of {len(CIFAR10_CLASSES)} distinct class names")
    design = _parsed(design_json, "design_json", problems)
    conditions = design.get("conditions") if isinstance(design, dict) else None
    if not (isinstance(conditions, list) and conditions and all(isinstance(c, str) and c for c in conditions)
            and len(set(conditions)) == len(conditions)):
        if not problems or not problems[-1].startswith("design_json"):
            problems.append("design_json has no list of distinct condition names")
    return problems


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _study(row) -> Study:
    problems = study_row_problems(tuple(row))
    if problems:
        raise StudyDBError(f"study {_shown(row[1])} in the database is damaged: {problems[0]} "
                           f"(`python -m study check` lists every problem)")
    *head, classes_json, design_json, link_key = row
    return Study(*head, classes=tuple(json.loads(classes_json)), design=json.loads(design_json), link_key=link_key)


class StudyNotFound(LookupError):
    pass


def get_study(db: sqlite_utils.Database, slug: str | None = None) -> Study:
    """A study by name; without a name, the only open study."""
    if slug is not None:
        row = db.execute(f"SELECT {_STUDY_COLUMNS} FROM studies WHERE slug = ?", [slug]).fetchone()
        if row is None:
            raise StudyNotFound(f"no study named {slug!r}")
        return _study(row)
    rows = db.execute(f"SELECT {_STUDY_COLUMNS} FROM studies WHERE status = 'open' ORDER BY id").fetchall()
    if len(rows) != 1:
        raise StudyNotFound("no open study" if not rows else f"{len(rows)} open studies: the link must name one (study=...)")
    return _study(rows[0])


def list_studies(db: sqlite_utils.Database) -> list[Study]:
    return [_study(r) for r in db.execute(f"SELECT {_STUDY_COLUMNS} FROM studies ORDER BY id").fetchall()]


def set_status(db: sqlite_utils.Database, slug: str, status: str) -> None:
    """Close (no new answers) or reopen a study."""
    if status not in ("open", "closed"):
        raise DesignError(f"status must be 'open' or 'closed', not {status!r}")
    with write_transaction(db):
        study = get_study(db, slug)
        db.execute("UPDATE studies SET status = ?, closed_at = ? WHERE id = ?",
                   [status, utc_now() if status == "closed" else None, study.id])
        log(db, study.id, status)


# Upper bounds on the study's numbers: far beyond any real study, low enough that a typo (10**19) is a clear
# error here rather than an overflow in SQLite or NumPy.
NUMBER_LIMITS: dict[str, tuple[int, int]] = {
    "labels_per_item": (1, 1_000), "items_per_participant": (1, 10_000), "items_per_condition": (1, 100_000),
    "catch_per_participant": (0, 1_000), "presentation_ms": (10, 10_000), "seed": (0, 2**32 - 1),
}
MAX_ABANDON_MIN = 7 * 24 * 60.0


def check_numbers(config: StudyConfig) -> None:
    """Types and ranges of a StudyConfig's numbers (None allowed where the field is optional)."""
    optional = {"items_per_condition", "presentation_ms"}
    for name, (low, high) in NUMBER_LIMITS.items():
        value = getattr(config, name)
        if value is None and name in optional:
            continue
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or not low <= value <= high:
            shown = repr(value) if len(repr(value)) <= 30 else repr(value)[:27] + "..."
            raise DesignError(f"{name} must be a whole number from {low} to {high}, got {shown}")
    minutes = config.abandon_after_min
    if isinstance(minutes, bool) or not isinstance(minutes, int | float) or not 0 < minutes <= MAX_ABANDON_MIN:
        raise DesignError(f"abandon_after_min must be a number of minutes above 0 and at most {MAX_ABANDON_MIN:g}, "
                          f"got {minutes!r}")
