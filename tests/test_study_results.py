"""Results of a study (study/results.py), the Results tab and `python -m study report`: simulated participants
with known behaviour, run through the real assignment and answer code, are recovered within the intervals."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import test_study_support as support

from study import get_study, open_db
from study.report import enlarged, figures, report_html
from study.results import MIN_BOOT_PARTICIPANTS, compute_results, kappa_with_interval, wilson
from study.simulate import simulate_participant

cifar, study_sets = support.cifar, support.study_sets
CLEAN_C, FOOLED_C, ROBUST_C = "clean", "PGD16-vs-Normal ResNet-18", "PGD16-vs-0.9-Shallow"
ACCURACY = {CLEAN_C: 0.9, FOOLED_C: 0.45, ROBUST_C: 0.7}  # what the simulated people get right
TENDENCY = 0.6  # a wrong answer to an image the model was fooled on picks the model's label this often (else uniform)
EXPECTED_SHARE_OF_WRONG = TENDENCY + (1 - TENDENCY) / 9


def behaviour(db_path: Path):
    """choose(trial, rng) for simulate_participant: known accuracy per condition and tendency to the model's label."""
    db = open_db(db_path)

    def choose(trial, rng) -> int:
        # read each time: the unshown part of a list is chosen again at the participant's first answer
        role, condition, true, source = db.execute(
            "SELECT i.role, i.condition, i.true_label, i.source_pred FROM assignments a "
            "JOIN items i ON i.id = a.item_id WHERE a.id = ?", [trial.assignment_id]).fetchone()
        if role != "trial" or rng.random() < ACCURACY[condition]:
            return true
        if source is not None and source != true and rng.random() < TENDENCY:
            return source
        return int(rng.choice([c for c in range(10) if c != true]))

    return choose, db


def run_study(db_path: Path, sets, n: int, *, labels_per_item: int, seed: int = 0) -> None:
    support.make_study(db_path, sets, labels_per_item=labels_per_item)
    choose, db = behaviour(db_path)
    try:
        for p in range(n):
            simulate_participant(db_path, "s1", f"sim{p}", seed=seed, choose=choose)
    finally:
        db.close()


@pytest.fixture(scope="module")
def simulated(study_sets, tmp_path_factory):
    """48 participants (each 2 images per condition + 2 catch), every item labelled 8 times."""
    path = tmp_path_factory.mktemp("results") / "sim.db"
    run_study(path, study_sets, 48, labels_per_item=8)
    db = open_db(path)
    yield db, get_study(db, "s1")
    db.close()


def test_results_recover_known_behaviour(simulated):
    db, study = simulated
    results = compute_results(db, study, n_boot=500)
    acc = results.accuracy.set_index("condition")
    for condition, truth in ACCURACY.items():
        row = acc.loc[condition]
        assert row["n_answers"] == 96 and row["n_participants"] == 48
        assert row["wilson_lo"] <= truth <= row["wilson_hi"], (condition, row.to_dict())
        # the participant bootstrap agrees with the textbook interval (coverage of the truth is Wilson's to show:
        # the percentile interval is centred on the estimate, and one draw at 2 SE from the truth missed it)
        assert abs(row["bootstrap_lo"] - row["wilson_lo"]) < 0.03 and abs(row["bootstrap_hi"] - row["wilson_hi"]) < 0.03
        assert row["wilson_hi"] - row["wilson_lo"] < 0.25
    fooled = results.fooled.set_index("condition")
    assert set(fooled.index) == {FOOLED_C, ROBUST_C}  # clean images have no attacked model
    row = fooled.loc[FOOLED_C]
    assert row["wilson_lo"] <= EXPECTED_SHARE_OF_WRONG <= row["wilson_hi"], row.to_dict()
    assert row["wilson_lo"] > row["chance_share_of_wrong"] == pytest.approx(1 / 9)
    assert fooled.loc[ROBUST_C, "n_items_fooled"] == 0 and "not fooled" in fooled.loc[ROBUST_C, "note"]
    # the confusion matrix holds every answer, on the diagonal as often as the answers are right
    matrix = results.confusion[FOOLED_C]
    assert matrix.sum() == 96 and np.trace(matrix) == round(acc.loc[FOOLED_C, "accuracy"] * 96)


