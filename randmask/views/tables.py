"""Tables as the app shows them: every cell text with fixed decimals, MISSING where there is no number."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import pandas as pd

MISSING = "–"  # what a table cell shows where there is no number (never 'None' or 'nan')


def number_text(value: float | None, digits: int = 1) -> str:
    """A number for a table cell, always with `digits` decimals; MISSING for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{float(value):.{digits}f}"


def column_width(values: Iterable[object], header: str = "", per_char: float = 7, padding: int = 26) -> int:
    """Pixels a dataframe column needs to show its longest text whole (about 7 px a character, plus padding; a
    column of short numbers and plain words fits in 6.5 and 22)."""
    longest = max([len(str(v)) for v in values] + [len(header)], default=4)
    return int(per_char * longest) + padding


TIGHT = {"per_char": 6.5, "padding": 22}  # column_width for columns of digits and short names


def columns_that_fit(frame: pd.DataFrame, budget_px: int, **width: float) -> list[str]:
    """The frame's leading columns whose column_width(**width) together fit in budget_px (at least the first)."""
    chosen, used = [], 0
    for column in frame.columns:
        used += column_width(frame[column], str(column), **width)
        if chosen and used > budget_px:
            break
        chosen.append(column)
    return chosen


def column_widths(table: Sequence[Mapping] | pd.DataFrame, columns: Sequence[str]) -> dict[str, int]:
    """{column: column_width of its cells} for a table given as rows (dicts) or as a frame."""
    if isinstance(table, pd.DataFrame):
        return {c: column_width(table[c]) for c in columns}
    return {c: column_width(row[c] for row in table) for c in columns}


def ci_text(low: float, high: float) -> str:
    """A 95% interval given as fractions, as a cell: '12.3–45.6' (percent, one decimal)."""
    return f"{100 * low:.1f}–{100 * high:.1f}"


def comparison_column(attack: str, metric: str) -> str:
    """The column a comparison row goes in: its attack, or 'clean' for clean accuracy."""
    return attack or ("clean" if metric == "clean_accuracy" else metric)


def _status(notes: Sequence[str]) -> str:
    """One word on a target's row: measured (all its numbers, or some of them) or why not (the note's head)."""
    measured = [n == "" for n in notes]
    if all(measured):
        return "measured"
    if any(measured):
        return "partly measured"
    return notes[0].split(":")[0]


def comparison_table(comp: pd.DataFrame) -> pd.DataFrame:
    """compare_with_paper's rows as the table the app shows: one row per target, its status ('here'), then
    '<column> · paper' and, where we measured any target in that column, '<column> · ours' beside it; every
    cell is text with one decimal, or MISSING."""
    comp = comp.assign(column=[comparison_column(a, m) for a, m in zip(comp["attack"], comp["metric"], strict=True)])
    columns = list(dict.fromkeys(comp["column"]))
    measured = set(comp.loc[comp["ours"].notna(), "column"])  # an 'ours' column only where we have a number
    rows = []
    for target, part in comp.groupby("target", sort=False):
        row = {"target": target, "here": _status(part["note"].tolist())}
        for column in columns:
            cells = part[part["column"] == column]
            row[f"{column} · paper"] = number_text(cells["paper"].iloc[0] if len(cells) else None)
            if column in measured:
                row[f"{column} · ours"] = number_text(cells["ours"].iloc[0] if len(cells) else None)
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_details(comp: pd.DataFrame) -> pd.DataFrame:
    """compare_with_paper's rows for display: readable headers, numbers as text with MISSING for none."""
    return pd.DataFrame({
        "source": comp["source"].replace("", MISSING), "target": comp["target"],
        "attack": [comparison_column(a, m) for a, m in zip(comp["attack"], comp["metric"], strict=True)],
        "metric": comp["metric"].str.replace("_", " "),
        "paper %": comp["paper"].map(number_text), "ours %": comp["ours"].map(number_text),
        "ours 95% CI": [MISSING if lo != lo else f"{lo:.1f}–{hi:.1f}"
                        for lo, hi in zip(comp["ours_low"], comp["ours_high"], strict=True)],
        "n": comp["n"].map(lambda v: number_text(v, 0)),
        "ours − paper": comp["difference"].map(lambda v: MISSING if v != v else f"{v:+.1f}"),
        "why no number of ours": comp["note"].replace("", MISSING),
        "results file": comp["file"].replace("", MISSING)})


