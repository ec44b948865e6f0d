"""The attack registry: one place for each kind's class, notation and defaults, and no change of behaviour.

tests/data/attack_golden.json was written by `python tests/test_attack_registry.py` on the code before the
registry existed (two tables, defaults repeated in every constructor). It pins, for a broad list of notations,
the canonical form, every setting or the full error message, and for built attacks the attributes the
crafted-set cache fingerprints, so an entry crafted before the change is still found after it.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

import pytest
from torch import nn

from randmask.attacks import APGD, CW, FGSM, PGD, Setting, Square, parse_attack

GOLDEN = Path(__file__).parent / "data" / "attack_golden.json"

NOTATIONS = [
    # tests/test_attack_notation.py
    "PGD16", "PGD2,16", "PGD32", "PGD4", "PGD2,4", "PGD4,4", "PGD8", "PGD2,8", "PGD4,8", "PGD4,16", "PGD2,32",
    "PGD4,32", "MadryPGD", "PGD(1,8,4)", "pgd 2,7,8", "PGD1,20,16", "PGD2,10,16", "PGD1,40,32", "PGD(2,7,8)",
    "madrypgd", "MadryFGSM", "fgsm16", "cw40", "CW20(search=30)", "CW20(steps=500,search=9)",
    "PGD16(random_start=yes)", "PGD16(steps=7)", "PGD0.01,40,0.3", "PGD2.55,40,76.5", "apgd16", "APGD8(steps=50)",
    "square16(queries=5000)", "Square4(queries=100, p_init=0.3)", "FGSM32", "CW40", "Square8", "APGD8",
    "", "BIM16", "FGSM", "FGSM0", "FGSM256", "PGD1,2,3,4", "PGD0,16", "CW", "PGD16(foo=1)", "PGD16(steps=2.5)",
    "PGD16(steps=0)", "PGD16(eps=4)", "PGD16(random_start=maybe)", "FGSM1e", "PGD16,", "APGD8(rho=1)",
    "Square8(p_init=0)", "FGSMnan", "PGD16(steps=3, steps=4)", "FGSM8(1)",
    # tests/test_bad_notation.py (ATTACK_BAD, the long ones left out)
    "FGSM１６", "PGD٨", "ＦＧＳＭ8", "FGSM\x008", "CW40(steps=1e9)", "Square8(queries=1e7)", "APGD8(restarts=101)",
    "CW40(search=1000)", "PGD16(steps=1_0)", "PGD16(step=inf)", "PGD16(step=nan)", "CW40(c=1e999)", "CW40(lr=-1)",
    "CW99999", "CW40(c=1e7)", "PGD0.000001,16", "PGD1e-3,16", "FGSM16 FGSM16", "FGSM-8", "FGSM+8",
    "PGD16(random_start=ja)", "PGD2,7,8,9", "PGD16((steps=3))", "PGD16(steps=3", "FGSM.5.5", "Square8(p_init=2)",
    "APGD8(rho=0)", "PGD1,2.5,8", "FGSM8(eps=8)", "MadryPGD(steps=3)",
    # tests/test_attacks.py, the protocols, and every setting of every kind
    "PGD4(random_start=true)", "CW5(search=3, steps=10)", "APGD8(steps=10)", "APGD2(steps=4, restarts=3)",
    "Square8(queries=30)", "Square2(queries=5, restarts=2)", "CW40(search=1, steps=100)", "FGSM8", "FGSM16",
    "CW20", "CW0", "CW40(kappa=3)", "CW40(lr=0.5, c=2, search=4, steps=7)", "APGD4(rho=0.5, restarts=2, steps=3)",
    "Square4(p_init=1, restarts=3, queries=9)", "PGD2,16(random_start=false, steps=10)", "PGD3,16",
    "PGD(2, 16)", "PGD 16", "  pgd16  ", "Pgd16(Random_Start=true)", "PGD16(step=2)", "PGD16(steps=20)",
    "PGD2.5,7", "PGD0.5,4", "PGD255", "FGSM0.5", "FGSM1e2", "FGSM.5", "CW1e3", "CW10001", "APGD8(steps=100000)",
    "APGD8(steps=100001)", "Square8(queries=1000000)", "PGD16()", "PGD16(,)", "PGD16(steps=)", "FGSM8,",
    "FGSM8(random_start=true)", "MadryFGSM8", "madry", "FGSM8(eps=8, eps=9)", "PGD16(steps=3, 4)", "PGD(16, 2=3)",
]


def _state(attack: object) -> list[list[str]]:
    """The attributes the crafted-set cache fingerprints (evaluate.crafted_fingerprint), as it reads them."""
    return sorted([k, repr(v)] for k, v in vars(attack).items() if k not in ("model", "_generator", "_net"))


def observe() -> dict:
    """What the notation and the attack objects look like from the outside; run on old and new code alike."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 10))
    notations = []
    for text in NOTATIONS:
        try:
            spec = parse_attack(text)
        except ValueError as exc:
            notations.append({"text": text, "error": str(exc)})
            continue
        built = spec.build(model, seed=3, exact=False)
        notations.append({"text": text, "canonical": str(spec), "norm": spec.norm,
                          "settings": [[k, repr(v)] for k, v in spec.settings], "state": _state(built)})
    constructed = {cls.__name__: {"repr": repr(cls(model, exact=True)), "state": _state(cls(model, exact=True))}
                   for cls in (FGSM, PGD, CW, APGD, Square)}
    return {"notations": notations, "constructed": constructed}


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


