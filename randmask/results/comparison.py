"""Paper tables beside our results: one row per paper number with ours where measured, and why not where not
(the target is not trained here: the command that trains it), plus Figure 7's accuracy/robustness points."""

from __future__ import annotations

import math

import pandas as pd

from randmask.core.errors import NotationError, RandmaskError
from randmask.core.notation import ModelRef, parse_ref
from randmask.core.settings import PROJECT_ROOT, user_runs_root
from randmask.results.paper import (
    TABLE_PROTOCOL,
    _our_attack,
    attack_key,
    model_key,
    result_target_key,
    shallow_ratio,
    table_dataset,
)
from randmask.results.zoo import ENSEMBLES, ZOO

NOT_MEASURED = "not measured here"
NOT_TRAINED = "not trained here"
NOT_A_NOTATION = "not trained here (no notation of ours names it)"


def _runs_hint() -> str:
    """Where the app looks for your models, as a command line would name it (relative inside the project)."""
    root = user_runs_root()
    try:
        return str(root.resolve().relative_to(PROJECT_ROOT.resolve()))
    except ValueError:
        return str(root)


def train_command(name: str, dataset: str = "cifar10") -> str | None:
    """The command that trains the model a paper table names, into the folder the app reads your models from
    (the zoo's command where the zoo plans it); None when no notation of ours names it."""
    try:
        ref = parse_ref(model_key(name))
    except NotationError:
        return None
    planned = [e.name for e in ZOO if not e.matched_to and (e.ref, e.dataset) == (ref, dataset)]
    planned += [n for n, (text, _) in ENSEMBLES.items() if (parse_ref(text), n.split("/")[0]) == (ref, dataset)]
    if planned:
        return f"python -m randmask zoo train --only {planned[0]}"
    seed, mask_seed = ref.seed, ref.mask_seed
    folder = ModelRef(ref.notation).slug + (f"-{dataset}" if dataset != "cifar10" else "")
    folder += f"-s{seed}m{mask_seed}" if seed or mask_seed else ""
    return (f'python -m randmask train "{ref.notation}" --preset quick'
            + (f" --dataset {dataset}" if dataset != "cifar10" else "")
            + (f" --seed {seed}" if seed else "") + (f" --mask-seed {mask_seed}" if mask_seed else "")
            + f" --out {_runs_hint()}/{folder}")


def missing_note(target: str, dataset: str = "cifar10", trained: set[str] | None = None) -> str:
    """Why a paper row has no number of ours: the target is trained but not measured, or not trained here (with
    the command that trains it). Without `trained` we cannot tell: 'not measured here'."""
    if trained is None or model_key(target) in trained:
        return NOT_MEASURED
    command = train_command(target, dataset)
    return f"{NOT_TRAINED}: {command}" if command else NOT_A_NOTATION


def compare_with_paper(paper: pd.DataFrame, ours: pd.DataFrame | None, table: int,
                       trained: set[str] | None = None) -> pd.DataFrame:
    """One row per (target, attack, metric) of a paper table: the paper's percent beside ours (percent, 95%
    interval, n, difference) where our results have the same source, target, attack and metric. `note` says
    why a row has none of ours (missing_note; `trained`: trained_model_keys of the table's data set)."""
    part = paper[paper["table"] == table].copy()
    if part.empty:
        raise RandmaskError(f"the paper's file has no table {table}; tables: {sorted(paper['table'].dropna().unique())}")
    part["source_key"] = part["source"].map(model_key)
    part["target_key"] = part["target"].map(model_key)
    part["attack_key"] = part["attack"].map(attack_key)
    columns = ["source", "target", "attack", "metric", "paper", "ours", "ours_low", "ours_high", "n", "difference",
               "file", "note"]
    dataset = table_dataset(table)
    if ours is None or ours.empty:
        out = part.rename(columns={"percent": "paper"})
        for col in ("ours", "ours_low", "ours_high", "n", "difference", "file"):
            out[col] = math.nan if col != "file" else ""
        out["source"] = out["source"].where(out["source"].map(lambda v: isinstance(v, str)), "")
        out["attack"] = out["attack"].where(out["attack"].map(lambda v: isinstance(v, str)), "")
        out["note"] = [missing_note(t, dataset, trained) for t in out["target"]]
        return out[columns].reset_index(drop=True)
    ours = ours.copy()
    if "protocol" in ours.columns:
        ours = ours[ours["protocol"].fillna(TABLE_PROTOCOL[table]) == TABLE_PROTOCOL[table]]
    if "metric" not in ours.columns:
        ours["metric"] = "defense_rate"
    records = ours.to_dict("records")
    index: dict[tuple, dict] = {}
    for row in records:
        metric = row.get("metric") or "defense_rate"
        clean = metric == "clean_accuracy"
        key = ("" if clean else model_key(row.get("source")), result_target_key(row), "" if clean else _our_attack(row),
               metric)
        index[key] = row  # a later file wins: results are listed in name order
    rows = []
    for prow in part.to_dict("records"):
        clean = prow["metric"] == "clean_accuracy"
        key = ("" if clean else prow["source_key"], prow["target_key"], "" if clean else prow["attack_key"],
               prow["metric"])
        mine = index.get(key)
        source = prow["source"] if isinstance(prow["source"], str) else ""
        row = {"source": source, "target": prow["target"], "attack": prow["attack"] if isinstance(prow["attack"], str) else "",
               "metric": prow["metric"], "paper": float(prow["percent"]), "ours": math.nan, "ours_low": math.nan,
               "ours_high": math.nan, "n": math.nan, "difference": math.nan, "file": "",
               "note": missing_note(prow["target"], dataset, trained)}
        if mine is not None:
            row.update(ours=100 * float(mine["accuracy"]), ours_low=100 * float(mine["ci_low"]),
                       ours_high=100 * float(mine["ci_high"]), n=float(mine["n"]), file=mine.get("file", ""), note="")
            row["difference"] = row["ours"] - row["paper"]
            if not row["n"] or row["ours"] != row["ours"]:  # n = 0: the attack fooled the source on no image
                row["note"] = "no estimate here (n = 0: the attack fooled the source on none of its images)"
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def untrained_targets(comp: pd.DataFrame) -> list[tuple[str, str]]:
    """[(target, the command that trains it)] for the table's targets not trained here, in table order."""
    prefix = f"{NOT_TRAINED}: "
    out = dict.fromkeys(t for t, n in zip(comp["target"], comp["note"], strict=True) if n.startswith(prefix))
    notes = dict(zip(comp["target"], comp["note"], strict=True))
    return [(t, notes[t].removeprefix(prefix)) for t in out]


