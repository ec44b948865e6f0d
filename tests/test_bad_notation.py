"""Bad model and attack notations: each refused in one line, with nothing written; fuzzed with hypothesis.

Properties: printing a spec then parsing it gives the same spec (so the same masks), for every spec the
limits allow; any text either parses or raises NotationError (never another exception), in bounded time.
"""
from __future__ import annotations

import time

import pytest
import torch
from badinput import assert_one_line_error, assert_one_line_exception, assert_unchanged, run_main, tree_state
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from randmask.attacks.notation import _DECIMAL, _SHAPE, AttackNotationError, format_attack, parse_attack
from randmask.cli.main import main
from randmask.core.architectures import list_models
from randmask.core.errors import NotationError, RandmaskError
from randmask.core.masks import n_dropped
from randmask.core.models import build_model, check_buildable
from randmask.core.notation import (
    _ARCH,
    _TERM,
    MAX_ENSEMBLE,
    MAX_MULTIPLIER,
    MAX_NOTATION_LENGTH,
    MIN_RATIO,
    SHALLOW,
    TERM_KINDS,
    MaskTerm,
    ModelSpec,
    canonical,
    format_model,
    format_number,
    format_ref,
    parse_model,
    parse_ref,
)
from randmask.experiments.checkpoint import load_model, save_checkpoint

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PARSE_SECONDS = 0.1  # a 200-character notation parses in well under a millisecond

