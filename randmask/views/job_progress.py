"""Where a background training job stands (`job_status`), read from its folder alone: job.json, the trainer's
progress.jsonl, the process's output, and whether that process lives. Starting, cancelling and removing jobs is
jobs.py; this module never starts or signals anything, so every page may call it on every rerun.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from randmask.core.errors import RandmaskError
from randmask.core.notation import parse_model, slug
from randmask.core.settings import user_runs_root
from randmask.experiments.checkpoint import CONFIG_FILE, WEIGHTS_FILE, read_config
from randmask.experiments.train import LOG_FILE

JOB_FILE, OUTPUT_FILE = "job.json", "job.log"
CLUSTER_FILE, WORKER_FILE = "cluster.json", "worker.json"  # a Ray job's: the cluster joined, the worker training
STATES = ("starting", "running", "cancelling", "done", "cancelled", "failed")
FINISHED = ("done", "cancelled", "failed")

# processes started by this Python process: polled so they are reaped (a zombie would look alive)
_CHILDREN: dict[str, subprocess.Popen] = {}


def track(folder: Path, process: subprocess.Popen) -> None:
    """Remember the process this Python process started for a job folder (`process_alive` polls it)."""
    _CHILDREN[str(folder.resolve())] = process


def forget(folder: Path) -> None:
    _CHILDREN.pop(str(folder.resolve()), None)


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


def read_job(folder: Path) -> dict:
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
def proc_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid from ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19])


def process_alive(folder: Path, job: dict) -> bool:
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
    job = read_job(folder)
    settings = job["settings"]
    log_path, member, members_done, members = _progress_logs(folder, settings)
    launched = float(job.get("launched") or job.get("created") or 0)
    events = [e for e in read_events(log_path) if float(e.get("time", 0)) >= launched - 1]
    alive = process_alive(folder, job)
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