def test_agreement_with_models(simulated):
    db, study = simulated
    agreement = compute_results(db, study, n_boot=100).agreement.set_index(["condition", "model"])
    # the robust stand-in always predicts the true class; 8 people at 70% make the majority right almost always
    robust = agreement.loc[(ROBUST_C, "0.9-Shallow (attacked)")]
    assert robust["kappa"] > 0.9 and robust["n_items"] + robust["n_ties_left_out"] == 12
    # the fooled stand-in always predicts the next class: people's majority often disagrees with it
    fooled = agreement.loc[(FOOLED_C, "Normal ResNet-18 (attacked)")]
    assert -1 <= fooled["kappa_lo"] < fooled["kappa"] < fooled["kappa_hi"] < robust["kappa"]


def test_one_participant_gets_no_bootstrap_interval(tmp_path, study_sets):
    path = tmp_path / "one.db"
    run_study(path, study_sets, 1, labels_per_item=2)
    db = open_db(path)
    try:
        results = compute_results(db, get_study(db, "s1"), n_boot=100)
    finally:
        db.close()
    acc = results.accuracy
    assert acc["bootstrap_lo"].isna().all() and acc["bootstrap_hi"].isna().all()
    assert all(f"needs {MIN_BOOT_PARTICIPANTS} participants, 1 so far" in n for n in acc["note"])
    assert (acc["wilson_hi"] - acc["wilson_lo"] > 0.3).all()  # two answers: a wide interval, never a point
    assert any("1 participant(s) so far" in n for n in results.notes)


def test_wilson_and_kappa_helpers():
    low, high = wilson(2, 2)
    assert high == pytest.approx(1.0) and low == pytest.approx(0.3424, abs=1e-4)  # the textbook value
    assert np.isnan(wilson(0, 0)[0])
    kappa, lo, hi = kappa_with_interval(np.array([0, 1, 2, 3] * 5), np.array([0, 1, 2, 3] * 5), 10)
    assert kappa == pytest.approx(1.0) and np.isnan(lo) and np.isnan(hi)  # full agreement: no zero-width interval
    kappa, lo, hi = kappa_with_interval(np.array([0, 1, 2, 3] * 5), np.array([0, 1, 2, 3] * 4 + [1, 0, 2, 3]), 10)
    assert -1 <= lo < kappa < hi <= 1 and kappa == pytest.approx((18 / 20 - 0.25) / 0.75)
    assert np.isnan(kappa_with_interval(np.array([4, 4]), np.array([4, 4]), 10)[0])


def test_images_that_fooled_people_most(simulated):
    db, study = simulated
    top = compute_results(db, study, n_boot=10).top
    assert len(top) == 6 and (top["share_true"] < 1).all()
    # first the images people labelled with the fooled model's label; the robust model's true label never counts
    first = top.iloc[0]
    assert first["condition"] == FOOLED_C and first["share_adversarial"] == top["share_adversarial"].max() > 0
    assert (top.loc[top["condition"] != FOOLED_C, "share_adversarial"] == 0).all()
    assert top["share_adversarial"].is_monotonic_decreasing


def test_enlarged_images_keep_their_pixels(simulated):
    db, study = simulated
    png = db.execute("SELECT png FROM items LIMIT 1").fetchone()[0]
    big = enlarged(png, 6)
    from study.sets import decode_png
    small = decode_png(png)
    assert big.shape == (192, 192, 3) and (big[::6, ::6] == small).all() and (big[5::6, 5::6] == small).all()


def test_report_html_holds_every_figure_offline(simulated):
    db, study = simulated
    results = compute_results(db, study, n_boot=100)
    made = figures(results)
    assert {"accuracy", "fooled", "agreement", "confusion", "reaction-times", "top-1"} <= set(made)
    page = report_html(results, made)
    for name in made:
        assert f'id="figure-{name}"' in page
    assert page.count("image-rendering: pixelated") == 1 and page.count('<img alt="test image') == len(results.top) == 6
    # self-contained: no script, stylesheet or image is fetched from anywhere
    assert not re.search(r"<(script|img|link)[^>]+(src|href)=[\"']?(https?:)?//", page)
    assert "Plotly.newPlot" in page and "plotly.js v" in page.lower()


