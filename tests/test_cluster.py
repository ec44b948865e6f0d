"""`zoo train --ray` and `reproduce --ray` on a real local Ray cluster: a head and one more worker node, each its
own raylet process on this machine. The cluster's results must equal a single-process run's, bit for bit, also
when a worker is killed mid-training or mid-crafting, or the driver is interrupted and rerun."""
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from test_reproduce import TINY, _fake_zoo

from randmask.core import cluster, settings
from randmask.core.errors import RandmaskError
from randmask.experiments.checkpoint import WEIGHTS_FILE
from randmask.experiments.resume import RESUME_FILE
from randmask.results import zoo, zoo_train
from randmask.results.reproduce import reproduce
from randmask.views import job_progress, jobs

ROOT = Path(__file__).resolve().parents[1]
# two tiny models; the second trains longer, so it is still running when the first is done
PLAN = [zoo.Entry("Normal ResNet-18", epochs=2, train_n=1024, width=4),
        zoo.Entry("0.7-Shallow", epochs=5, train_n=1024, width=4)]
SLOW = PLAN[1].name
# a CW long enough that a worker can be caught crafting it
REPRO = {**TINY, "cw": "CW40(search=2, steps=150)"}
REPRO_MODELS = ["cifar10/VGG-19", "cifar10/Normal_ResNet-18", "cifar10/0.7-Shallow"]
REPRO_ONLY = ["table11_transfer", "table3_shuffle"]


def tiny_config(entry: zoo.Entry):
    # fp32: 'auto' times bf16 against fp32 and could choose differently in two processes
    return dataclasses.replace(zoo.planned_config(entry), precision="fp32", eval_n=200)


def test_ray_without_the_extra_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: `import ray` raises ImportError
    with pytest.raises(RandmaskError, match=r"--ray \(and reproduce --jobs\) needs Ray: pip install -e '\.\[ray\]'"):
        cluster.connect("auto")


def test_every_setting_of_the_project_reaches_the_workers_but_the_app_password(monkeypatch):
    # a setting a job reads but the workers lack makes a cluster's numbers differ from one process's
    used = {name for path in (ROOT / "randmask").rglob("*.py")
            for name in re.findall(r"RANDMASK_[A-Z_]*[A-Z]", path.read_text())}
    used |= set(re.findall(r"RANDMASK_[A-Z_]*[A-Z]", settings.__doc__))
    assert "RANDMASK_FUSED" in used and "RANDMASK_APP_PASSWORD" in used
    assert used <= set(cluster.FORWARDED_ENV) | set(cluster.NEVER_FORWARDED), \
        used - set(cluster.FORWARDED_ENV) - set(cluster.NEVER_FORWARDED)
    for name in used:
        monkeypatch.setenv(name, f"value of {name}")
    sent = cluster.forwarded_env()
    assert "RANDMASK_APP_PASSWORD" not in sent
    assert sent["RANDMASK_FUSED"] == "value of RANDMASK_FUSED"
    assert {name for name in sent if name.startswith("RANDMASK_")} == used - {"RANDMASK_APP_PASSWORD"}