# (extra `info` options, notation, what the one-line error must say)
MODEL_BAD = [
    ([], "0.5-Shallow×999999999", "between 1 and 8, got 999999999"),
    ([], "0.5-Shallow×" + "9" * 5000, "characters long"),
    ([], "0.5-ShallowEN" + "9" * 5000, "characters long"),
    ([], "0.5-Shallow×" + "9" * 150, "between 1 and 8, got 999999... (150 digits)"),
    ([], "0.5-ShallowEN" + "0" * 150 + "3", ""),  # leading zeros are fine: this one is the only success test below
    ([], "0.99999-Shallow", "drops all 1024 positions of every channel of masked layer body.mask1"),
    ([], "0.97-Deep", "masked layer body.layer4.0.mask1 (block 4, 128×4×4)"),
    ([], "0.9999-ShallowSM", "drops all 1024 positions"),
    ([], "0.99-B4", "block 4"),
    ([], "0.99999-ShallowDropout", "drops all 1024 positions"),
    (["--width", "1"], "0.9-DeepDC", "drops all 4 channels of masked layer body.layer3.0.mask1"),
    (["--dataset", "mnist"], "0.9995-Shallow", "drops all 784 positions"),
    (["--dataset", "tinyimagenet10"], "0.995-Deep", "drops all 64 positions"),
    ([], "０.５-Shallow", "U+FF10"),
    ([], "٠.٥-Shallow", "U+0660"),
    ([], "0.५-Shallow", "U+096B"),
    ([], "0.5-Shallow×２", "U+FF12"),
    ([], "Normal ResNet-18EN٥", "U+0665"),
    ([], "0.5-ſhallow", "U+017F"),
    ([], "Normal \u212aesNet-18", "U+212A"),
    ([], "0.5-Shallow\x00", "U+0000"),
    ([], "0.5-Shal\nlow", "U+000A"),
    ([], "0.5-Shallow\u00a0", "U+00A0"),
    ([], "0.5\u2013Shallow", "U+2013"),
    ([], "Normal DenseNet-121", "'Normal' names the unmasked ResNet-18 only"),
    ([], "Normal VGG-19", "'Normal' names"),
    ([], "normal resnet-50EN", "'Normal' names"),
    ([], "EN999999999", "unknown architecture"),
    ([], "0.5-ShallowEN999999999", "between 1 and 10"),
    ([], "Normal ResNet-18EN11", "between 1 and 10"),
    ([], "0.5-Shallow, EN0", "between 1 and 10"),
    ([], "0.5-ShallowEN0", "between 1 and 10"),
    ([], "1" * 30000 + "-Shallow", "30008 characters long; the limit is 200"),
    ([], "0." + "1" * 250 + "-Shallow", "characters long"),
    ([], "0.5-Shallow" + " " * 300, "characters long"),
    ([], "0.5-Shallow banana", "cannot read"),
    ([], "banana", "cannot read"),
    ([], "Abnormal ResNet-18", "cannot read"),
    ([], "Normal Normal ResNet-18", "cannot read"),
    ([], "Normal ResNet-18 please", "cannot read"),
    ([], "ResNet", "cannot read"),
    ([], "ResNet-19", "unknown architecture"),
    ([], "LeNet-5EN", "unknown architecture"),
    ([], "0.5-Shallow, 0.5-Shallow", "masked twice"),
    ([], "0.5-Shallow, 0.5-B2", "masked twice"),
    ([], "0.5-B5", "outside 0..4"),
    ([], "0.5-B09", "outside 0..4"),
    ([], "0.5-B", "cannot read"),
    ([], "0.5-B00", "each block once"),
    ([], "0.5-B10", "increasing order"),
    ([], "1-Shallow", "outside (0, 1)"),
    ([], "0-Shallow", "outside (0, 1)"),
    ([], "1.5-Shallow", "outside (0, 1)"),
    ([], "-0.5-Shallow", "outside (0, 1)"),
    ([], "0.0000001-Shallow", "below 0.000001"),
    ([], "0.5.5-Shallow", "cannot read"),
    ([], "0,5-Shallow", "cannot read"),
    ([], "1e-1-Shallow", "cannot read"),
    ([], "nan-Shallow", "cannot read"),
    ([], "inf-Shallow", "cannot read"),
    ([], "+0.5-Shallow", "cannot read"),
    ([], "0.5-Shallow×0", "between 1 and 8, got 0"),
    ([], "0.5-Shallow×9", "between 1 and 8, got 9"),
    ([], "0.5-ShallowDropout×12", "between 1 and 8"),
    ([], "0.5-ShallowEN, 0.5-Deep", "'EN' may only end"),
    ([], "0.5-ShallowDCSM", "cannot read"),
    ([], "0.5-DeepDropoutDC", "cannot read"),
    ([], "0.5-ShallowXX", "cannot read"),
    ([], "", "empty model notation"),
    ([], "   ", "empty model notation"),
    ([], ",", "cannot read"),
    ([], "0.5-Shallow,,EN", "cannot read"),
    (["--width", "4096"], "0.7-Shallow", "width must be an integer from 1 to 512, got 4096"),
    (["--width", "0"], "0.7-Shallow", "width must be"),
    (["--width", "-3"], "0.7-Shallow", "width must be"),
    (["--mask-seed", "-1"], "0.7-Shallow", "mask_seed must be"),
    (["--mask-seed", "9" * 25], "0.7-Shallow", "mask_seed must be"),
    (["--dataset", "imagenet"], "0.7-Shallow", "unknown dataset"),
    (["--width", "64"], "0.5-B01234×8", "714 million parameters"),
    (["--width", "256"], "ResNet-50EN10", "million parameters"),
]
MODEL_BAD = [case for case in MODEL_BAD if case[2]]


@pytest.mark.parametrize("options, text, fragment", MODEL_BAD, ids=[f"{i}:{c[1][:30]!r}" for i, c in enumerate(MODEL_BAD)])
def test_bad_model_notation_is_refused_in_one_line(tmp_path, monkeypatch, capsys, options, text, fragment):
    monkeypatch.chdir(tmp_path)
    before = tree_state(tmp_path)
    start = time.perf_counter()
    code, out, err = run_main(main, ["info", *options, "--", text], capsys)
    assert time.perf_counter() - start < 5  # no allocation of a huge model, no quadratic parse
    assert_one_line_error(code, err, fragment)
    assert out == ""
    assert_unchanged(before, tree_state(tmp_path))


def test_leading_zeros_are_read_not_refused():
    assert canonical("0.5-ShallowEN" + "0" * 150 + "3") == "0.5-ShallowEN3"


