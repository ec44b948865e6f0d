"""FGSM (Goodfellow et al. 2015): one step of size eps along the sign of the loss gradient."""

from __future__ import annotations

import torch
from torch import nn

from randmask.attacks.base import Attack
from randmask.attacks.registry import Setting, register_attack


@register_attack("FGSM", layouts={1: ("eps",)}, settings={"eps": Setting(float, 8, required=True)},
                 usage="FGSM<eps>, e.g. FGSM16", aliases={"MadryFGSM": "FGSM8"})
class FGSM(Attack):
    def __init__(self, model: nn.Module, eps: float | None = None, *, seed: int = 0,
                 exact: bool | None = None) -> None:
        super().__init__(model, seed=seed, exact=exact)
        self._eps = float(self.setting("eps", eps))

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        grad, _, _ = self.input_gradient(x, y)
        return (x + self._eps / 255 * grad.sign()).clamp(0.0, 1.0)

    def describe(self) -> str:
        return f"eps={self._eps:g}"
