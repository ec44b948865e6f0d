"""Background training jobs for the app: `python -m randmask train ...` as a detached process, one folder each.

    folder = start_job(JobSettings("0.7-Shallow", epochs=3))   # runs/user/0.7-Shallow/ (…-2, -3 when taken)
    job_status(folder)      # state, progress, history: read from disk only, so it survives page switches,
                            # browser reloads and restarts of the app itself
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

from randmask.core import cluster, safe_files
from randmask.core.datasets import DATASETS
from randmask.core.errors import RandmaskError
from randmask.core.notation import parse_model, slug
from randmask.core.settings import PROJECT_ROOT, openmp_wait_policy, user_runs_root
from randmask.experiments.checkpoint import CONFIG_FILE, WEIGHTS_FILE, read_config
from randmask.experiments.train import LOG_FILE, train
from randmask.experiments.train_config import TrainConfig, make_config

JOB_FILE, OUTPUT_FILE = "job.json", "job.log"
CLUSTER_FILE, WORKER_FILE = "cluster.json", "worker.json"  # a Ray job's: the cluster joined, the worker training
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RAY_EXTRA = "Training on a Ray cluster needs the optional extra: pip install -e '.[ray]'"
STATES = ("starting", "running", "cancelling", "done", "cancelled", "failed")
FINISHED = ("done", "cancelled", "failed")

# processes started by this Python process: polled so they are reaped (a zombie would look alive)
_CHILDREN: dict[str, subprocess.Popen] = {}


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


@dataclass
class JobStatus:
    folder: Path
    state: str  # one of STATES
    settings: dict
    message: str = ""
    started: float | None = None
    pid: int | None = None
    fraction: float = 0.0  # of all planned training steps
    epoch: int = 0  # finished epochs
    epochs: int | None = None
    loss: float | None = None  # running training loss of the current epoch
    clean_accuracy: float | None = None
    history: list[dict] = field(default_factory=list)  # one "epoch" record per finished epoch
    member: str = ""  # for EN jobs: which member is training, e.g. "member 2 of 5"
    current_epoch: int | None = None  # the epoch in progress (1-based), from the latest step record
    step: int | None = None  # steps done in that epoch, of `steps`
    steps: int | None = None
    steps_per_s: float | None = None  # measured over that epoch so far
    images_per_s: float | None = None
    stage: str = ""  # what the trainer is doing before its first step record (from its 'stage' records)
    stage_since: float | None = None
    where: str = ""  # a Ray job's cluster, worker and dashboard; "" for a job on this machine

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def title(self) -> str:
        """The notation, plus the folder name where it is not just the notation's (a second run, '-2')."""
        notation = str(self.settings.get("notation", ""))
        try:
            same = slug(notation) == self.name
        except RandmaskError:
            same = notation == self.name
        return notation if same else f"{notation} ({self.name})"

    def stage_text(self, now: float | None = None) -> str:
        """The current stage and how long it has lasted: 'loading the training images (12 s)'; '' for none."""
        if not self.stage:
            return ""
        since = "" if self.stage_since is None else f" ({_duration(max(0.0, (now or time.time()) - self.stage_since))})"
        return self.stage + since

    def progress_text(self) -> str:
        """Where the job is: epoch, step within it and rate (from the latest step record), and the loss; before
        the first step record, the trainer's stage."""
        epochs = self.epochs or "?"
        if self.stage and not self.finished:
            return self.stage_text()
        if self.state == "done":
            text = f"{self.epoch} of {epochs} epochs"
        elif self.step is not None and self.current_epoch is not None and self.current_epoch > self.epoch:
            text = f"epoch {self.current_epoch} of {epochs} · step {self.step} of {self.steps}"
            if self.step >= (self.steps or 0):  # the epoch's steps are done: the trainer tests the model now
                text += " · measuring test accuracy"
            elif self.steps_per_s:
                left = (self.steps - self.step) / self.steps_per_s
                text += (f" · {self.steps_per_s:.2f} steps/s ({self.images_per_s:.0f} images/s), "
                         f"about {_duration(left)} left in this epoch")
        else:
            text = f"{self.epoch} of {epochs} epochs done" + ("" if self.finished else ", the next one starting")
        if self.member:
            text += f" · {self.member}"
        if self.loss is not None and not self.finished:
            text += f" · training loss {self.loss:.3f}"
        return text

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def has_model(self) -> bool:
        return (self.folder / WEIGHTS_FILE).exists() and (self.folder / CONFIG_FILE).exists()


# ------------------------------------------------------------------------------------------------ files
def _write_json(path: Path, data: dict) -> None:
    safe_files.replace_text(path, json.dumps(data, indent=2) + "\n")


