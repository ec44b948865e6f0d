"""Background training jobs for the app: `python -m randmask train ...` as a detached process, one folder each.

    folder = start_job(JobSettings("0.7-Shallow", epochs=3))   # runs/user/0.7-Shallow/ (…-2, -3 when taken)
    job_status(folder)      # (job_progress.py) state, progress, history: read from disk only, so it survives
                            # page switches, browser reloads and restarts of the app itself
    cancel_job(folder)      # SIGTERM to the job's process group: the trainer stops after its current step
                            # and logs "cancelled"; resume_job(folder) continues from the last finished epoch

With `JobSettings(ray="auto")` (or a head's host:port) the job trains on a Ray cluster instead: its process is
`python -m randmask train ... --ray ADDRESS`, the driver of one Ray task (train_on_ray) that trains into the same
folder on a worker, so the folder must be on a filesystem the cluster's nodes share (as for `zoo train --ray`).
The status reads the same files, plus where it runs (cluster.json, worker.json); cancel_job's SIGTERM makes the
driver cancel the task, which ends its worker.

A job folder holds `job.json` (what was started, when, which process), `job.log` (the process's output) and what
the trainer writes: `progress.jsonl` (start, step, epoch, done, cancelled, error events), `resume.pt`, and at the
end `config.json` + `model.safetensors`, which makes the model appear in the app's picker.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from randmask.core import cluster, safe_files
from randmask.core.datasets import DATASETS
from randmask.core.errors import RandmaskError
from randmask.core.notation import parse_model, slug
from randmask.core.settings import PROJECT_ROOT, openmp_wait_policy, user_runs_root
from randmask.experiments.train import train
from randmask.experiments.train_config import TrainConfig, make_config
from randmask.views.job_progress import (
    CLUSTER_FILE,
    JOB_FILE,
    OUTPUT_FILE,
    WORKER_FILE,
    forget,
    job_status,
    proc_start_ticks,
    process_alive,
    read_job,
    track,
)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RAY_EXTRA = "Training on a Ray cluster needs the optional extra: pip install -e '.[ray]'"


@dataclass(frozen=True)
class JobSettings:
    """What to train; None leaves the preset's value. `threads` caps the job's CPU threads (OMP/MKL)."""

    notation: str
    preset: str = "quick"
    dataset: str = "cifar10"
    epochs: int | None = None
    width: int | None = None
    train_n: int | None = None
    eval_n: int | None = None
    seed: int | None = None
    mask_seed: int | None = None
    threads: int | None = None  # on a Ray cluster without GPUs: the CPUs the task asks for (default 1)
    precision: str | None = None  # one of PRECISIONS
    ray: str | None = None  # a Ray cluster to train on ('auto', host:port, ray://host:port); None: this machine

    def validate(self) -> None:
        """Raise RandmaskError for anything the trainer would refuse, before a process is started."""
        parse_model(self.notation)
        if self.dataset not in DATASETS:
            raise RandmaskError(f"unknown data set {self.dataset!r}; known: {', '.join(DATASETS)}")
        for name in ("epochs", "width", "train_n", "eval_n", "threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise RandmaskError(f"{name.replace('_', ' ')} must be a positive whole number, got {value!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise RandmaskError(f"unknown precision {self.precision!r}; known: {', '.join(PRECISIONS)}")
        if self.ray is not None:
            if not cluster.available():
                raise RandmaskError(RAY_EXTRA)
            cluster.check_address(self.ray)
        make_config(self.notation, self.preset, dataset=self.dataset, epochs=self.epochs, width=self.width,
                    train_n=self.train_n, eval_n=self.eval_n, seed=self.seed, mask_seed=self.mask_seed)

    def command(self, out: Path) -> list[str]:
        cmd = [sys.executable, "-m", "randmask", "train", self.notation, "--out", str(out), "--preset", self.preset,
               "--dataset", self.dataset, "--no-bar"]
        for name in ("epochs", "width", "train_n", "eval_n", "seed", "mask_seed", "precision"):
            value = getattr(self, name)
            if value is not None:
                cmd += [f"--{name.replace('_', '-')}", str(value)]
        if self.ray is not None:  # here the environment caps the threads (_launch); there the task's CPUs do
            cmd += ["--ray", self.ray, *(["--threads", str(self.threads)] if self.threads else [])]
        return cmd


# ------------------------------------------------------------------------------------------------ start, stop
def _write_json(path: Path, data: dict) -> None:
    safe_files.replace_text(path, json.dumps(data, indent=2) + "\n")


def _launch(folder: Path, job: dict) -> None:
    settings = JobSettings(**job["settings"])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.update(openmp_wait_policy(env)[0])  # a bounded OpenMP spin unless the user chose a policy (see app.py)
    if settings.threads:
        env.update(OMP_NUM_THREADS=str(settings.threads), MKL_NUM_THREADS=str(settings.threads))
    command = settings.command(folder)
    with open(folder / OUTPUT_FILE, "ab") as output:
        output.write(f"$ {' '.join(command)}\n".encode())
        output.flush()
        # a session of its own: the job outlives the page and the app, and cancel can signal its whole group
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    track(folder, process)
    job.update(pid=process.pid, pid_start=proc_start_ticks(process.pid), launched=time.time(),
               cancel_requested=False, command=command)
    _write_json(folder / JOB_FILE, job)


def start_job(settings: JobSettings, root: Path | None = None, name: str | None = None) -> Path:
    """Validate the settings, create runs/user/<slug>[-k]/ and start the trainer there in the background."""
    settings.validate()
    root = Path(root) if root else user_runs_root()
    root.mkdir(parents=True, exist_ok=True)
    base = name or slug(settings.notation)
    if not base or "/" in base or base.startswith("."):
        raise RandmaskError(f"job name {base!r} is not a plain folder name")
    for k in range(1, 1000):
        folder = root / (base if k == 1 else f"{base}-{k}")
        try:
            folder.mkdir()
            break
        except FileExistsError:
            continue
    else:
        raise RandmaskError(f"too many jobs named {base!r} in {root}; remove some")
    job = {"settings": asdict(settings), "created": time.time()}
    _write_json(folder / JOB_FILE, job)
    _launch(folder, job)
    return folder


def resume_job(folder: Path) -> None:
    """Start a cancelled or failed job again in its folder; the trainer resumes from its last finished epoch."""
    folder = Path(folder)
    status = job_status(folder)
    if not status.finished:
        raise RandmaskError(f"job {folder.name} is still {status.state}")
    if status.state == "done":
        raise RandmaskError(f"job {folder.name} has finished; start a new one instead")
    _launch(folder, read_job(folder))


def cancel_job(folder: Path, force: bool = False) -> bool:
    """Ask a running job to stop (SIGTERM to its process group; SIGKILL with force). False if it was not running."""
    folder = Path(folder)
    job = read_job(folder)
    if not process_alive(folder, job):
        return False
    job["cancel_requested"] = True
    _write_json(folder / JOB_FILE, job)
    pid = int(job["pid"])
    sig = signal.SIGKILL if force else signal.SIGTERM
    try:
        if os.getpgid(pid) == pid:  # our own session leader: signal the group (the trainer and any helpers)
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def remove_job(folder: Path, root: Path | None = None) -> None:
    """Delete a finished job's folder (and its model). Refuses while it runs, or outside the jobs folder."""
    folder, root = Path(folder).resolve(), (Path(root) if root else user_runs_root()).resolve()
    if folder.parent != root:
        raise RandmaskError(f"{folder} is not a job folder under {root}")
    status = job_status(folder)
    if not status.finished:
        raise RandmaskError(f"job {folder.name} is still {status.state}: cancel it first")
    shutil.rmtree(folder)
    forget(folder)


