"""Two runs of the report, table by table: do the same rows give the same numbers?

    python bench/compare_results.py OLD_RESULTS NEW_RESULTS [--only table2_transfer ...] [--gap 2]

OLD_RESULTS and NEW_RESULTS are `results/` folders (say the committed one and a fresh clone's after a cold
`reproduce`, or a GPU run's). Rows are matched on what names them (protocol, dataset, source, target, attack,
metric, seed and each table's own setting: sigma, k, relation, ...); for every CSV in both folders it prints the
rows matched, those only one side has, how many have the same n and the same count of correct images, and the
largest accuracy gap in points with its row. Rows whose gap exceeds --gap are listed. Nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

# what names a row; every other column is measured
KEYS = ("protocol", "dataset", "source", "target", "attack", "metric", "seed", "quantized", "sigma", "k",
        "min_confidence", "relation", "ratio", "matched_to")


def compare_tables(old: pd.DataFrame, new: pd.DataFrame) -> dict:
    """Matched rows, rows on one side only, rows with equal n and correct, and the gaps in points."""
    keys = [k for k in KEYS if k in old.columns and k in new.columns]
    if old.duplicated(keys).any() or new.duplicated(keys).any():
        raise ValueError(f"rows are not named uniquely by {keys}")
    merged = old.merge(new, on=keys, how="outer", suffixes=("_old", "_new"), indicator=True)
    both = merged[merged["_merge"] == "both"].copy()
    same = both["n_old"].eq(both["n_new"])
    if "correct_old" in both.columns:
        same &= both["correct_old"].eq(both["correct_new"])
    both["gap"] = (both["accuracy_new"] - both["accuracy_old"]).abs() * 100
    return {"keys": keys, "matched": len(both), "only_old": int((merged["_merge"] == "left_only").sum()),
            "only_new": int((merged["_merge"] == "right_only").sum()), "same": int(same.sum()),
            "rows": both.sort_values("gap", ascending=False)}


def name_row(row: pd.Series) -> str:
    """'source -> target: attack metric', the parts a row has."""
    def part(key: str) -> str:
        value = row.get(key)
        return "" if value is None or pd.isna(value) else str(value)

    pair = " -> ".join(p for p in (part("source"), part("target")) if p)
    return f"{pair}: {' '.join(p for p in (part('attack'), part('metric')) if p)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--only", nargs="+", metavar="KEY", help="table keys, e.g. table2_transfer")
    parser.add_argument("--gap", type=float, default=2.0, help="list rows whose accuracy differs by more points")
    args = parser.parse_args(argv)
    for folder in (args.old, args.new):
        if not folder.is_dir():
            parser.error(f"{folder} is not a folder")
    names = sorted({p.stem for p in args.old.glob("*.csv")} & {p.stem for p in args.new.glob("*.csv")})
    if args.only:
        names = [n for n in names if n in args.only]
    if not names:
        print("no table is in both folders")
        return 1
    total = matched = same = 0
    for name in names:
        old, new = pd.read_csv(args.old / f"{name}.csv"), pd.read_csv(args.new / f"{name}.csv")
        if "accuracy" not in old.columns or "accuracy" not in new.columns:
            continue
        try:
            found = compare_tables(old, new)
        except ValueError as exc:
            print(f"{name}: {exc}")
            continue
        rows = found["rows"]
        total += 1
        matched += found["matched"]
        same += found["same"]
        worst = rows.iloc[0] if len(rows) else None
        where = "" if worst is None else f"; largest gap {worst['gap']:.1f} points ({name_row(worst)})"
        print(f"{name}: {found['matched']} rows matched, {found['only_old']} only in the old, {found['only_new']} "
              f"only in the new; same n and correct: {found['same']}{where}")
        for _, row in rows[rows["gap"] > args.gap].iterrows():
            print(f"    {name_row(row)}: {row['gap']:.1f} points (n {row['n_old']:g} / {row['n_new']:g})")
    print(f"{total} tables, {matched} rows matched, {same} with the same n and correct")
    return 0


if __name__ == "__main__":
    sys.exit(main())
