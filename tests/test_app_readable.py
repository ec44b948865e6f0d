"""What a newcomer sees in the app (issue 18), through AppTest: no table cell reads 'None' or 'nan', the patch
shuffle batch gives a result on its defaults with label-smoothed nets, and a running job shows its steps inside
an epoch."""
from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path

import pandas as pd
import test_app_support as support
import test_study_support as study_support
from streamlit.testing.v1 import AppTest

from randmask.core.models import build_model
from randmask.experiments.checkpoint import save_checkpoint
from randmask.experiments.train import LOG_FILE
from randmask.views import job_progress, jobs

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 180
tiny_zoo, app_env = support.tiny_zoo, support.app_env  # fixtures
cifar, study_sets = study_support.cifar, study_support.study_sets
UNREADABLE = {"None", "nan", "NaN", "<NA>", "NaT", ""}


def open_app(page: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, at.exception
    return at


def texts(at: AppTest) -> str:
    return "\n".join(str(e.value) for kind in ("markdown", "caption", "error", "warning", "info", "success")
                     for e in getattr(at, kind))


def unreadable_cells(frame: pd.DataFrame) -> list[tuple]:
    """(row, column, value) of every cell that would show as None/nan (or empty) in the browser."""
    bad = []
    for column in frame.columns:
        for row, value in frame[column].items():
            missing = value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))
            if missing or str(value) in UNREADABLE:
                bad.append((row, column, value))
    return bad


def assert_readable(at: AppTest) -> None:
    assert at.dataframe, "no table on the page"
    for table in at.dataframe:
        frame = table.value
        assert not unreadable_cells(frame), unreadable_cells(frame)[:5]
        assert not [c for c in frame.columns if "_" in str(c)], list(frame.columns)  # readable headers


def test_robustness_tables_never_show_none(app_env):
    at = open_app("robustness")
    for table in (7, 1, 3, 4, 5, 6, 8, 9, 10, 11):
        at.selectbox(key="robust_table").set_value(table).run()
        assert not at.exception
        assert_readable(at)
    at.selectbox(key="robust_table").set_value(7).run()
    wide = at.dataframe[0].value.set_index("target")
    assert wide.loc["0.75-Shallow", "FGSM16 · ours"] == "–"
    # what we measured of each target is said once, in the caption: the common case counted, the rest named
    caption = next(c.value for c in at.caption if "Here: " in c.value)
    assert "Here: 30 of 33 targets not trained here;" in caption
    assert "partly measured: Normal ResNet-18, 0.7-Shallow;" in caption  # FGSM16 and clean, from the results CSV
    assert "not measured here: 0.9-Shallow." in caption  # trained in the tiny zoo, no result of it
    commands = "\n".join(c.value for c in at.code)
    assert "python -m randmask zoo train --only cifar10/0.75-Shallow" in commands  # the zoo plans it
    assert 'python -m randmask train "0.9-ShallowEN" --preset quick --out ' in commands  # the zoo does not
    assert "cifar10/0.9-Shallow\n" not in commands  # trained in the tiny zoo: nothing to train

    at.number_input(key="run_n").set_value(10).run()
    at.button(key="run_go").click().run()
    assert not at.exception and at.session_state["run_result"]
    assert_readable(at)  # the run's own table too (a target with n = 0 has no defense rate: a dash)


def test_organiser_tables_never_show_none(tmp_path, study_sets, monkeypatch):
    from study import get_study, open_db
    from study.participant import join
    from study.simulate import simulate_participant

    path = tmp_path / "s.db"
    study_support.make_study(path, study_sets)
    simulate_participant(path, "s1", "done1")
    db = open_db(path)
    join(db, get_study(db, "s1"), "joined-only")  # no consent yet: no catch accuracy, never completed
    db.close()
    monkeypatch.setenv("STUDY_DB", str(path))
    monkeypatch.setenv("STUDY_ADMIN_PASSWORD", "test-organiser-pw")
    at = AppTest.from_file(str(ROOT / "pages" / "study_admin.py"), default_timeout=60).run()
    at.text_input(key="admin_password").input("test-organiser-pw")
    at = at.button[0].click().run()
    at.toggle(key="live").set_value(False).run()
    at.button(key="prepare-export").click().run()
    assert not at.exception
    # progress per condition; results: accuracy, wrong answers, agreement; participants; export summary
    assert len(at.dataframe) == 6
    assert_readable(at)
    participants = next(d.value for d in at.dataframe if "external id" in d.value.columns).set_index("external id")
    assert participants.loc["joined-only", "catch accuracy"] == "–"
    assert participants.loc["joined-only", "completed"] == "–" and participants.loc["done1", "excluded"] == "no"


