"""CW-l2 (Carlini & Wagner 2017), untargeted, with the binary search over c the paper uses (30 steps).

Minimise ||x' - x||_2^2 + c * max(Z_y - max_{i!=y} Z_i, -kappa) over x' = (tanh(w) + 1) / 2 with Adam. For
each image, c starts at `c` and is multiplied by 10 until an adversarial image is found, then bisected; the
smallest-l2 image meeting the margin across all rounds is kept. An image for which no round succeeds comes
back unchanged and is reported as a failure (unlike torchattacks.CW, which returns it silently).
"""

from __future__ import annotations

import torch
from torch import nn

from randmask.attacks.base import Attack, margin
from randmask.attacks.registry import Setting, register_attack

_NO_UPPER = 1e10


@register_attack("CW", layouts={1: ("kappa",)},
                 settings={"kappa": Setting(float, 0, required=True), "search": Setting(int, 30),
                           "steps": Setting(int, 100), "lr": Setting(float, 0.01), "c": Setting(float, 1e-3)},
                 usage="CW<kappa>, e.g. CW40")
class CW(Attack):
    norm = "l2"

    def __init__(self, model: nn.Module, kappa: float | None = None, search: int | None = None,
                 steps: int | None = None, lr: float | None = None, c: float | None = None, *, seed: int = 0,
                 exact: bool | None = None) -> None:
        super().__init__(model, seed=seed, exact=exact)
        self.kappa, self.search = float(self.setting("kappa", kappa)), int(self.setting("search", search))
        self.steps = int(self.setting("steps", steps))
        # lr and c as given (no float()): the crafted-set cache fingerprints their repr
        self.lr, self.c = self.setting("lr", lr), self.setting("c", c)

    def is_success(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        m = margin(logits.float(), y)
        return (m > 0) & (m >= self.kappa)

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = len(x)
        w_start = torch.atanh((2 * x - 1) * (1 - 1e-6))
        const = torch.full((n,), float(self.c), device=x.device)
        lower = torch.zeros(n, device=x.device)
        upper = torch.full((n,), _NO_UPPER, device=x.device)
        best_l2 = torch.full((n,), float("inf"), device=x.device)
        best_adv = x.clone()
        check_every = max(self.steps // 10, 1)
        for _ in range(self.search):
            w = w_start.clone().requires_grad_(True)
            optimizer = torch.optim.Adam([w], lr=self.lr)
            found = torch.zeros(n, dtype=torch.bool, device=x.device)
            previous = float("inf")
            for step in range(self.steps):
                with torch.enable_grad():
                    adv = (torch.tanh(w) + 1) / 2
                    l2 = (adv - x).flatten(1).pow(2).sum(1)
                    logits = self.net(adv).float()
                    m = margin(logits, y)
                    loss = l2 + const * torch.clamp(self.kappa - m, min=0)  # = max(-margin, -kappa) + kappa
                    total = loss.sum()
                    # w.r.t. w only: the model's parameters and their .grad stay untouched
                    (w.grad,) = torch.autograd.grad(total, [w])
                with torch.no_grad():
                    ok = (m > 0) & (m >= self.kappa)
                    better = ok & (l2 < best_l2)
                    best_l2 = torch.where(better, l2.detach(), best_l2)
                    best_adv[better] = adv.detach()[better]
                    found |= ok
                optimizer.step()
                if step % check_every == 0:  # Carlini's early abort: stop a round once the loss stalls
                    if total.item() > previous * 0.9999:
                        break
                    previous = total.item()
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(upper < _NO_UPPER, (lower + upper) / 2, const * 10)
        return best_adv

    def describe(self) -> str:
        return f"kappa={self.kappa:g}, search={self.search}, steps={self.steps}, lr={self.lr:g}, c={self.c:g}"