def _read_job(folder: Path) -> dict:
    path = folder / JOB_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RandmaskError(f"{folder} is not a training job folder (no {JOB_FILE})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RandmaskError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or "settings" not in data:
        raise RandmaskError(f"{path} does not describe a training job")
    return data


def read_events(path: Path) -> list[dict]:
    """The JSON-lines records of a progress log; a half-written last line (the trainer is appending) is skipped."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    events = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "event" in record:
            events.append(record)
    return events


def _tail(path: Path, lines: int = 20) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            return [line for line in f.read().decode("utf-8", "replace").splitlines() if line.strip()][-lines:]
    except FileNotFoundError:
        return []


# ------------------------------------------------------------------------------------------------ processes
def _proc_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid from ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19])


def _alive(folder: Path, job: dict) -> bool:
    pid = job.get("pid")
    if not pid:
        return False
    child = _CHILDREN.get(str(folder.resolve()))
    if child is not None and child.pid == pid:
        return child.poll() is None
    stat_path = Path(f"/proc/{pid}/stat")
    if stat_path.parent.parent.is_dir() and Path("/proc/self/stat").exists():
        try:
            stat = stat_path.read_text()
        except OSError:
            return False
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] in ("Z", "X"):
            return False
        return job.get("pid_start") is None or int(fields[19]) == job["pid_start"]
    try:  # no /proc: ask the kernel
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    _CHILDREN[str(folder.resolve())] = process
    job.update(pid=process.pid, pid_start=_proc_start_ticks(process.pid), launched=time.time(),
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
    _launch(folder, _read_job(folder))


def cancel_job(folder: Path, force: bool = False) -> bool:
    """Ask a running job to stop (SIGTERM to its process group; SIGKILL with force). False if it was not running."""
    folder = Path(folder)
    job = _read_job(folder)
    if not _alive(folder, job):
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
    _CHILDREN.pop(str(folder), None)


# ------------------------------------------------------------------------------------------------ status
def _progress_logs(folder: Path, settings: dict) -> tuple[Path, str, int, int]:
    """(log to read, member text, members done, members) - EN jobs train member i in members/i/."""
    try:
        members = parse_model(settings["notation"]).ensemble
    except RandmaskError:
        members = 1
    if members == 1:
        return folder / LOG_FILE, "", 0, 1
    done = sum((folder / "members" / str(i) / WEIGHTS_FILE).exists() for i in range(members))
    current = min(done, members - 1)
    return folder / "members" / str(current) / LOG_FILE, f"member {current + 1} of {members}", done, members


def job_status(folder: Path) -> JobStatus:
    """Where a job stands, from its files and whether its process lives; never raises for a broken log."""
    folder = Path(folder)
    job = _read_job(folder)
    settings = job["settings"]
    log_path, member, members_done, members = _progress_logs(folder, settings)
    launched = float(job.get("launched") or job.get("created") or 0)
    events = [e for e in read_events(log_path) if float(e.get("time", 0)) >= launched - 1]
    alive = _alive(folder, job)
    status = JobStatus(folder=folder, state="starting", settings=settings, started=job.get("created"),
                       pid=job.get("pid"), member=member)
    epochs_planned = settings.get("epochs")
    for event in read_events(log_path):  # the whole history, across resumes
        if event["event"] == "epoch":
            status.history = [h for h in status.history if h["epoch"] < event["epoch"]] + [event]
    if status.history:
        status.epoch = status.history[-1]["epoch"]
        epochs_planned = status.history[-1].get("epochs", epochs_planned)
    member_fraction = 0.0
    for event in events:
        kind = event["event"]
        if kind == "stage":
            status.stage, status.stage_since = str(event.get("what", "")), float(event.get("time", 0))
        elif kind in ("step", "epoch", "done"):
            status.stage = ""  # training has moved on: the stage said its piece
        if kind == "start":
            epochs_planned = event.get("config", {}).get("epochs", epochs_planned)
        elif kind == "step":
            member_fraction = ((event["epoch"] - 1) + event["step"] / max(1, event["steps"])) / max(1, event["epochs"])
            status.loss = event.get("loss")
            status.current_epoch, status.step, status.steps = event["epoch"], event["step"], event["steps"]
            elapsed = event.get("elapsed_s")
            if elapsed:  # older logs lack it
                status.steps_per_s = event["step"] / elapsed
                status.images_per_s = event.get("images", 0) / elapsed
        elif kind == "epoch":
            member_fraction = event["epoch"] / max(1, event["epochs"])
            status.loss = event.get("train_loss")
            status.current_epoch = status.step = status.steps = status.steps_per_s = status.images_per_s = None
        elif kind == "done":
            member_fraction = 1.0
            status.clean_accuracy = event.get("clean_accuracy")
    status.epochs = epochs_planned
    status.where = _where(folder, settings)
    status.fraction = min(1.0, (members_done + (0 if members_done == members else member_fraction)) / members)
    terminal = next((e for e in reversed(events) if e["event"] in ("done", "cancelled", "error")), None)
    last_start = max((i for i, e in enumerate(events) if e["event"] in ("start", "resume")), default=-1)
    if terminal is not None and events.index(terminal) < last_start:
        terminal = None  # an earlier attempt's ending; this attempt has started again

    if status.has_model and (not alive or members > 1):
        status.state, status.fraction = "done", 1.0
        if status.clean_accuracy is None:
            try:  # the schema-checked config: a broken one must not break the Train page
                status.clean_accuracy = read_config(folder).get("clean_accuracy")
            except (OSError, RandmaskError):
                pass
        status.message = (f"clean accuracy {100 * status.clean_accuracy:.1f}%" if status.clean_accuracy is not None
                          else "finished")
    elif alive:
        if job.get("cancel_requested"):
            status.state = "cancelling"
            status.message = ("cancelling its task on the Ray cluster" if settings.get("ray") is not None
                              else "stopping after the current step")
        elif any(e["event"] != "stage" for e in events) or members_done:
            status.state = "running"
        else:
            status.state = "starting"  # the progress text says what it is doing: no copy in the title
            if not status.stage:
                status.stage, status.stage_since = _starting_stage(folder, settings, launched)
    elif (terminal is not None and terminal["event"] == "cancelled") or job.get("cancel_requested"):
        status.state = "cancelled"
        status.message = f"cancelled after {status.epoch} finished epoch(s); resume continues from there"
    elif terminal is not None and terminal["event"] == "error":
        status.state, status.message = "failed", str(terminal.get("message", "unknown error"))
    else:
        status.state = "failed"
        errors = [line for line in _tail(folder / OUTPUT_FILE) if line.startswith("error:")]
        status.message = (errors[-1].removeprefix("error:").strip() if errors else
                          "the training process ended without finishing (killed, or out of memory?); "
                          f"see {OUTPUT_FILE}")
    return status


def _read_info(path: Path, since: float = 0.0) -> dict:
    """A small JSON file a Ray job writes (CLUSTER_FILE, WORKER_FILE) if written since `since`; {} otherwise."""
    try:
        if path.stat().st_mtime < since - 1:
            return {}
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _where(folder: Path, settings: dict) -> str:
    """'Ray cluster at 10.0.0.1:6379, on node-3 (pid 4242) · dashboard http://10.0.0.1:8265'; '' on this machine."""
    if settings.get("ray") is None:
        return ""
    joined, worker = _read_info(folder / CLUSTER_FILE), _read_info(folder / WORKER_FILE)
    text = f"Ray cluster at {joined.get('address') or settings['ray']}"
    if worker.get("host"):
        text += f", on {worker['host']} (pid {worker.get('pid', '?')})"
    return text + (f" · dashboard {joined['dashboard']}" if joined.get("dashboard") else "")


def _starting_stage(folder: Path, settings: dict, launched: float) -> tuple[str, float | None]:
    """What a started job does before the trainer's first record: its process starts or, for a Ray job, joins
    the cluster, waits for a worker, starts the trainer there."""
    if settings.get("ray") is None:
        return "starting the training process", launched or None
    joined, worker = _read_info(folder / CLUSTER_FILE, launched), _read_info(folder / WORKER_FILE, launched)
    if worker:
        return f"starting the trainer on {worker.get('host', 'a worker')}", worker.get("started") or None
    if joined:
        return "waiting for a worker of the Ray cluster", joined.get("joined") or None
    return f"joining the Ray cluster at {settings['ray']}", launched or None


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def list_jobs(root: Path | None = None) -> list[JobStatus]:
    """Every job under the jobs folder, newest first; unreadable folders are skipped."""
    root = Path(root) if root else user_runs_root()
    if not root.is_dir():
        return []
    statuses = []
    for folder in root.iterdir():
        if (folder / JOB_FILE).exists():
            try:
                statuses.append(job_status(folder))
            except RandmaskError:
                continue
    return sorted(statuses, key=lambda s: -(s.started or 0))


def wait_job(folder: Path, timeout: float, poll: float = 0.2) -> JobStatus:
    """Poll until the job has finished (done, cancelled or failed) or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        status = job_status(folder)
        if status.finished or time.monotonic() > deadline:
            return status
        time.sleep(poll)


def job_output(folder: Path, lines: int = 20) -> list[str]:
    """The last lines the job's process printed (for a failed job's details)."""
    return _tail(Path(folder) / OUTPUT_FILE, lines)


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
