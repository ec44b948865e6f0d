"""APGD-CE (Croce & Hein 2020, "Reliable evaluation of adversarial robustness..."): l-inf PGD on the
cross-entropy with momentum and a step size that needs no tuning. It starts at 2 eps and halves at checkpoints
where the loss rose in too few of the last steps or the best loss stalled, restarting from the best point.
The first checkpoint comes after 22% of the steps; the gaps shrink by 3% of the steps down to 6%.
Returns the first fooling image found, else the highest-loss one. Random start, seeded."""

from __future__ import annotations

import math

import torch
from torch import nn

from randmask.attacks.base import Attack, project_linf
from randmask.attacks.registry import Setting, register_attack


@register_attack("APGD", layouts={1: ("eps",)},
                 settings={"eps": Setting(float, 8, required=True), "steps": Setting(int, 100),
                           "restarts": Setting(int, 1), "rho": Setting(float, 0.75)},
                 usage="APGD<eps>, e.g. APGD16")
class APGD(Attack):
    def __init__(self, model: nn.Module, eps: float | None = None, steps: int | None = None,
                 restarts: int | None = None, rho: float | None = None, *, seed: int = 0,
                 exact: bool | None = None) -> None:
        super().__init__(model, seed=seed, exact=exact)
        self._eps, self.steps = float(self.setting("eps", eps)), int(self.setting("steps", steps))
        self.restarts, self.rho = int(self.setting("restarts", restarts)), float(self.setting("rho", rho))

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        adv = x.clone()
        fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        best_loss = torch.full((len(x),), -math.inf, device=x.device)
        for _ in range(self.restarts):
            todo = (~fooled).nonzero().squeeze(1)
            if len(todo) == 0:
                break
            run_adv, run_fooled, run_loss = self._single_run(x[todo], y[todo])
            # keep a fooling image over any other; among non-fooling ones, the higher loss
            take = run_fooled | (run_loss > best_loss[todo])
            adv[todo[take]] = run_adv[take]
            best_loss[todo[take]] = run_loss[take]
            fooled[todo] |= run_fooled
        return adv

    def _single_run(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        eps = self._eps / 255
        n = len(x)
        period = max(math.ceil(0.22 * self.steps), 1)
        shrink, min_period = max(math.ceil(0.03 * self.steps), 1), max(math.ceil(0.06 * self.steps), 1)

        start = 2 * self.rand(x.shape) - 1
        start = start / start.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
        x_adv = (x + eps * start).clamp(0.0, 1.0)
        grad, loss, logits = self.input_gradient(x_adv, y)
        fooled = logits.argmax(1) != y
        x_fool = torch.where(fooled.view(-1, 1, 1, 1), x_adv, x)
        x_best, loss_best, grad_best = x_adv.clone(), loss.clone(), grad.clone()

        step = torch.full((n, 1, 1, 1), 2 * eps, device=x.device)
        x_prev, loss_prev = x_adv.clone(), loss.clone()
        increases = torch.zeros(n, device=x.device)
        best_at_check = loss_best.clone()
        reduced_at_check = torch.ones(n, dtype=torch.bool, device=x.device)
        since_check = 0
        for i in range(self.steps):
            momentum = 1.0 if i == 0 else 0.75
            z = project_linf(x_adv + step * grad.sign(), x, eps)
            x_new = project_linf(x_adv + momentum * (z - x_adv) + (1 - momentum) * (x_adv - x_prev), x, eps)
            x_prev, x_adv = x_adv, x_new
            grad, loss, logits = self.input_gradient(x_adv, y)

            now_fooled = (logits.argmax(1) != y) & ~fooled
            x_fool[now_fooled] = x_adv[now_fooled]
            fooled |= now_fooled
            increases += (loss > loss_prev).float()
            loss_prev = loss
            better = loss > loss_best
            x_best[better], grad_best[better], loss_best[better] = x_adv[better], grad[better], loss[better]

            since_check += 1
            if since_check == period:
                oscillating = increases <= self.rho * period
                stalled = ~reduced_at_check & (best_at_check >= loss_best)
                reduce = oscillating | stalled
                reduced_at_check, best_at_check = reduce, loss_best.clone()
                step[reduce] /= 2
                x_adv[reduce], grad[reduce] = x_best[reduce], grad_best[reduce]
                increases.zero_()
                since_check = 0
                period = max(period - shrink, min_period)
        result = torch.where(fooled.view(-1, 1, 1, 1), x_fool, x_best)
        return result, fooled, torch.where(fooled, torch.full_like(loss_best, math.inf), loss_best)

    def describe(self) -> str:
        return f"eps={self._eps:g}, steps={self.steps}, restarts={self.restarts}, rho={self.rho:g}"
