"""The attack registry: one place for each kind's class, notation and defaults, and no change of behaviour.

tests/data/attack_golden.json was written by `python tests/test_attack_registry.py` on the code before the
registry existed (two tables, defaults repeated in every constructor). It pins, for a broad list of notations,
the canonical form, every setting or the full error message, and for built attacks the attributes the
crafted-set cache fingerprints, so an entry crafted before the change is still found after it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from torch import nn

from randmask.attacks import APGD, CW, FGSM, PGD, Square, parse_attack

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


if __name__ == "__main__":  # regenerate the golden file (only ever from the code it is meant to pin)
    GOLDEN.parent.mkdir(exist_ok=True)
    seen = observe()
    lines = [json.dumps(entry, ensure_ascii=True, separators=(",", ":")) for entry in seen["notations"]]
    GOLDEN.write_text('{"constructed": ' + json.dumps(seen["constructed"], ensure_ascii=True) + ',\n"notations": [\n'
                      + ",\n".join(lines) + "\n]}\n", encoding="utf-8")
    print(f"wrote {GOLDEN}", file=sys.stderr)
