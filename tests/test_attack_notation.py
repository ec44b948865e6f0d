"""Attack notation: the paper's names parse to the paper's settings and print back canonically."""

import pytest

from randmask.attacks import AttackNotationError, canonical_attack, parse_attack, pgd_default_steps
from randmask.core.errors import NotationError


@pytest.mark.parametrize("text, step, steps, eps", [
    ("PGD16", 1, 20, 16), ("PGD2,16", 2, 10, 16), ("PGD32", 1, 40, 32),
    # every setting of appendix G.5, from its short form
    ("PGD4", 1, 8, 4), ("PGD2,4", 2, 4, 4), ("PGD4,4", 4, 2, 4), ("PGD8", 1, 12, 8), ("PGD2,8", 2, 6, 8),
    ("PGD4,8", 4, 3, 8), ("PGD4,16", 4, 5, 16), ("PGD2,32", 2, 20, 32), ("PGD4,32", 4, 10, 32),
    ("MadryPGD", 2, 7, 8), ("PGD(1,8,4)", 1, 8, 4), ("pgd 2,7,8", 2, 7, 8),
])
def test_pgd_settings_match_the_paper(text, step, steps, eps):
    spec = parse_attack(text)
    assert (spec["step"], spec["steps"], spec["eps"]) == (step, steps, eps)
    assert spec["random_start"] is False  # the paper's PGD is the basic iterative method


@pytest.mark.parametrize("text, canonical", [
    ("PGD1,20,16", "PGD16"), ("PGD2,10,16", "PGD2,16"), ("PGD1,40,32", "PGD32"), ("PGD(2,7,8)", "PGD2,7,8"),
    ("madrypgd", "PGD2,7,8"), ("MadryFGSM", "FGSM8"), ("fgsm16", "FGSM16"), ("cw40", "CW40"),
    ("CW20(search=30)", "CW20"), ("CW20(steps=500,search=9)", "CW20(search=9, steps=500)"),
    ("PGD16(random_start=yes)", "PGD16(random_start=true)"), ("PGD16(steps=7)", "PGD1,7,16"),
    ("PGD0.01,40,0.3", "PGD0.01,40,0.3"), ("PGD2.55,40,76.5", "PGD2.55,40,76.5"),
    ("apgd16", "APGD16"), ("APGD8(steps=50)", "APGD8(steps=50)"), ("square16(queries=5000)", "Square16"),
    ("Square4(queries=100, p_init=0.3)", "Square4(p_init=0.3, queries=100)"),
])
def test_canonical_form_and_round_trip(text, canonical):
    assert canonical_attack(text) == canonical
    assert parse_attack(canonical) == parse_attack(text)


def test_defaults_and_kinds():
    assert parse_attack("FGSM32").params == {"eps": 32.0}
    cw = parse_attack("CW40")
    assert cw.norm == "l2" and cw.eps is None
    assert (cw["kappa"], cw["search"]) == (40.0, 30)  # the paper's 30 binary-search steps over c
    assert parse_attack("Square8")["queries"] == 5000
    assert parse_attack("APGD8")["steps"] == 100
    assert [pgd_default_steps(e) for e in (4, 8, 16, 32)] == [8, 12, 20, 40]


@pytest.mark.parametrize("text, fragment", [
    ("", "empty"), ("BIM16", "unknown attack 'BIM'"), ("FGSM", "takes 1 number"), ("FGSM0", "(0, 255]"),
    ("FGSM256", "(0, 255]"), ("PGD1,2,3,4", "1, 2 or 3"), ("PGD0,16", "step size"), ("CW", "takes 1"),
    ("PGD16(foo=1)", "no setting 'foo'"), ("PGD16(steps=2.5)", "whole number"), ("PGD16(steps=0)", "between 1 and 100000"),
    ("PGD16(eps=4)", "both as a number"), ("PGD16(random_start=maybe)", "true or false"), ("FGSM1e", "cannot read"),
    ("PGD16,", "empty number"), ("APGD8(rho=1)", "rho"), ("Square8(p_init=0)", "p_init"), ("FGSMnan", "unknown attack"),
    ("PGD16(steps=3, steps=4)", "twice"), ("FGSM8(1)", "takes 1 number"),
])
def test_errors_say_what_is_wrong(text, fragment):
    with pytest.raises(AttackNotationError) as info:
        parse_attack(text)
    assert fragment in str(info.value)
    assert isinstance(info.value, NotationError) and isinstance(info.value, ValueError)
