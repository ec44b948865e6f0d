"""Attack notation, the paper's way of naming attacks, parsed into an `AttackSpec` and printed back canonically.

Budgets (eps, step) are in 0-255 pixel units; kappa is in logits.

    FGSM<eps>                  one signed-gradient step of size eps: FGSM8, FGSM16, FGSM32
    PGD<eps>                   basic iterative method, step 1, T = max(eps + 4, ceil(1.25 eps)) steps
    PGD<step>,<eps>            step size `step`, T = ceil(max(eps + 4, 1.25 eps) / step) steps
    PGD<step>,<T>,<eps>        any explicit (step, steps, eps) triple; PGD(1,8,4) is accepted too
    CW<kappa>                  CW-l2 with confidence kappa and a binary search over c: CW20, CW40
    APGD<eps>                  APGD-CE (Croce & Hein 2020), step-size free
    Square<eps>                Square Attack (Andriushchenko et al. 2020), l-inf, queries only
    MadryFGSM, MadryPGD        Madry et al.'s black-box setting: FGSM8 and PGD2,7,8

The step-count rule reproduces every PGD setting of the paper's appendix G.5 from its short form: PGD16 =
(1, 20, 16), PGD2,16 = (2, 10, 16), PGD32 = (1, 40, 32), PGD4,8 = (4, 3, 8), ... Any other setting prints as a
triple, e.g. the Madry setting PGD2,7,8 and the MNIST setting PGD2.55,40,76.5. Further settings go in
parentheses as key=value and print only when they differ from the default:
    PGD16(random_start=true)   CW40(search=9, steps=1000)   APGD8(steps=50, restarts=2)   Square8(queries=1000)
Names are case-insensitive; str(parse_attack(text)) is the canonical spelling, exact: numbers print as the
shortest decimal that reads back as the same float, so parse(print(spec)) == spec. Input is at most
MAX_ATTACK_LENGTH characters of printable ASCII; every count has an upper bound (LIMITS).

Which kinds exist, their layouts, settings, defaults and aliases come from the registry
(randmask.attacks.registry), where each attack class registers itself.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from randmask.attacks.registry import attack_aliases, attack_kind, find_attack, list_attacks
from randmask.core.errors import NotationError
from randmask.core.notation import check_ascii, format_number

if TYPE_CHECKING:
    from torch import nn

    from randmask.attacks.base import Attack


class AttackNotationError(NotationError):
    """An attack name that does not parse."""


MAX_ATTACK_LENGTH = 200
# upper bounds keep a typo from asking for a run of years: the paper's largest values are CW's 1000 steps and
# Square's 5000 queries
LIMITS = {"steps": 100_000, "search": 100, "queries": 1_000_000, "restarts": 100, "kappa": 1e4, "lr": 1e3,
          "c": 1e6, "min_positive": 1e-9}
# greedy and unambiguous (no two neighbours can take the same character), hence linear; ASCII only
_SHAPE = re.compile(r"(?P<name>[A-Za-z]+)(?P<nums>[0-9.,\s]*)(?:\((?P<args>[^()]*)\))?", re.ASCII)
_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d{1,4})?", re.ASCII)


def pgd_default_steps(eps: float) -> int:
    """Steps at step size 1: max(eps + 4, 1.25 eps), which gives the paper's (1,8,4) ... (1,40,32)."""
    return math.ceil(max(eps + 4, 1.25 * eps) - 1e-9)


def pgd_steps_for(step: float, eps: float) -> int:
    """The step rule's count at this step size; above LIMITS['steps'] (so never valid) for a tiny step, whose
    count would be infinite."""
    wanted = pgd_default_steps(eps) / step
    return max(1, math.ceil(wanted - 1e-9)) if wanted <= LIMITS["steps"] else LIMITS["steps"] + 1


