"""randmask.explore: what the app computes, checked against brute-force references and closed forms."""
from __future__ import annotations

import io
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from test_app_support import CONFIDENT_CLASS, TINY_WIDTH, constant_model, make_results, make_zoo

from randmask.core import datasets, models, settings
from randmask.core.errors import RandmaskError
from randmask.core.models import build_model, masked_layers
from randmask.core.notation import ModelRef
from randmask.experiments.checkpoint import save_checkpoint
from randmask.results import comparison
from randmask.results.paper import (
    PAPER_TABLES,
    attack_key,
    load_paper_tables,
    load_results,
    model_key,
    paper_attacks,
    paper_sources,
    result_target_key,
    trained_model_keys,
    twin_key,
)
from randmask.views import catalog, images, mask_views, tables
from randmask.views.gallery import Gallery, attack_notation, build_gallery, gallery_png


# ----------------------------------------------------------------------------------------------- images
def test_upscale_nearest_repeats_every_pixel_as_a_block():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    big = images.upscale_nearest(image, 4)
    assert big.shape == (20, 28, 3) and big.dtype == np.uint8
    for r, c in itertools.product(range(5), range(7)):
        block = big[4 * r:4 * r + 4, 4 * c:4 * c + 4]
        assert (block == image[r, c]).all()  # no interpolation: every block is one source pixel
    assert images.upscale_nearest(image[..., 0], 2).shape == (10, 14)
    for bad in (0, -1, 1.5):
        with pytest.raises(RandmaskError):
            images.upscale_nearest(image, bad)


def test_to_hwc_uint8_rounds_floats_and_repeats_grey():
    x = torch.tensor([[[0.0, 0.5], [1.0, 0.2]]])  # 1×2×2 grey
    out = images.to_hwc_uint8(x)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert out[0, 1].tolist() == [128, 128, 128] and out[1, 0].tolist() == [255] * 3 and out[1, 1, 0] == 51
    rgb = torch.arange(12, dtype=torch.uint8).view(3, 2, 2)
    assert images.to_hwc_uint8(rgb)[1, 0].tolist() == [2, 6, 10]  # channel-last, values untouched
    with pytest.raises(RandmaskError):
        images.to_hwc_uint8(torch.zeros(2, 2))
    assert images.display_image(torch.zeros(3, 32, 32), 224).shape == (224, 224, 3)  # factor 7


def test_diverging_colours_are_centred_on_zero():
    values = np.array([[-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0]])
    rgb = images.diverging_rgb(values, vmax=1.0).astype(int)
    white, blue, red = [247, 247, 247], [33, 102, 172], [178, 24, 43]
    assert rgb[0, 3].tolist() == white
    assert rgb[0, 5].tolist() == red and rgb[0, 6].tolist() == red  # clipped beyond vmax
    assert rgb[0, 1].tolist() == blue and rgb[0, 0].tolist() == blue
    # halfway: midpoint between white and the end colour, on each side
    assert np.abs(rgb[0, 4] - (np.array(white) + np.array(red)) / 2).max() <= 0.5
    assert np.abs(rgb[0, 2] - (np.array(white) + np.array(blue)) / 2).max() <= 0.5
    with pytest.raises(RandmaskError):
        images.diverging_rgb(values, 0.0)


def test_perturbation_image_uses_channel_mean_in_255_units():
    clean = torch.full((3, 4, 4), 0.5)
    adv = clean.clone()
    adv[:, 0, 0] += 8 / 255  # +8 in every channel
    adv[0, 1, 1] -= 12 / 255  # -12 in one channel: mean -4
    rgb, vmax = images.perturbation_image(adv, clean, vmax=16)
    assert vmax == 16
    expected = images.diverging_rgb(np.array([[8.0, -4.0, 0.0]]), 16)[0]
    # float32 images: the differences are 8 and -4 up to rounding, so colours agree within one level
    for (r, c), want in zip([(0, 0), (1, 1), (2, 2)], expected, strict=True):
        assert np.abs(rgb[r, c].astype(int) - want.astype(int)).max() <= 1
    _, auto = images.perturbation_image(adv, clean)
    assert auto == pytest.approx(8.0, abs=1e-4)  # the largest |channel mean|
    _, none = images.perturbation_image(clean, clean)
    assert none == 1.0  # no change: a unit scale, not a division by zero


def test_overlay_keep_dims_only_dropped_positions():
    image = torch.full((3, 2, 2), 200, dtype=torch.uint8)
    keep = torch.tensor([[True, False], [False, True]])
    out = images.overlay_keep(image, keep, dim=0.25)
    assert out[0, 0].tolist() == [200] * 3 and out[1, 1].tolist() == [200] * 3
    assert out[0, 1].tolist() == [50] * 3 and out[1, 0].tolist() == [50] * 3
    with pytest.raises(RandmaskError):
        images.overlay_keep(image, torch.ones(3, 3, dtype=torch.bool))


# ------------------------------------------------------------------------------------------------ masks
@pytest.mark.parametrize("notation,kind", [("0.7-Shallow", "random"), ("0.5-ShallowSM", "SM"),
                                           ("0.5-ShallowDC", "DC")])