# --- python -m study report ------------------------------------------------------------------------------

def report(*args: str) -> int:
    from study.cli import main
    return main(["report", *args])


def test_report_cli_writes_one_html_file(simulated, tmp_path, capsys):
    db, _ = simulated
    db_file = db.execute("PRAGMA database_list").fetchone()[2]
    out = tmp_path / "deep" / "report"
    assert report("--db", db_file, "--out", str(out), "--no-cifar10h", "--bootstrap", "200") == 0
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[0] == str(out / "report.html")
    assert "kaleido is not installed" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["report.html"]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # as mkdir would make it, not private
    assert not [p for p in out.parent.iterdir() if p.name != "report"]  # no temporary folder left beside it
    page = (out / "report.html").read_text()
    assert 'id="figure-accuracy"' in page and 'id="figure-top-6"' in page
    # a second run into the same folder is refused, and the first report is untouched
    (out / "mine.txt").write_text("keep")
    assert report("--db", db_file, "--out", str(out), "--no-cifar10h") == 2
    assert "already exists; choose another --out or pass --overwrite" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "keep"
    # --overwrite replaces an earlier report only, never a folder holding anything else
    assert report("--db", db_file, "--out", str(out), "--no-cifar10h", "--overwrite") == 2
    assert "is not an earlier report" in capsys.readouterr().err and (out / "mine.txt").read_text() == "keep"
    (out / "mine.txt").unlink()
    assert report("--db", db_file, "--out", str(out), "--no-cifar10h", "--bootstrap", "50", "--overwrite") == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.html"]


def test_report_cli_refusals_leave_nothing(simulated, tmp_path, capsys):
    db, _ = simulated
    db_file = Path(db.execute("PRAGMA database_list").fetchone()[2])
    before = sorted(p.name for p in db_file.parent.iterdir())
    cases = [
        (["--db", str(db_file), "--out", str(db_file.parent), "--overwrite"], "would overwrite an input"),
        (["--db", str(db_file), "--out", str(db_file)], "would overwrite an input"),
        (["--db", str(db_file), "--out", str(tmp_path), "--overwrite", "--cifar10h", str(tmp_path / "c" / "counts.npy")],
         "CIFAR-10H counts not found"),
        (["--db", str(tmp_path / "missing.db"), "--out", str(tmp_path / "r1")], "missing.db"),
        (["--db", str(db_file), "--out", str(tmp_path / "r2"), "--study", "nope"], "no study named 'nope'"),
        (["--db", str(db_file), "--out", str(tmp_path / "r3"), "--bootstrap", "-1"], "--bootstrap"),
    ]
    for args, message in cases:
        assert report(*args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in db_file.parent.iterdir()) == before
    assert not list(tmp_path.iterdir())


# --- the organiser page's Results tab --------------------------------------------------------------------

def test_results_tab_shows_every_figure(simulated, monkeypatch):
    from streamlit.testing.v1 import AppTest
    db, study = simulated
    monkeypatch.setenv("STUDY_DB", db.execute("PRAGMA database_list").fetchone()[2])
    monkeypatch.setenv("STUDY_ADMIN_PASSWORD", "test-organiser-pw")
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "pages" / "study_admin.py"), default_timeout=60).run()
    at.text_input(key="admin_password").input("test-organiser-pw")
    at = at.button[0].click().run()
    assert not at.exception
    assert [t.label for t in at.tabs][:2] == ["Progress", "Results"]
    charts = at.get("plotly_chart")
    expected = set(figures(compute_results(db, study, n_boot=10)))
    assert len(charts) == len(expected) == 11
    subheaders = [s.value for s in at.subheader]
    assert {"Human accuracy", "Agreement with the models", "Images that fooled people most"} <= set(subheaders)
    tables = [t.value for t in at.dataframe]
    accuracy = next(t for t in tables if "Wilson 95% CI" in t.columns and "participant bootstrap 95% CI" in t.columns)
    assert set(accuracy["condition"]) >= set(ACCURACY) and (accuracy["participants"] == "48").sum() == 3
    images = at.get("image")  # lossless PNGs (Streamlit's default would be a smoothing JPEG)
    assert len(images) == 6 and all(i.proto.imgs[0].url.endswith(".png") for i in images)
    # the image that fooled people most is one the attacked model was fooled on, its label shown beside it
    assert "Normal ResNet-18 (attacked)" in images[0].proto.imgs[0].caption
    at.toggle(key="live").set_value(False).run()  # the live switch off: the same results, drawn once
    assert not at.exception and len(at.get("plotly_chart")) == len(expected)
    at.button(key="prepare-report").click().run()
    assert any(b.proto.label == "Download report.html" for b in at.get("download_button"))


