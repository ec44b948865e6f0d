"""The one base class every attack derives from, and the result it returns.

The base class owns everything that is not the attack itself: it moves inputs to the model's device, checks
them, runs the model in eval mode (restoring every module's training flag afterwards; gradients are taken with
respect to the input only, so parameters, buffers and .grad are never touched), batches, clamps to [0, 1],
and measures the outcome on the images it returns. A subclass overrides `perturb` (and, for CW,
`is_success`). Budgets are in the paper's 0-255 units; images are floats in [0, 1].
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from randmask.errors import RandmaskError

Progress = Callable[[int, int], None]


class AttackInputError(RandmaskError):
    """Images or labels an attack cannot use (wrong shape, range, dtype or label)."""


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model with neither)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside; every module's own training flag restored on exit. Attacks take gradients with
    respect to the input only (torch.autograd.grad), so parameters, buffers and .grad are never touched.
    (Switching parameters' requires_grad off would not help: it measured ~3% slower on CPU.)"""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Best wrong logit minus the true logit: > 0 exactly when the prediction is wrong."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return others.max(1).values - true


@dataclass
class AttackResult:
    """Adversarial images and what the model makes of them, measured on these exact images.

    `linf` and `l2` are the perturbation norms in 0-255 units; `success` is the attack's own criterion
    (misclassified; for CW also a margin of at least kappa), so a failure is reported as a failure.
    """

    adv: torch.Tensor
    labels: torch.Tensor
    logits: torch.Tensor
    success: torch.Tensor
    linf: torch.Tensor
    l2: torch.Tensor

    @property
    def pred(self) -> torch.Tensor:
        if len(self.logits) == 0:
            return torch.zeros(0, dtype=torch.long, device=self.labels.device)
        return self.logits.argmax(1)

    @property
    def fooled(self) -> torch.Tensor:
        """Misclassified (whatever the attack's own criterion)."""
        return self.pred != self.labels

    @property
    def success_rate(self) -> float:
        return self.success.float().mean().item() if len(self.success) else float("nan")


