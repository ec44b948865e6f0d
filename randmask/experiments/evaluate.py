"""Shared pieces of the evaluation protocols: predictions, image selection, crafting adversarial images as
they would be stored (uint8), accuracy rows with Wilson 95% intervals, and tidy CSV output.

Every accuracy in a protocol CSV is a fraction in [0, 1] with `n` (the images it is measured on), `correct`,
and `ci_low`/`ci_high` (Wilson score interval, 95%). Budgets and perturbation norms are in 0-255 units.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from filelock import FileLock
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from randmask.attacks import Attack, fast_view, frozen_eval, model_device, parse_attack
from randmask.attacks.base import AttackInputError, AttackResult, Progress, channels_last, resolve_exact
from randmask.core.errors import RandmaskError
from randmask.core.stats import wilson_interval

DEFAULT_BATCH = 256


class Work:
    """Turns per-phase progress into one overall (done, total) for a caller's progress callback."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total, self.done, self.progress = total, 0, progress

    def phase(self, size: int) -> Progress:
        """A callback for the next `size` units of work."""
        start = self.done
        self.done += size

        def report(done: int, _total: int) -> None:
            if self.progress is not None:
                self.progress(min(start + done, self.total), self.total)

        return report


def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = DEFAULT_BATCH,
            exact: bool | None = None) -> torch.Tensor:
    """Float32 logits on x's device, computed in eval mode in batches; the model is left as it was.

    Fast by default: the model's cached `fast_view` (BatchNorm folded, channels_last). exact=True runs the
    model itself in NCHW (None: RANDMASK_EXACT decides). Both under no_grad: inference_mode measured no faster
    here, and the inference tensors a module caches under it (RandomMask's cast mask) would break a later
    gradient pass through the same cached view."""
    if batch_size < 1:
        raise RandmaskError(f"batch size must be positive, got {batch_size}")
    device = model_device(model)
    out = []
    if not resolve_exact(exact) and len(x):
        net = fast_view(model, x[:2].to(device, torch.float32))
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                xb = channels_last(x[start:start + batch_size].to(device, torch.float32))
                out.append(net(xb).float().to(x.device))
        return torch.cat(out)
    with frozen_eval(model), torch.no_grad():
        for start in range(0, len(x), batch_size):
            out.append(model(x[start:start + batch_size].to(device, torch.float32)).float().to(x.device))
    if not out:
        return torch.zeros(0, 0, device=x.device)
    return torch.cat(out)


def top2_logit_gaps(logits: torch.Tensor) -> torch.Tensor:
    """Per image, the top logit minus the runner-up: the margin a CW attack with confidence kappa must reverse."""
    top = logits.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


def select_correct(models: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, *, n: int | None = None,
                   min_confidence: float = 0.0, batch_size: int = DEFAULT_BATCH) -> torch.Tensor:
    """Indices (in order) of the first n images every model classifies correctly, each with softmax
    probability >= min_confidence; scanning stops as soon as n are found."""
    if n is not None and n < 1:
        raise RandmaskError(f"n must be positive, got {n}")
    if batch_size < 1:
        raise RandmaskError(f"batch size must be positive, got {batch_size}")
    chosen: list[torch.Tensor] = []
    found = 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        keep = torch.ones(len(xb), dtype=torch.bool, device=x.device)
        for model in models:
            prob = predict(model, xb, batch_size=batch_size).softmax(1)
            keep &= (prob.argmax(1) == yb) & (prob.gather(1, yb[:, None]).squeeze(1) >= min_confidence)
        idx = keep.nonzero().squeeze(1) + start
        chosen.append(idx)
        found += len(idx)
        if n is not None and found >= n:
            break
    indices = torch.cat(chosen) if chosen else torch.zeros(0, dtype=torch.long)
    return indices[:n] if n is not None else indices


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.mul(255).round().clamp(0, 255).to(torch.uint8)


def quantize(adv: torch.Tensor, clean: torch.Tensor, eps: float | None = None) -> torch.Tensor:
    """The uint8 image nearest to adv (as floats k/255), kept within floor(eps) grey levels of the stored
    clean image round(255 clean), so rounding never breaks the l-inf budget."""
    levels = adv.mul(255).round()
    if eps is not None:
        base = clean.mul(255).round()
        radius = math.floor(eps + 1e-6)
        levels = torch.min(torch.max(levels, base - radius), base + radius)
    return levels.clamp(0, 255).div(255)