@pytest.mark.parametrize("participants", [0, 3])
def test_report_of_a_study_without_models_or_answers(tmp_path, study_sets, participants, capsys):
    """Clean images only (no attacked model, no model labels), before and after the first answers."""
    path = tmp_path / "plain.db"
    support.make_study(path, {**study_sets, "conditions": [study_sets["conditions"][0]]}, items_per_participant=2)
    for p in range(participants):
        simulate_participant(path, "s1", f"p{p}")
    db = open_db(path)
    try:
        results = compute_results(db, get_study(db, "s1"), n_boot=50)
    finally:
        db.close()
    assert results.fooled.empty and results.agreement.empty and results.empty == (participants == 0)
    assert report("--db", str(path), "--out", str(tmp_path / "r"), "--no-cifar10h") == 0, capsys.readouterr().err
    page = (tmp_path / "r" / "report.html").read_text()
    assert 'id="figure-agreement"' in page and ("No image was labelled wrongly yet" in page) == (participants == 0)


def test_report_cli_writes_a_png_per_figure_when_kaleido_is_there(simulated, tmp_path, capsys, monkeypatch):
    """kaleido is not installed here: a stand-in module, and Figure.write_image writing what it was asked."""
    import sys
    import types

    import plotly.graph_objects as go
    asked = []

    def write_image(fig, path, width, height):
        asked.append((Path(path).name, width, height))
        Path(path).write_bytes(b"\x89PNG\r\n\x1a\n")

    monkeypatch.setitem(sys.modules, "kaleido", types.ModuleType("kaleido"))
    monkeypatch.setattr(go.Figure, "write_image", write_image)
    db, study = simulated
    out = tmp_path / "with-pngs"
    assert report("--db", db.execute("PRAGMA database_list").fetchone()[2], "--out", str(out), "--no-cifar10h",
                  "--bootstrap", "50") == 0
    names = set(figures(compute_results(db, study, n_boot=10)))
    assert {a[0] for a in asked} == {f"{n}.png" for n in names} and all(w == 1200 and h > 0 for _, w, h in asked)
    assert sorted(p.name for p in out.iterdir()) == sorted(["report.html", *(f"{n}.png" for n in names)])
    captured = capsys.readouterr()
    assert f"{len(names)} PNGs in {out}" in captured.out and "kaleido" not in captured.err


def test_report_cli_keeps_the_old_report_when_the_new_one_cannot_be_moved_in(simulated, tmp_path, capsys,
                                                                             monkeypatch):
    import randmask.core.safe_files as safe_files
    db, _ = simulated
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.html").write_text("old report")
    real_rename = os.rename

    def failing_rename(src, dst):
        if Path(dst) == out and Path(src).name != out.name and "old" not in Path(src).name:
            raise OSError("disk full")  # the new report cannot be moved in
        real_rename(src, dst)

    monkeypatch.setattr(safe_files.os, "rename", failing_rename)
    assert report("--db", db.execute("PRAGMA database_list").fetchone()[2], "--out", str(out), "--overwrite",
                  "--no-cifar10h", "--bootstrap", "20") == 2
    assert "disk full" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["report"] and (out / "report.html").read_text() == "old report"


def test_reaction_time_axis_names_round_seconds_around_every_answer(simulated):
    from study.report import rt_figure
    db, study = simulated
    results = compute_results(db, study, n_boot=10)
    axis = rt_figure(results).layout.yaxis
    # a bare log axis labels minor ticks "2 3 … 9" with no decade; every label must read as seconds
    assert axis.type == "log" and list(axis.ticktext) == [f"{t:g}" for t in axis.tickvals]
    seconds = results.answers["rt_ms"].dropna() / 1000
    assert min(axis.tickvals) <= seconds.min() and max(axis.tickvals) >= seconds.max()