class Attack(ABC):
    """Base class: `attack(x, y)` returns adversarial images, `attack.run(x, y)` an `AttackResult`.

    Subclasses set `norm` ("linf" or "l2"), take their settings as constructor arguments (budgets in 0-255
    units) and override `perturb(x, y)`, which sees one batch on the model's device with the model frozen in
    eval mode and returns images in [0, 1]. Randomness comes from `self.rand`/`self.randint`, seeded by `seed`
    at the start of every `run`, so the same call gives the same images on any device.
    """

    norm: ClassVar[str] = "linf"
    uses_gradients: ClassVar[bool] = True

    def __init__(self, model: nn.Module, *, seed: int = 0) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        self.model = model
        self.seed = int(seed)
        self._generator = torch.Generator().manual_seed(self.seed)

    # ---------------------------------------------------------------- to override
    @abstractmethod
    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each attack overrides this one method: the base class cannot be instantiated on its own."""

    def is_success(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return logits.argmax(1) != y

    @property
    def eps(self) -> float | None:
        """The l-infinity budget in 0-255 units, or None for attacks without one."""
        return getattr(self, "_eps", None)

    # ---------------------------------------------------------------- helpers for subclasses
    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def rand(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """Uniform [0, 1) noise drawn on the CPU from the attack's generator (same on every device)."""
        return torch.rand(tuple(shape), generator=self._generator).to(self.device)

    def randint(self, high: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(high, shape, generator=self._generator).to(self.device)

    def input_gradient(self, x: torch.Tensor, y: torch.Tensor,
                       loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(gradient of the summed per-sample loss w.r.t. x, per-sample loss, logits); CE by default."""
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.model(x)
            per_sample = (loss or _cross_entropy)(logits, y)
            (grad,) = torch.autograd.grad(per_sample.sum(), x)
        return grad.detach(), per_sample.detach(), logits.detach()

    # ---------------------------------------------------------------- public entry points
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial images only, like torchattacks; `run` also measures what the model makes of them."""
        return torch.cat([adv for adv, _ in self._batches(x, y, None, None)]) if len(x) else x.clone()

    def run(self, x: torch.Tensor, y: torch.Tensor, *, batch_size: int | None = None,
            progress: Progress | None = None) -> AttackResult:
        """Attack every image (in batches on the model's device); results come back on x's device."""
        home = x.device
        parts = []
        for adv, (xb, yb) in self._batches(x, y, batch_size, progress):
            with frozen_eval(self.model), torch.no_grad():
                logits = self.model(adv.to(self.device)).float()
            delta = (adv - xb).flatten(1) * 255.0
            parts.append((adv, logits.to(home), self.is_success(logits, yb.to(logits.device)).to(home),
                          delta.abs().amax(1), delta.norm(dim=1)))
        if not parts:
            empty = torch.zeros(0, device=home)
            return AttackResult(x.clone(), y.clone(), torch.zeros(0, 0, device=home),
                                torch.zeros(0, dtype=torch.bool, device=home), empty, empty)
        adv, logits, success, linf, l2 = (torch.cat(column) for column in zip(*parts, strict=True))
        return AttackResult(adv, y.clone(), logits, success, linf, l2)

    def _batches(self, x: torch.Tensor, y: torch.Tensor, batch_size: int | None, progress: Progress | None,
                 ) -> Iterator[tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]]:
        """Yields (adversarial batch, (clean batch, labels)) on x's device, seeded afresh for every call."""
        _check_inputs(x, y)
        if batch_size is not None and batch_size < 1:
            raise AttackInputError(f"batch size must be positive, got {batch_size}")
        self._generator.manual_seed(self.seed)
        device, home = self.device, x.device
        total = len(x)
        step = batch_size or max(total, 1)
        for start in range(0, total, step):
            xb = x[start:start + step].to(device, torch.float32)
            yb = y[start:start + step].to(device, torch.long)
            with frozen_eval(self.model):
                if start == 0:
                    self._check_labels(xb, yb)
                with torch.set_grad_enabled(self.uses_gradients):
                    adv = self.perturb(xb, yb)
            adv = adv.detach().clamp(0.0, 1.0)
            if progress is not None:
                progress(min(start + step, total), total)
            yield adv.to(home), (xb.to(home), y[start:start + step])

    def _check_labels(self, x: torch.Tensor, y: torch.Tensor) -> None:
        # a label past the last logit fails deep inside the loss (a device-side assert on CUDA): say it here
        if getattr(self, "_classes", None) is None:
            with torch.no_grad():
                self._classes = self.model(x[:1]).shape[1]
        classes = self._classes
        if int(y.max()) >= classes:
            raise AttackInputError(f"label {int(y.max())} is out of range for a model with {classes} classes")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"

    def describe(self) -> str:
        return ""


def _cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.float(), y, reduction="none")


def _check_inputs(x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise AttackInputError("images and labels must be torch tensors")
    if x.dim() != 4:
        raise AttackInputError(f"images must be N×C×H×W, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise AttackInputError(f"images must be floats in [0, 1], got dtype {x.dtype} (divide uint8 by 255)")
    if y.dim() != 1 or len(y) != len(x):
        raise AttackInputError(f"labels must be a vector of {len(x)} class indices, got shape {tuple(y.shape)}")
    if y.dtype not in (torch.int64, torch.int32):
        raise AttackInputError(f"labels must be integer class indices, got dtype {y.dtype}")
    if len(x) and (x.min() < 0 or x.max() > 1):
        raise AttackInputError(f"images must lie in [0, 1], got values in [{x.min():.3g}, {x.max():.3g}]")
    if len(y) and y.min() < 0:
        raise AttackInputError(f"labels must be non-negative class indices, got {int(y.min())}")


def linf_box(clean: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel bounds of the l-infinity ball of radius eps (in [0,1] units) around clean, within [0, 1]."""
    return (clean - eps).clamp_(min=0.0), (clean + eps).clamp_(max=1.0)


def project_linf(adv: torch.Tensor, clean: torch.Tensor, eps: float) -> torch.Tensor:
    """Nearest point of the l-infinity ball of radius eps (in [0,1] units) around clean, within [0, 1]."""
    return torch.clamp(adv, *linf_box(clean, eps))
