"""Shared helpers for the attack and protocol tests: toy models and a tiny CIFAR-10 CNN trained once per run.

The trained net is the "normal network" of the checks that need one (it must fall to ~0% under PGD32). It is
trained on CIFAR-10 test images 2000-9999 and evaluated on test images 0-1999, so the two never overlap.
"""

from __future__ import annotations

import copy
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

TRAIN = slice(2000, 10000)
HELD_OUT = slice(0, 2000)


class TinyCNN(nn.Module):
    """A small normal CNN with the project's conventions: [0,1] input, mean subtraction and BatchNorm inside."""

    def __init__(self, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        self.register_buffer("pixel_mean", torch.full((in_channels, 1, 1), 0.45))
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(2 * width, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x - self.pixel_mean)


class Linear(nn.Module):
    """Logits W·x + b on flattened images: the closed-form case."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T + self.bias


def data_path() -> Path:
    return Path(os.environ["RANDMASK_DATA"]) / "cifar10" / "test.npz"


@functools.cache
def cifar_test() -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(data_path()) as d:
        x = torch.from_numpy(d["x"]).permute(0, 3, 1, 2).float().div(255)
        y = torch.from_numpy(d["y"]).long()
    return x, y


@functools.cache
def trained_cnn(seed: int = 0) -> TinyCNN:
    """Train for a few epochs (about 20 s on one thread), deterministically; returned in eval mode."""
    x, y = cifar_test()
    xt, yt = x[TRAIN], y[TRAIN]
    with torch.random.fork_rng(devices=[]):  # dropout and init draw from the global generator: seed it here
        torch.manual_seed(seed)
        model = TinyCNN()
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        for _epoch in range(5):
            order = torch.randperm(len(xt))
            for i in range(0, len(xt), 64):
                idx = order[i:i + 64]
                batch = xt[idx]
                flip = torch.rand(len(idx)) < 0.5
                batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(3), batch)
                loss = nn.functional.cross_entropy(model(batch), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    return model.eval()


def held_out(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = cifar_test()
    return x[HELD_OUT][:n], y[HELD_OUT][:n]


@dataclass
class Gradients:
    """The cross-entropy input gradient of one batch three ways: the fast view (BatchNorm folded, channels_last,
    float32), the model itself in float32 (the exact path), and a float64 copy of the model (the reference)."""

    fast: torch.Tensor
    exact: torch.Tensor
    reference: torch.Tensor

    def error(self, which: str) -> torch.Tensor:
        """Per image: the largest deviation of one float32 path from the float64 gradient."""
        return (getattr(self, which).double() - self.reference).flatten(1).abs().amax(1)

    @property
    def scale(self) -> torch.Tensor:
        """Per image: the largest float64 gradient component."""
        return self.reference.flatten(1).abs().amax(1)

    @property
    def band(self) -> torch.Tensor:
        """Per image, the float32 rounding band around zero: a gradient component whose true value lies within
        it may come out with either sign in either path; outside it both paths must agree on the sign."""
        return torch.maximum(self.error("fast"), self.error("exact"))


def input_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Gradients:
    from randmask.attacks.base import channels_last, fast_view, frozen_eval

    def grad(net: nn.Module, xb: torch.Tensor) -> torch.Tensor:
        xb = xb.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = nn.functional.cross_entropy(net(xb).to(xb.dtype), y, reduction="sum")
            return torch.autograd.grad(loss, xb)[0]

    with frozen_eval(model):
        exact = grad(model, x)
        fast = grad(fast_view(model, x), channels_last(x))
        reference = grad(copy.deepcopy(model).double(), x.double())
    return Gradients(fast, exact, reference)


def assert_flips_only_within_rounding(gradients: Gradients, fast_adv: torch.Tensor, exact_adv: torch.Tensor) -> None:
    """A single-step sign attack (FGSM) on the two paths may differ only in pixels whose float64 gradient lies
    within float32 rounding of zero: a sign taken from noise. Any other difference (a layout, projection or
    clamping slip) fails. The band is doubled because the attack takes its gradient in chunks of 64 images,
    whose rounding differs from the whole-batch gradient measured here in the same, statistically, way."""
    differs = (fast_adv - exact_adv).abs() > 1e-6
    band = (2 * gradients.band).view(-1, 1, 1, 1).expand_as(differs)
    outside = differs & (gradients.reference.abs() > band)
    assert not outside.any(), (f"{int(outside.sum())} pixels differ although their gradient is far from zero: "
                               f"|g| {gradients.reference.abs()[outside][:5].tolist()} vs band "
                               f"{band[outside][:5].tolist()}")


def snapshot(model: nn.Module) -> tuple[dict, list[bool], list[bool]]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


def assert_unchanged(model: nn.Module, before: tuple[dict, list[bool], list[bool]]) -> None:
    state, modes, grads = before
    after = model.state_dict()
    assert state.keys() == after.keys()
    for key, value in state.items():
        assert torch.equal(value, after[key]), f"{key} changed"
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == grads
    assert all(p.grad is None for p in model.parameters())


def test_tiny_cnn_learns_enough_to_attack(data_dir) -> None:
    model = trained_cnn()
    x, y = held_out(1000)
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.45, accuracy


def test_the_attack_base_class_cannot_be_used_without_a_perturb():
    import pytest
    import torch

    from randmask.attacks.base import Attack

    with pytest.raises(TypeError, match="abstract"):
        Attack(torch.nn.Linear(2, 2))
