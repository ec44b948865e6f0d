"""randmask.views.jobs: real background training processes (tiny: width 4, 256 images, one thread each)."""
from __future__ import annotations

import json
import os
import signal
import sys
import time

import pytest

from randmask.core.errors import RandmaskError
from randmask.views import job_progress, jobs, train_view
from randmask.views.catalog import discover_models

TINY = {"width": 4, "train_n": 256, "eval_n": 100, "threads": 1}


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture()
def root(tmp_path, data_dir):
    yield tmp_path / "runs"
    for status in job_progress.list_jobs(tmp_path / "runs"):  # never leave a trainer behind
        if not status.finished:
            jobs.cancel_job(status.folder, force=True)
    for child in list(job_progress._CHILDREN.values()):
        if child.poll() is None:
            child.wait(timeout=30)


def test_settings_are_checked_before_any_process_starts(tmp_path):
    for bad in (jobs.JobSettings("0.7-Shalow"), jobs.JobSettings("0.7-Shallow", preset="fast"),
                jobs.JobSettings("0.7-Shallow", epochs=0), jobs.JobSettings("0.7-Shallow", dataset="imagenet"),
                jobs.JobSettings("0.7-Shallow", threads=-1)):
        with pytest.raises(RandmaskError):
            jobs.start_job(bad, root=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing created, nothing started
    command = jobs.JobSettings("0.9-Shallow×2", epochs=2, width=8, mask_seed=3).command(tmp_path / "out")
    assert command[3:5] == ["train", "0.9-Shallow×2"]
    assert command[command.index("--epochs") + 1] == "2" and command[command.index("--mask-seed") + 1] == "3"
    assert "--train-n" not in command and "--no-bar" in command


def test_a_job_trains_to_the_end_and_another_is_cancelled(root):
    done_folder = jobs.start_job(jobs.JobSettings("0.5-Shallow", epochs=1, **TINY), root=root)
    long_folder = jobs.start_job(jobs.JobSettings("0.5-Shallow", epochs=40, **{**TINY, "train_n": 2560}), root=root)
    assert done_folder.name == "0.5-Shallow" and long_folder.name == "0.5-Shallow-2"  # names never collide
    job = json.loads((long_folder / job_progress.JOB_FILE).read_text())
    assert job["pid"] > 0 and job["settings"]["epochs"] == 40

    # the long job: wait until it trains, then cancel it the way the page does
    wait_for(lambda: job_progress.job_status(long_folder).state == "running", 120, "the long job to start training")
    time.sleep(1.0)  # inside the training loop, where the trainer's SIGTERM handler is installed
    assert jobs.cancel_job(long_folder)
    assert job_progress.job_status(long_folder).state in ("cancelling", "cancelled")
    status = job_progress.wait_job(long_folder, 60)
    assert status.state == "cancelled", status.message
    events = [e["event"] for e in job_progress.read_events(long_folder / "progress.jsonl") if e["event"] != "stage"]
    assert events[0] == "start" and events[-1] == "cancelled"  # the trainer stopped cleanly and said so
    assert not jobs.cancel_job(long_folder)  # nothing left to cancel
    status = job_progress.wait_job(done_folder, 120)
    assert status.state == "done", status.message
    with pytest.raises(RandmaskError, match="has finished"):
        jobs.resume_job(done_folder)
    config = json.loads((done_folder / "config.json").read_text())
    assert status.fraction == 1.0 and status.clean_accuracy == pytest.approx(config["clean_accuracy"])
    assert [h["epoch"] for h in status.history] == [1] and status.epochs == 1
    assert "clean accuracy" in status.message

    # the finished model is in the picker's catalog; the cancelled one is not
    catalog = discover_models(root / "nozoo", root)
    mine = catalog.get("user:0.5-Shallow")
    assert mine.source == "user" and mine.width == 4 and mine.clean_accuracy == pytest.approx(config["clean_accuracy"])
    assert "user:0.5-Shallow-2" not in {e.key for e in catalog.entries}
    assert [s.name for s in job_progress.list_jobs(root)] == ["0.5-Shallow-2", "0.5-Shallow"]  # newest first

    # resume the cancelled job, then stop it again: it restarts in the same folder
    jobs.resume_job(long_folder)
    assert job_progress.job_status(long_folder).state in ("starting", "running")
    with pytest.raises(RandmaskError, match="still"):
        jobs.remove_job(long_folder, root)
    assert jobs.cancel_job(long_folder, force=True)
    assert job_progress.wait_job(long_folder, 30).state == "cancelled"

    jobs.remove_job(done_folder, root)
    assert not done_folder.exists()
    with pytest.raises(RandmaskError, match="not a job folder"):
        jobs.remove_job(root.parent, root)


def test_status_survives_a_restart_and_sees_a_killed_process(root, monkeypatch):
    folder = jobs.start_job(jobs.JobSettings("Normal ResNet-18", epochs=40, **TINY), root=root)
    child = job_progress._CHILDREN[str(folder.resolve())]
    monkeypatch.setattr(job_progress, "_CHILDREN", {})  # as after an app restart: only the files are left
    assert job_progress.job_status(folder).state in ("starting", "running")  # alive, seen through /proc
    os.killpg(child.pid, signal.SIGKILL)  # killed from outside (out of memory, a reboot, ...)
    child.wait(timeout=30)
    status = job_progress.wait_job(folder, 30)  # now a zombie or gone: either way not alive
    assert status.state == "failed" and "ended without finishing" in status.message


def test_a_trainer_error_is_reported_in_one_line(root, tmp_path, monkeypatch):
    monkeypatch.setenv("RANDMASK_DATA", str(tmp_path / "no-data"))
    folder = jobs.start_job(jobs.JobSettings("0.7-Shallow", epochs=1, **TINY), root=root)
    status = job_progress.wait_job(folder, 120)
    assert status.state == "failed"
    assert status.message.startswith("no cifar10 train data under") and "Traceback" not in status.message
    assert any("error:" in line for line in job_progress.job_output(folder))


def test_progress_log_reader_skips_a_half_written_line(tmp_path):
    log = tmp_path / "progress.jsonl"
    log.write_text('{"event": "start", "time": 1}\n{"event": "step", "time": 2, "epo')
    assert [e["event"] for e in job_progress.read_events(log)] == ["start"]
    assert job_progress.read_events(tmp_path / "missing.jsonl") == []
    (tmp_path / "job").mkdir()
    with pytest.raises(RandmaskError, match="not a training job folder"):
        job_progress.job_status(tmp_path / "job")
    (tmp_path / "job" / job_progress.JOB_FILE).write_text("[1, 2]")
    with pytest.raises(RandmaskError, match="does not describe"):
        job_progress.job_status(tmp_path / "job")
    assert job_progress.list_jobs(tmp_path) == []  # unreadable job folders are skipped, not fatal


def test_progress_fraction_from_step_and_epoch_events(tmp_path):
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / job_progress.JOB_FILE).write_text(json.dumps({"settings": {"notation": "0.7-Shallow", "preset": "quick",
                                                                  "epochs": 4}, "created": 100.0, "pid": None}))
    events = [{"event": "start", "time": 101, "config": {"epochs": 4}},
              {"event": "epoch", "time": 102, "epoch": 1, "epochs": 4, "train_loss": 2.0, "train_acc": 0.3,
               "test_acc": 0.35},
              {"event": "step", "time": 103, "epoch": 2, "epochs": 4, "step": 50, "steps": 100, "loss": 1.5}]
    (folder / "progress.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    status = job_progress.job_status(folder)
    # no live process and no ending event: it died
    assert status.state == "failed" and status.fraction == pytest.approx(1.5 / 4)
    assert status.epoch == 1 and status.loss == 1.5 and status.epochs == 4


def test_status_reports_the_step_and_rate_inside_an_epoch(tmp_path):
    folder = tmp_path / "0.7-Shallow-2"
    folder.mkdir()
    (folder / job_progress.JOB_FILE).write_text(json.dumps({"settings": {"notation": "0.7-Shallow", "preset": "quick",
                                                                  "epochs": 2}, "created": 100.0, "pid": None}))
    events = [{"event": "start", "time": 101, "config": {"epochs": 2}},
              {"event": "step", "time": 110, "epoch": 1, "epochs": 2, "step": 4, "steps": 8, "loss": 2.1,
               "images": 512, "elapsed_s": 8.0}]
    (folder / "progress.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    status = job_progress.job_status(folder)
    assert (status.current_epoch, status.step, status.steps) == (1, 4, 8)
    assert status.steps_per_s == pytest.approx(0.5) and status.images_per_s == pytest.approx(64)
    assert status.title == "0.7-Shallow (0.7-Shallow-2)"  # the folder name only where it adds something
    with open(folder / "progress.jsonl", "a") as log:
        log.write(json.dumps({"event": "epoch", "time": 120, "epoch": 1, "epochs": 2, "train_loss": 2.0,
                              "train_acc": 0.2, "test_acc": 0.2}) + "\n")
    status = job_progress.job_status(folder)
    assert status.step is None and status.progress_text().startswith("1 of 2 epochs done")


def test_a_small_budget_says_why_its_accuracy_is_low(tmp_path):
    settings = {"notation": "0.7-Shallow", "preset": "quick", "dataset": "cifar10", "epochs": 2, "train_n": 1000}
    done = job_progress.JobStatus(folder=tmp_path / "0.7-Shallow", state="done", settings=settings, clean_accuracy=0.08)
    note = train_view.budget_note(done, reference=0.828)
    assert "2-epoch run on 1,000 training images" in note and "40 epochs" in note and "82.8%" in note
    assert done.title == "0.7-Shallow"
    full = job_progress.JobStatus(folder=tmp_path / "x", state="done", settings={**settings, "epochs": 40, "train_n": None})
    assert train_view.budget_note(full) == ""  # the preset's whole budget: nothing to excuse
    running = job_progress.JobStatus(folder=tmp_path / "y", state="running", settings=settings)
    assert train_view.budget_note(running) == ""


def test_after_the_last_step_the_status_says_the_model_is_being_tested(tmp_path):
    status = job_progress.JobStatus(folder=tmp_path / "0.7-Shallow", state="running", settings={"notation": "0.7-Shallow"},
                            epochs=2, loss=2.1, current_epoch=1, step=8, steps=8, steps_per_s=0.33, images_per_s=41)
    assert status.progress_text() == "epoch 1 of 2 · step 8 of 8 · measuring test accuracy · training loss 2.100"
    status.step = 5
    assert "step 5 of 8 · 0.33 steps/s (41 images/s), about 9 s left in this epoch" in status.progress_text()


def test_a_starting_job_says_which_stage_it_is_in(tmp_path):
    folder = tmp_path / "0.7-Shallow"
    folder.mkdir()
    # this test's own process stands in for the trainer: alive, so the job is starting or running
    (folder / job_progress.JOB_FILE).write_text(json.dumps({"settings": {"notation": "0.7-Shallow", "preset": "quick",
                                                                  "dataset": "cifar10", "epochs": 2},
                                                     "created": 100.0, "pid": os.getpid()}))
    log = folder / "progress.jsonl"
    status = job_progress.job_status(folder)
    assert status.state == "starting" and status.message == ""
    assert status.progress_text().startswith("starting the training process (")  # since it was launched

    now = time.time()
    log.write_text(json.dumps({"event": "stage", "time": now - 12, "what": "loading the training images"}) + "\n")
    status = job_progress.job_status(folder)
    assert status.state == "starting" and status.message == ""  # the progress text says it; no copy in the title
    assert status.progress_text() == "loading the training images (12 s)"
    assert train_view.job_title(status).endswith("· starting")
    with open(log, "a") as f:
        for record in ({"event": "stage", "time": now - 2, "what": "building the model and choosing its precision"},
                       {"event": "start", "time": now - 1, "config": {"epochs": 2}},
                       {"event": "stage", "time": now - 1, "what": "the first training steps"}):
            f.write(json.dumps(record) + "\n")
    status = job_progress.job_status(folder)
    assert status.state == "running" and status.progress_text().startswith("the first training steps (1 s)")
    with open(log, "a") as f:
        f.write(json.dumps({"event": "step", "time": now, "epoch": 1, "epochs": 2, "step": 4, "steps": 8,
                            "loss": 2.1, "images": 512, "elapsed_s": 8.0}) + "\n")
    assert job_progress.job_status(folder).progress_text().startswith("epoch 1 of 2 · step 4 of 8")  # the stage is over


def test_a_ray_job_is_checked_before_it_starts(tmp_path, monkeypatch):
    for bad in ("", "nowhere", "10.0.0.1", "10.0.0.1:99999", "http://10.0.0.1:6379", " auto"):
        with pytest.raises(RandmaskError, match="Ray cluster address"):
            jobs.start_job(jobs.JobSettings("0.7-Shallow", ray=bad), root=tmp_path)
    with pytest.raises(RandmaskError, match="unknown precision"):
        jobs.start_job(jobs.JobSettings("0.7-Shallow", precision="fp8"), root=tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    with pytest.raises(RandmaskError, match=r"^Training on a Ray cluster needs the optional extra: "
                                            r"pip install -e '\.\[ray\]'$"):
        jobs.start_job(jobs.JobSettings("0.7-Shallow", ray="auto"), root=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing created, nothing started
    local = jobs.JobSettings("0.7-Shallow", epochs=2, threads=2).command(tmp_path)
    assert "--ray" not in local and "--threads" not in local  # here OMP_NUM_THREADS caps it, as before
    command = jobs.JobSettings("0.7-Shallow", epochs=2, threads=2, precision="fp32", ray="10.0.0.1:6379").command(
        tmp_path)
    assert command[3:5] == ["train", "0.7-Shallow"] and command[-4:] == ["--ray", "10.0.0.1:6379", "--threads", "2"]
    assert command[command.index("--precision") + 1] == "fp32"


def test_a_ray_job_says_where_it_runs_and_what_it_waits_for(tmp_path):
    folder = tmp_path / "0.7-Shallow"
    folder.mkdir()
    launched = time.time() - 5
    # this test's own process stands in for the job's driver: alive, so the job is starting
    (folder / job_progress.JOB_FILE).write_text(json.dumps({
        "settings": {"notation": "0.7-Shallow", "preset": "quick", "dataset": "cifar10", "epochs": 2,
                     "ray": "auto"}, "created": launched, "launched": launched, "pid": os.getpid()}))
    status = job_progress.job_status(folder)
    assert status.state == "starting" and status.where == "Ray cluster at auto"
    assert status.progress_text().startswith("joining the Ray cluster at auto (")
    (folder / job_progress.CLUSTER_FILE).write_text(json.dumps({"address": "10.0.0.1:6379", "joined": launched + 2,
                                                         "dashboard": "http://10.0.0.1:8265"}))
    status = job_progress.job_status(folder)
    assert status.where == "Ray cluster at 10.0.0.1:6379 · dashboard http://10.0.0.1:8265"
    assert status.progress_text().startswith("waiting for a worker of the Ray cluster (")
    (folder / job_progress.WORKER_FILE).write_text(json.dumps({"host": "node-3", "pid": 4242, "started": launched + 4}))
    status = job_progress.job_status(folder)
    assert status.where == "Ray cluster at 10.0.0.1:6379, on node-3 (pid 4242) · dashboard http://10.0.0.1:8265"
    assert status.progress_text().startswith("starting the trainer on node-3 (")
    with open(folder / "progress.jsonl", "w") as f:  # the trainer, on the worker, writes into the shared folder
        f.write(json.dumps({"event": "stage", "time": time.time(), "what": "loading the training images"}) + "\n")
    assert job_progress.job_status(folder).progress_text().startswith("loading the training images (")
    # a job on this machine says nothing of where; a relaunch does not read the last attempt's files as its own
    job = json.loads((folder / job_progress.JOB_FILE).read_text())
    job["launched"] = time.time() + 5
    (folder / job_progress.JOB_FILE).write_text(json.dumps(job))
    (folder / "progress.jsonl").unlink()
    assert job_progress.job_status(folder).progress_text().startswith("joining the Ray cluster at auto")
    job["settings"].pop("ray")
    (folder / job_progress.JOB_FILE).write_text(json.dumps(job))
    assert job_progress.job_status(folder).where == ""