# ------------------------------------------------------------------------------------------------ Ray
def train_on_ray(cfg: TrainConfig, out: Path, address: str, threads: int | None = None,
                 say: Callable[[str], None] = print) -> dict:
    """`randmask train --ray ADDRESS`: this process is the Ray driver of one task that trains `cfg` into `out`
    on a worker (one GPU where the cluster has GPUs, else `threads` CPUs, default 1), as `train` would here, so
    `out` must be on a filesystem the cluster's nodes share. Writes CLUSTER_FILE (address, dashboard) into `out`
    for the app. A worker that dies is retried and resumes from resume.pt; SIGTERM (the app's Cancel) or Ctrl-C
    cancels the task. Returns train's result (clean accuracy, n, training time)."""
    out = Path(out).resolve()  # the workers' working folder is not ours
    line = cluster.connect(address)
    say(line)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / CLUSTER_FILE, {**cluster.where(), "requested": address, "joined": time.time(),
                                     "description": line})
    gpus = cluster.cluster_gpus()
    cpus = 1 if gpus else (threads or 1)
    job = cluster.Job(f"train {out.name}", ray_train, (cfg, out, cpus), num_cpus=cpus, num_gpus=1 if gpus else 0)
    main = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = signal.signal(signal.SIGTERM, _interrupt) if main else None  # into cluster.run's clean-up: cancel
    try:
        return dict(cluster.run([job], every=2.0))[job.key]
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        cluster.shutdown()


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def ray_train(cfg: TrainConfig, out: Path, num_cpus: float) -> dict:
    """train_on_ray's task, on a worker: says where it runs (WORKER_FILE), then trains (a retry resumes)."""
    cluster.worker_threads(num_cpus)
    _write_json(out / WORKER_FILE, {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()})
    result = train(cfg, out, show_bar=False)
    return {k: result[k] for k in ("clean_accuracy", "clean_accuracy_n", "train_time_s") if k in result}
