"""The one base class every attack derives from, and the result it returns.

The base class owns everything that is not the attack itself: it moves inputs to the model's device, checks
them, runs the model in eval mode (restoring every module's training flag afterwards; gradients are taken with
respect to the input only, so parameters, buffers and .grad are never touched), batches, clamps to [0, 1],
and measures the outcome on the images it returns. A subclass overrides `perturb` (and, for CW,
`is_success`). Budgets are in the paper's 0-255 units; images are floats in [0, 1].

Two modes. The default (fast) attacks an eval-mode copy of the model (`fast_view`): BatchNorm folded into
the convolution before it, parameters frozen, weights, inputs and C×H×W buffers channels_last; on a CPU
gradients 64 images at a time, on a GPU whole batches through replayed CUDA graphs (`cuda_graphs`). About
1.6x faster than torchattacks on a CPU and 1.7-4.4x on a GPU (README, Performance), but the float summation
order changes, so a gradient component within rounding of zero can flip sign. `exact=True` runs the model
itself in NCHW and is bit-identical to torchattacks. The caller's model is never modified in either mode.
RANDMASK_EXACT=1 makes exact the process-wide default (CLI, protocols, app).
"""

from __future__ import annotations

import contextlib
import copy
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from randmask.attacks.cuda_graphs import graphed_gradient
from randmask.core.errors import RandmaskError
from randmask.core.settings import exact_attacks

if TYPE_CHECKING:
    from randmask.attacks.registry import AttackKind

Progress = Callable[[int, int], None]
FAST_CHUNK = 64  # images per forward/backward pass of the fast path on a CPU (bench/bench_attacks.py)


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


def exact_default() -> bool:
    """The process-wide mode when none is given: exact only if RANDMASK_EXACT is set to 1/true/yes."""
    return exact_attacks()