@dataclass(frozen=True)
class AttackSpec:
    """A parsed attack: its kind and every setting (defaults filled in). `str()` gives canonical notation."""

    kind: str
    settings: tuple[tuple[str, Any], ...]

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.settings)

    def __getitem__(self, key: str) -> Any:
        return self.params[key]

    @property
    def eps(self) -> float | None:
        """The l-infinity budget in 0-255 units (None for CW, an l2 attack)."""
        return self.params.get("eps")

    @property
    def norm(self) -> str:
        return attack_kind(self.kind).cls.norm

    def build(self, model: nn.Module, *, seed: int = 0, exact: bool | None = None) -> Attack:
        """The attack object for `model` (see randmask.attacks); exact=None: the process default (fast unless
        RANDMASK_EXACT=1)."""
        return attack_kind(self.kind).cls(model, **self.params, seed=seed, exact=exact)

    def __str__(self) -> str:
        return format_attack(self)


def _number(text: str, source: str) -> float:
    # float() alone would also take '1_0', 'inf', 'nan' and non-ASCII digits
    if not _DECIMAL.fullmatch(text):
        raise AttackNotationError(f"{text!r} in {source!r} is not a number")
    value = float(text)
    if not math.isfinite(value):
        raise AttackNotationError(f"{text!r} in {source!r} is not a finite number")
    return value


def _convert(key: str, value: Any, kind_type: type, source: str) -> Any:
    if kind_type is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise AttackNotationError(f"{key}={value!r} in {source!r} must be true or false")
    number = value if isinstance(value, int | float) else _number(str(value), source)
    if kind_type is int:
        if float(number) != int(number):
            raise AttackNotationError(f"{key}={value!r} in {source!r} must be a whole number")
        return int(number)
    return float(number)


def _validate(kind: str, s: dict[str, Any], source: str) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise AttackNotationError(f"{message} in {source!r}")

    if "eps" in s:
        need(0 < s["eps"] <= 255, f"eps {s['eps']:g} must be in (0, 255] (0-255 pixel units)")
    if kind == "PGD":
        need(0 < s["step"] <= 255, f"step size {s['step']:g} must be in (0, 255]")
    for key in ("steps", "search", "queries", "restarts"):
        if key in s:
            need(1 <= s[key] <= LIMITS[key], f"{key}={s[key]} must be between 1 and {LIMITS[key]}")
    for key in ("kappa", "lr", "c"):
        if key in s:
            need(s[key] <= LIMITS[key], f"{key}={format_number(s[key])} must be at most {format_number(LIMITS[key])}")
    if kind == "CW":
        need(s["kappa"] >= 0, f"confidence kappa {s['kappa']:g} must be >= 0")
        need(s["lr"] > 0 and s["c"] > 0, "lr and c must be positive")
    if kind == "APGD":
        need(0 < s["rho"] < 1, f"rho {s['rho']:g} must be in (0, 1)")
    if kind == "Square":
        need(0 < s["p_init"] <= 1, f"p_init {s['p_init']:g} must be in (0, 1]")
    # every positive real setting has a floor: below it a value underflows in the arithmetic (c / 10 per search
    # step, a step count of eps / step) and no longer prints within MAX_ATTACK_LENGTH
    for key in ("eps", "step", "lr", "c", "rho", "p_init"):
        if key in s:
            need(s[key] >= LIMITS["min_positive"],
                 f"{key}={s[key]:g} must be at least {format_number(LIMITS['min_positive'])}")


