"""Many independent jobs on a Ray cluster (the optional extra: `pip install -e .[ray]`).

`zoo train --ray` and `reproduce --ray` hand their jobs (one model's training, one experiment's cells) to `run`,
which submits each as a Ray task with the resources it asks for and yields results as they finish. A worker
that dies mid-task is Ray's to retry (`max_retries`); the jobs themselves make a retry cheap and exact (training
resumes from its resume.pt, crafted sets are written atomically). Ray is imported here only: without the extra
nothing else changes.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from randmask.core.errors import RandmaskError
from randmask.core.settings import OPENMP_WAIT_VARIABLES

LOCAL = ""  # `--ray` with no address: start a local cluster on this machine
# every setting of the project travels to the workers (a joined cluster's raylets have their own env): where a job's
# inputs are, and what its numbers depend on (the attack path, the training kernels, the remembered bf16/fp32 choice)
FORWARDED_ENV = ("RANDMASK_HOME", "RANDMASK_DATA", "RANDMASK_DATA_CACHE", "RANDMASK_PRECISION_CACHE",
                 "RANDMASK_CRAFTED", "RANDMASK_ZOO", "RANDMASK_RUNS", "RANDMASK_RESULTS", "RANDMASK_PAPER_TABLES",
                 "RANDMASK_EXACT", "RANDMASK_FUSED", "RANDMASK_FUSED_MARCH", *OPENMP_WAIT_VARIABLES)
NEVER_FORWARDED = ("RANDMASK_APP_PASSWORD",)  # a secret: the runtime env shows in Ray's dashboard and logs
_dashboard: str | None = None  # set by connect: the dashboard of the cluster joined
CANCEL_WAIT_S = 60.0  # how long an interrupted driver waits for its cancelled tasks to end
RETRIES = 3  # attempts after the first when a worker or its node dies (not on a Python error in the job)


@dataclass
class Job:
    """One Ray task: `fn(*args)` (a module-level function, so workers import it by name) with its resources.
    `after`: keys of jobs whose results must exist first (Ray starts it once they are done)."""

    key: str
    fn: Callable
    args: tuple
    num_cpus: float = 1
    num_gpus: float = 0
    after: Sequence[str] = field(default_factory=tuple)


def available() -> bool:
    """Whether the Ray extra is installed (without importing it: that takes seconds)."""
    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        return False


def require() -> None:
    """One clear error when the Ray extra is missing (cheap: Ray is not imported)."""
    if not available():
        _ray()


_ADDRESS = re.compile(r"(ray://)?[A-Za-z0-9_.-]+:[0-9]{1,5}")


def check_address(address: str) -> str:
    """A cluster to join ('auto', host:port or ray://host:port), or one clear error."""
    if address != "auto" and not (_ADDRESS.fullmatch(address) and 0 < int(address.rsplit(":", 1)[1]) < 65536):
        raise RandmaskError(f"Ray cluster address {address[:80]!r}: give auto (the cluster running on this machine), "
                            "host:port or ray://host:port")
    return address


def forwarded_env() -> dict[str, str]:
    """The settings set here that the workers get (FORWARDED_ENV; never a secret)."""
    return {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}


def _ray():
    try:
        import ray
    except ImportError:
        raise RandmaskError("--ray (and reproduce --jobs) needs Ray: pip install -e '.[ray]'") from None
    return ray


def connect(address: str | None = LOCAL, num_cpus: int | None = None) -> str:
    """Join the cluster at `address` ('auto': the one running on this machine or named by RAY_ADDRESS; host:port;
    ray://host:port) or, with LOCAL, start a local one (with `num_cpus`, else every CPU). Returns a line for the
    user: where the cluster is, its resources and the dashboard's address when it has one."""
    ray = _ray()
    if ray.is_initialized():
        return describe()
    env = forwarded_env()
    global _dashboard
    try:
        context = ray.init(address="local" if address in (LOCAL, None) else address,
                 num_cpus=num_cpus if address in (LOCAL, None) else None,
                 runtime_env={"env_vars": env} if env else None, log_to_driver=True,
                 logging_level="warning", configure_logging=True)
    except ConnectionError as exc:
        raise RandmaskError(f"no Ray cluster at {address!r}: {' '.join(str(exc).split())[:200]}") from None
    _dashboard = getattr(context, "dashboard_url", None) or None
    return describe()


def describe() -> str:
    """'Ray cluster: N node(s), C CPUs, G GPUs; dashboard http://…' of the connected cluster."""
    ray = _ray()
    total = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    context, url = ray.get_runtime_context(), _dashboard
    gpus = total.get("GPU", 0)
    return (f"Ray cluster at {context.gcs_address}: {len(nodes)} node(s), {total.get('CPU', 0):g} CPU(s)"
            + (f", {gpus:g} GPU(s)" if gpus else "")
            + (f"; dashboard http://{url}" if url else "; no dashboard (it comes with pip install 'ray[default]')"))


def where() -> dict[str, str | None]:
    """The connected cluster's address and its dashboard's URL (None without a dashboard)."""
    return {"address": _ray().get_runtime_context().gcs_address,
            "dashboard": f"http://{_dashboard}" if _dashboard else None}


def cluster_gpus() -> float:
    """GPUs in the connected cluster (0 on a CPU cluster)."""
    return float(_ray().cluster_resources().get("GPU", 0))


def connected() -> bool:
    """Whether this process has joined (or started) a cluster."""
    return _ray().is_initialized()


def shutdown() -> None:
    """Leave the cluster (a local one started by `connect` stops with it)."""
    ray = _ray()
    if ray.is_initialized():
        ray.shutdown()


def run(jobs: Sequence[Job], tick: Callable[[set[str], set[str]], None] | None = None,
        every: float = 10.0) -> Iterator[tuple[str, Any]]:
    """Submit every job and yield (key, result) as each finishes. `tick(done, pending)` is called at least every
    `every` seconds while jobs run, for progress lines. A job whose worker dies is retried by Ray up to RETRIES
    times; a job that raises fails the run (the others are cancelled). Interrupting the driver cancels what is
    still queued or running: a rerun picks up from what the jobs left on disk."""
    ray = _ray()
    refs: dict[str, Any] = {}
    for job in jobs:
        missing = [k for k in job.after if k not in refs]
        if missing:
            raise RandmaskError(f"job {job.key} waits for unknown job(s) {', '.join(missing)}")
        remote = ray.remote(job.fn).options(num_cpus=job.num_cpus, num_gpus=job.num_gpus, max_retries=RETRIES,
                                           retry_exceptions=False, name=job.key)
        # results of the jobs it waits for are passed as extra arguments: Ray starts it once they exist
        refs[job.key] = remote.remote(*job.args, *(refs[k] for k in job.after))
    key_of = {ref: key for key, ref in refs.items()}
    pending, done = list(refs.values()), set()
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=every)
            for ref in ready:
                key = key_of[ref]
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # the job's own error, as its worker raised it
                    cause = exc.cause if isinstance(getattr(exc, "cause", None), Exception) else None
                    raise cause if isinstance(cause, RandmaskError) else RandmaskError(
                        f"{key} failed on the cluster: {' '.join(str(cause or exc).split())[:300]}") from None
                except ray.exceptions.WorkerCrashedError:
                    raise RandmaskError(f"{key}: its worker died {RETRIES + 1} times; see the Ray logs") from None
                done.add(key)
                yield key, result
            if tick:
                tick(done, {key_of[ref] for ref in pending})
    finally:
        if pending:  # on an error or Ctrl-C: nothing keeps running for a driver that is gone
            for ref in pending:
                ray.cancel(ref, force=True)
            # a cancel only asks: wait for the workers to go, so that a rerun never meets one still training
            # (it finished the interrupted model behind the rerun's back, which then found it done)
            ray.wait(pending, num_returns=len(pending), timeout=CANCEL_WAIT_S)


def eta_text(seconds: float | None) -> str:
    """'ETA 3 min', 'ETA 1.5 h', or 'ETA unknown'."""
    if seconds is None or seconds != seconds:
        return "ETA unknown"
    if seconds < 90:
        return f"ETA {max(0, round(seconds))} s"
    if seconds < 90 * 60:
        return f"ETA {round(seconds / 60)} min"
    return f"ETA {seconds / 3600:.1f} h"


def worker_threads(num_cpus: float) -> None:
    """Inside a task: torch uses the CPUs the task was given (Ray sets OMP_NUM_THREADS, torch may not read it)."""
    import torch

    torch.set_num_threads(max(1, int(num_cpus)))
