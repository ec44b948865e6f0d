"""Every environment setting and default location of the project, in one place (standard library only).

    RANDMASK_HOME          the project folder (assets/, runs/, results/); default: the checkout holding this package
    RANDMASK_DATA          data sets; default ../shared/data beside the project, else ~/.randmask/data
    RANDMASK_DATA_CACHE    decoded data arrays (.npy); default ~/.cache/randmask
    RANDMASK_PRECISION_CACHE  training precision probes already measured on this CPU (JSON); default
                           <data cache>/precision-probes.json; delete it to probe again
    RANDMASK_CRAFTED       crafted adversarial sets that `reproduce` reuses; default runs/crafted
    RANDMASK_ZOO           the shipped zoo (<dataset>/<name>/config.json + weights); default assets/zoo
    RANDMASK_RUNS          the app's training jobs (<slug>/); default runs/user
    RANDMASK_RESULTS       reproduction CSVs; default results/
    RANDMASK_PAPER_TABLES  the paper's numbers; default assets/paper_tables.csv, else ../shared/paper/
    RANDMASK_EXACT         1: attacks bit-identical to torchattacks instead of the fast path
    RANDMASK_FUSED         0: train with eager BatchNorm, mask and ReLU instead of the fused CPU kernels
    RANDMASK_FUSED_MARCH   the fused kernels' -march (default native; x86-64-v3 builds the AVX2 path, x86-64 the
                           portable one: how tests cover a CPU without AVX-512 on one that has it)
    OMP_WAIT_POLICY, GOMP_SPINCOUNT, KMP_BLOCKTIME
                           how idle OpenMP threads wait; when none is set, the entry points set a bounded spin
                           (`apply_openmp_wait_policy`) before torch loads its OpenMP runtime

Each is read when asked for, so tests (and a running app) can change it.
"""
from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # randmask/, the folder above core/


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else None


def project_root() -> Path:
    """$RANDMASK_HOME, else the checkout this package sits in (an editable install or a plain clone), else the
    current folder (a non-editable install carries no assets)."""
    home = _env_path("RANDMASK_HOME")
    if home is not None:
        return home
    checkout = PACKAGE_DIR.parent
    return checkout if (checkout / "assets").is_dir() else Path.cwd()


PROJECT_ROOT = project_root()


def data_root() -> Path:
    beside = PROJECT_ROOT.parent / "shared" / "data"
    return _env_path("RANDMASK_DATA") or (beside if beside.is_dir() else Path.home() / ".randmask" / "data")


def data_cache_root() -> Path:
    return _env_path("RANDMASK_DATA_CACHE") or Path.home() / ".cache" / "randmask"


def precision_cache_path() -> Path:
    return _env_path("RANDMASK_PRECISION_CACHE") or data_cache_root() / "precision-probes.json"


def crafted_cache_root() -> Path:
    return _env_path("RANDMASK_CRAFTED") or PROJECT_ROOT / "runs" / "crafted"


def zoo_root() -> Path:
    return _env_path("RANDMASK_ZOO") or PROJECT_ROOT / "assets" / "zoo"


def zoo_runs_root() -> Path:
    """Where `zoo train` keeps its resumable runs before exporting a model into the zoo."""
    return PROJECT_ROOT / "runs" / "zoo"


def user_runs_root() -> Path:
    return _env_path("RANDMASK_RUNS") or PROJECT_ROOT / "runs" / "user"


def results_root() -> Path:
    return _env_path("RANDMASK_RESULTS") or PROJECT_ROOT / "results"


def samples_root() -> Path:
    return PROJECT_ROOT / "assets" / "samples"


def readme_path() -> Path:
    return PROJECT_ROOT / "README.md"


def paper_tables_path() -> Path | None:
    """The paper's numbers: $RANDMASK_PAPER_TABLES, assets/paper_tables.csv, or ../shared/paper beside the project."""
    chosen = _env_path("RANDMASK_PAPER_TABLES")
    if chosen is not None:
        return chosen
    for candidate in (PROJECT_ROOT / "assets" / "paper_tables.csv",
                      PROJECT_ROOT.parent / "shared" / "paper" / "paper_tables.csv"):
        if candidate.exists():
            return candidate
    return None