def test_reproduce_jobs_without_the_extra_is_one_clear_error_and_writes_nothing(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # find_spec then finds nothing, as without the extra
    with pytest.raises(RandmaskError, match=r"needs Ray: pip install -e '\.\[ray\]'"):
        reproduce("quick", zoo_root=tmp_path / "zoo", out=tmp_path / "out", jobs=2)
    assert not (tmp_path / "out").exists()


def test_reproduce_refuses_ray_and_jobs_together(tmp_path):
    with pytest.raises(RandmaskError, match="give --ray or --jobs, not both"):
        reproduce("quick", zoo_root=tmp_path, out=tmp_path, jobs=2, ray="auto")


def test_zoo_progress_counts_running_and_queued_and_estimates_from_measured_epochs(tmp_path):
    since = time.time()
    run = tmp_path / "a"
    run.mkdir()
    records = [{"event": "start", "time": since + 1}, {"event": "epoch", "epoch": 2, "train_time_s": 60.0}]
    (run / "progress.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"event": "ep')
    old = tmp_path / "b"  # logged by an earlier run: queued in this one, not running
    old.mkdir()
    (old / "progress.jsonl").write_text(json.dumps({"event": "start", "time": since - 100}) + "\n")
    line = zoo_train.zoo_progress(tmp_path, {"a": 4, "b": 4}, 1, {"a", "b"}, since)
    # 30 s an epoch: a's 2 left and b's 4, on the one model running
    assert line == "models: 1 done, 1 running, 1 queued; ETA 3 min"


def test_the_cells_of_a_ray_run_run_here_give_the_single_process_rows_and_sets(tmp_path, data_dir):
    """What Ray's workers run for a reproduce plan, run here one after the other (no Ray): a transfer table is one
    crafting cell per attack and one evaluation cell per target (and one for the source's clean accuracy), and
    the table the driver assembles from them is the one a run in one process writes, with the same crafted sets."""
    from randmask.experiments.evaluate import write_csv
    from randmask.results.plan import PRESETS, transfer_attacks
    from randmask.results.reproduce import RayPlan

    _fake_zoo(tmp_path / "zoo", REPRO_MODELS)
    settings = {**PRESETS["quick"], **TINY}
    plan = RayPlan(REPRO_ONLY, settings, tmp_path / "zoo", tmp_path / "cells", {})
    crafts = [f"table11_transfer: craft {attack}" for attack in transfer_attacks(settings)]
    evaluations = ["table11_transfer: clean accuracy of cifar10/VGG-19",
                   "table11_transfer: evaluate cifar10/Normal_ResNet-18", "table11_transfer: evaluate cifar10/0.7-Shallow"]
    assert [job.key for job in plan.jobs] == [*crafts, *evaluations, "table3_shuffle"]
    by_key = {job.key: job for job in plan.jobs}
    assert all(list(by_key[key].after) == crafts for key in evaluations)  # each waits for all four sets
    assert not by_key["table3_shuffle"].after  # no crafting: it starts at once

    def run_here():
        results = {}
        for job in plan.jobs:  # in submission order, which puts every job after those it waits for
            results[job.key] = job.fn(*job.args, *(results[key] for key in job.after))
            yield job.key, results[job.key]

    for key, rows, _ in plan.collect(run_here()):
        write_csv(rows, tmp_path / "cells-out" / "results" / f"{key}.csv")
    reproduce("quick", zoo_root=tmp_path / "zoo", out=tmp_path / "out", overrides=TINY, only=REPRO_ONLY,
              cache=tmp_path / "single")
    for key in REPRO_ONLY:  # byte for byte: n and correct, every column, row order
        assert (tmp_path / "cells-out" / "results" / f"{key}.csv").read_bytes() == \
            (tmp_path / "out" / "results" / f"{key}.csv").read_bytes(), key
    made = _fingerprints(tmp_path / "cells")
    assert len(made) == 4 and made == _fingerprints(tmp_path / "single")
    assert all((tmp_path / "cells" / name).read_bytes() == (tmp_path / "single" / name).read_bytes() for name in made)


def _stop_ray_children() -> None:
    import psutil  # a Ray dependency

    for child in psutil.Process().children(recursive=True):
        try:
            if "/ray/" in " ".join(child.cmdline()):
                child.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture(scope="module")
def ray_cluster():
    """A head node and a second node, one CPU each (2 cores here, shared). Ray gives a raylet 30 s to register,
    which a loaded machine can miss: three tries."""
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "RAY_worker_register_timeout_seconds")}
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), saved["PYTHONPATH"]]))  # workers import us
    os.environ["RAY_worker_register_timeout_seconds"] = "600"  # a worker's start-up on a loaded machine
    error = None
    for _ in range(3):
        nodes = Cluster()
        try:
            nodes.add_node(num_cpus=1, include_dashboard=False)
            nodes.add_node(num_cpus=1)
            break
        except Exception as exc:  # Ray raises a bare Exception on a node that did not start in time
            error = exc
            nodes.shutdown()
            _stop_ray_children()  # what the failed node had started (a GCS server, agents)
    else:
        pytest.fail(f"no Ray cluster started in three tries: {error}")
    nodes.wait_for_nodes()
    print(cluster.connect(nodes.address))
    yield nodes
    cluster.shutdown()
    nodes.shutdown()
    for key, value in saved.items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