def test_mask_statistics_match_the_masks(notation, kind):
    model = build_model(notation, width=8)
    rows = mask_views.mask_statistics(model)
    reference = masked_layers(model)
    assert [r["layer"] for r in rows] == [r["name"] for r in reference]
    for row, ref in zip(rows, reference, strict=True):
        assert row["kind"] == kind and row["block"] == ref["block"]
        assert row["measured_drop_ratio"] == pytest.approx(ref["drop_ratio"])
        c, h, w = ref["shape"]
        keep = mask_views.get_mask(model, row["layer"])
        assert row["dropped"] == int((~keep).sum()) and row["neurons"] == c * h * w
        if kind == "random":  # exactly round(r·H·W) per channel, nobody dead
            per_channel = round(row["ratio"] * h * w) / (h * w)
            assert row["channel_drop_min"] == pytest.approx(per_channel) == row["channel_drop_max"]
            assert row["dead_channels"] == 0
        if kind == "SM":  # one pattern: positions dropped everywhere = the ratio itself
            assert row["positions_dropped_in_all_channels"] == pytest.approx(row["measured_drop_ratio"])
        if kind == "DC":
            assert row["dead_channels"] == round(row["ratio"] * c)
    with pytest.raises(RandmaskError):
        mask_views.get_mask(model, "no.such.layer")
    assert mask_views.mask_statistics(build_model("Normal ResNet-18", width=4)) == []


def test_kind_comparison_shapes_the_three_kinds():
    kinds = mask_views.kind_comparison((6, 8, 8), 0.5, seed=3)
    random, same, dc = kinds["random"], kinds["SM"], kinds["DC"]
    assert all(m.shape == (6, 8, 8) and m.dtype == torch.bool for m in kinds.values())
    assert (~random).flatten(1).sum(1).tolist() == [32] * 6
    assert len({tuple(m.flatten().tolist()) for m in random}) == 6  # every channel its own pattern
    assert all(torch.equal(same[i], same[0]) for i in range(6))
    per_channel = dc.flatten(1)
    assert all(row.all() or (~row).all() for row in per_channel) and int((~per_channel.any(1)).sum()) == 3
    freq = mask_views.drop_frequency(same)
    assert set(freq.unique().tolist()) <= {0.0, 1.0}


def brute_coverage(keep: torch.Tensor) -> torch.Tensor:
    c, h, w = keep.shape
    out = torch.zeros(c, h, w, dtype=torch.int64)
    for ch, y, x in itertools.product(range(c), range(h), range(w)):
        out[ch, y, x] = sum(int(keep[ch, p, q]) for p in range(max(0, y - 1), min(h, y + 2))
                            for q in range(max(0, x - 1), min(w, x + 2)))
    return out


def brute_receptive(keep: torch.Tensor, row: int, col: int, channels) -> torch.Tensor:
    c, h, w = keep.shape
    out = torch.zeros(h, w, dtype=torch.int64)
    for ch in channels:
        for p in range(max(0, row - 1), min(h, row + 2)):
            for q in range(max(0, col - 1), min(w, col + 2)):
                if keep[ch, p, q]:
                    out[max(0, p - 1):p + 2, max(0, q - 1):q + 2] += 1
    return out


def test_input_coverage_and_receptive_field_match_brute_force():
    keep = torch.rand(3, 7, 6, generator=torch.Generator().manual_seed(1)) > 0.6
    assert torch.equal(mask_views.input_coverage(keep), brute_coverage(keep))
    for row, col in [(0, 0), (3, 2), (6, 5), (2, 5)]:
        assert torch.equal(mask_views.receptive_field(keep, row, col), brute_receptive(keep, row, col, range(3)))
        assert torch.equal(mask_views.receptive_field(keep, row, col, channel=1), brute_receptive(keep, row, col, [1]))
    with pytest.raises(RandmaskError):
        mask_views.receptive_field(keep, 7, 0)
    with pytest.raises(RandmaskError):
        mask_views.receptive_field(keep, 0, 0, channel=3)
    with pytest.raises(RandmaskError):
        mask_views.input_coverage(keep, kernel=2)


def test_unmasked_receptive_field_is_the_5x5_pyramid():
    keep = torch.ones(4, 9, 9, dtype=torch.bool)
    field = mask_views.receptive_field(keep, 4, 4)
    pyramid = torch.tensor([1, 2, 3, 2, 1])
    expected = torch.zeros(9, 9, dtype=torch.int64)
    expected[2:7, 2:7] = 4 * torch.outer(pyramid, pyramid)
    assert torch.equal(field, expected)
    corner = mask_views.receptive_field(keep[:1], 0, 0)  # window and patches clipped at the border
    assert corner[:3, :3].tolist() == [[4, 4, 2], [4, 4, 2], [2, 2, 1]] and corner[3:].sum() == 0


def test_coverage_summary_shared_mask_bound_and_random_masks():
    ratio = 0.9
    kinds = mask_views.kind_comparison((16, 32, 32), ratio, seed=0)
    sm, rnd = mask_views.coverage_summary(kinds["SM"]), mask_views.coverage_summary(kinds["random"])
    # one shared pattern: a 3×3 stem sees at most 9 × kept share of the pixels (the paper's argument)
    assert sm["layer_sees"] <= sm["shared_mask_bound"] + 1e-9
    assert sm["layer_sees"] == pytest.approx(sm["channel_sees_mean"])  # every channel sees the same
    assert rnd["layer_sees"] > sm["layer_sees"] and rnd["layer_sees"] > 0.99
    full = mask_views.coverage_summary(torch.ones(2, 8, 8, dtype=torch.bool))
    assert full["layer_sees"] == 1.0 == full["channel_sees_min"]


def test_filter_window_marks_the_border_as_dead():
    keep = torch.rand(2, 5, 5, generator=torch.Generator().manual_seed(2)) > 0.5
    assert torch.equal(mask_views.filter_window(keep, 2, 2), keep[:, 1:4, 1:4])
    corner = mask_views.filter_window(keep, 0, 0)
    assert not corner[:, 0, :].any() and not corner[:, :, 0].any()
    assert torch.equal(corner[:, 1:, 1:], keep[:, :2, :2])