# attack notation: (text, what the one-line error must say)
ATTACK_BAD = [
    ("FGSM１６", "U+FF11"), ("PGD٨", "U+0668"), ("ＦＧＳＭ8", "U+FF26"), ("FGSM\x008", "U+0000"),
    ("FGSM" + "9" * 5000, "characters long"), ("PGD16(steps=" + "9" * 180 + ")", "between 1 and 100000"),
    ("CW40(steps=1e9)", "between 1 and 100000"), ("Square8(queries=1e7)", "between 1 and 1000000"),
    ("APGD8(restarts=101)", "between 1 and 100"), ("CW40(search=1000)", "between 1 and 100"),
    ("PGD16(steps=1_0)", "not a number"), ("PGD16(step=inf)", "not a number"), ("PGD16(step=nan)", "not a number"),
    ("CW40(c=1e999)", "not a finite number"), ("CW40(lr=-1)", "must be positive"), ("CW99999", "at most 10000"),
    ("CW40(c=1e7)", "at most 1000000"), ("PGD0.000001,16", "needs more than 100000 steps"),
    ("PGD1e-3,16", "cannot read"), ("FGSM16 FGSM16", "cannot read"), ("FGSM-8", "cannot read"),
    ("FGSM+8", "cannot read"), ("PGD16(random_start=ja)", "true or false"), ("PGD16(steps=3, steps=4)", "twice"),
    ("BIM16", "unknown attack 'BIM'"), ("FGSM0", "(0, 255]"), ("FGSM256", "(0, 255]"),
    ("PGD2,7,8,9", "1, 2 or 3"), ("PGD16((steps=3))", "cannot read"), ("PGD16(steps=3", "cannot read"),
    ("", "empty attack notation"), ("FGSM.5.5", "not a number"), ("PGD16(foo=1)", "no setting 'foo'"),
    ("Square8(p_init=2)", "p_init"), ("APGD8(rho=0)", "rho"), ("PGD1,2.5,8", "whole number"),
    ("FGSM8(eps=8)", "both as a number"), ("CW", "takes 1 number"), ("MadryPGD(steps=3)", "unknown attack"),
    ("PGD16,", "empty number"),
]


@pytest.mark.parametrize("text, fragment", ATTACK_BAD, ids=[f"{i}:{c[0][:30]!r}" for i, c in enumerate(ATTACK_BAD)])
def test_bad_attack_notation_is_refused_in_one_line(tmp_path, capsys, text, fragment):
    with pytest.raises(AttackNotationError) as info:
        parse_attack(text)
    assert_one_line_exception(info.value, (NotationError,), fragment)
    # the attack command parses before it loads a model or makes its output folder
    before = tree_state(tmp_path)
    code, out, err = run_main(main, ["attack", "--model", "VGG-19", "--untrained", "--attack", text,
                                     "--out", str(tmp_path / "set"), "--n", "2"], capsys)
    assert_one_line_error(code, err, fragment)
    assert_unchanged(before, tree_state(tmp_path))


# ------------------------------------------------------------------------------------------ properties
ratios = st.floats(min_value=MIN_RATIO, max_value=1.0, exclude_max=True, allow_nan=False)


@st.composite
def model_specs(draw) -> ModelSpec:
    ensemble = draw(st.integers(1, MAX_ENSEMBLE))
    if draw(st.booleans()):
        return ModelSpec(draw(st.sampled_from(list_models())), (), ensemble)
    owner = draw(st.lists(st.sampled_from([None, 0, 1, 2]), min_size=5, max_size=5))
    if all(o is None for o in owner):
        owner[0] = 0
    terms = []
    for label in dict.fromkeys(o for o in owner if o is not None):
        blocks = tuple(b for b in range(5) if owner[b] == label)
        terms.append(MaskTerm(draw(ratios), blocks, draw(st.sampled_from(TERM_KINDS)),
                              draw(st.integers(1, MAX_MULTIPLIER))))
    return ModelSpec("resnet18", tuple(terms), ensemble)


@FUZZ
@given(model_specs())
def test_printing_then_parsing_gives_the_same_spec(spec):
    text = format_model(spec)
    assert len(text) <= MAX_NOTATION_LENGTH
    assert parse_model(text) == spec
    assert format_model(parse_model(text)) == text