def label_smoothed_zoo(root: Path, confidence: float = 0.9) -> Path:
    """The default picks as constant 'cat' models whose top softmax is `confidence`: label smoothing 0.1 keeps
    our trained nets near 0.9 too, never at the paper's 0.99."""
    bias = math.log(9 * confidence / (1 - confidence))  # e^b / (e^b + 9) = confidence
    for notation in ("Normal ResNet-18", "0.9-Shallow", "0.7-Shallow"):
        model = build_model(notation, width=support.TINY_WIDTH)
        model.body.linear.weight.data.zero_()
        model.body.linear.bias.data.zero_()
        model.body.linear.bias.data[support.CONFIDENT_CLASS] = bias
        save_checkpoint(model, root / "cifar10" / notation.replace(" ", "_"),
                        extra={"clean_accuracy": 0.1, "recipe": support.planned_recipe(notation)})
    return root


def test_shuffle_batch_gives_a_result_on_its_defaults(app_env, tmp_path, monkeypatch):
    monkeypatch.setenv("RANDMASK_ZOO", str(label_smoothed_zoo(tmp_path / "zoo")))
    at = open_app("shuffle")
    confidence = at.slider(key="shuffle_conf").value
    assert confidence < 0.9 and "0.99" in texts(at)  # the paper's threshold is named beside ours
    at.button(key="shuffle_run").click().run()
    assert not at.exception
    result = at.session_state["shuffle_result"]
    cats = int((support.sample_labels(result["pool"]) == support.CONFIDENT_CLASS).sum())
    assert result["confidence"] == confidence and cats > 0
    assert {r["n"] for r in result["rows"]} == {cats}  # every cat qualifies: the page's main action works
    assert "None of the first" not in texts(at)


def test_a_running_job_shows_its_steps_inside_the_epoch(app_env):
    """A job's trainer (here a stand-in process) has logged step 3 of 8 of its first epoch: the page says where
    it is and how fast, not just 'epoch 0/2'."""
    folder = Path(app_env["RANDMASK_RUNS"]) / "0.7-Shallow"
    folder.mkdir(parents=True)
    trainer = subprocess.Popen(["sleep", "120"])
    try:
        now = time.time()
        settings = jobs.JobSettings("0.7-Shallow", epochs=2, width=4, train_n=1000)
        (folder / job_progress.JOB_FILE).write_text(json.dumps({
            "settings": settings.__dict__, "created": now - 30, "launched": now - 30, "pid": trainer.pid,
            "pid_start": job_progress.proc_start_ticks(trainer.pid)}))
        events = [{"event": "start", "time": now - 25, "config": {"epochs": 2}, "steps_per_epoch": 8},
                  {"event": "step", "time": now - 1, "epoch": 1, "epochs": 2, "step": 3, "steps": 8, "loss": 2.2,
                   "lr": 0.01, "images": 384, "elapsed_s": 24.0}]
        (folder / LOG_FILE).write_text("".join(json.dumps(e) + "\n" for e in events))
        at = open_app("train")
        progress = [p.proto.text for p in at.get("progress")]
        assert progress == ["epoch 1 of 2 · step 3 of 8 · 0.12 steps/s (16 images/s), about 40 s left in this "
                            "epoch · training loss 2.200"]
        assert "**0.7-Shallow** · quick preset · cifar10 · running" in texts(at)
    finally:
        trainer.kill()
        trainer.wait()