@pytest.fixture(scope="module")
def reference_zoo(tmp_path_factory, data_dir):
    """The tiny plan trained in this process, one model after the other."""
    root = tmp_path_factory.mktemp("single")
    zoo_train.train_zoo(root / "runs", root / "zoo", plan=PLAN, configure=tiny_config, say=lambda line: None)
    return root


def _weights(root: Path) -> dict[str, bytes]:
    return {f"{kind}/{e.name}": (root / kind / e.name / WEIGHTS_FILE).read_bytes() for e in PLAN
            for kind in ("runs", "zoo")}


@pytest.mark.slow
def test_zoo_trained_on_two_ray_nodes_equals_the_single_process_zoo(ray_cluster, reference_zoo, tmp_path):
    said = []
    zoo_train.train_zoo(tmp_path / "runs", tmp_path / "zoo", plan=PLAN, configure=tiny_config, ray=ray_cluster.address,
                  say=said.append)
    assert _weights(tmp_path) == _weights(reference_zoo)  # fp32 run and fp16 export, bit for bit
    assert any(line.startswith("Ray cluster at ") and "2 node(s), 2 CPU(s)" in line for line in said), said
    assert any(line.startswith(f"{SLOW}: done on the cluster") and "models: 2 done, 0 running, 0 queued" in line
               for line in said), said