def perturbation_norms(adv: torch.Tensor, clean: torch.Tensor, *, levels: bool = False,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image l-inf and l2 norms of adv - clean in 0-255 units; with levels=True both images are first
    rounded to uint8 grey levels, so stored images give exact integer differences."""
    if levels:
        delta = (adv.mul(255).round().double() - clean.mul(255).round().double()).flatten(1)
    else:
        delta = (adv.double() - clean.double()).flatten(1) * 255
    return delta.abs().amax(1).float(), delta.norm(dim=1).float()


def accuracy_fields(correct: int, n: int) -> dict:
    low, high = wilson_interval(int(correct), int(n))
    return {"n": int(n), "correct": int(correct), "accuracy": correct / n if n else math.nan,
            "ci_low": low, "ci_high": high}


CRAFTED_FORMAT = 1  # bump when the stored fields or their meaning change
# cache file key -> AttackResult field; the keys are those of the class this one replaced (Crafted), so
# entries written before the merge are still read
_STORED_FIELDS = {"adv": "adv", "labels": "labels", "source_logits": "logits", "attack_success": "success",
                  "linf": "linf", "l2": "l2"}


def craft(source: nn.Module, attack: str | Attack, x: torch.Tensor, y: torch.Tensor, *, seed: int = 0,
          quantize_images: bool = True, batch_size: int = DEFAULT_BATCH, progress: Progress | None = None,
          cache: str | os.PathLike | None = None) -> AttackResult:
    """Attack `source`; with quantize_images the images are rounded to uint8 (budget kept) and every number
    returned is measured again on the rounded images, since rounding can undo an attack.

    With `cache` (a folder), the result is stored there under a fingerprint of everything it depends on (the
    source's parameters and buffers, the attack and its settings -- the fast/exact mode included --, the images,
    labels, seed, batch size, device and torch version) and reused when all of these match; an unreadable entry
    is recomputed and replaced.
    """
    if isinstance(attack, Attack):
        if attack.model is not source:
            raise AttackInputError("the attack object was built for a different model than the source")
        runner = attack
    else:
        runner = parse_attack(attack).build(source, seed=seed)
    if cache is None:
        return _craft(source, runner, x, y, quantize_images, batch_size, progress)
    entry = Path(cache) / f"{crafted_fingerprint(source, runner, x, y, quantize_images, batch_size)}.safetensors"
    hit = _read_crafted(entry, x.device)
    if hit is None:
        entry.parent.mkdir(parents=True, exist_ok=True)
        # one crafter per entry: a second process (reproduce --jobs, two CLI runs) waits, then reads the first's set
        with FileLock(entry.with_name(f".{entry.name}.lock")):
            hit = _read_crafted(entry, x.device)
            if hit is None:
                crafted = _craft(source, runner, x, y, quantize_images, batch_size, progress)
                _write_crafted(entry, crafted)
                return crafted
    if progress:
        progress(len(x), len(x))
    return hit


_WHY_UNCHANGED = {
    "CW": ("CW keeps a change only once the wrong class leads by the margin κ = {kappa:g} (logits); these networks' "
           "logits are rarely that far apart, so the search found no such image within its budget. Lower κ (CW0 "
           "asks only for a wrong label, CW10 for a small margin) or give it more search rounds and steps."),
    "Square": "no query of the random search raised the loss within ε. Give it more queries or a larger ε.",
}
_WHY_GRADIENT = ("the loss gradient was exactly zero on these images (a saturated or non-differentiable model), so "
                 "a gradient attack had no direction to move in. Try a gradient-free attack (Square) or check the model.")


def unchanged_note(attack: str, unchanged: int, total: int, against: str) -> str | None:
    """One sentence when an attack handed back images exactly as they were (it found nothing within its budget),
    saying why and what to change; None when every image changed. A blank perturbation must never pass for a
    result."""
    if unchanged <= 0 or total <= 0:
        return None
    spec = parse_attack(attack)
    why = _WHY_UNCHANGED.get(spec.kind, _WHY_GRADIENT).format(**spec.params)
    count = "every image" if unchanged == total else f"{unchanged} of {total} images"
    return f"{spec} left {count} unchanged against {against}: {why}"


def crafted_fingerprint(source: nn.Module, runner: Attack, x: torch.Tensor, y: torch.Tensor,
                        quantize_images: bool, batch_size: int) -> str:
    """sha256 over what a crafted set depends on; the attack's settings are its attributes (the seed included)."""
    digest = hashlib.sha256()
    # `exact` is one of the settings: fast and exact sets differ in the last bits, so they never share an entry
    settings = sorted((k, repr(v)) for k, v in vars(runner).items() if k not in ("model", "_generator", "_net"))
    header = (CRAFTED_FORMAT, type(runner).__module__, type(runner).__qualname__, settings, bool(quantize_images),
              int(batch_size), model_device(source).type, torch.__version__, repr(source))
    digest.update(repr(header).encode())
    _digest_tensors(digest, [*source.named_parameters(), *source.named_buffers(), ("x", x), ("y", y)])
    return digest.hexdigest()


def _digest_tensors(digest, named: Iterable[tuple[str, torch.Tensor]]) -> None:
    for name, tensor in named:
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)};".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")