def test_stem_mask_is_block_zero():
    name, keep = mask_views.stem_mask(build_model("0.7-Shallow", width=4))
    assert name == "body.mask1" and keep.shape == (4, 32, 32)
    assert mask_views.stem_mask(build_model("0.5-Deep", width=4)) is None


def test_shuffle_grids_divide_the_image():
    assert catalog.shuffle_grids(32) == [2, 4, 8, 16]
    assert catalog.shuffle_grids(28) == [2, 4, 7, 14]


# ------------------------------------------------------------------------------------------ discovery
def test_discover_models_reads_zoo_user_runs_and_adds_stand_ins(tmp_path):
    zoo = make_zoo(tmp_path / "zoo")
    (zoo / "cifar10" / "broken").mkdir()
    (zoo / "cifar10" / "broken" / "config.json").write_text("{not json")
    (zoo / "cifar10" / "half.tmp").mkdir()  # an export in progress: ignored silently
    runs = tmp_path / "runs"
    save_checkpoint(build_model("0.5-ShallowDC", width=4, mask_seed=2), runs / "mine", extra={"clean_accuracy": 0.42})
    (runs / "unfinished").mkdir()
    cat = catalog.discover_models(zoo, runs)
    by_key = {e.key: e for e in cat.entries}
    assert by_key["zoo:cifar10/0.9-Shallow"].source == "zoo" and by_key["zoo:cifar10/0.9-Shallow"].width == TINY_WIDTH
    assert by_key["zoo:cifar10/Normal_ResNet-18"].role == "baseline"
    mine = by_key["user:mine"]
    assert (mine.notation, mine.mask_seed, mine.clean_accuracy) == ("0.5-ShallowDC", 2, 0.42)
    # a width-4 model: its one name says so, beside its mask seed
    assert "yours" in mine.label and "42.0%" in mine.label and mine.name == "0.5-ShallowDC@s0m2w4"
    assert "user:unfinished" not in by_key
    assert len(cat.problems) == 1 and "broken" in cat.problems[0]
    # stand-ins for planned entries that are missing, never for trained ones
    assert "untrained:cifar10/0.9-Shallow" not in by_key
    stand_in = by_key["untrained:cifar10/0.5-Deep"]
    assert not stand_in.trained and "UNTRAINED" in stand_in.label
    refs = cat.trained_refs("cifar10")  # what the robustness page counts as trained: never a stand-in
    assert ModelRef("0.9-Shallow") in refs and ModelRef("0.5-ShallowDC", mask_seed=2, width=4) in refs
    assert ModelRef("0.5-Deep") not in refs
    assert "untrained:mnist/0.5-Shallow" in by_key and "mnist" in cat.datasets and cat.datasets[0] == "cifar10"
    assert catalog.default_picks(cat.for_dataset("cifar10"))[:2] == ["zoo:cifar10/Normal_ResNet-18",
                                                                     "zoo:cifar10/0.9-Shallow"]
    with pytest.raises(RandmaskError):
        cat.get("zoo:nothing")
    assert not catalog.discover_models(zoo, runs, include_untrained=False).for_dataset("mnist")


def test_discovery_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RANDMASK_ZOO", str(tmp_path / "z"))
    monkeypatch.setenv("RANDMASK_RUNS", str(tmp_path / "r"))
    monkeypatch.setenv("RANDMASK_RESULTS", str(tmp_path / "res"))
    assert settings.zoo_root() == tmp_path / "z" and settings.user_runs_root() == tmp_path / "r"
    assert settings.results_root() == tmp_path / "res"
    monkeypatch.setenv("RANDMASK_CRAFTED", str(tmp_path / "sets"))
    monkeypatch.setenv("RANDMASK_DATA_CACHE", str(tmp_path / "arrays"))
    assert settings.crafted_cache_root() == tmp_path / "sets" and settings.data_cache_root() == tmp_path / "arrays"
    monkeypatch.delenv("RANDMASK_CRAFTED")
    monkeypatch.delenv("RANDMASK_DATA_CACHE")
    assert settings.crafted_cache_root() == settings.PROJECT_ROOT / "runs" / "crafted"
    assert settings.data_cache_root() == Path.home() / ".cache" / "randmask"  # two caches, two settings
    cat = catalog.discover_models()  # folders missing: an all-stand-in catalog, no crash
    assert cat.entries and not any(e.trained for e in cat.entries) and not cat.problems


def test_load_entry_gives_checkpoint_weights_and_notation_masks(tmp_path):
    zoo = make_zoo(tmp_path / "zoo")
    cat = catalog.discover_models(zoo, tmp_path / "none")
    model = catalog.load_entry(cat.get("zoo:cifar10/0.9-Shallow"))
    assert not model.training
    x = torch.rand(2, 3, 32, 32)
    assert model(x).argmax(1).tolist() == [CONFIDENT_CLASS] * 2
    stand_in = catalog.load_entry(cat.get("untrained:cifar10/0.5-Deep"))
    reference = build_model("0.5-Deep", width=16)
    for (name, a), (_, b) in zip(models.mask_modules(stand_in), models.mask_modules(reference), strict=True):
        assert torch.equal(a.mask, b.mask), name


def test_unique_names_disambiguate_clashes():
    a = catalog.ModelEntry("zoo:a", "0.7-Shallow", "cifar10", "zoo")
    b = catalog.ModelEntry("user:x", "0.7-Shallow", "cifar10", "user", folder="/r/x")
    c = catalog.ModelEntry("user:y", "0.7-Shallow", "cifar10", "user", folder="/s/x")
    d = catalog.ModelEntry("zoo:d", "0.7-Shallow", "cifar10", "zoo", seed=1)
    names = catalog.unique_names([a, b, c, d])
    assert len(set(names)) == 4 and names[0] == "0.7-Shallow (zoo)" and names[3] == "0.7-Shallow@s1m0"