def _wait_for(condition, timeout: float, what: str, poll: float = 0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.mark.slow
def test_a_worker_killed_mid_training_is_retried_and_resumes_to_the_same_weights(ray_cluster, reference_zoo,
                                                                                  tmp_path):
    runs, shipped = tmp_path / "runs", tmp_path / "zoo"
    failure = []

    def drive():
        try:
            zoo_train.train_zoo(runs, shipped, plan=PLAN, configure=tiny_config, ray=ray_cluster.address,
                          say=lambda line: None)
        except Exception as exc:  # reported below
            failure.append(exc)

    driver = threading.Thread(target=drive)
    driver.start()
    # after its first epoch (resume.pt written), kill the worker process training the slow model: the pid its
    # task wrote into the run's lock
    _wait_for(lambda: (runs / SLOW / RESUME_FILE).exists(), 600, "the first epoch's resume.pt")
    pid = int((runs / f"{SLOW}.lock").read_text())
    assert pid != os.getpid() and not (runs / SLOW / WEIGHTS_FILE).exists()
    os.kill(pid, signal.SIGKILL)
    driver.join(900)
    assert not driver.is_alive() and not failure, failure
    log = [json.loads(line) for line in (runs / SLOW / "progress.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if r["event"] == "resume"] and log[-1]["event"] == "done"  # resumed, not redone
    assert _weights(tmp_path) == _weights(reference_zoo)


# Ctrl-C at a terminal: a shell without job control starts background commands with SIGINT ignored, and Python
# then installs no KeyboardInterrupt handler (the clean-clone CI run, started so, hung here for 300 s)
DRIVER = textwrap.dedent("""
    import signal
    import sys
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from pathlib import Path
    from randmask.results import zoo_train
    from test_cluster import PLAN, tiny_config
    root = Path(sys.argv[2])
    zoo_train.train_zoo(root / "runs", root / "zoo", plan=PLAN, configure=tiny_config, ray=sys.argv[1],
                  say=lambda line: print(line, flush=True))
""")


def _running(pid: int) -> bool:
    import psutil  # a Ray dependency

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_an_interrupted_driver_reruns_to_the_same_zoo_keeping_what_finished(ray_cluster, reference_zoo, tmp_path):
    """The interrupted driver returns only once the worker training the slow model is gone: before, a cancel
    only asked, the worker finished the model behind the rerun's back, and the rerun found it done (no resume)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    command = [sys.executable, "-c", DRIVER, ray_cluster.address, str(tmp_path)]
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    fast = PLAN[0].name
    _wait_for(lambda: (tmp_path / "runs" / SLOW / RESUME_FILE).exists(), 600, "the slow model's first epoch")
    trainer = int((tmp_path / "runs" / f"{SLOW}.lock").read_text())
    # held after its first epoch, so that it is mid-training when the driver stops, however fast this machine is
    # (on a quiet one it once finished its last epoch before the interrupt, and the rerun had nothing to resume)
    os.kill(trainer, signal.SIGSTOP)
    try:
        _wait_for(lambda: (tmp_path / "zoo" / fast / WEIGHTS_FILE).exists(), 600, "the first model in the zoo")
        assert not (tmp_path / "runs" / SLOW / WEIGHTS_FILE).exists()
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=300)
        assert first.returncode != 0 and not (tmp_path / "zoo" / SLOW).exists()  # interrupted mid-training
        assert not _running(trainer)  # and nothing trains on for a driver that is gone
    finally:
        if _running(trainer):
            os.kill(trainer, signal.SIGCONT)
    done = (tmp_path / "zoo" / fast / WEIGHTS_FILE).stat().st_mtime_ns
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{fast}: already in the zoo" in again.stdout  # what finished is kept, not retrained
    assert (tmp_path / "zoo" / fast / WEIGHTS_FILE).stat().st_mtime_ns == done
    log = [json.loads(line) for line in (tmp_path / "runs" / SLOW / "progress.jsonl").read_text().splitlines()]
    assert any(r["event"] == "resume" for r in log)  # the slow model went on from its last epoch
    assert _weights(tmp_path) == _weights(reference_zoo)


@pytest.fixture(scope="module")
def reference_report(tmp_path_factory, data_dir):
    """The small reproduce plan in one process."""
    root = tmp_path_factory.mktemp("report")
    _fake_zoo(root / "zoo", REPRO_MODELS)
    reproduce("quick", zoo_root=root / "zoo", out=root / "out", overrides=REPRO, only=REPRO_ONLY,
              cache=root / "crafted")
    return root


def _results(out: Path) -> dict[str, pd.DataFrame]:
    return {key: pd.read_csv(out / "results" / f"{key}.csv") for key in REPRO_ONLY}


def _fingerprints(cache: Path) -> set[str]:
    return {p.name for p in cache.glob("*.safetensors")}


def _check_same_report(reference: Path, out: Path, cache: Path) -> None:
    ours, theirs = _results(out), _results(reference / "out")
    for key in REPRO_ONLY:
        assert ours[key][["n", "correct"]].equals(theirs[key][["n", "correct"]]), key
        pd.testing.assert_frame_equal(ours[key], theirs[key])
    assert _fingerprints(cache) == _fingerprints(reference / "crafted") and len(_fingerprints(cache)) == 4


@pytest.mark.slow
def test_reproduce_on_ray_equals_the_single_process_report(ray_cluster, reference_report, tmp_path):
    said = []
    status = reproduce("quick", zoo_root=reference_report / "zoo", out=tmp_path / "out", overrides=REPRO,
                       only=REPRO_ONLY, cache=tmp_path / "crafted", ray=ray_cluster.address, say=said.append)
    assert all(s["ran"] for s in status.values()), status
    _check_same_report(reference_report, tmp_path / "out", tmp_path / "crafted")
    # Table 11: 4 crafting cells (one per attack against VGG-19), 3 evaluation cells (its two targets and its
    # source's clean accuracy), each its own task; Table 3: one
    assert "cells: 8 of 8 done (2 of 2 experiments)" in " ".join(said), said


@pytest.mark.slow
def test_a_worker_killed_mid_crafting_is_redone_and_no_partial_set_is_read(ray_cluster, reference_report, tmp_path):
    import psutil  # a Ray dependency

    cache, failure, statuses = tmp_path / "crafted", [], []

    def drive():
        try:
            statuses.append(reproduce("quick", zoo_root=reference_report / "zoo", out=tmp_path / "out",
                                      overrides=REPRO, only=REPRO_ONLY, cache=cache, ray=ray_cluster.address))
        except Exception as exc:  # reported below
            failure.append(exc)

    def crafter() -> int | None:
        """The Ray worker holding a crafted set's file lock (evaluate.craft): one crafting right now."""
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if proc.info["pid"] != os.getpid() and any(
                        f.path.startswith(str(cache)) and f.path.endswith(".safetensors.lock")
                        for f in proc.open_files()):
                    return proc.info["pid"]
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return None

    driver = threading.Thread(target=drive)
    driver.start()
    pid = _wait_for(crafter, 600, "a worker crafting", poll=0.02)
    assert "ray::" in " ".join(psutil.Process(pid).cmdline())  # a Ray worker, not this process
    os.kill(pid, signal.SIGKILL)
    driver.join(900)
    assert not driver.is_alive() and not failure, failure
    _check_same_report(reference_report, tmp_path / "out", cache)


# a Train-page job: tiny, one thread, fp32 (see tiny_config)
APP_JOB = jobs.JobSettings("0.7-Shallow", epochs=2, width=4, train_n=256, eval_n=100, threads=1, precision="fp32")


def _stop_jobs(root: Path) -> None:
    for status in job_progress.list_jobs(root):  # never leave a driver or trainer behind
        if not status.finished:
            jobs.cancel_job(status.folder, force=True)
            job_progress.wait_job(status.folder, 60)


@pytest.mark.slow
def test_a_train_page_job_sent_to_the_cluster_trains_the_weights_of_a_local_job(ray_cluster, tmp_path):
    try:
        here = jobs.start_job(APP_JOB, root=tmp_path / "here")
        there = jobs.start_job(dataclasses.replace(APP_JOB, ray=ray_cluster.address), root=tmp_path / "there")
        where = _wait_for(lambda: ", on " in job_progress.job_status(there).where and job_progress.job_status(there).where, 600,
                          "the cluster job's worker")  # where it runs, while it runs
        assert where.startswith(f"Ray cluster at {ray_cluster.address}, on ") and "(pid " in where
        ours, theirs = job_progress.wait_job(here, 900), job_progress.wait_job(there, 900)
        assert ours.state == "done" and theirs.state == "done", (ours.message, theirs.message,
                                                                 job_progress.job_output(there))
        assert (there / WEIGHTS_FILE).read_bytes() == (here / WEIGHTS_FILE).read_bytes()

        def epochs(status: job_progress.JobStatus) -> list[dict]:
            return [{k: v for k, v in h.items() if k not in ("time", "train_time_s")} for h in status.history]

        # the same epochs, read from the progress.jsonl the worker wrote
        assert [h["epoch"] for h in theirs.history] == [1, 2] and epochs(theirs) == epochs(ours)
        worker = json.loads((there / job_progress.WORKER_FILE).read_text())
        assert worker["pid"] != json.loads((there / job_progress.JOB_FILE).read_text())["pid"]  # trained by a Ray worker
        assert any(line.startswith("Ray cluster at ") for line in job_progress.job_output(there))
    finally:
        _stop_jobs(tmp_path / "here")
        _stop_jobs(tmp_path / "there")


@pytest.mark.slow
def test_cancelling_a_cluster_job_ends_its_remote_worker(ray_cluster, tmp_path):
    import psutil  # a Ray dependency

    long = dataclasses.replace(APP_JOB, epochs=40, train_n=2560, ray=ray_cluster.address)
    try:
        folder = jobs.start_job(long, root=tmp_path)
        _wait_for(lambda: job_progress.job_status(folder).current_epoch, 600, "the remote trainer's first steps")
        pid = json.loads((folder / job_progress.WORKER_FILE).read_text())["pid"]
        assert psutil.pid_exists(pid) and "ray::" in " ".join(psutil.Process(pid).cmdline())  # a Ray worker
        assert jobs.cancel_job(folder)
        status = job_progress.wait_job(folder, 120)
        assert status.state == "cancelled", (status.message, job_progress.job_output(folder))
        _wait_for(lambda: not psutil.pid_exists(pid), 60, "the Ray worker to end")
        size = (folder / "progress.jsonl").stat().st_size
        time.sleep(5)
        assert (folder / "progress.jsonl").stat().st_size == size  # nobody trains on
        assert not (folder / WEIGHTS_FILE).exists()
    finally:
        _stop_jobs(tmp_path)