def results_without_paper(paper, ours, table: int) -> list[dict]:
    """Our attacked rows (defense rates; accuracies under attack for the white-box table) of a table's protocol
    that no number of the paper's table matches (same source, target, attack): measured beyond the paper, such as
    the controls, so a side-by-side table would otherwise drop them."""
    part = paper[(paper["table"] == table) & (paper["metric"] != "clean_accuracy")]
    known = {(model_key(r["source"]), model_key(r["target"]), attack_key(r["attack"])) for r in part.to_dict("records")}
    if ours is None or ours.empty:
        return []
    frame = ours
    if "protocol" in frame.columns:
        frame = frame[frame["protocol"].fillna(TABLE_PROTOCOL[table]) == TABLE_PROTOCOL[table]]
    return [r for r in frame.to_dict("records") if r.get("metric", "defense_rate") != "clean_accuracy"
            and (model_key(r.get("source")), result_target_key(r), _our_attack(r)) not in known]


def tradeoff_points(paper, ours, source: str, attack: str):
    """Figure 7: for Normal ResNet-18 and every r-Shallow model, clean accuracy against defense rate under one
    source and attack, from the paper (its Tables 7-11) and from our transfer results where present. Percent;
    our points carry 95% intervals."""
    src, atk = model_key(source), attack_key(attack)
    rows = []
    part = paper[paper["table"].isin([7, 8, 9, 10, 11]) & (paper["source"].map(model_key) == src)]
    clean = {model_key(r["target"]): r["percent"] for r in part[part["metric"] == "clean_accuracy"].to_dict("records")}
    for r in part[part["metric"] == "defense_rate"].to_dict("records"):
        ratio, target = shallow_ratio(r["target"]), model_key(r["target"])
        if ratio is not None and attack_key(r["attack"]) == atk and target in clean:
            rows.append({"origin": "paper", "target": target, "ratio": ratio, "clean_accuracy": float(clean[target]),
                         "defense_rate": float(r["percent"])})
    if ours is not None and not ours.empty:
        frame = ours.copy()
        if "protocol" in frame.columns:
            frame = frame[frame["protocol"].fillna("transfer") == "transfer"]
        if "dataset" in frame.columns:
            frame = frame[frame["dataset"].fillna("cifar10").isin(["cifar10", ""])]
        if "metric" not in frame.columns:
            frame["metric"] = "defense_rate"
        records = frame.to_dict("records")
        ours_clean = {model_key(r["target"]): r for r in records if r["metric"] == "clean_accuracy"}
        for r in records:
            ratio, target = shallow_ratio(r["target"]), model_key(r["target"])
            if (r["metric"] != "defense_rate" or ratio is None or target not in ours_clean
                    or model_key(r["source"]) != src or _our_attack(r) != atk):
                continue
            c = ours_clean[target]
            rows.append({"origin": "ours", "target": target, "ratio": ratio,
                         "clean_accuracy": 100 * float(c["accuracy"]), "defense_rate": 100 * float(r["accuracy"]),
                         "defense_low": 100 * float(r["ci_low"]), "defense_high": 100 * float(r["ci_high"]),
                         "clean_low": 100 * float(c["ci_low"]), "clean_high": 100 * float(c["ci_high"])})
    columns = ["origin", "target", "ratio", "clean_accuracy", "defense_rate", "defense_low", "defense_high",
               "clean_low", "clean_high"]
    return pd.DataFrame(rows, columns=columns).sort_values(["origin", "ratio"]).reset_index(drop=True)