def tensor_fingerprint(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes: the key of an image set in the prediction cache."""
    digest = hashlib.sha256()
    _digest_tensors(digest, [("0", tensor)])
    return digest.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of a model's structure (its repr: masks' ratios and seeds included), parameters and buffers."""
    digest = hashlib.sha256(repr(model).encode())
    _digest_tensors(digest, [*model.named_parameters(), *model.named_buffers()])
    return digest.hexdigest()


PREDICTIONS_FORMAT = 1


def predicted_labels(model: nn.Module, x: torch.Tensor, *, batch_size: int = DEFAULT_BATCH,
                     cache: str | os.PathLike | None = None, model_key: str | None = None,
                     images_key: str | None = None) -> torch.Tensor:
    """The class each image gets (argmax of `predict`), on x's device. With `cache` (a folder), kept under
    cache/predictions/ keyed on the model's and the images' fingerprints (pass `model_key` / `images_key` when
    already computed), the fast/exact mode, batch size, device and torch version: a protocol rerun after a new
    zoo model then evaluates only the new one. An unreadable entry is recomputed and replaced."""
    if cache is None:
        return predict(model, x, batch_size=batch_size).argmax(1)
    header = (PREDICTIONS_FORMAT, model_key or model_fingerprint(model), images_key or tensor_fingerprint(x),
              resolve_exact(None), int(batch_size), model_device(model).type, torch.__version__)
    entry = Path(cache) / "predictions" / f"{hashlib.sha256(repr(header).encode()).hexdigest()}.safetensors"
    stored = _load_entry(entry)
    labels = stored.get("labels") if stored else None
    if labels is None or labels.shape != (len(x),):
        labels = predict(model, x, batch_size=batch_size).argmax(1).to("cpu")
        _save_entry(entry, {"labels": labels})
    return labels.to(x.device)


def _load_entry(path: Path) -> dict[str, torch.Tensor] | None:
    """A cache entry's tensors, or None when it is absent, corrupt or partial (the caller recomputes)."""
    if not path.exists():
        return None
    try:
        return load_file(path)
    except (SafetensorError, OSError, RuntimeError, ValueError):
        return None


def _save_entry(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({key: t.detach().to("cpu").contiguous() for key, t in tensors.items()}, str(tmp))
    os.replace(tmp, path)  # atomic: a reader never sees half a file


def _read_crafted(path: Path, device: torch.device) -> AttackResult | None:
    tensors = _load_entry(path)
    if tensors is None or not set(_STORED_FIELDS) <= set(tensors):
        return None
    return AttackResult(**{field: tensors[key].to(device) for key, field in _STORED_FIELDS.items()})


def _write_crafted(path: Path, crafted: AttackResult) -> None:
    _save_entry(path, {key: getattr(crafted, field) for key, field in _STORED_FIELDS.items()})


def _craft(source: nn.Module, runner: Attack, x: torch.Tensor, y: torch.Tensor, quantize_images: bool,
           batch_size: int, progress: Progress | None) -> AttackResult:
    result = runner.run(x, y, batch_size=batch_size, progress=progress)
    adv = result.adv
    if len(adv) == 0:  # nothing to attack (e.g. the source classifies none of the images correctly)
        empty = torch.zeros(0, device=adv.device)
        return AttackResult(adv, y.to(adv.device), result.logits, result.success, empty, empty)
    if quantize_images:
        adv = quantize(adv, x.to(adv.device), runner.eps)
        logits = predict(source, adv, batch_size=batch_size, exact=runner.exact)
        success = runner.is_success(logits, y.to(logits.device))
    else:
        logits, success = result.logits, result.success
    linf, l2 = perturbation_norms(adv, x.to(adv.device), levels=quantize_images)
    return AttackResult(adv, y.to(adv.device), logits, success, linf, l2)


def mean_or_nan(values: torch.Tensor) -> float:
    return values.double().mean().item() if len(values) else math.nan


def percent_text(value: float | None) -> str:
    """'12.3', or '–' for a missing value (None or NaN)."""
    return "–" if value is None or value != value else f"{value:.1f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def csv_text(rows: Iterable[Mapping], columns: Sequence[str] | None = None) -> str:
    """Rows as CSV text: columns in the given order, then any others in first-seen order; floats to 6
    significant digits, NaN as an empty cell."""
    rows = list(rows)
    order = list(columns or [])
    for row in rows:
        order += [key for key in row if key not in order]
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=order, restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return buffer.getvalue()


def write_csv(rows: Iterable[Mapping], path: str | os.PathLike, columns: Sequence[str] | None = None) -> Path:
    """Write rows as CSV (csv_text), atomically."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(csv_text(rows, columns), encoding="utf-8", newline="")
    os.replace(tmp, path)
    return path


def _cell(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, torch.Tensor):
        return _cell(value.item())
    return value