def transfer_table(rows: Sequence[Mapping]) -> list[dict]:
    """A transfer run's rows (protocols.transfer) as the app shows them: per target its defense rate with the
    95% interval, n and clean accuracy, as text; MISSING where nothing was measured (n = 0)."""
    clean = {r["target"]: r for r in rows if r["metric"] == "clean_accuracy"}
    table = []
    for r in rows:
        if r["metric"] != "defense_rate":
            continue
        c = clean.get(r["target"])
        table.append({"target": r["target"],
                      "defense rate (%)": number_text(100 * r["accuracy"] if r["n"] else None),
                      "95% CI (%)": ci_text(r["ci_low"], r["ci_high"]) if r["n"] else MISSING,
                      "n": str(int(r["n"])),
                      "clean accuracy (%)": number_text(100 * c["accuracy"] if c else None)})
    return table


def paper_shuffle_table(paper: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 3 as printed: one row per model, a column per grid, percent with two decimals."""
    part = paper[paper["table"] == 3]
    rows = {}
    for r in part.to_dict("records"):
        grid = re.sub(r"(?i)shuffle\s*(\d+)x(\d+)", r"\1×\2", str(r["attack"]))
        rows.setdefault(r["target"], {"model": r["target"]})[f"{grid} (%)"] = number_text(r["percent"], 2)
    return pd.DataFrame(list(rows.values()))




# ------------------------------------------------------------------------------------------------ tables that fit
def fold_columns(frame: pd.DataFrame, columns: Sequence[str] = ()) -> tuple[pd.DataFrame, list[str]]:
    """The frame less the named columns that hold one value in every row and less every column that is MISSING
    throughout; returns it with what those columns said ('column: value') for a caption, so a narrow page spends
    no width repeating one value."""
    folded, notes = [], []
    for column in frame.columns:
        cells = set(frame[column].astype(str))
        if len(frame) and len(cells) == 1 and (column in columns or cells == {MISSING}):
            folded.append(column)
            notes.append(f"{column}: {'none' if cells == {MISSING} else next(iter(cells))}")
    return frame.drop(columns=folded), notes


def comparison_groups(wide: pd.DataFrame) -> list[str]:
    """comparison_table's column groups in the order a page shows them: clean accuracy first, then the attacks
    we measured (paper and ours side by side), then the paper's alone."""
    groups = list(dict.fromkeys(c.rsplit(" · ", 1)[0] for c in wide.columns if " · " in c))
    measured = [g for g in groups if f"{g} · ours" in wide.columns]
    first = [g for g in groups if g == "clean"]
    return first + [g for g in measured if g not in first] + [g for g in groups if g not in measured and g not in first]


def group_columns(wide: pd.DataFrame, groups: Sequence[str]) -> list[str]:
    """The frame's columns of these groups, paper before ours."""
    return [c for g in groups for c in (f"{g} · paper", f"{g} · ours") if c in wide.columns]


def groups_that_fit(wide: pd.DataFrame, budget_px: int, pinned: Sequence[str] = ("target",)) -> list[str]:
    """The leading comparison_groups whose columns (at column_width(TIGHT), beside the pinned) fit in budget_px;
    at least one group."""
    used = sum(column_width(wide[c], c, **TIGHT) for c in pinned)
    chosen: list[str] = []
    for group in comparison_groups(wide):
        need = sum(column_width(wide[c], c, **TIGHT) for c in group_columns(wide, [group]))
        if chosen and used + need > budget_px:
            break
        chosen.append(group)
        used += need
    return chosen


def status_caption(wide: pd.DataFrame, listed: int = 8) -> str:
    """comparison_table's 'here' column said once: the most common status with its count, the others with the
    targets they apply to (up to `listed` names each)."""
    if "here" not in wide.columns or wide.empty:
        return ""
    counts = Counter(wide["here"]).most_common()  # ties in the order the table meets them
    parts = [f"{counts[0][1]} of {len(wide)} targets {counts[0][0]}"]
    for status, _ in counts[1:]:
        names = wide.loc[wide["here"] == status, "target"].tolist()
        shown = ", ".join(names[:listed]) + (f" and {len(names) - listed} more" if len(names) > listed else "")
        parts.append(f"{status}: {shown}")
    return "; ".join(parts) + "."


def details_for_page(comp: pd.DataFrame) -> pd.DataFrame:
    """comparison_details narrowed for a page: no metric column (the attack column says 'clean'), the reason for a
    missing number in its first words (the train command it may carry is listed apart)."""
    details = comparison_details(comp).drop(columns=["metric"])
    return details.assign(**{"why no number of ours": details["why no number of ours"].str.split(":").str[0]})
