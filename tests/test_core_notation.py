import csv
from pathlib import Path

import pytest

from randmask.core.errors import NotationError
from randmask.core.notation import (
    DEEP,
    SHALLOW,
    MaskTerm,
    ModelSpec,
    canonical,
    format_model,
    parse_model,
    slug,
)

ROOT = Path(__file__).resolve().parents[1]
PAPER_LABELS = [
    "Normal ResNet-18", "0.3-Shallow", "0.5-Shallow", "0.7-Shallow", "0.75-Shallow", "0.8-Shallow",
    "0.85-Shallow", "0.9-Shallow", "0.95-Shallow", "0.3-Deep", "0.5-Deep", "0.7-Deep", "0.5-Shallow, 0.5-Deep",
    "0.3-Shallow, 0.7-Deep", "0.5-ShallowDC", "0.7-ShallowDC", "0.9-ShallowDC", "0.5-ShallowSM",
    "0.7-ShallowSM", "0.9-ShallowSM", "0.5-Shallow×2", "0.7-Shallow×2", "0.9-Shallow×2", "0.9-Shallow×4",
    "Normal ResNet-18EN", "0.5-Shallow×2,EN", "0.5-ShallowEN", "0.7-ShallowEN", "0.85-ShallowEN",
    "0.9-ShallowEN", "DenseNet-121", "VGG-19", "ResNet-50", "SENet-18",
]


@pytest.mark.parametrize("label", PAPER_LABELS)
def test_paper_labels_round_trip(label):
    spec = parse_model(label)
    assert format_model(spec) == label
    assert parse_model(format_model(spec)) == spec


def test_every_target_of_the_paper_tables_parses():
    path = ROOT.parent / "shared" / "paper" / "paper_tables.csv"
    if not path.exists():
        pytest.skip("paper tables not beside the checkout")
    with open(path, newline="") as f:
        targets = {row["target"] for row in csv.DictReader(f) if row["table"] in {"2", "7", "8", "9", "10", "11"}}
    assert len(targets) > 30
    for label in targets:
        assert canonical(label) == label


def test_meaning_of_notation():
    assert parse_model("0.7-Shallow") == ModelSpec("resnet18", (MaskTerm(0.7, SHALLOW),), 1)
    assert parse_model("0.5-Deep").masks[0].blocks == DEEP
    assert parse_model("0.5-ShallowDC").masks[0].kind == "DC"
    assert parse_model("0.5-ShallowSM").masks[0].kind == "SM"
    assert parse_model("0.9-Shallow×2").masks[0].multiplier == 2
    assert parse_model("0.5-ShallowEN").ensemble == 5
    spec = parse_model("0.5-Shallow×2,EN")
    assert (spec.ensemble, spec.masks[0].multiplier) == (5, 2)
    assert parse_model("Normal ResNet-18EN") == ModelSpec("resnet18", (), 5)
    combo = parse_model("0.3-Shallow, 0.7-Deep")
    assert [(t.ratio, t.blocks) for t in combo.masks] == [(0.3, SHALLOW), (0.7, DEEP)]
    assert parse_model("DenseNet-121").arch == "densenet121"


@pytest.mark.parametrize("alias,label", [
    ("0.9-Shallowx2", "0.9-Shallow×2"), ("0.9-shallowX2", "0.9-Shallow×2"), ("0.5-shallowen", "0.5-ShallowEN"),
    ("0.5-SHALLOWDC", "0.5-ShallowDC"), ("normal resnet-18", "Normal ResNet-18"), ("resnet18", "Normal ResNet-18"),
    ("0.5-Shallowx2, EN", "0.5-Shallow×2,EN"), ("densenet-121", "DenseNet-121"), (".7-Shallow", "0.7-Shallow"),
    ("0.5-Shallow,0.5-Deep", "0.5-Shallow, 0.5-Deep"), ("0.8-B012", "0.8-Shallow"), ("0.9-B12", "0.9-B12"),
    ("0.5-ShallowEN3", "0.5-ShallowEN3"),
])
def test_aliases_print_canonically(alias, label):
    assert canonical(alias) == label


def test_appendix_f_block_sets():
    assert parse_model("0.9-B12").masks[0].blocks == (1, 2)
    assert parse_model("0.8-B012").masks[0].blocks == SHALLOW


@pytest.mark.parametrize("bad,fragment", [
    ("1.5-Shallow", "outside"), ("1-Shallow", "outside"), ("0-Shallow", "outside"), ("-0.5-Shallow", "outside"),
    ("0.5-Middle", "cannot read"), ("", "empty"), ("ResNet-19", "unknown architecture"),
    ("0.5-Shallow, 0.5-B2", "masked twice"), ("0.5-B21", "increasing order"), ("0.5-Shallow×0", "between 1 and 8"),
    ("0.5-ShallowEN, 0.5-Deep", "EN"), ("banana", "cannot read"),
])
def test_bad_notation_says_what_is_wrong(bad, fragment):
    with pytest.raises(NotationError, match=fragment):
        parse_model(bad)


def test_masks_only_on_resnet18():
    with pytest.raises(NotationError, match="ResNet-18"):
        ModelSpec("vgg19", (MaskTerm(0.5, SHALLOW),))


def test_slug_is_file_safe():
    for label in PAPER_LABELS:
        s = slug(label)
        assert all(c.isalnum() or c in "-._,+" for c in s), s
    assert slug("0.9-Shallow×2") == "0.9-Shallowx2"


@pytest.mark.parametrize("alias", ["0.7-ShallowDropout", "0.7-shallowdropout", "0.7 - SHALLOWDROPOUT"])
def test_resampled_dropout_control_notation(alias):
    spec = parse_model(alias)
    assert spec.masks[0].kind == "Dropout" and spec.masks[0].blocks == SHALLOW
    assert format_model(spec) == "0.7-ShallowDropout" and slug(spec) == "0.7-ShallowDropout"
