"""Exports that cannot lie or attack, and that a stranger can read: one snapshot for all files while
participants answer, no cell a spreadsheet would run as a formula, fixed decimals and units, a Frictionless
datapackage.json that describes every file and column, no interval from too few participants."""
from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
import threading
import zipfile
from datetime import datetime

import numpy as np
import pandas as pd
import pytest
import test_study_support as support
from badinput import assert_one_line_error, run_main
from hypothesis import given, settings
from hypothesis import strategies as st

from study import consent, get_study, join, next_trial, open_db, record_answer
from study.admin import set_excluded
from study.cli import main
from study.db import open_db_readonly
from study.export import defuse, export_frames, export_study, export_zip
from study.export_schema import MIN_PARTICIPANTS_FOR_INTERVAL, column
from study.simulate import simulate_participant

cifar, study_sets = support.cifar, support.study_sets
FORMULA = "=cmd|' /C calc'!A0"
NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def csv_cells(path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        return [cell for row in csv.reader(f) for cell in row]


def answer_all(db, study, pid: str, rule) -> None:
    p = consent(db, join(db, study, pid))
    while (t := next_trial(db, p.id)) is not None:
        true = db.execute("SELECT i.true_label FROM assignments a JOIN items i ON i.id = a.item_id WHERE a.id = ?",
                          [t.assignment_id]).fetchone()[0]
        record_answer(db, p.id, t.assignment_id, rule(true), rt_ms=123.456789, mode="unlimited", input="click")


# --- one snapshot ------------------------------------------------------------------------------------

def test_export_while_participants_answer_agrees_with_itself(tmp_path, study_sets):
    path = tmp_path / "live.db"
    support.make_study(path, study_sets, slug="live", labels_per_item=20, items_per_participant=6,
                       items_per_condition=12, catch_per_participant=0, practice=False)
    stop, started = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for n in range(110):
                if stop.is_set():
                    return
                simulate_participant(path, "live", f"w{n}")
                started.set()
        except BaseException as e:  # reported by the test below
            errors.append(e)
            started.set()

    thread = threading.Thread(target=writer)
    thread.start()
    totals = []
    try:
        assert started.wait(60)
        db = open_db_readonly(path)
        try:
            for k in range(4):
                out = tmp_path / f"out{k}"
                export_study(db, out, "live", n_boot=2000)  # the bootstrap keeps the export busy while answers arrive
                responses = pd.read_csv(out / "responses.csv")
                participants = pd.read_csv(out / "participants.csv")
                summary = pd.read_csv(out / "summary.csv")
                assert participants["n_answered"].sum() == len(responses), k
                assert summary["n_answers"].sum() == len(responses), k
                assert set(participants.loc[participants["n_answered"] > 0, "participant"]) == set(responses["participant"])
                totals.append(len(responses))
        finally:
            db.close()
    finally:
        stop.set()
        thread.join(120)
    assert not errors, errors
    assert totals[-1] > totals[0]  # participants really answered while the exports ran


# --- formula injection ---------------------------------------------------------------------------------

def test_create_refuses_a_set_whose_names_a_spreadsheet_would_run(tmp_path, study_sets, capsys):
    hostile = tmp_path / "hostile"
    meta = (study_sets["root"] / "pgd-normal" / "meta.csv").read_text()
    (hostile / "images").mkdir(parents=True)
    for png in (study_sets["root"] / "pgd-normal" / "images").iterdir():
        (hostile / "images" / png.name).write_bytes(png.read_bytes())
    frame = pd.read_csv(io.StringIO(meta), dtype=str, keep_default_na=False)
    for col, value in (("attack", FORMULA), ("source", "@SUM(A1)"), ("pred:+evil", "1")):
        bad = frame.copy()
        bad[col] = value
        bad.to_csv(hostile / "meta.csv", index=False)
        db = tmp_path / f"{col.replace(':', '_')}.db"
        code, _, err = run_main(main, ["create", "--db", str(db), "--name", "h", "--set", str(hostile),
                                       "--items-per-participant", "2", "--catch-per-participant", "0"], capsys)
        assert_one_line_error(code, err, "a spreadsheet would run as a formula")
        assert not db.exists()
    code, _, err = run_main(main, ["create", "--db", str(tmp_path / "t.db"), "--name", "h", "--title", "=1+1",
                                   "--set", str(study_sets["conditions"][0]), "--items-per-participant", "2",
                                   "--catch-per-participant", "0"], capsys)
    assert_one_line_error(code, err, "formula")
    assert not (tmp_path / "t.db").exists()


def test_no_export_cell_starts_a_formula(tmp_path, study_sets, capsys):
    """A database holding outside text that a spreadsheet would run (made before `create` refused such names,
    or by hand): every CSV cell of the export is defused."""
    path = tmp_path / "s.db"
    support.make_study(path, study_sets, slug="f", labels_per_item=2, items_per_participant=3,
                       items_per_condition=4, catch_per_participant=1)
    db = open_db(path)
    study = get_study(db, "f")
    db.execute("UPDATE items SET attack = ?, source_model = ? WHERE role = 'trial' AND attack != 'clean'",
               [FORMULA, "+HYPERLINK(1)"])
    item = db.execute("SELECT min(id) FROM items WHERE role = 'trial'").fetchone()[0]
    db.execute("INSERT INTO item_predictions (item_id, model, pred) VALUES (?, ?, 3)", [item, "=1+2"])
    for pid in ("-2-3", "@me", "plain"):
        answer_all(db, study, pid, lambda true: true)
    db.execute("UPDATE participants SET external_study_id = ?, external_session_id = ? WHERE external_id = 'plain'",
               ["\tx", "\rx\ry"])
    uid = db.execute("SELECT uid FROM participants WHERE external_id = '@me'").fetchone()[0]
    set_excluded(db, "f", uid, True, "=1+1")
    db.close()
    code, _, err = run_main(main, ["export", "--db", str(path), "--out", str(tmp_path / "out"), "--bootstrap", "50",
                                   "--no-cifar10h"], capsys)
    assert code == 0, err
    files = sorted((tmp_path / "out").glob("*.csv"))
    assert len(files) == 4
    cells = [c for f in files for c in csv_cells(f)]
    assert [c for c in cells if c.startswith(("=", "+", "-", "@", "\t", "\r")) and not NUMBER.fullmatch(c)] == []
    # the hostile values are there, readable and inert
    for value in (FORMULA, "+HYPERLINK(1)", "-2-3", "@me", "=1+1", "\tx", "\rx\ry"):
        assert "'" + value in cells, value
    assert "pred:=1+2" in cells and "pred_class:=1+2" in cells  # a header not starting a formula stays as it is
    ro = open_db_readonly(path)
    frames = export_frames(ro, get_study(ro, "f"), n_boot=20)
    ro.close()
    with zipfile.ZipFile(io.BytesIO(export_zip(frames))) as zf:
        zipped = [c for name in zf.namelist() if name.endswith(".csv")
                  for row in csv.reader(io.StringIO(zf.read(name).decode())) for c in row]
    assert "'" + FORMULA in zipped and not [c for c in zipped if c.startswith("=")]


# --- readable: decimals, units, classes, datapackage ---------------------------------------------------------

def _cast(value: str, field: dict) -> None:
    kind = field["type"]
    if value == "":
        return
    if kind == "integer":
        int(value)
    elif kind == "number":
        decimals = column(field["name"])[1]
        assert re.fullmatch(rf"-?[0-9]+\.[0-9]{{{decimals}}}", value), (field["name"], value)
    elif kind == "boolean":
        assert value in ("True", "False"), (field["name"], value)
    elif kind == "datetime":
        assert datetime.fromisoformat(value).tzinfo is not None
    else:
        assert kind == "string"


def test_datapackage_describes_every_file_and_column(tmp_path, study_sets, data_dir):
    path = tmp_path / "s.db"
    support.make_study(path, study_sets, slug="described", labels_per_item=2, items_per_participant=3,
                       items_per_condition=4, catch_per_participant=1)
    db = open_db(path)
    study = get_study(db, "described")
    for pid in ("a", "b", "c"):
        answer_all(db, study, pid, lambda true: (true + 1) % 10)
    db.close()
    counts = np.load(data_dir / "cifar10h" / "counts.npy")
    out = tmp_path / "out"
    written = export_study(open_db_readonly(path), out, "described", cifar10h=counts, n_boot=50)
    names = sorted(p.name for p in written)
    assert names == sorted(["responses.csv", "items.csv", "summary.csv", "participants.csv", "cifar10h.csv",
                            "datapackage.json", "README.md"])
    package = json.loads((out / "datapackage.json").read_text())
    assert package["profile"] == "tabular-data-package" and re.fullmatch(r"[a-z0-9._-]+", package["name"])
    assert sorted(r["path"] for r in package["resources"]) == sorted(n for n in names if n.endswith(".csv"))
    readme = (out / "README.md").read_text()
    for resource in package["resources"]:
        assert resource["path"] in readme and resource["description"]
        fields = resource["schema"]["fields"]
        assert all(f["description"] for f in fields)
        with open(out / resource["path"], newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        assert rows[0] == [f["name"] for f in fields], resource["path"]
        for row in rows[1:]:
            assert len(row) == len(fields)
            for value, field in zip(row, fields, strict=True):
                _cast(value, field)
    items = pd.read_csv(out / "items.csv")
    noisy = items[items["attack"] == "PGD16"]
    assert (noisy["linf_255"] == 8.0).all()  # the stand-in sets add +-8/255 noise: 8 in 0-255 units
    assert (items["source_pred_class"].fillna("") == [study.classes[int(p)] if p == p else ""
                                                        for p in items["source_pred"]]).all()
    c10h = pd.read_csv(out / "cifar10h.csv")
    assert list(c10h["cifar10h_majority_class"]) == [study.classes[m] for m in c10h["cifar10h_majority"]]
    responses = (out / "responses.csv").read_text()
    assert ",123.5," in responses and "123.456789" not in responses


def test_no_interval_from_fewer_than_the_minimum_of_participants(tmp_path, study_sets):
    path = tmp_path / "s.db"
    support.make_study(path, study_sets, slug="few", labels_per_item=10, items_per_participant=2,
                       items_per_condition=2, catch_per_participant=0, practice=False,
                       conditions=["PGD16-vs-Normal ResNet-18", "clean"])
    db = open_db(path)
    study = get_study(db, "few")
    for n in range(MIN_PARTICIPANTS_FOR_INTERVAL):
        summary = export_frames(db, study, n_boot=200)["summary.csv"].set_index("condition")
        assert summary["human_accuracy_lo"].isna().all() and summary["share_source_pred_hi"].isna().all()
        answer_all(db, study, f"p{n}", (lambda true: true) if n % 2 else (lambda true: (true + 5) % 10))
    summary = export_frames(db, study, n_boot=200)["summary.csv"].query("role == 'trial'")
    assert (summary["n_participants"] == MIN_PARTICIPANTS_FOR_INTERVAL).all() and len(summary) == 2
    for _, row in summary.iterrows():
        assert row["human_accuracy_lo"] <= row["human_accuracy"] <= row["human_accuracy_hi"]
        assert row["human_accuracy_lo"] < row["human_accuracy_hi"]
    db.close()


# --- CIFAR-10H files that are not counts -----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["empty", "npz", "pickle", "text", "negative", "unlabelled", "float", "shape"])
def test_export_refuses_a_cifar10h_file_that_is_not_counts(tmp_path, study_sets, capsys, kind):
    path = tmp_path / "s.db"
    support.make_study(path, study_sets, slug="c", items_per_participant=3, items_per_condition=4)
    bad = tmp_path / f"counts.{'npz' if kind == 'npz' else 'npy'}"
    if kind == "empty":
        bad.write_bytes(b"")
    elif kind == "npz":
        np.savez(bad, counts=np.zeros((10000, 10), np.int64))
    elif kind == "pickle":
        np.save(bad, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif kind == "text":
        bad.write_text("not numpy\n")
    else:  # counts of the right file kind whose numbers cannot be shares (a division by zero, a share above 1)
        counts = np.full((10000, 10), 5, np.int64)
        counts[7] = {"negative": [-1] + [5] * 9, "unlabelled": [0] * 10}.get(kind, counts[7])
        np.save(bad, {"float": counts / 1.0, "shape": counts[:100]}.get(kind, counts))
    code, out, err = run_main(main, ["export", "--db", str(path), "--out", str(tmp_path / "out"), "--cifar10h",
                                     str(bad), "--bootstrap", "10"], capsys)
    assert_one_line_error(code, err, str(bad))
    assert not (tmp_path / "out").exists() and out == ""


def test_sqlite_left_readable(tmp_path, study_sets):
    """The snapshot ends with the export: a writer can take the write lock at once afterwards."""
    path = tmp_path / "s.db"
    support.make_study(path, study_sets, slug="r", items_per_participant=3, items_per_condition=4)
    ro = open_db_readonly(path)
    export_study(ro, tmp_path / "out", "r", n_boot=10)
    assert not ro.conn.in_transaction
    writer = sqlite3.connect(path, timeout=0.1)
    writer.execute("BEGIN EXCLUSIVE")
    writer.rollback()
    writer.close()
    ro.close()


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=20) | st.from_regex(r"[=+\-@\t\r][0-9eE.+\-]{0,6}"))
def test_defuse_leaves_no_formula_and_loses_nothing(text):
    out = defuse(text)
    assert out == text or out == "'" + text
    assert not out.startswith(("=", "+", "-", "@", "\t", "\r")) or NUMBER.fullmatch(out)
    if out != text:  # only what a spreadsheet would run is touched
        assert text.startswith(("=", "+", "-", "@", "\t", "\r")) and not NUMBER.fullmatch(text)
