"""`python -m randmask reproduce --preset quick`: rerun the paper's experiments on the shipped zoo, write
`results/*.csv` and a generated `REPRODUCTION.md` with the paper's numbers beside ours and a verdict per claim.

Every experiment names the zoo models it needs; one whose models are not trained yet is listed as pending in the
report instead of failing the run. Sample sizes are smaller than the paper's (see PRESETS); every number carries
n and a Wilson 95% interval.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from randmask.data import load_tensors
from randmask.errors import RandmaskError
from randmask.evaluate import write_csv
from randmask.plan import PRESETS, StageProgress, experiments, record_run
from randmask.report import render_report
from randmask.settings import PROJECT_ROOT, crafted_cache_root, exact_attacks
from randmask.zoo import ZOO_ROOT, Zoo


def reproduce(preset: str = "quick", zoo_root: Path | None = None, out: Path | None = None,
              only: list[str] | None = None, overrides: dict | None = None,
              progress: StageProgress | None = None, cache: Path | None | bool = True) -> dict:
    """Run every experiment whose models exist; write results/<key>.csv and REPRODUCTION.md under `out`.

    Crafted adversarial sets are kept in `cache` (True: $RANDMASK_CRAFTED or runs/crafted; False/None: none) and
    reused while source, attack and images are unchanged, so a rerun after a new zoo model only evaluates it.
    """
    if preset not in PRESETS:
        raise RandmaskError(f"unknown reproduce preset {preset!r}; known: {', '.join(PRESETS)}")
    settings = {**PRESETS[preset], **(overrides or {})}
    zoo = Zoo(Path(zoo_root or ZOO_ROOT))
    out = Path(out or PROJECT_ROOT)
    (out / "results").mkdir(parents=True, exist_ok=True)
    x, y = load_tensors("cifar10", "test", n=settings.get("n_pool"))
    status: dict[str, dict] = {}
    if cache is True:
        cache = crafted_cache_root()
    for exp in experiments(settings, cache or None):
        if only and exp.key not in only:
            continue
        missing = [n for n in exp.needs if not zoo.has(n)]
        if missing:
            status[exp.key] = {"ran": False, "missing": missing}
            continue
        began = time.time()
        torch.manual_seed(0)
        rows = exp.run(zoo, x, y, (lambda d, t, k=exp.key: progress(k, d, t)) if progress else None)
        write_csv(rows, out / "results" / f"{exp.key}.csv")
        status[exp.key] = {"ran": True, "rows": len(rows), "seconds": round(time.time() - began, 1),
                           "absent": [n for n in exp.wants if not zoo.has(n)]}
        record_run(out, exp.key, {"attacks": "exact" if exact_attacks() else "fast", "preset": preset,
                                  "seconds": status[exp.key]["seconds"], "threads": torch.get_num_threads()})
    report = render_report(out, settings, preset, status, zoo)
    (out / "REPRODUCTION.md").write_text(report)
    return status