# ----------------------------------------------------------------------------------------- predictions
def test_predictions_are_argmax_and_softmax_confidence():
    model = build_model("Normal ResNet-18", width=4).eval()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    rows = catalog.predictions({"n": model}, x)
    with torch.no_grad():
        prob = model(x).softmax(1)
    assert [r["pred"] for r in rows] == prob.argmax(1).tolist()
    assert [r["confidence"] for r in rows] == pytest.approx(prob.max(1).values.tolist(), abs=1e-6)
    assert rows[0]["label"] in datasets.CLASSES["cifar10"]


# ----------------------------------------------------------------------------------------------- gallery
def test_attack_notation_is_canonical():
    assert attack_notation("FGSM", 8) == "FGSM8"
    assert attack_notation("PGD", 16) == "PGD16"
    assert attack_notation("CW", kappa=20) == "CW20(search=5, steps=50)"
    assert attack_notation("Square", 4, queries=100) == "Square4(queries=100)"
    with pytest.raises(RandmaskError):
        attack_notation("Carlini", 8)
    with pytest.raises(RandmaskError):
        attack_notation("FGSM", 0)


def test_build_gallery_attacks_both_sources_and_records_both_views():
    torch.manual_seed(0)
    normal = build_model("Normal ResNet-18", width=4).eval()
    masked = build_model("0.9-Shallow", width=4).eval()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5)).mul(255).round().div(255)
    y = torch.tensor([0, 1, 2])
    seen = []
    gallery = build_gallery(normal, masked, "FGSM8", x, y, names=("N", "M"), indices=[10, 11, 12],
                                    progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (6, 6)  # both sources' images counted
    assert gallery.attack == "FGSM8" and gallery.eps == 8 and gallery.indices == [10, 11, 12]
    for name in ("N", "M"):
        adv = gallery.adv[name]
        levels = adv * 255
        assert torch.allclose(levels, levels.round(), atol=1e-4)  # stored as uint8 would store them
        assert (adv - x).abs().max() * 255 <= 8 + 1e-3
        assert gallery.linf[name].max() <= 8
    assert not torch.equal(gallery.adv["N"], gallery.adv["M"])  # each source gets its own perturbation
    with torch.no_grad():
        assert torch.allclose(gallery.preds["clean"]["M"], masked(x).softmax(1), atol=1e-5)
        assert torch.allclose(gallery.preds["N"]["N"], normal(gallery.adv["N"]).softmax(1), atol=1e-5)
    caption = gallery.caption("M", 0)
    assert caption.startswith("N: ") and " · M: " in caption and caption.endswith("%")
    assert gallery.perturbation_scale() == 8.0
    png = gallery_png(gallery, scale=4)
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG" and img.width >= 5 * 128 and img.height >= 3 * 128
    with pytest.raises(RandmaskError):
        build_gallery(normal, masked, "FGSM8", x, y, names=("N", "N"))


def test_gallery_scale_without_eps_is_the_largest_change():
    clean = torch.zeros(1, 3, 4, 4)
    adv = clean.clone()
    adv[0, 0, 0, 0] = 20 / 255
    gallery = Gallery("CW40", ("N", "M"), [0], torch.tensor([0]), clean, {"N": adv, "M": clean},
                              {}, {}, eps=None)
    assert gallery.perturbation_scale() == pytest.approx(20.0)


def test_rows_csv_round_trips():
    rows = [{"a": 1, "b": 0.5}, {"a": 2, "c": "x"}]
    frame = pd.read_csv(io.BytesIO(catalog.rows_csv(rows)))
    assert list(frame.columns) == ["a", "b", "c"] and frame["a"].tolist() == [1, 2]


# ---------------------------------------------------------------------------------------- paper vs ours
def test_model_and_attack_keys():
    assert model_key("ResNet-18") == "Normal ResNet-18" == model_key("normal resnet-18")
    assert model_key("0.85-Shallow (Random Mask)") == "0.85-Shallow"
    # Table 5's other-init and other-mask twins are the zoo's seed-1 and mask-seed-1 copies: one reference each
    assert model_key("0.5-Shallow (other init)") == "0.5-Shallow@s1m0" == model_key("0.5-shallow@seed=1")
    assert model_key("0.5-ShallowDIF") == "0.5-Shallow@s0m1" == twin_key("0.5-shallow", "DIF")
    assert twin_key("Normal ResNet-18", "other init") == "Normal ResNet-18@s1m0" == result_target_key(
        {"target": "Normal ResNet-18", "relation": "other init"})
    assert result_target_key({"target": "Normal ResNet-18 (4 epochs)"}) == "Normal ResNet-18 (4 epochs)"
    assert model_key("Normal ResNet-18 (4 epochs)") == "Normal ResNet-18 (4 epochs)"  # a matched control
    assert model_key("Normal ResNet-18 (3 epochs, 40,000 images)") == "Normal ResNet-18 (3 epochs, 40,000 images)"
    assert model_key("Madry adversarial training") == "Madry adversarial training"
    assert model_key(float("nan")) == "" == model_key("  ")
    assert attack_key("PGD 7x2 eps8") == "pgd7x2eps8" == attack_key("pgd 7x2  eps8")
    assert attack_key(float("nan")) == ""


def paper_frame() -> pd.DataFrame:
    rows = [(7, "DenseNet-121", "Normal ResNet-18", "FGSM16", "defense_rate", 14.9),
            (7, "DenseNet-121", "0.7-Shallow", "FGSM16", "defense_rate", 48.6),
            (7, "DenseNet-121", "0.5-Shallow", "FGSM16", "defense_rate", 30.9),
            (7, "DenseNet-121", "0.5-ShallowDC", "FGSM16", "defense_rate", 20.0),
            (7, "DenseNet-121", "Normal ResNet-18", None, "clean_accuracy", 95.3),
            (7, "DenseNet-121", "0.7-Shallow", None, "clean_accuracy", 93.0),
            (7, "DenseNet-121", "0.5-Shallow", None, "clean_accuracy", 94.0),
            (8, "ResNet-18", "0.7-Shallow", "FGSM16", "defense_rate", 60.0),
            (1, "naturally trained net", "0.85-Shallow (Random Mask)", "FGSM8", "defense_rate", 86.0),
            (5, "0.5-Shallow", "0.5-Shallow (other init)", "FGSM16", "defense_rate", 40.0),
            (5, "0.5-Shallow", "0.5-ShallowDIF", "FGSM16", "defense_rate", 45.0)]
    frame = pd.DataFrame(rows, columns=["table", "source", "target", "attack", "metric", "percent"])
    frame["table"] = frame["table"].astype("Int64")
    return frame


def test_compare_with_paper_matches_by_canonical_names(tmp_path):
    make_results(tmp_path)
    ours, problems = load_results(tmp_path)
    assert not problems and len(ours) == 4
    extra = pd.DataFrame([
        {"protocol": "madry", "source": "naturally trained net", "target": "0.85-shallow", "attack": "FGSM8",
         "metric": "defense_rate", "n": 100, "accuracy": 0.8, "ci_low": 0.7, "ci_high": 0.9, "paper_attack": "FGSM8"},
        {"protocol": "graybox", "source": "0.5-Shallow", "target": "0.5-Shallow (runs/b)", "attack": "FGSM16",
         "metric": "defense_rate", "n": 50, "accuracy": 0.5, "ci_low": 0.4, "ci_high": 0.6, "relation": "DIF"}])
    ours = pd.concat([ours, extra], ignore_index=True)
    comp = comparison.compare_with_paper(paper_frame(), ours, 7).set_index(["target", "metric"])
    row = comp.loc[("0.7-Shallow", "defense_rate")]
    values = [row["paper"], row["ours"], row["ours_low"], row["ours_high"], row["n"]]
    assert values == pytest.approx([48.6, 55, 48, 62, 200])
    assert row["difference"] == pytest.approx(55.0 - 48.6) and row["file"] == "table7.csv"
    assert comp.loc[("Normal ResNet-18", "clean_accuracy"), "ours"] == pytest.approx(90.0)
    assert math.isnan(comp.loc[("0.5-Shallow", "defense_rate"), "ours"])  # not in our results
    # table 8 has another source: our DenseNet-121 rows must not leak into it
    assert math.isnan(comparison.compare_with_paper(paper_frame(), ours, 8)["ours"].iloc[0])
    assert comparison.compare_with_paper(paper_frame(), ours, 1)["ours"].iloc[0] == pytest.approx(80.0)
    gray = comparison.compare_with_paper(paper_frame(), ours, 5).set_index("target")
    assert gray.loc["0.5-ShallowDIF", "ours"] == pytest.approx(50.0)
    assert math.isnan(gray.loc["0.5-Shallow (other init)", "ours"])
    empty = comparison.compare_with_paper(paper_frame(), None, 7)
    assert len(empty) == 7 and empty["ours"].isna().all()
    with pytest.raises(RandmaskError):
        comparison.compare_with_paper(paper_frame(), None, 2)


def test_compare_with_the_real_paper_file_keeps_every_number():
    try:
        paper = load_paper_tables()
    except RandmaskError:
        pytest.skip("paper_tables.csv not found (set RANDMASK_PAPER_TABLES)")
    raw = pd.read_csv(settings.paper_tables_path())
    for table in PAPER_TABLES:
        comp = comparison.compare_with_paper(paper, None, table)
        assert comp["paper"].tolist() == raw[raw["table"] == table]["percent"].tolist()


def test_tradeoff_points_pair_clean_accuracy_with_defense_rate(tmp_path):
    make_results(tmp_path)
    ours, _ = load_results(tmp_path)
    points = comparison.tradeoff_points(paper_frame(), ours, "DenseNet-121", "FGSM16")
    paper = points[points["origin"] == "paper"].set_index("target")
    # 0.5-ShallowDC is not an r-Shallow model; every other target pairs with its clean accuracy
    assert list(paper.index) == ["Normal ResNet-18", "0.5-Shallow", "0.7-Shallow"]
    assert paper.loc["0.7-Shallow", ["ratio", "clean_accuracy", "defense_rate"]].tolist() == [0.7, 93.0, 48.6]
    mine = points[points["origin"] == "ours"].set_index("target")
    assert mine.loc["0.7-Shallow", "clean_accuracy"] == pytest.approx(85.0)
    assert mine.loc["0.7-Shallow", "defense_low"] == pytest.approx(48.0)
    assert mine.loc["Normal ResNet-18", "ratio"] == 0.0
    assert comparison.tradeoff_points(paper_frame(), ours, "DenseNet-121", "FGSM8").empty


def test_load_results_names_bad_files(tmp_path):
    make_results(tmp_path)
    (tmp_path / "partial.csv").write_text("source,target\nA,B\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "more.csv").write_text("source,target,attack,n,accuracy,ci_low,ci_high\nA,B,FGSM8,10,0.5,0.2,0.8\n")
    frame, problems = load_results(tmp_path)
    assert len(frame) == 5 and set(frame["file"]) == {"table7.csv", "sub/more.csv"}
    assert len(problems) == 1 and "partial.csv" in problems[0] and "accuracy" in problems[0]
    empty, none = load_results(tmp_path / "missing")
    assert empty.empty and not none


def test_paper_tables_lookup_honours_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "p.csv"
    paper_frame().to_csv(path, index=False)
    monkeypatch.setenv("RANDMASK_PAPER_TABLES", str(path))
    assert paper_sources(load_paper_tables()) == ["DenseNet-121", "ResNet-18"]
    assert paper_attacks(load_paper_tables(), "DenseNet-121") == ["FGSM16"]
    monkeypatch.setenv("RANDMASK_PAPER_TABLES", str(tmp_path / "missing.csv"))
    with pytest.raises(RandmaskError):
        load_paper_tables()
    path.write_text("a,b\n1,2\n")
    monkeypatch.setenv("RANDMASK_PAPER_TABLES", str(path))
    with pytest.raises(RandmaskError, match="lacks"):
        load_paper_tables()


def test_constant_model_helper_is_confident():
    model = constant_model("0.7-Shallow").eval()
    with torch.no_grad():
        prob = model(torch.rand(2, 3, 32, 32)).softmax(1)
    assert prob.argmax(1).tolist() == [CONFIDENT_CLASS] * 2 and prob.max() > 0.999
    assert json.dumps(catalog.ModelEntry("k", "0.7-Shallow", "cifar10", "zoo").label)


def test_mask_montage_places_each_channel_in_its_tile():
    keep = torch.rand(5, 4, 4, generator=torch.Generator().manual_seed(3)) > 0.5
    out = mask_views.mask_montage(keep, first=1, count=4, columns=3, factor=2, gap=1)
    assert out.shape == (2 * 8 + 1, 3 * 8 + 2) and out.dtype == np.uint8
    for i, ch in enumerate(range(1, 5)):
        r, c = divmod(i, 3)
        tile = out[r * 9:r * 9 + 8, c * 9:c * 9 + 8]
        expected = images.upscale_nearest(np.where(keep[ch].numpy(), 235, 20), 2)
        assert (tile == expected).all()
    assert (out[8] == 255).all() and (out[9:, 9:] == 255).all()  # gaps and the empty slots stay white
    with pytest.raises(RandmaskError):
        mask_views.mask_montage(keep, first=5)


def test_results_without_paper_are_our_rows_that_no_paper_number_matches():
    def row(source, target, attack, **extra):
        return {"protocol": "transfer", "source": source, "target": target, "attack": attack,
                "metric": "defense_rate", "n": 10, "accuracy": 0.5, "ci_low": 0.2, "ci_high": 0.8, **extra}

    ours = pd.DataFrame([row("DenseNet-121", "0.7-shallow", "FGSM16"),  # in the paper (canonical name differs)
                         row("DenseNet-121", "0.7-Shallow", "CW40(search=10)", paper_attack="CW40"),  # not in table 7
                         row("DenseNet-121", "0.9-Shallow", "FGSM16"),  # target not in table 7
                         {**row("", "0.7-Shallow", ""), "metric": "clean_accuracy"},  # clean rows are not results
                         {**row("DenseNet-121", "0.7-Shallow", "FGSM16"), "protocol": "madry"}])  # other protocol
    extra = comparison.results_without_paper(paper_frame(), ours, 7)
    assert [(r["target"], r["attack"]) for r in extra] == [("0.7-Shallow", "CW40(search=10)"),
                                                           ("0.9-Shallow", "FGSM16")]
    assert comparison.results_without_paper(paper_frame(), None, 7) == []


def test_white_box_rows_of_a_control_are_results_without_paper():
    # Table 4 reports accuracy under attack, not a defense rate: a control's rows must not vanish from the report
    paper = pd.DataFrame([(4, "Normal ResNet-18", "Normal ResNet-18", "FGSM1", "accuracy", 81.2),
                          (4, "Normal ResNet-18", "Normal ResNet-18", None, "clean_accuracy", 95.3)],
                         columns=["table", "source", "target", "attack", "metric", "percent"])
    paper["table"] = paper["table"].astype("Int64")

    def row(model, attack, metric="accuracy"):
        return {"protocol": "whitebox", "source": model, "target": model, "attack": attack, "metric": metric,
                "n": 10, "accuracy": 0.5, "ci_low": 0.2, "ci_high": 0.8}

    ours = pd.DataFrame([row("Normal ResNet-18", "FGSM1"), row("0.7-ShallowDropout", "FGSM1"),
                         row("0.7-ShallowDropout", "", "clean_accuracy")])
    extra = comparison.results_without_paper(paper, ours, 4)
    assert [(r["target"], r["attack"]) for r in extra] == [("0.7-ShallowDropout", "FGSM1")]


# ------------------------------------------------------------------------------- readable tables (issue 18)
def test_rows_without_ours_say_why_with_the_command_that_trains_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("RANDMASK_RUNS", str(settings.PROJECT_ROOT / "runs" / "user"))
    make_results(tmp_path)
    ours, _ = load_results(tmp_path)
    trained = {"Normal ResNet-18", "0.7-Shallow", "0.5-ShallowDC"}
    comp = comparison.compare_with_paper(paper_frame(), ours, 7, trained).set_index(["target", "metric"])
    assert comp.loc[("0.7-Shallow", "defense_rate"), "note"] == ""  # measured
    assert comp.loc[("0.5-ShallowDC", "defense_rate"), "note"] == "not measured here"  # trained, no result row
    assert comp.loc[("0.5-Shallow", "defense_rate"), "note"] == (
        "not trained here: python -m randmask zoo train --only cifar10/0.5-Shallow")  # the zoo plans it
    assert comparison.compare_with_paper(paper_frame(), ours, 7)["note"].tolist()[2] == "not measured here"  # unknown
    gray = comparison.compare_with_paper(paper_frame(), None, 5, trained).set_index("target")["note"]
    assert gray["0.5-Shallow (other init)"] == ('not trained here: python -m randmask train "0.5-Shallow" '
                                               '--preset quick --seed 1 --out runs/user/0.5-Shallow-s1m0')
    assert gray["0.5-ShallowDIF"].endswith("--mask-seed 1 --out runs/user/0.5-Shallow-s0m1")
    assert comparison.train_command("0.9-ShallowEN") == ('python -m randmask train "0.9-ShallowEN" --preset quick '
                                                      '--out runs/user/0.9-ShallowEN')
    assert comparison.train_command("0.3-Deep", "mnist").endswith("--dataset mnist --out runs/user/0.3-Deep-mnist")
    assert comparison.train_command("0.85-ShallowEN") == "python -m randmask zoo train --only cifar10/0.85-ShallowEN"
    assert comparison.train_command("Madry adversarial training") is None
    assert comparison.missing_note("Madry adversarial training", "cifar10", trained) == comparison.NOT_A_NOTATION
    assert trained_model_keys([ModelRef("0.7-Shallow", seed=1), ModelRef("0.7-Shallow", mask_seed=1)]) == {
        "0.7-Shallow@s1m0", "0.7-Shallow@s0m1"}


def test_comparison_tables_are_text_with_a_dash_for_no_number(tmp_path):
    make_results(tmp_path)
    ours, _ = load_results(tmp_path)
    comp = comparison.compare_with_paper(paper_frame(), ours, 7, {"Normal ResNet-18", "0.7-Shallow"})
    wide = tables.comparison_table(comp).set_index("target")
    assert list(wide.columns) == ["here", "FGSM16 · paper", "FGSM16 · ours", "clean · paper", "clean · ours"]
    assert wide.loc["0.7-Shallow"].tolist() == ["measured", "48.6", "55.0", "93.0", "85.0"]
    assert wide.loc["0.5-Shallow"].tolist() == ["not trained here", "30.9", "–", "94.0", "–"]
    assert wide.loc["0.5-ShallowDC"].tolist() == ["not trained here", "20.0", "–", "–", "–"]  # no paper clean
    details = tables.comparison_details(comp)
    assert not details.isna().any().any() and "None" not in details.to_string()
    assert details.set_index("target").loc["0.7-Shallow"].iloc[0]["ours 95% CI"] == "48.0–62.0"
    assert comparison.untrained_targets(comp) == [
        ("0.5-Shallow", "python -m randmask zoo train --only cifar10/0.5-Shallow"),
        ("0.5-ShallowDC", "python -m randmask zoo train --only cifar10/0.5-ShallowDC")]
    no_ours = tables.comparison_table(comparison.compare_with_paper(paper_frame(), None, 7))
    assert not [c for c in no_ours.columns if c.endswith("ours")] and set(no_ours["here"]) == {"not measured here"}
    assert tables.number_text(float("nan")) == tables.number_text(None) == "–"
    assert tables.number_text(64.0, 2) == "64.00"


def test_zero_n_rows_say_there_is_no_estimate(tmp_path):
    rows = pd.DataFrame([{"protocol": "transfer", "source": "DenseNet-121", "target": "0.7-Shallow",
                          "attack": "FGSM16", "metric": "defense_rate", "n": 0, "accuracy": math.nan,
                          "ci_low": math.nan, "ci_high": math.nan}])
    comp = comparison.compare_with_paper(paper_frame(), rows, 7, {"0.7-Shallow"}).set_index(["target", "metric"])
    assert comp.loc[("0.7-Shallow", "defense_rate"), "note"].startswith("no estimate here (n = 0")
    table = tables.transfer_table([
        {"target": "A", "metric": "defense_rate", "n": 0, "accuracy": math.nan, "ci_low": math.nan,
         "ci_high": math.nan},
        {"target": "A", "metric": "clean_accuracy", "n": 10, "accuracy": 0.9, "ci_low": 0.6, "ci_high": 0.98}])
    assert table == [{"target": "A", "defense rate (%)": "–", "95% CI (%)": "–", "n": "0",
                      "clean accuracy (%)": "90.0"}]


def test_transfer_defaults_to_densenet_against_normal_and_the_masked_net():
    def entry(notation, source="zoo", **kw):
        return catalog.ModelEntry(f"{source}:{notation}", notation, "cifar10", source, **kw)

    entries = [entry("Normal ResNet-18"), entry("0.7-Shallow"), entry("0.9-Shallow"), entry("DenseNet-121")]
    assert catalog.default_transfer(entries, ["zoo:Normal ResNet-18", "zoo:0.9-Shallow"]) == (
        "zoo:DenseNet-121", ["zoo:Normal ResNet-18", "zoo:0.7-Shallow", "zoo:0.9-Shallow"])
    untrained_densenet = [*entries[:3], entry("DenseNet-121", "untrained")]
    source, targets = catalog.default_transfer(untrained_densenet, ["zoo:Normal ResNet-18"])
    assert source == "zoo:Normal ResNet-18" and source not in targets and targets == ["zoo:0.7-Shallow"]
    assert catalog.default_transfer([], []) == (None, [])


def test_trained_summary_names_the_data_set_and_the_whole_zoo():
    def entry(i, dataset, source="zoo"):
        return catalog.ModelEntry(f"{source}:{dataset}/{i}", "0.7-Shallow", dataset, source)

    cat = catalog.Catalog([entry(i, "cifar10") for i in range(3)] + [entry(i, "mnist") for i in range(2)]
                          + [entry(9, "cifar10", "untrained")])
    assert catalog.trained_summary(cat, "cifar10") == (
        "3 trained CIFAR-10 models to pick from; 5 over CIFAR-10 and MNIST (the zoo, as in the README). "
        "Plus 1 UNTRAINED stand-in for planned models not trained yet.")
    cat.entries.append(entry(7, "mnist", "user"))
    assert catalog.trained_summary(cat, "mnist").startswith("3 trained MNIST models to pick from; 6 over CIFAR-10 "
                                                            "and MNIST (5 in the zoo, 1 yours)")


def test_paper_shuffle_table_prints_two_decimals():
    paper = pd.DataFrame({"table": pd.array([3, 3], dtype="Int64"), "source": [None, None],
                          "target": ["0.7-Shallow", "0.7-Shallow"], "attack": ["shuffle 2x2", "shuffle 4x4"],
                          "metric": ["accuracy"] * 2, "percent": [97.36, 64.0]})
    assert tables.paper_shuffle_table(paper).to_dict("records") == [
        {"model": "0.7-Shallow", "2×2 (%)": "97.36", "4×4 (%)": "64.00"}]


def test_comparison_columns_put_clean_and_ours_first_and_fit_a_width(tmp_path):
    make_results(tmp_path)
    ours, _ = load_results(tmp_path)
    comp = comparison.compare_with_paper(paper_frame(), ours, 7, {"Normal ResNet-18", "0.7-Shallow"})
    wide = tables.comparison_table(comp)
    assert tables.comparison_groups(wide) == ["clean", "FGSM16"]
    wide = wide.assign(**{"FGSM8 · paper": "1.0", "PGD16 · paper": "2.0"})  # columns the paper alone has
    assert tables.comparison_groups(wide) == ["clean", "FGSM16", "FGSM8", "PGD16"]
    assert tables.group_columns(wide, ["FGSM16", "FGSM8"]) == ["FGSM16 · paper", "FGSM16 · ours", "FGSM8 · paper"]
    width = lambda columns: sum(tables.column_width(wide[c], c, **tables.TIGHT) for c in columns)  # noqa: E731
    two = width(["target", *tables.group_columns(wide, ["clean", "FGSM16"])])
    assert tables.groups_that_fit(wide, two) == ["clean", "FGSM16"]
    assert tables.groups_that_fit(wide, two - 1) == ["clean"]
    assert tables.groups_that_fit(wide, 10) == ["clean"]  # never nothing
    assert tables.status_caption(wide) == "2 of 4 targets measured; not trained here: 0.5-Shallow, 0.5-ShallowDC."
    assert tables.status_caption(wide, listed=1) == ("2 of 4 targets measured; not trained here: 0.5-Shallow and 1 "
                                                     "more.")


def test_fold_columns_says_repeated_and_empty_columns_once():
    frame = pd.DataFrame({"kind": ["SM", "SM"], "layer": ["a", "b"], "note": ["–", "–"], "ratio": [0.5, 0.7]})
    folded, notes = tables.fold_columns(frame, ["kind", "ratio"])
    assert list(folded.columns) == ["layer", "ratio"] and notes == ["kind: SM", "note: none"]  # ratio differs
    assert tables.fold_columns(frame.iloc[:0], ["kind"])[1] == []  # no rows: nothing to say
    assert tables.columns_that_fit(frame, 1) == ["kind"]
    assert tables.columns_that_fit(frame, 10_000) == list(frame.columns)


def test_close_figure7_points_label_on_opposite_sides():
    from randmask.views.robustness_view import label_positions

    # the paper's Table 7 FGSM16 points: 0.75 (91.5, 59.2) sits next to 0.8 (91.2, 63.0)
    x = [95.3, 94.0, 93.4, 91.8, 91.5, 91.2, 90.2, 87.7, 84.5]
    y = [14.9, 23.3, 30.9, 48.6, 59.2, 63.0, 65.3, 79.9, 87.4]
    positions = label_positions(x, y)
    assert positions[4] == "bottom left" and positions.count("bottom left") == 1
    assert label_positions([1.0, 1.0], [5.0, 5.0]) == ["top right", "bottom left"]
    assert label_positions([1.0, 9.0], [5.0, 5.0]) == ["top right", "top right"]  # far apart: no need
    # beside our points the axes span 70-96: then 0.85 (90.2, 65.3) and 0.8 (91.2, 63.0) are close as well
    wide = label_positions(x, y, spans=(26.0, 75.0))
    assert wide[6] == "top right" and wide[5] == "bottom left" and wide[4] == "top right"
    assert label_positions([], []) == []


def test_equal_drop_ratios_get_a_sentence_not_a_chart():
    stats = mask_views.mask_statistics(build_model("0.9-Shallow", width=4))
    text = mask_views.uniform_drop_text(stats)
    assert text.startswith("All 10 masked layers drop the nominal 0.9") and "between 0.8984 and 0.9004" in text
    assert mask_views.uniform_drop_text(mask_views.mask_statistics(build_model("0.5-Shallow, 0.3-Deep", width=4))) \
        is None


def test_gallery_counts_cw_images_one_by_one():
    torch.manual_seed(0)
    normal = build_model("Normal ResNet-18", width=4).eval()
    masked = build_model("0.9-Shallow", width=4).eval()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5)).mul(255).round().div(255)
    seen = []
    build_gallery(normal, masked, attack_notation("CW", 16, kappa=0, cw_search=1, cw_steps=10), x,
                  torch.tensor([0, 1, 2]), names=("N", "M"), progress=lambda done, total: seen.append((done, total)))
    assert seen == [(k, 6) for k in range(1, 7)]  # each CW image as it finishes, both sources