MODEL_PIECES = ["0", "1", "5", "9", ".", "-", ",", " ", "×", "x", "X", "Shallow", "Deep", "B", "B12", "DC", "SM",
                "Dropout", "EN", "EN3", "Normal ", "ResNet-18", "DenseNet-121", "VGG-19", "ResNet-50", "SENet-18",
                "０", "٥", "ſ", "\u212a", "\n", "\x00", "e", "nan", "0.7-Shallow", "0.5-Deep", "×2", "\u00a0"]
model_like = st.lists(st.sampled_from(MODEL_PIECES), max_size=40).map("".join)


def _parse_or_refuse(parse, text, error_type):
    start = time.perf_counter()
    try:
        result = parse(text)
    except error_type as exc:
        assert_one_line_exception(exc, (NotationError,))
        result = None
    assert time.perf_counter() - start < PARSE_SECONDS, repr(text[:60])
    return result


@FUZZ
@given(st.one_of(st.text(max_size=300), model_like))
def test_model_parser_only_ever_raises_notation_error(text):
    spec = _parse_or_refuse(parse_model, text, NotationError)
    if spec is not None:
        assert parse_model(format_model(spec)) == spec
        try:  # the build-time checks (size, masks that keep nothing) are also user errors, never crashes
            check_buildable(spec, "cifar10", 4)
        except RandmaskError as exc:
            assert_one_line_exception(exc, (RandmaskError,))


ATTACK_PIECES = ["FGSM", "PGD", "CW", "APGD", "Square", "MadryPGD", "0", "1", "2", "8", "16", "255", ".", ",",
                 "(", ")", "=", "steps", "step", "eps", "kappa", "search", "queries", "restarts", "rho", "p_init",
                 "random_start", "true", "lr", "c", "e", "-", "+", " ", "inf", "nan", "１", "_", "e5"]
attack_like = st.lists(st.sampled_from(ATTACK_PIECES), max_size=40).map("".join)


@FUZZ
@given(st.one_of(st.text(max_size=300), attack_like))
def test_attack_parser_only_ever_raises_notation_error(text):
    spec = _parse_or_refuse(parse_attack, text, AttackNotationError)
    if spec is not None:
        assert parse_attack(format_attack(spec)) == spec
        assert format_attack(parse_attack(format_attack(spec))) == format_attack(spec)


budgets = st.floats(min_value=0.01, max_value=255, allow_nan=False)


@FUZZ
@given(st.sampled_from(["FGSM", "PGD", "PGD-step", "PGD-steps", "CW", "APGD", "Square"]), budgets, budgets,
       st.integers(1, 1000), st.floats(min_value=0.001, max_value=0.999))
def test_attack_specs_print_exactly(kind, eps, step, steps, fraction):
    text = {"FGSM": f"FGSM{format_number(eps)}", "PGD": f"PGD{format_number(eps)}",
            "PGD-step": f"PGD{format_number(max(step, 1.0))},{format_number(eps)}",
            "PGD-steps": f"PGD{format_number(step)},{steps},{format_number(eps)}",
            "CW": f"CW{format_number(eps)}(steps={steps}, c={format_number(fraction)})",
            "APGD": f"APGD{format_number(eps)}(rho={format_number(fraction)})",
            "Square": f"Square{format_number(eps)}(p_init={format_number(fraction)}, queries={steps})"}[kind]
    spec = parse_attack(text)
    assert parse_attack(str(spec)) == spec
    assert spec.params.get("eps", spec.params.get("kappa")) == eps  # the budget survives exactly


# ------------------------------------------------------------------------------------------ exactness, speed
def test_the_issues_precision_example_keeps_its_masks():
    spec = parse_model("0.1245117-Shallow")
    assert format_model(spec) == "0.1245117-Shallow"
    assert n_dropped(parse_model(format_model(spec)).masks[0].ratio, 1024) == n_dropped(0.1245117, 1024) == 127


def test_a_checkpoint_of_a_many_digit_ratio_loads(tmp_path):
    model = build_model("0.1245117-Shallow", width=4)
    folder = save_checkpoint(model, tmp_path / "m")
    loaded, config = load_model(folder)
    assert config["notation"] == "0.1245117-Shallow"
    assert torch.equal(loaded.body.mask1.mask, model.body.mask1.mask)


