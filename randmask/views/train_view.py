"""What the Train page computes: a job's settings from the form (0 = the preset's value), the line that says a
job started, each job's title, accuracy history and budget note against the zoo, and which jobs finished
since the page last looked."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from randmask.core import cluster
from randmask.core.errors import RandmaskError
from randmask.core.models import describe
from randmask.experiments.train_config import PRESETS, make_config
from randmask.results.paper import model_key
from randmask.views import job_progress, jobs
from randmask.views.catalog import ModelEntry

RESUMABLE = ("cancelled", "failed")


def job_settings(notation: str, preset: str, dataset: str, epochs: int, width: int = 0, train_n: int = 0,
                 eval_n: int = 0, ray: str = "") -> jobs.JobSettings:
    """The form's values as a job; 0 for width, training or test images leaves the preset's value (all images);
    an empty Ray address trains on this machine."""
    return jobs.JobSettings(notation=notation, preset=preset, dataset=dataset, epochs=epochs, width=width or None,
                            train_n=train_n or None, eval_n=eval_n or None, ray=ray.strip() or None)


def ray_note() -> str:
    """The Ray field's line where the extra is missing ('' where it is installed)."""
    return "" if cluster.available() else jobs.RAY_EXTRA


def start_message(info: Mapping, folder: str | Path) -> str:
    """'Started <notation> (<parameters>, <masked layers>) in <folder>.' from models.describe's answer."""
    return (f"Started {info['notation']} ({info['params']:,} parameters, {len(info['masked_layers'])} masked "
            f"layers) in {folder}.")


def start_training(notation: str, preset: str, dataset: str, epochs: int, width: int = 0, train_n: int = 0,
                   eval_n: int = 0, ray: str = "") -> str:
    """Start a background training job from the form's values (see job_settings); returns start_message.
    A notation the trainer cannot build, or a Ray address without Ray, fails here, before any folder or process
    exists."""
    settings = job_settings(notation, preset, dataset, epochs, width, train_n, eval_n, ray)
    info = describe(notation, dataset=dataset, width=width or PRESETS[preset].get("width", 16))
    return start_message(info, jobs.start_job(settings))


def zoo_accuracies(entries: Iterable[ModelEntry]) -> dict[tuple[str, str], float | None]:
    """{(notation, data set): clean accuracy} of the zoo's seed-0 models: what a small job is measured against."""
    return {(e.notation, e.dataset): e.clean_accuracy for e in entries
            if e.source == "zoo" and e.seed == 0 and e.mask_seed == 0}


def budget_note(status: job_progress.JobStatus, reference: float | None = None) -> str:
    """For a finished job trained on a small budget: why its accuracy is low (fewer epochs or images than the
    preset's), against `reference`, the zoo's accuracy for the same notation where there is one."""
    settings = status.settings
    try:
        full = make_config(settings["notation"], settings.get("preset", "quick"), dataset=settings.get("dataset",
                                                                                                         "cifar10"))
    except RandmaskError:
        return ""
    epochs, train_n = settings.get("epochs") or full.epochs, settings.get("train_n")
    if status.state != "done" or (epochs >= full.epochs and not train_n):
        return ""
    images = f"{train_n:,} training images" if train_n else "all training images"
    zoo = (f" (the zoo's {settings['notation']}: {100 * reference:.1f}%)" if reference is not None else "")
    return (f"A {epochs}-epoch run on {images} cannot learn much more: the {settings.get('preset', 'quick')} "
            f"preset trains {full.epochs} epochs on the whole training set{zoo}. Train longer, on more images, "
            "for a model worth comparing.")


def job_note(status: job_progress.JobStatus, accuracies: Mapping[tuple[str, str], float | None]) -> str:
    """budget_note against the zoo's model of the same notation (as the zoo spells it) and data set."""
    settings = status.settings
    return budget_note(status, accuracies.get((model_key(settings["notation"]), settings["dataset"])))


def job_title(status: job_progress.JobStatus) -> str:
    """'**0.7-Shallow** · quick preset · cifar10 · done · clean accuracy 91.0%' (the message only where there
    is one)."""
    settings = status.settings
    return (f"**{status.title}** · {settings['preset']} preset · {settings['dataset']} · {status.state}"
            + (f" · {status.message}" if status.message else ""))


def resumable(status: job_progress.JobStatus) -> bool:
    """Whether the job can go on from its last finished epoch (cancelled or failed)."""
    return status.state in RESUMABLE


def output_text(status: job_progress.JobStatus, lines: int = 20) -> str:
    """The last lines the job's process printed, as one block (for a failed job)."""
    return "\n".join(job_progress.job_output(status.folder, lines))


def history_series(history: Sequence[Mapping]) -> dict[str, list]:
    """A job's epoch records as the chart's series: epochs, test and training accuracy in percent."""
    return {"epoch": [h["epoch"] for h in history], "test": [100 * h["test_acc"] for h in history],
            "train": [100 * h["train_acc"] for h in history]}


def any_running(statuses: Iterable[job_progress.JobStatus]) -> bool:
    """Whether any job is still starting, running or cancelling."""
    return any(not s.finished for s in statuses)


def job_changes(was_running: set[str], statuses: Sequence[job_progress.JobStatus]) -> tuple[set[str], str | None]:
    """(names of the jobs running now, a toast for jobs that were running when the page last looked and have
    finished since, None when none has): the page polls and remembers the first."""
    running = {s.name for s in statuses if not s.finished}
    if not was_running & {s.name for s in statuses if s.finished}:
        return running, None
    done = any(s.state == "done" and s.name in was_running for s in statuses)
    return running, "A training job has finished" + (": its model is now in the picker." if done else ".")