def exact_attacks() -> bool:
    """$RANDMASK_EXACT=1: attacks default to the exact (torchattacks-identical) path."""
    return os.environ.get("RANDMASK_EXACT", "").strip().lower() in ("1", "true", "yes")


def fused_kernels_enabled() -> bool:
    """$RANDMASK_FUSED=0 turns off the fused BatchNorm + mask + ReLU training kernels (randmask.core.fused)."""
    return os.environ.get("RANDMASK_FUSED", "").strip().lower() not in ("0", "false", "no")


def fused_march() -> str:
    """$RANDMASK_FUSED_MARCH: the instruction set the fused kernels are compiled for (g++'s -march), default native."""
    value = os.environ.get("RANDMASK_FUSED_MARCH", "").strip() or "native"
    if not value.replace("-", "").replace("_", "").replace(".", "").isalnum() or len(value) > 40:
        raise ValueError(f"RANDMASK_FUSED_MARCH={value!r} is not a -march name such as native, x86-64-v3 or x86-64")
    return value


# ------------------------------------------------------------------------------------------------ OpenMP waits
OPENMP_WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
# Idle OpenMP threads spin this long, then sleep. Spinning without end (ACTIVE) won ~25% of a 2-thread training step
# on a quiet machine but made steps many times slower when another process took the cores; sleeping at once
# (PASSIVE) wakes slowly between the many small parallel regions of a step. A short spin keeps most of the first
# and all of the second (bench/bench_core.py --only omp). GOMP_SPINCOUNT is libgomp's (PyTorch's wheels),
# KMP_BLOCKTIME (ms) Intel's and LLVM's runtimes'; libgomp's own default, with neither set, spins 300,000 rounds.
OPENMP_BOUNDED_SPIN = {"GOMP_SPINCOUNT": "10000", "KMP_BLOCKTIME": "1"}
_OPENMP_NOTE: str | None = None


def openmp_wait_policy(environ: MutableMapping[str, str] | None = None) -> tuple[dict[str, str], str]:
    """(variables to add, why): the bounded spin where the environment sets none of OPENMP_WAIT_VARIABLES,
    nothing where it sets any (a user's choice is never overridden)."""
    env = os.environ if environ is None else environ
    chosen = {k: env[k] for k in OPENMP_WAIT_VARIABLES if env.get(k, "").strip()}
    spin = ", ".join(f"{k}={v}" for k, v in OPENMP_BOUNDED_SPIN.items())
    ours = (f"OpenMP waits: a short spin, then sleep ({spin}, randmask's default): endless spinning made steps many "
            "times slower whenever other processes took the cores, sleeping at once slows a quiet step")
    if chosen == OPENMP_BOUNDED_SPIN:  # inherited from a randmask parent (the app, paper-study): still ours
        return {}, ours
    if chosen:
        return {}, "OpenMP waits as the environment sets them: " + ", ".join(f"{k}={v}" for k, v in chosen.items())
    return dict(OPENMP_BOUNDED_SPIN), ours


def apply_openmp_wait_policy() -> str:
    """In an entry point, before torch is imported (the OpenMP runtime reads these variables once, when torch
    loads it): set the bounded spin in this process's environment, which its children inherit, unless the user
    set a policy; say which policy is in effect and why. Where torch is already loaded (randmask called from
    another program) nothing is changed."""
    global _OPENMP_NOTE
    add, why = openmp_wait_policy()
    if add and "torch" in sys.modules:
        why = "OpenMP waits: the runtime's default (torch was loaded before randmask's entry point could set them)"
    else:
        os.environ.update(add)
    _OPENMP_NOTE = _OPENMP_NOTE or why  # the first call saw the environment the runtime read
    return why


def openmp_wait_note() -> str:
    """Which OpenMP wait policy this process runs with and why: what `apply_openmp_wait_policy` said here, else
    what the environment sets, else the runtime's default."""
    if _OPENMP_NOTE:
        return _OPENMP_NOTE
    add, why = openmp_wait_policy()
    return "OpenMP waits: the runtime's default (no entry point of randmask set them here)" if add else why
