"""Every environment setting and default location of the project, in one place (standard library only).

    RANDMASK_HOME          the project folder (assets/, runs/, results/); default: the checkout holding this package
    RANDMASK_DATA          data sets; default ../shared/data beside the project, else ~/.randmask/data
    RANDMASK_DATA_CACHE    decoded data arrays (.npy); default ~/.cache/randmask
    RANDMASK_CRAFTED       crafted adversarial sets that `reproduce` reuses; default runs/crafted
    RANDMASK_ZOO           the shipped zoo (<dataset>/<name>/config.json + weights); default assets/zoo
    RANDMASK_RUNS          the app's training jobs (<slug>/); default runs/user
    RANDMASK_RESULTS       reproduction CSVs; default results/
    RANDMASK_PAPER_TABLES  the paper's numbers; default assets/paper_tables.csv, else ../shared/paper/
    RANDMASK_EXACT         1: attacks bit-identical to torchattacks instead of the fast path
    RANDMASK_FUSED         0: train with eager BatchNorm, mask and ReLU instead of the fused CPU kernels
    RANDMASK_FUSED_MARCH   the fused kernels' -march (default native; x86-64-v3 builds the AVX2 path, x86-64 the
                           portable one: how tests cover a CPU without AVX-512 on one that has it)

Each is read when asked for, so tests (and a running app) can change it.
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


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
    """$RANDMASK_FUSED=0 turns off the fused BatchNorm + mask + ReLU training kernels (randmask.fused)."""
    return os.environ.get("RANDMASK_FUSED", "").strip().lower() not in ("0", "false", "no")


def fused_march() -> str:
    """$RANDMASK_FUSED_MARCH: the instruction set the fused kernels are compiled for (g++'s -march), default native."""
    value = os.environ.get("RANDMASK_FUSED_MARCH", "").strip() or "native"
    if not value.replace("-", "").replace("_", "").replace(".", "").isalnum() or len(value) > 40:
        raise ValueError(f"RANDMASK_FUSED_MARCH={value!r} is not a -march name such as native, x86-64-v3 or x86-64")
    return value