def test_every_notation_parses_prints_and_builds_as_before(golden):
    now = observe()
    assert len(now["notations"]) == len(golden["notations"]) > 100
    for got, want in zip(now["notations"], golden["notations"], strict=True):
        assert got == want


def test_constructors_keep_their_defaults(golden):
    # the constructor's own defaults (PGD(model) is PGD16), which notation leaves required
    assert observe()["constructed"] == golden["constructed"]


def test_the_registry_lists_every_kind_in_the_papers_order():
    from randmask.attacks import ATTACKS, attack_kind, list_attacks

    assert list_attacks() == ["FGSM", "PGD", "CW", "APGD", "Square"]
    for name, cls in zip(list_attacks(), (FGSM, PGD, CW, APGD, Square), strict=True):
        assert attack_kind(name).cls is cls and cls.attack_kind is attack_kind(name) and ATTACKS[name] is cls
    assert attack_kind("CW").defaults == {"kappa": None, "search": 30, "steps": 100, "lr": 0.01, "c": 1e-3}
    assert attack_kind("PGD").types["random_start"] is bool
    with pytest.raises(TypeError):
        ATTACKS["BIM"] = PGD  # a read-only view: kinds are added with @register_attack
    with pytest.raises(KeyError, match="registered: FGSM, PGD"):
        attack_kind("fgsm")  # exact names only; the parser is the case-insensitive way in


@pytest.mark.parametrize("cls", [FGSM, PGD, CW, APGD, Square])
def test_constructors_write_no_default_of_their_own(cls):
    # every setting is a constructor argument, in the registry's order, defaulting to None (= the registry's)
    params = [p for name, p in inspect.signature(cls).parameters.items() if name not in ("model", "seed", "exact")]
    assert [p.name for p in params] == list(cls.attack_kind.settings)
    assert all(p.default is None for p in params)


class Noise(FGSM):
    """A toy kind for the test below: FGSM's step plus `draws` (unused)."""

    def __init__(self, model: nn.Module, eps: float | None = None, draws: int | None = None, *, seed: int = 0,
                 exact: bool | None = None) -> None:
        super().__init__(model, eps, seed=seed, exact=exact)
        self.draws = int(self.setting("draws", draws))


def test_a_registered_kind_is_parsed_printed_and_built_from_the_registry(monkeypatch):
    from randmask.attacks import make_attack, registry
    from randmask.attacks.notation import AttackNotationError

    monkeypatch.setattr(registry, "_KINDS", dict(registry._KINDS))  # registered for this test only
    with pytest.raises(AttackNotationError, match="unknown attack 'noise'"):
        parse_attack("noise4")
    registry.register_attack("Noise", layouts={1: ("eps",)},
                             settings={"eps": Setting(float, 8, required=True), "draws": Setting(int, 2)},
                             usage="Noise<eps>", aliases={"Hiss": "Noise3(draws=5)"})(Noise)
    assert str(parse_attack("noise4(draws=2)")) == "Noise4" and str(parse_attack("NOISE4(draws=3)")) == "Noise4(draws=3)"
    attack = make_attack("hiss", nn.Linear(2, 2))
    assert type(attack) is Noise and (attack.eps, attack.draws) == (3.0, 5)
    assert Noise(nn.Linear(2, 2)).draws == 2
    with pytest.raises(AttackNotationError, match="known: FGSM, PGD, CW, APGD, Square, Noise, MadryFGSM"):
        parse_attack("BIM16")
    with pytest.raises(AttackNotationError, match="Noise takes 1 number"):
        parse_attack("Noise")
    with pytest.raises(ValueError, match="already registered to Noise"):
        registry.register_attack("noise", layouts={1: ("eps",)}, settings={"eps": Setting(float)}, usage="")(FGSM)
    with pytest.raises(ValueError, match="unknown settings"):
        registry.register_attack("Hum", layouts={1: ("amp",)}, settings={"eps": Setting(float)}, usage="")


def test_notation_builds_without_importing_the_package_at_call_time():
    # AttackSpec.build reads the class from the registry: no function-level import of randmask.attacks
    from randmask.attacks import notation

    source = inspect.getsource(notation)
    assert "from randmask.attacks import" not in source and "import randmask.attacks\n" not in source
    attack = parse_attack("Square2(queries=3)").build(nn.Linear(2, 2), seed=4, exact=True)
    assert type(attack) is Square and (attack.queries, attack.seed, attack.exact) == (3, 4, True)
    assert parse_attack("CW40").norm == "l2" and parse_attack("Square2").norm == "linf"


if __name__ == "__main__":  # regenerate the golden file (only ever from the code it is meant to pin)
    GOLDEN.parent.mkdir(exist_ok=True)
    seen = observe()
    lines = [json.dumps(entry, ensure_ascii=True, separators=(",", ":")) for entry in seen["notations"]]
    GOLDEN.write_text('{"constructed": ' + json.dumps(seen["constructed"], ensure_ascii=True) + ',\n"notations": [\n'
                      + ",\n".join(lines) + "\n]}\n", encoding="utf-8")
    print(f"wrote {GOLDEN}", file=sys.stderr)
