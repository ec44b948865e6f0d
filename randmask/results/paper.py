"""The paper's numbers and ours, keyed alike: the paper's tables (one CSV), our results/ CSVs, and the key
that names a model or an attack the same way in both.

A model's key is its reference (randmask.core.notation.ModelRef: canonical notation plus '@s<seed>m<mask seed>'):
Table 5's '0.5-Shallow (other init)' is the zoo's seed-1 copy ('0.5-Shallow@s1m0') and '0.5-ShallowDIF' its
mask-seed-1 copy ('0.5-Shallow@s0m1'); an accuracy-matched control keeps its recipe ('Normal ResNet-18 (4 epochs)').
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from randmask.core.errors import NotationError, RandmaskError
from randmask.core.notation import ModelRef, format_ref, parse_model, parse_ref
from randmask.core.settings import paper_tables_path, results_root

# Table 5's twins of a net: the zoo trains its "other init" as seed 1 and its "DIF" (other mask) as mask seed 1
RELATION_SEEDS = {"other init": (1, 0), "DIF": (0, 1)}
_CONTROL_REMARK = re.compile(r"\d+ epochs(, [\d,]+ images)?")


PAPER_TABLES = {
    1: "Table 1 · Madry et al.'s black-box setting",
    3: "Table 3 · patch shuffle (ImageNet in the paper)",
    4: "Table 4 · white-box attacks",
    5: "Table 5 · gray-box transfer (FGSM16)",
    6: "Table 6 · MNIST black-box (DenseNet-121 source)",
    7: "Table 7 · transfer from DenseNet-121",
    8: "Table 8 · transfer from ResNet-18",
    9: "Table 9 · transfer from ResNet-50",
    10: "Table 10 · transfer from SENet-18",
    11: "Table 11 · transfer from VGG-19",
}
TABLE_PROTOCOL = {1: "madry", 3: "shuffle", 4: "whitebox", 5: "graybox", 6: "mnist", 7: "transfer", 8: "transfer",
                  9: "transfer", 10: "transfer", 11: "transfer"}
RESULT_COLUMNS = ("source", "target", "attack", "n", "accuracy", "ci_low", "ci_high")


def model_key(name) -> str:
    """A name compared across the paper's file and ours: the model reference where it parses, else the name as
    written. A trailing remark in parentheses is dropped ('0.85-Shallow (Random Mask)') unless it names another
    model: Table 5's '(other init)' and 'DIF' become seeds, an accuracy-matched control keeps '(4 epochs)'."""
    if not isinstance(name, str) or not name.strip():
        return ""
    text, suffix, relation = name.strip(), "", None
    if text.endswith(")") and " (" in text:
        text, _, remark = text.partition(" (")
        remark = remark[:-1]
        if remark == "other init":
            relation = remark
        elif _CONTROL_REMARK.fullmatch(remark):
            suffix = f" ({remark})"
    elif text.endswith("DIF"):
        text, relation = text.removesuffix("DIF"), "DIF"
    try:
        return twin_key(text, relation) + suffix
    except NotationError:
        return name.strip() if relation else text + suffix


def twin_key(name: str, relation: str | None = None) -> str:
    """The reference of a net, or of its Table 5 twin: ('0.5-Shallow', 'other init') -> '0.5-Shallow@s1m0',
    ('0.5-Shallow', 'DIF') -> '0.5-Shallow@s0m1'. Raises NotationError for a name no notation of ours reads."""
    ref = parse_ref(name)
    return format_ref(ModelRef(ref.notation, *RELATION_SEEDS[relation]) if relation else ref)


def attack_key(name) -> str:
    """'PGD 7x2 eps8' and 'pgd 7x2 eps8', 'shuffle 2x2' and 'shuffle2x2' compare equal."""
    if not isinstance(name, str):
        return ""
    return re.sub(r"\s+", "", name).lower()


def load_paper_tables(path: Path | None = None):
    """The paper's numbers as a DataFrame (table, setting, source, target, attack, metric, percent)."""
    path = path or paper_tables_path()
    if path is None or not Path(path).exists():
        raise RandmaskError("the paper's tables were not found: set RANDMASK_PAPER_TABLES to paper_tables.csv")
    frame = pd.read_csv(path, dtype={"table": "Int64"})
    missing = {"table", "source", "target", "attack", "metric", "percent"} - set(frame.columns)
    if missing:
        raise RandmaskError(f"{path} lacks column(s) {', '.join(sorted(missing))}")
    return frame


def load_results(root: Path | None = None):
    """Every CSV under results/ with at least source, target, attack, n, accuracy, ci_low, ci_high, joined into
    one DataFrame with a `file` column; returns (frame, problems) - unreadable files are named, not fatal."""
    root = root or results_root()
    frames, problems = [], []
    for path in sorted(root.rglob("*.csv")) if root.is_dir() else []:
        try:
            frame = pd.read_csv(path, keep_default_na=True)
        except Exception as exc:  # pandas raises several parser error types
            problems.append(f"{path.name}: cannot read ({exc})")
            continue
        missing = [c for c in RESULT_COLUMNS if c not in frame.columns]
        if missing:
            problems.append(f"{path.name}: no column(s) {', '.join(missing)}; skipped")
            continue
        frame["file"] = str(path.relative_to(root))
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=[*RESULT_COLUMNS, "metric", "protocol", "file"]), problems
    return pd.concat(frames, ignore_index=True), problems


def _our_attack(row) -> str:
    paper = row.get("paper_attack")
    return attack_key(paper if isinstance(paper, str) and paper else row.get("attack"))


def result_target_key(row) -> str:
    """A results row's target as a key: gray-box rows (Table 5) say in a `relation` column which copy of the
    target they attacked ('other init', 'DIF'); the target itself is named by notation or a control's label."""
    target = model_key(str(row.get("target", "")))
    relation = row.get("relation")
    try:
        return twin_key(target, relation) if relation in RELATION_SEEDS else target
    except NotationError:
        return target


TABLE_DATASET = {6: "mnist"}  # every other table of the paper is CIFAR-10


def table_dataset(table: int) -> str:
    return TABLE_DATASET.get(table, "cifar10")


def trained_model_keys(refs: Iterable[ModelRef]) -> set[str]:
    """The trained models (their references) as keys: what a paper table's row is compared against."""
    return {format_ref(ref) for ref in refs}


def shallow_ratio(name) -> float | None:
    """0 for Normal ResNet-18, r for 'r-Shallow', None for anything else (Figure 7's x-Shallow family)."""
    key = model_key(name)
    if key == "Normal ResNet-18":
        return 0.0
    try:
        spec = parse_model(key)
    except NotationError:
        return None
    if spec.ensemble == 1 and len(spec.masks) == 1:
        term = spec.masks[0]
        if term.part == "Shallow" and term.kind == "random" and term.multiplier == 1:
            return term.ratio
    return None


def paper_sources(paper) -> list[str]:
    """The black-box sources of Tables 7-11, in table order."""
    part = paper[paper["table"].isin([7, 8, 9, 10, 11])]
    return list(dict.fromkeys(part["source"].dropna()))


def paper_attacks(paper, source: str) -> list[str]:
    part = paper[paper["table"].isin([7, 8, 9, 10, 11]) & (paper["source"].map(model_key) == model_key(source))]
    return list(dict.fromkeys(part["attack"].dropna()))

