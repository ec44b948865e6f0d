"""Square Attack, l-inf (Andriushchenko et al. 2020): random search over vertices of the l-inf ball using only
the model's outputs, never its gradients. Each query sets one random square window (per image) to +-eps per
channel and keeps the change when the margin loss drops; the window shrinks on the paper's schedule, rescaled
to the query budget. Starts from random vertical stripes. `queries` counts model evaluations per image."""

from __future__ import annotations

import math

import torch
from torch import nn

from randmask.attacks.base import Attack, margin
from randmask.attacks.registry import Setting, register_attack

# the paper's schedule: (up to iteration i of 10000, fraction of p_init)
_SCHEDULE = ((10, 1), (50, 1 / 2), (200, 1 / 4), (500, 1 / 8), (1000, 1 / 16), (2000, 1 / 32),
             (4000, 1 / 64), (6000, 1 / 128), (8000, 1 / 256))


@register_attack("Square", layouts={1: ("eps",)},
                 settings={"eps": Setting(float, 8, required=True), "queries": Setting(int, 5000),
                           "p_init": Setting(float, 0.8), "restarts": Setting(int, 1)},
                 usage="Square<eps>, e.g. Square16")
class Square(Attack):
    uses_gradients = False

    def __init__(self, model: nn.Module, eps: float | None = None, queries: int | None = None,
                 p_init: float | None = None, restarts: int | None = None, *, seed: int = 0,
                 exact: bool | None = None) -> None:
        super().__init__(model, seed=seed, exact=exact)
        self._eps, self.queries = float(self.setting("eps", eps)), int(self.setting("queries", queries))
        self.p_init, self.restarts = float(self.setting("p_init", p_init)), int(self.setting("restarts", restarts))
        self.last_queries: torch.Tensor | None = None

    def p_at(self, i: int) -> float:
        i = int(i / self.queries * 10000)
        return self.p_init * next((f for limit, f in _SCHEDULE if i <= limit), 1 / 512)

    @torch.no_grad()
    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        adv = x.clone()
        used = torch.zeros(len(x), device=x.device)
        fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for _ in range(self.restarts):
            todo = (~fooled).nonzero().squeeze(1)
            if len(todo) == 0:
                break
            run_adv, run_margin, run_used = self._single_run(x[todo], y[todo])
            adv[todo] = run_adv
            used[todo] += run_used
            fooled[todo] = run_margin > 0
        self.last_queries = used
        return adv

    def _single_run(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        eps = self._eps / 255
        n, c, h, w = x.shape
        signs = 2 * (self.rand((n, c, 1, w)) < 0.5).float() - 1
        best = (x + eps * signs).clamp(0.0, 1.0)
        best_margin = margin(self.net(best).float(), y)
        used = torch.ones(n, device=x.device)
        rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        for i in range(self.queries - 1):
            active = (best_margin <= 0).nonzero().squeeze(1)  # margin > 0 means fooled: stop querying
            if len(active) == 0:
                break
            k = len(active)
            side = min(max(round(math.sqrt(self.p_at(i) * h * w)), 1), h, w)
            top = (self.rand((k,)) * (h - side + 1)).long().view(k, 1, 1, 1)
            left = (self.rand((k,)) * (w - side + 1)).long().view(k, 1, 1, 1)
            window = ((rows.view(1, 1, h, 1) >= top) & (rows.view(1, 1, h, 1) < top + side)
                      & (cols.view(1, 1, 1, w) >= left) & (cols.view(1, 1, 1, w) < left + side))
            new_signs = 2 * (self.rand((k, c, 1, 1)) < 0.5).float() - 1
            xa = x[active]
            candidate = torch.where(window, xa + eps * new_signs, best[active]).clamp(0.0, 1.0)
            cand_margin = margin(self.net(candidate).float(), y[active])
            used[active] += 1
            # the loss minimised is -margin: keep the candidate if it raised the margin
            better = cand_margin > best_margin[active]
            best[active[better]] = candidate[better]
            best_margin[active[better]] = cand_margin[better]
        return best, best_margin, used

    def describe(self) -> str:
        return f"eps={self._eps:g}, queries={self.queries}, p_init={self.p_init:g}, restarts={self.restarts}"
