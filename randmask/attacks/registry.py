"""The attack registry: each kind's class, notation layouts and settings (type and default), in one place.

Each attack registers itself where it is defined, in the style of timm's `@register_model`:

    @register_attack("FGSM", layouts={1: ("eps",)}, settings={"eps": Setting(float, 8, required=True)},
                     usage="FGSM<eps>, e.g. FGSM16", aliases={"MadryFGSM": "FGSM8"})
    class FGSM(Attack): ...

The notation parser and printer read the layouts and settings from here, and the constructors take their
defaults from here (`Attack.setting`). Importing randmask.attacks imports every attack module, so the
registry is complete before anything can parse; kinds are listed in registration order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

from randmask.attacks.base import Attack


@dataclass(frozen=True)
class Setting:
    """One setting of an attack kind: its type, the constructor's default (None: the attack derives it, as
    PGD does its steps), and whether notation must spell it out (the budget, e.g. the 16 of PGD16)."""

    type: type
    default: Any = None
    required: bool = False


@dataclass(frozen=True)
class AttackKind:
    """A registered attack: its class, its positional layouts by number count (PGD2,16 -> step, eps), its
    settings in the order error messages list them, a usage line and other names it answers to."""

    name: str
    cls: type[Attack]
    layouts: Mapping[int, tuple[str, ...]]
    settings: Mapping[str, Setting]
    usage: str
    aliases: Mapping[str, str]

    @property
    def defaults(self) -> dict[str, Any]:
        """Notation defaults: None marks a setting notation must give (or, for PGD's steps, derives)."""
        return {key: None if s.required else s.default for key, s in self.settings.items()}

    @property
    def types(self) -> dict[str, type]:
        return {key: s.type for key, s in self.settings.items()}


_KINDS: dict[str, AttackKind] = {}  # by name, in registration order
A = TypeVar("A", bound=type[Attack])


def register_attack(name: str, *, layouts: Mapping[int, tuple[str, ...]], settings: Mapping[str, Setting],
                    usage: str, aliases: Mapping[str, str] | None = None) -> Callable[[A], A]:
    """Class decorator: register the attack class as kind `name` and give it `attack_kind`."""
    for layout in layouts.values():
        unknown = [key for key in layout if key not in settings]
        if unknown:
            raise ValueError(f"attack {name}: layout {layout} names unknown settings {unknown}")

    def register(cls: A) -> A:
        taken = find_attack(name)
        if taken is not None and taken.cls.__qualname__ != cls.__qualname__:
            raise ValueError(f"attack {name!r} is already registered to {taken.cls.__qualname__}")
        kind = AttackKind(name, cls, MappingProxyType(dict(layouts)), MappingProxyType(dict(settings)), usage,
                          MappingProxyType(dict(aliases or {})))
        _KINDS[name] = kind
        cls.attack_kind = kind
        return cls

    return register


def list_attacks() -> list[str]:
    """The registered kinds' names, in registration order (the paper's attacks first)."""
    return list(_KINDS)


def attack_kind(name: str) -> AttackKind:
    """The registered kind called exactly `name`."""
    try:
        return _KINDS[name]
    except KeyError:
        raise KeyError(f"no attack kind {name!r}; registered: {', '.join(_KINDS)}") from None


def find_attack(name: str) -> AttackKind | None:
    """The kind whose name is `name` in any case, or None."""
    return next((kind for kind in _KINDS.values() if kind.name.lower() == name.lower()), None)


def attack_aliases() -> dict[str, str]:
    """Every alias (MadryFGSM, MadryPGD) -> the notation it stands for, in registration order."""
    return {alias: text for kind in _KINDS.values() for alias, text in kind.aliases.items()}