def test_zoo_names_stay_as_they_were():
    for name in ("0.7-Shallow", "0.85-ShallowEN", "0.9-Shallow×2", "Normal ResNet-18", "0.5-ShallowDC",
                 "0.3-Shallow", "DenseNet-121", "0.7-ShallowDropout"):
        assert canonical(name) == name
    assert parse_model("0.7-Shallow").masks[0] == MaskTerm(0.7, SHALLOW)


@pytest.mark.parametrize("pattern, text", [
    (_TERM, "1" * 100_000 + "x"), (_TERM, "0." + "1" * 100_000), (_TERM, "0.5-B" + "1" * 100_000 + "q"),
    (_TERM, "0.5-Shallow×" + "2" * 100_000 + "!"), (_TERM, "0.5-ShallowEN" + "3" * 100_000 + "!"),
    (_ARCH, "ResNet-" + "1" * 100_000 + "!"), (_SHAPE, "PGD" + "1," * 50_000 + "x"),
    (_SHAPE, "PGD" + " " * 100_000 + "x"), (_DECIMAL, "1" * 100_000 + "x"),
], ids=lambda value: value[:12] if isinstance(value, str) else "pattern")
def test_patterns_are_linear_even_without_the_length_limit(pattern, text):
    # the old pattern took 31-53 s on 30,000 digits; a linear one scans 100,000 characters in milliseconds
    start = time.perf_counter()
    assert pattern.fullmatch(text) is None
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize("ref, fragment", [
    ("VGG-19@seed=٣", "expected seed=N"), ("VGG-19@seed=" + "9" * 5000, "expected seed=N"),
    ("VGG-19@mask_seed=99999999999", "expected seed=N"), ("VGG-19@seed=-1", "expected seed=N"),
    ("VGG-19@seed=4294967295", "must be between 0 and 2147483647"), ("VGG-19@colour=3", "expected seed=N"),
    ("VGG-19@seed=1,seed=2", "each once"), ("VGG-19@w0", "width in 'VGG-19@w0' must be between 1 and 512"),
    ("VGG-19@w513", "must be between 1 and 512"), ("VGG-19@width=32,width=8", "each once"), ("VGG-19@", "expected seed=N"),
], ids=["arabic-digit", "5000-digits", "11-digits", "negative", "above-limit", "unknown-key", "seed-twice",
        "width-0", "width-513", "width-twice", "empty"])
def test_bad_model_reference_seeds_are_refused_in_one_line(tmp_path, capsys, ref, fragment):
    before = tree_state(tmp_path)
    code, out, err = run_main(main, ["noise", "--models", ref, "--untrained", "--width", "4",
                                     "--out", str(tmp_path / "n.csv")], capsys)
    assert_one_line_error(code, err, fragment)
    assert_unchanged(before, tree_state(tmp_path))


@pytest.mark.parametrize("text, name, slug_text", [
    ("0.7-Shallow", "0.7-Shallow", "0.7-Shallow"), ("0.7-Shallow@w32", "0.7-Shallow@w32", "0.7-Shallow-w32"),
    ("0.7-shallow@w16", "0.7-Shallow", "0.7-Shallow"),  # the zoo's width is the default: not named
    ("0.85-Shallow@s1m1w32", "0.85-Shallow@s1m1w32", "0.85-Shallow-s1m1w32"),
    ("Normal ResNet-18@seed=1,width=64", "Normal ResNet-18@s1m0w64", "Normal_ResNet-18-s1m0w64"),
    ("0.9-Shallowx2@width=32,mask_seed=3", "0.9-Shallow×2@s0m3w32", "0.9-Shallowx2-s0m3w32"),
])
def test_a_reference_names_the_width_and_reads_back_the_same(text, name, slug_text):
    ref = parse_ref(text)
    assert format_ref(ref) == name and ref.slug == slug_text
    assert parse_ref(format_ref(ref)) == ref


def test_the_width_of_a_reference_builds_the_model_at_that_width(capsys):
    from randmask.cli.attack_io import split_ref

    notation, ref = split_ref("0.7-Shallow@w8")
    assert notation == "0.7-Shallow" and ref.width == 8