def resolve_exact(exact: bool | None) -> bool:
    return exact_default() if exact is None else bool(exact)


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """NHWC strides for a 4-d tensor (same values): oneDNN's fast layout for convolutions."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


_VIEWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_VIEWS_LOCK = threading.Lock()


def _state_key(model: nn.Module) -> tuple:
    # in-place updates (optimizer steps, load_state_dict) bump _version; `.data = ...` changes data_ptr
    return tuple((t.data_ptr(), t._version, t.dtype, t.device)
                 for t in (*model.parameters(), *model.buffers()))


def fast_view(model: nn.Module, probe: torch.Tensor) -> nn.Module:
    """An eval-mode copy of `model` for fast attacks and predictions: each BatchNorm that directly follows a
    Conv2d folded into it, parameters frozen, 4-d weights channels_last and C×H×W buffers in HWC strides.
    The model itself is not touched.

    Which BatchNorm follows which convolution is read from one forward pass on `probe` (a few images); the
    folded copy must give the model's logits on it (relative error < 1e-3), else the unfolded copy is used.
    Copies are cached per model and rebuilt when any of its parameters or buffers changes."""
    key = _state_key(model)
    with _VIEWS_LOCK:
        hit = _VIEWS.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    probe = probe[:2].detach()
    try:
        view = copy.deepcopy(model).eval()
    except (RuntimeError, TypeError):  # e.g. a non-leaf tensor held as an attribute: attack the model itself
        return model
    for p in view.parameters():
        p.requires_grad_(False)
    with frozen_eval(model), torch.no_grad():
        reference = model(probe).float()
        folded = _fold_batchnorm(copy.deepcopy(view), probe)
        got = folded(channels_last(probe)).float() if folded is not None else None
    scale = reference.abs().max().item() + 1e-6
    if got is not None and got.shape == reference.shape and (got - reference).abs().max().item() <= 1e-3 * scale:
        view = folded
    view.to(memory_format=torch.channels_last)
    for module in view.modules():  # C×H×W buffers (masks, pixel mean) in HWC strides, as NHWC activations are
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.dim() == 3:
                module._buffers[name] = buffer.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    with _VIEWS_LOCK:
        _VIEWS[model] = (key, view)
    return view


def _fold_batchnorm(view: nn.Module, probe: torch.Tensor) -> nn.Module | None:
    """`view` with every (Conv2d -> BatchNorm2d) pair, as one forward pass actually chains them, fused into one
    conv with a bias; None when nothing can be folded. Modules called more than once are left alone."""
    produced: dict[int, nn.Module] = {}
    calls: dict[int, int] = {}
    pairs: list[tuple[nn.Module, nn.Module]] = []
    alive: list[torch.Tensor] = []  # keeps outputs alive so their id()s are not reused during the pass

    def after_conv(module, _inputs, output):
        calls[id(module)] = calls.get(id(module), 0) + 1
        produced[id(output)] = module
        alive.append(output)

    def before_bn(module, inputs):
        calls[id(module)] = calls.get(id(module), 0) + 1
        conv = produced.get(id(inputs[0])) if inputs else None
        if conv is not None:
            pairs.append((conv, module))

    hooks = [m.register_forward_hook(after_conv) for m in view.modules() if type(m) is nn.Conv2d]
    hooks += [m.register_forward_pre_hook(before_bn) for m in view.modules() if type(m) is nn.BatchNorm2d]
    try:
        view(probe)
    finally:
        for hook in hooks:
            hook.remove()
    names = {id(m): name for name, m in view.named_modules()}
    convs = [id(conv) for conv, _ in pairs]
    pairs = [(c, b) for c, b in pairs if calls[id(c)] == 1 and calls[id(b)] == 1 and convs.count(id(c)) == 1
             and b.track_running_stats and b.running_mean is not None]
    if not pairs:
        return None
    for conv, bn in pairs:
        for module, new in ((conv, fuse_conv_bn_eval(conv, bn)), (bn, nn.Identity())):
            parent, _, attr = names[id(module)].rpartition(".")
            setattr(view.get_submodule(parent) if parent else view, attr, new)
    for p in view.parameters():
        p.requires_grad_(False)
    return view


@dataclass
class AttackResult:
    """Adversarial images and what the attacked model makes of them, measured on these exact images.

    `Attack.run` returns one, and so does `evaluate.craft` for images as stored (uint8, then measured again,
    so `logits` are the source model's on the stored images). `linf` and `l2` are the perturbation norms in
    0-255 units; `success` is the attack's own criterion (misclassified; for CW also a margin of at least
    kappa), so a failure is reported as a failure.
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

    Subclasses set `norm` ("linf" or "l2"), register with `@register_attack` (randmask.attacks.registry),
    take their settings as constructor arguments that default to None, meaning the registered default
    (`self.setting`; budgets in 0-255 units), and override `perturb(x, y)`, which sees one batch on the model's device with the model frozen in
    eval mode and returns images in [0, 1]; it calls the network as `self.net` (the fast view, or the model
    itself with exact=True). Randomness comes from `self.rand`/`self.randint`, seeded by `seed` at the start
    of every `run`, so the same call gives the same images on any device.
    """

    norm: ClassVar[str] = "linf"
    uses_gradients: ClassVar[bool] = True
    attack_kind: ClassVar[AttackKind]  # set by @register_attack: notation layouts, settings and defaults

    def __init__(self, model: nn.Module, *, seed: int = 0, exact: bool | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        self.model = model
        self.seed = int(seed)
        self.exact = resolve_exact(exact)  # an attribute, so crafted-set fingerprints tell the modes apart
        self._generator = torch.Generator().manual_seed(self.seed)
        self._net: nn.Module | None = None

    def setting(self, name: str, value: Any) -> Any:
        """`value`, or the registered default when it is None: constructors write no default of their own."""
        return type(self).attack_kind.settings[name].default if value is None else value

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

    @property
    def net(self) -> nn.Module:
        """The network the attack queries: the fast view during a fast run, else the model itself."""
        return self._net if self._net is not None else self.model

    def rand(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """Uniform [0, 1) noise drawn on the CPU from the attack's generator (same on every device)."""
        return torch.rand(tuple(shape), generator=self._generator).to(self.device)

    def randint(self, high: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(high, shape, generator=self._generator).to(self.device)

    def input_gradient(self, x: torch.Tensor, y: torch.Tensor,
                       loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(gradient of the summed per-sample loss w.r.t. x, per-sample loss, logits); CE by default.

        On a CPU the fast path takes the gradient FAST_CHUNK images at a time (each image's loss depends on
        that image alone, so this is the same sum): their activations stay in cache, 10-15% faster here on 128
        images. On a GPU it replays a CUDA graph of the whole batch for the default loss (`cuda_graphs`)."""
        fast = not self.exact and self._net is not None and self._net is not self.model
        if fast and loss is None and x.is_cuda:
            graphed = graphed_gradient(self._net, x, y)
            if graphed is not None:
                return graphed
        step = len(x) if self.exact or x.is_cuda or len(x) <= FAST_CHUNK else FAST_CHUNK
        parts = []
        for start in range(0, len(x), step):
            xb = x[start:start + step].detach().requires_grad_(True)
            with torch.enable_grad():
                logits = self.net(xb)
                per_sample = (loss or _cross_entropy)(logits, y[start:start + step])
                (grad,) = torch.autograd.grad(per_sample.sum(), xb)
            parts.append((grad.detach(), per_sample.detach(), logits.detach()))
        if len(parts) == 1:
            return parts[0]
        grad, per_sample, logits = (torch.cat(column) for column in zip(*parts, strict=True))
        return grad, per_sample, logits

    # ---------------------------------------------------------------- public entry points
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial images only, like torchattacks; `run` also measures what the model makes of them."""
        return torch.cat([adv for adv, _ in self._batches(x, y, None, None)]) if len(x) else x.clone()

    def run(self, x: torch.Tensor, y: torch.Tensor, *, batch_size: int | None = None,
            progress: Progress | None = None) -> AttackResult:
        """Attack every image (in batches on the model's device); results come back on x's device."""
        home = x.device
        parts = []
        for adv, (xb, yb) in self._batches(x, y, batch_size, progress, keep_net=True):
            if self.exact:
                with frozen_eval(self.model), torch.no_grad():
                    logits = self.model(adv.to(self.device)).float()
            else:  # no_grad, not inference_mode: see evaluate.predict
                with torch.no_grad():
                    logits = self.net(channels_last(adv.to(self.device))).float()
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
                 keep_net: bool = False) -> Iterator[tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]]:
        """Yields (adversarial batch, (clean batch, labels)) on x's device, seeded afresh for every call.
        With keep_net the fast view stays in `self.net` while the caller handles each batch."""
        _check_inputs(x, y)
        if batch_size is not None and batch_size < 1:
            raise AttackInputError(f"batch size must be positive, got {batch_size}")
        self._generator.manual_seed(self.seed)
        device, home = self.device, x.device
        total = len(x)
        step = batch_size or max(total, 1)
        try:
            for start in range(0, total, step):
                xb = x[start:start + step].to(device, torch.float32)
                yb = y[start:start + step].to(device, torch.long)
                if not self.exact:
                    self._net = fast_view(self.model, xb)
                with frozen_eval(self.model):
                    if start == 0:
                        self._check_labels(xb, yb)
                    with torch.set_grad_enabled(self.uses_gradients):
                        adv = self.perturb(xb if self.exact else channels_last(xb), yb)
                # plain NCHW strides out, whatever the fast path used inside
                adv = adv.detach().clamp(0.0, 1.0).contiguous()
                if progress is not None:
                    progress(min(start + step, total), total)
                if not keep_net:
                    self._net = None
                yield adv.to(home), (xb.to(home), y[start:start + step])
                self._net = None
        finally:
            self._net = None

    def _check_labels(self, x: torch.Tensor, y: torch.Tensor) -> None:
        # a label past the last logit fails deep inside the loss (a device-side assert on CUDA): say it here
        if getattr(self, "_classes", None) is None:
            with torch.no_grad():
                self._classes = self.net(x[:1]).shape[1]
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
