"""Adversarial attacks in the paper's notation (FGSM16, PGD2,16, CW40) plus APGD-CE and Square Attack.

    attack = make_attack("PGD2,16", model)      # or PGD(model, eps=16, step=2, steps=10)
    x_adv = attack(x, y)                        # [0,1] images in, [0,1] images out
    result = attack.run(x, y, batch_size=256)   # images plus logits, per-image success, l-inf and l2 norms

Budgets are in 0-255 units. The model runs in eval mode and leaves exactly as it came. Attacks are fast by
default (an eval copy with BatchNorm folded, channels_last, on a GPU replayed as CUDA graphs); `exact=True`
reproduces torchattacks bit for bit.
Each attack class registers its kind, notation and defaults with `@register_attack` (see registry.py);
`list_attacks()` names them.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from torch import nn

from randmask.attacks.base import (
    Attack,
    AttackInputError,
    AttackResult,
    exact_default,
    fast_view,
    frozen_eval,
    margin,
    model_device,
)
from randmask.attacks.notation import (
    AttackNotationError,
    AttackSpec,
    canonical_attack,
    format_attack,
    parse_attack,
    pgd_default_steps,
)
from randmask.attacks.registry import AttackKind, Setting, attack_kind, list_attacks, register_attack

# importing each attack registers it, and this order is the order kinds are listed in (list_attacks, error
# messages): the paper's attacks first
# isort: off
from randmask.attacks.fgsm import FGSM
from randmask.attacks.pgd import PGD
from randmask.attacks.cw import CW
from randmask.attacks.apgd import APGD
from randmask.attacks.square import Square
# isort: on

# read-only: register a new kind with @register_attack
ATTACKS: Mapping[str, type[Attack]] = MappingProxyType({name: attack_kind(name).cls for name in list_attacks()})


def make_attack(notation: str | AttackSpec, model: nn.Module, *, seed: int = 0, exact: bool | None = None) -> Attack:
    """The attack named by `notation` (e.g. 'FGSM16', 'PGD2,16', 'CW40', 'Square8(queries=1000)') on `model`.
    Fast by default; exact=True is bit-identical to torchattacks (None: RANDMASK_EXACT decides)."""
    return parse_attack(notation).build(model, seed=seed, exact=exact)


__all__ = [
    "APGD", "ATTACKS", "CW", "FGSM", "PGD", "Attack", "AttackInputError", "AttackKind", "AttackNotationError",
    "AttackResult", "AttackSpec", "Setting", "Square", "attack_kind", "canonical_attack", "exact_default",
    "fast_view", "format_attack", "frozen_eval", "list_attacks", "make_attack", "margin", "model_device",
    "parse_attack", "pgd_default_steps", "register_attack",
]
