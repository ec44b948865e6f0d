"""PGD as the paper uses it: the basic iterative method (Kurakin et al. 2016), FGSM steps of size `step`
projected back onto the l-inf ball of radius eps after each step. No random start unless asked."""

from __future__ import annotations

import torch
from torch import nn

from randmask.attacks.base import Attack, linf_box
from randmask.attacks.notation import pgd_steps_for
from randmask.attacks.registry import Setting, register_attack


# steps None: the paper's rule for (step, eps) (randmask.attacks.notation), so PGD2,16 takes 10 steps
@register_attack("PGD", layouts={1: ("eps",), 2: ("step", "eps"), 3: ("step", "steps", "eps")},
                 settings={"eps": Setting(float, 16, required=True), "step": Setting(float, 1.0),
                           "steps": Setting(int, None), "random_start": Setting(bool, False)},
                 usage="PGD<eps>, PGD<step>,<eps> or PGD<step>,<steps>,<eps>", aliases={"MadryPGD": "PGD2,7,8"})
class PGD(Attack):
    def __init__(self, model: nn.Module, eps: float | None = None, step: float | None = None,
                 steps: int | None = None, random_start: bool | None = None, *, seed: int = 0,
                 exact: bool | None = None) -> None:
        super().__init__(model, seed=seed, exact=exact)
        self._eps, self.step = float(self.setting("eps", eps)), float(self.setting("step", step))
        steps = self.setting("steps", steps)
        self.steps = int(steps) if steps is not None else pgd_steps_for(self.step, self._eps)
        self.random_start = bool(self.setting("random_start", random_start))

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        eps, step = self._eps / 255, self.step / 255
        adv = x.clone()
        if self.random_start:
            adv = (x + eps * (2 * self.rand(x.shape) - 1)).clamp(0.0, 1.0)
        low, high = linf_box(x, eps)
        for _ in range(self.steps):
            grad, _, _ = self.input_gradient(adv, y)
            adv = torch.clamp(adv + step * grad.sign(), low, high)
        return adv

    def describe(self) -> str:
        start = ", random_start=True" if self.random_start else ""
        return f"step={self.step:g}, steps={self.steps}, eps={self._eps:g}{start}"