def parse_attack(text: str | AttackSpec) -> AttackSpec:
    """Parse attack notation; raise AttackNotationError (a ValueError) saying what is wrong."""
    if isinstance(text, AttackSpec):
        return text
    if not isinstance(text, str):
        raise AttackNotationError(f"attack notation must be text, not {type(text).__name__}")
    try:
        source = check_ascii(text, "attack notation", MAX_ATTACK_LENGTH)
    except NotationError as exc:
        raise AttackNotationError(str(exc)) from None
    if not source:
        raise AttackNotationError("empty attack notation; try 'FGSM16', 'PGD2,16' or 'CW40'")
    aliases = attack_aliases()
    alias = next((text for name, text in aliases.items() if name.lower() == source.lower()), None)
    if alias:
        return parse_attack(alias)
    match = _SHAPE.fullmatch(source)
    if not match:
        raise AttackNotationError(f"cannot read attack {source!r}: expected NAME, numbers and optional "
                                  f"(key=value, ...), e.g. 'PGD2,16' or 'CW40(steps=200)'")
    registered = find_attack(match["name"])
    if registered is None:
        known = ", ".join([*list_attacks(), *aliases])
        raise AttackNotationError(f"unknown attack {match['name']!r} in {source!r}; known: {known}")
    kind, layouts, defaults, types = registered.name, registered.layouts, registered.defaults, registered.types
    numbers = [n.strip() for n in match["nums"].split(",")] if match["nums"].strip() else []
    keywords: dict[str, str] = {}
    for item in (match["args"] or "").split(","):
        item = item.strip()
        if not item:
            continue
        if "=" in item:
            key, value = (part.strip() for part in item.split("=", 1))
            if key not in defaults:
                raise AttackNotationError(f"{kind} has no setting {key!r} (in {source!r}); "
                                          f"settings: {', '.join(defaults)}")
            if key in keywords:
                raise AttackNotationError(f"setting {key!r} is given twice in {source!r}")
            keywords[key] = value
        elif keywords:
            raise AttackNotationError(f"numbers must come before key=value settings in {source!r}")
        else:
            numbers.append(item)  # PGD(1,8,4)
    if any(not n for n in numbers):
        raise AttackNotationError(f"empty number in {source!r}")
    if len(numbers) not in layouts:
        counts = sorted(layouts)
        allowed = str(counts[0]) if len(counts) == 1 else f"{', '.join(map(str, counts[:-1]))} or {counts[-1]}"
        raise AttackNotationError(f"{kind} takes {allowed} number(s), got {len(numbers)} in {source!r}: "
                                  + registered.usage)
    settings = dict(defaults)
    for key, value in zip(layouts[len(numbers)], numbers, strict=True):
        settings[key] = _convert(key, value, types[key], source)
    for key, value in keywords.items():
        if key in layouts[len(numbers)]:
            raise AttackNotationError(f"{key} is given both as a number and as {key}= in {source!r}")
        settings[key] = _convert(key, value, types[key], source)
    missing = [key for key, value in settings.items() if value is None and key != "steps"]
    if missing:
        raise AttackNotationError(f"{kind} needs {', '.join(missing)} in {source!r}: {registered.usage}")
    if kind == "PGD" and settings["steps"] is None:
        _validate(kind, {**settings, "steps": 1}, source)  # a bad step size would break the step rule
        if pgd_steps_for(settings["step"], settings["eps"]) > LIMITS["steps"]:
            raise AttackNotationError(f"step size {settings['step']:g} needs more than {LIMITS['steps']} steps to "
                                      f"reach eps {settings['eps']:g} in {source!r}; give a larger step or steps=")
        settings["steps"] = pgd_steps_for(settings["step"], settings["eps"])
    _validate(kind, settings, source)
    return AttackSpec(kind, tuple(sorted(settings.items())))


def format_attack(spec: AttackSpec) -> str:
    """Canonical notation: the shortest numeric form, then non-default settings in parentheses."""
    s = spec.params
    registered = attack_kind(spec.kind)
    defaults = registered.defaults
    if spec.kind == "PGD":
        shown = {"eps", "step", "steps"}
        if s["steps"] != pgd_steps_for(s["step"], s["eps"]):
            head = f"PGD{format_number(s['step'])},{s['steps']},{format_number(s['eps'])}"
        elif s["step"] == 1:
            head = f"PGD{format_number(s['eps'])}"
        else:
            head = f"PGD{format_number(s['step'])},{format_number(s['eps'])}"
    else:  # every other kind takes one number, its budget (eps; CW's kappa)
        (key,) = registered.layouts[1]
        shown = {key}
        head = f"{spec.kind}{format_number(s[key])}"
    extra = [f"{k}={_show(v)}" for k, v in sorted(s.items()) if k not in shown and v != defaults[k]]
    return head + (f"({', '.join(extra)})" if extra else "")


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return format_number(value) if isinstance(value, float) else str(value)


def canonical_attack(text: str | AttackSpec) -> str:
    return format_attack(parse_attack(text))
