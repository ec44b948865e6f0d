"""What the pages used to compute themselves, now in randmask's app-facing modules: each function against a
hand-computed value or a brute-force reference."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_app_support import CONFIDENT_CLASS, TINY_WIDTH, constant_model

from randmask.core import device
from randmask.core.errors import RandmaskError
from randmask.core.masks import make_mask
from randmask.core.models import build_model
from randmask.experiments.corruptions import noise, patch_shuffle, shuffle
from randmask.experiments.protocols import transfer
from randmask.views import (
    catalog,
    gallery,
    images,
    job_progress,
    jobs,
    mask_views,
    protocol_views,
    robustness_view,
    tables,
    train_view,
)
from randmask.views.catalog import ModelEntry


def entry(key: str, notation: str, source: str = "zoo", **fields) -> ModelEntry:
    return ModelEntry(key=key, notation=notation, dataset="cifar10", source=source, **fields)


NORMAL = entry("zoo:normal", "Normal ResNet-18", clean_accuracy=0.9)
SHALLOW9 = entry("zoo:s9", "0.9-Shallow", clean_accuracy=0.8)
SHALLOW7 = entry("zoo:s7", "0.7-Shallow")
STAND_IN = entry("untrained:s9", "0.9-Shallow", source="untrained")
DENSENET = entry("zoo:dense", "DenseNet-121")
ENTRIES = [NORMAL, SHALLOW9, SHALLOW7, STAND_IN, DENSENET]


def curve_row(target: str, accuracy: float, low: float, high: float, **fields) -> dict:
    return {"target": target, "accuracy": accuracy, "ci_low": low, "ci_high": high, "n": 50, **fields}


# ------------------------------------------------------------------------------------------------ tables
def test_column_width_is_seven_pixels_a_character_plus_padding():
    assert tables.column_width(["ab", "abcdef", 123]) == 7 * 6 + 26
    assert tables.column_width(["ab"], header="a longer header") == 7 * 15 + 26
    assert tables.column_width([]) == 26
    rows = [{"model": "0.7-Shallow", "status": "trained"}, {"model": "Normal ResNet-18", "status": "-"}]
    widths = tables.column_widths(rows, ["model", "status"])
    assert widths == {"model": 7 * 16 + 26, "status": 7 * 7 + 26}
    assert tables.column_widths(pd.DataFrame(rows), ["model", "status"]) == widths  # a frame measures the same


def test_ci_text_is_percent_with_one_decimal():
    assert tables.ci_text(0.1234, 0.4567) == "12.3–45.7"
    assert tables.ci_text(0.0, 1.0) == "0.0–100.0"


# ------------------------------------------------------------------------------------------------ catalog
def test_picks_resolve_to_known_keys_in_the_stored_order():
    assert catalog.resolve_picks(ENTRIES, None) == catalog.default_picks(ENTRIES) == ["zoo:normal", "zoo:s9",
                                                                                      "zoo:s7"]
    assert catalog.resolve_picks(ENTRIES, ["zoo:s7", "user:gone", "zoo:normal"]) == ["zoo:s7", "zoo:normal"]
    assert catalog.resolve_picks(ENTRIES, []) == []  # picked nothing on purpose: no defaults come back
    assert catalog.select(ENTRIES, ["zoo:dense", "nope", "zoo:s9"]) == [DENSENET, SHALLOW9]
    assert list(catalog.keyed(ENTRIES)) == [e.key for e in ENTRIES]
    assert catalog.picker_labels([NORMAL, STAND_IN]) == {"zoo:normal": "Normal ResNet-18 · 90.0%",
                                                         "untrained:s9": "0.9-Shallow (UNTRAINED)"}
    assert catalog.untrained_names(ENTRIES) == ["0.9-Shallow"]


def test_masked_and_unmasked_choices():
    normals, maskeds = catalog.split_masked(ENTRIES)
    assert normals == [NORMAL, DENSENET] and maskeds == [SHALLOW9, SHALLOW7, STAND_IN]
    assert catalog.masked_choice(ENTRIES, [NORMAL, SHALLOW7, SHALLOW9]) == (maskeds, "zoo:s7")
    assert catalog.masked_choice(ENTRIES, [NORMAL]) == (maskeds, None)


def test_gallery_pair_prefers_picks_then_defaults_then_the_catalog():
    assert catalog.gallery_pair(ENTRIES, []) == ("zoo:normal", "zoo:s9")  # the defaults: trained copies first
    assert catalog.gallery_pair(ENTRIES, ["untrained:s9"]) == ("zoo:normal", "untrained:s9")
    # a pick of another notation is not the gallery's pair: it keeps Normal ResNet-18 and 0.9-Shallow
    assert catalog.gallery_pair(ENTRIES, ["zoo:dense", "zoo:s7"]) == ("zoo:normal", "zoo:s9")
    assert catalog.gallery_pair([DENSENET, SHALLOW7], []) == (None, None)


def test_zoo_trained_count_and_transfer_entries():
    rows = [{"status": "trained"}, {"status": "not trained yet"}, {"status": "trained (older recipe: 15 epochs)"},
            {"status": "yours: run-2"}]
    assert catalog.zoo_trained_count(rows) == 3 and catalog.zoo_trained_count([]) == 0
    assert catalog.transfer_entries(DENSENET, ["zoo:s9", "zoo:dense", "zoo:normal"], ENTRIES) == [
        DENSENET, SHALLOW9, NORMAL]  # the source once, first


# ------------------------------------------------------------------------------------------------ images, device
def test_float_batch_divides_by_255_and_takes_the_first_n():
    x = np.arange(2 * 3 * 2 * 2, dtype=np.uint8).reshape(2, 3, 2, 2) * 10
    y = np.array([4, 7], dtype=np.uint8)
    fx, fy = images.float_batch(x, y)
    assert fx.dtype == torch.float32 and fy.dtype == torch.int64 and fy.tolist() == [4, 7]
    assert fx[1, 2, 1, 1].item() == pytest.approx(230 / 255)
    fx, fy = images.float_batch(x, y, 1)
    assert fx.shape == (1, 3, 2, 2) and fy.tolist() == [4]


def test_device_text():
    assert device.device_text(torch.device("cpu")) == "CPU"


def test_cpu_model_names_family_and_model_from_the_first_processor(tmp_path):
    import os

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n"
                    "model name\t: AMD EPYC\n\nprocessor\t: 1\ncpu family\t: 25\nmodel\t\t: 17\n")
    assert device.cpu_model(info) == f"AMD EPYC (family 26, model 2), {os.cpu_count()} CPUs"
    info.write_text("processor\t: 0\nmodel name\t: Some ARM core\n")  # no family/model lines
    assert device.cpu_model(info) == f"Some ARM core, {os.cpu_count()} CPUs"
    assert device.cpu_model(tmp_path / "missing").endswith(f", {os.cpu_count()} CPUs")  # not Linux: no crash
    assert device.cpu_fields(tmp_path / "missing") == {}


# ------------------------------------------------------------------------------------------------ home
def test_stem_tiles_darken_exactly_the_dropped_positions():
    image = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1))
    tiles = mask_views.stem_tiles(image, 0.5, seed=3, channels=4, shown=2, factor=2)
    masks = {kind: make_mask((4, 8, 8), 0.5, kind, 3) for kind in ("random", "SM", "DC")}
    keeps = [masks["random"][0], masks["random"][1], masks["SM"][0], masks["DC"].any(0)]
    dead = sum(not bool(masks["DC"][c].any()) for c in range(4))
    assert [caption for _, caption in tiles] == ["Random Mask, channel 1", "Random Mask, channel 2",
                                                 "SM: one pattern, every channel",
                                                 f"DC: {dead} of 4 channels dropped whole, the rest see everything"]
    assert dead == 2  # round(0.5 · 4)
    pixels = np.round(image.numpy().transpose(1, 2, 0) * 255)
    for (tile, _), keep in zip(tiles, keeps, strict=True):
        assert tile.shape == (16, 16, 3)
        for r, c in [(0, 0), (3, 5), (7, 7), (4, 1)]:
            expected = pixels[r, c] if keep[r, c] else np.round(pixels[r, c] * 0.15)
            assert tile[2 * r + 1, 2 * c].tolist() == expected.tolist()


# ------------------------------------------------------------------------------------------------ noise
def test_sigma_levels_of_a_range():
    assert protocol_views.sigma_levels(0, 8) == [0, 1, 2, 4, 8]
    assert protocol_views.sigma_levels(3, 8) == [3, 4, 8]  # both ends, even off the paper's levels
    assert protocol_views.sigma_levels(30, 64) == [30, 32, 40, 48, 56, 64]
    assert protocol_views.sigma_levels(5, 5) == [5]
    assert protocol_views.levels_caption([0, 1.5, 8]).startswith("σ levels: 0, 1.5, 8 (the paper's")


def test_shown_levels_spread_from_first_to_last():
    assert protocol_views.shown_levels([0, 1, 2]) == [0, 1, 2]
    levels = list(range(16))
    assert protocol_views.shown_levels(levels) == [0, 3, 6, 9, 12, 15]  # round(i · 15 / 5)
    assert protocol_views.shown_levels(list(range(11)), most=3) == [0, 5, 10]


def test_noisy_versions_stay_within_two_sigma_and_follow_the_seed():
    image = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    shown = protocol_views.noisy_versions(image, [0, 4, 16], seed=5)
    assert [caption for caption, _ in shown] == ["σ = 0/255", "σ = 4/255", "σ = 16/255"]
    stored = image[0].mul(255).round()
    assert torch.equal(shown[0][1].mul(255).round(), stored)  # σ 0: the image as stored
    for (_, noisy), sigma in zip(shown[1:], (4, 16), strict=True):
        delta = (noisy.mul(255).round() - stored).abs()
        assert noisy.shape == (3, 8, 8) and delta.max() <= 2 * sigma + 1 and delta.max() > 0
        assert torch.allclose(noisy * 255, noisy.mul(255).round(), atol=1e-3)  # 8-bit levels
    again = protocol_views.noisy_versions(image, [16], seed=5)[0][1]
    other = protocol_views.noisy_versions(image, [16], seed=6)[0][1]
    assert torch.equal(again, shown[2][1]) and not torch.equal(other, shown[2][1])


def test_noise_curves_are_the_protocol_on_the_first_n_at_positive_sigmas():
    model = build_model("Normal ResNet-18", width=4).eval()
    x = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.arange(12) % 10
    rows = protocol_views.noise_curves({"m": model}, x, y, [0, 2, 8], n=5, seed=3, dataset="cifar10")
    assert rows == noise({"m": model}, x[:5], y[:5], sigmas=[2, 8], seed=3, dataset="cifar10")
    assert sorted(r["sigma"] for r in rows) == [0, 2, 8] and all(r["n"] == 5 for r in rows)


def test_curve_series_sorts_by_sigma_and_measures_the_error_bars():
    rows = [curve_row("a", 0.5, 0.4, 0.7, sigma=8), curve_row("b", 0.2, 0.1, 0.3, sigma=0),
            curve_row("a", 0.9, 0.8, 0.95, sigma=0)]
    series = protocol_views.curve_series(rows)
    assert [s["name"] for s in series] == ["a", "b"]
    assert series[0]["x"] == [0, 8] and series[0]["y"] == pytest.approx([90.0, 50.0])
    assert series[0]["plus"] == pytest.approx([5.0, 20.0]) and series[0]["minus"] == pytest.approx([10.0, 10.0])
    table = protocol_views.noise_table(rows)
    assert table[0] == {"model": "a", "σ (/255)": 8, "accuracy (%)": 50.0, "95% CI (%)": "40.0–70.0", "n": 50}


# ------------------------------------------------------------------------------------------------ shuffle
def test_grid_defaults():
    assert protocol_views.grid_defaults([2, 4, 8, 16]) == (4, [2, 4, 8])
    assert protocol_views.grid_defaults([2, 4, 7, 14]) == (4, [2, 4])
    assert protocol_views.grid_defaults([3, 9]) == (3, [])


def test_shuffled_pair_is_the_seeded_patch_shuffle_of_one_image():
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    image, shuffled = protocol_views.shuffled_pair(x, 1, 4, seed=2)
    assert torch.equal(image, x[1:2])
    assert torch.equal(shuffled, patch_shuffle(x[1:2], 4, torch.Generator().manual_seed(2)))
    assert not torch.equal(shuffled, image)
    assert torch.equal(shuffled.flatten().sort().values, image.flatten().sort().values)  # same pixels, moved


def test_prediction_table_puts_original_and_shuffled_side_by_side():
    rows = [{"model": "a", "image": 0, "label": "cat", "confidence": 0.914},
            {"model": "a", "image": 1, "label": "dog", "confidence": 0.5},
            {"model": "b", "image": 0, "label": "ship", "confidence": 0.996},
            {"model": "b", "image": 1, "label": "ship", "confidence": 0.004}]
    assert protocol_views.prediction_table(rows, 8) == [
        {"model": "a", "original": "cat (91%)", "shuffled 8×8": "dog (50%)"},
        {"model": "b", "original": "ship (100%)", "shuffled 8×8": "ship (0%)"}]


def test_shuffle_predictions_classify_both_images():
    model = build_model("Normal ResNet-18", width=4).eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    image, shuffled = protocol_views.shuffled_pair(x, 0, 4, seed=0)
    table = protocol_views.shuffle_predictions({"m": model}, image, shuffled, 4, "cifar10")
    rows = catalog.predictions({"m": model}, torch.cat([image, shuffled]))
    assert table == protocol_views.prediction_table(rows, 4) and len(table) == 1


def test_shuffle_batch_scans_the_first_pool_images_with_grids_ascending():
    model = constant_model("0.9-Shallow")  # always CONFIDENT_CLASS: exactly those images qualify
    x = torch.rand(10, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([CONFIDENT_CLASS, 0, CONFIDENT_CLASS, 1, 2, CONFIDENT_CLASS, 3, 4, 5, CONFIDENT_CLASS])
    rows = protocol_views.shuffle_batch({"m": model}, x, y, pool=6, ks=[8, 2], min_confidence=0.9, seed=1,
                                        dataset="cifar10")
    assert [r["k"] for r in rows] == [2, 8] and all(r["n"] == 3 for r in rows)  # image 9 lies beyond the pool
    assert rows == shuffle({"m": model}, x[:6], y[:6], ks=[2, 8], n=None, min_confidence=0.9, seed=1,
                           dataset="cifar10")


def test_shuffle_series_and_table():
    rows = [curve_row("a", 1.0, 0.9, 1.0, k=2), curve_row("a", 0.5, 0.25, 0.75, k=8),
            curve_row("b", 0.0, 0.0, 0.1, k=2)]
    series = protocol_views.shuffle_series(rows)
    assert [(s["name"], s["x"]) for s in series] == [("a", ["2×2", "8×8"]), ("b", ["2×2"])]
    assert series[0]["y"] == pytest.approx([100.0, 50.0]) and series[0]["minus"] == pytest.approx([10.0, 25.0])
    assert series[1]["plus"] == pytest.approx([10.0])
    assert protocol_views.shuffle_table(rows)[1] == {"model": "a", "grid": "8×8", "accuracy (%)": 50.0,
                                                     "95% CI (%)": "25.0–75.0", "n": 50}
    assert protocol_views.kept_images(rows) == 50 and protocol_views.kept_images([]) == 0


# ------------------------------------------------------------------------------------------------ masks page
def _sees_brute_force(keep: torch.Tensor) -> torch.Tensor:
    """H×W bools: a pixel is seen when a kept neuron of any channel has it in its 3×3 window (zero padding)."""
    c, h, w = keep.shape
    seen = torch.zeros(h, w, dtype=torch.bool)
    for ch in range(c):
        for r in range(h):
            for col in range(w):
                if keep[ch, r, col]:
                    seen[max(0, r - 1):r + 2, max(0, col - 1):col + 2] = True
    return seen


def test_layer_picker_labels_and_rows_follow_the_statistics():
    stats = mask_views.mask_statistics(build_model("0.9-Shallow", width=4))
    labels = mask_views.layer_labels(stats)
    assert list(labels) == [r["layer"] for r in stats] == list(mask_views.by_layer(stats))
    assert labels["body.mask1"] == "block 0 · body.mask1 · 4×32×32"
    assert mask_views.by_layer(stats)["body.layer2.0.mask1"]["shape"] == "8×16×16"


def test_layer_caption_montage_caption_and_channel_map():
    row = {"ratio": 0.9, "measured_drop_ratio": 0.900390625, "dropped": 3688, "neurons": 4096,
           "channel_drop_min": 0.9, "channel_drop_max": 0.9004, "dead_channels": 0}
    assert mask_views.layer_caption(row) == ("Nominal drop ratio 0.9, measured 0.9004 (3,688 of 4,096 neurons); "
                                             "per channel between 0.900 and 0.900; 0 channel(s) dropped entirely.")
    keep = make_mask((10, 4, 4), 0.5, "random", 0)
    assert mask_views.montage_caption(keep, 5).startswith("channels 5–9, left to right")  # only 10 channels
    assert mask_views.montage_caption(make_mask((20, 4, 4), 0.5, "random", 0), 0).startswith("channels 0–15,")
    assert mask_views.channel_map(keep, 3).tolist() == [[int(v) for v in r] for r in keep[3].tolist()]


def test_statistics_table_and_drop_ratio_bars():
    stats = [{"layer": f"l{i}", "block": block, "kind": "random", "shape": "1×2×2", "ratio": 0.5,
              "measured_drop_ratio": 0.1 * i, "dropped": i, "neurons": 4, "dead_channels": 0,
              "positions_dropped_in_all_channels": 0.25} for i, block in enumerate([0, 1, 1, 6])]
    table = mask_views.statistics_table(stats)
    assert table[2] == {"layer": "l2", "block": 1, "kind": "random", "shape": "1×2×2", "ratio": 0.5,
                        "measured": pytest.approx(0.2), "dropped": 2, "neurons": 4, "dead channels": 0,
                        "kept by no channel": 0.25}
    bars, nominal = mask_views.drop_ratio_bars(stats)
    assert [(b["name"], b["x"]) for b in bars] == [("block 0", ["l0"]), ("block 1", ["l1", "l2"]),
                                                    ("block 6", ["l3"])]
    assert bars[1]["y"] == pytest.approx([0.1, 0.2])
    assert bars[2]["color"] == mask_views.BLOCK_COLORS[1]  # colours cycle past block 4
    assert nominal == {"x": ["l0", "l1", "l2", "l3"], "y": [0.5] * 4}


def test_kind_defaults_panels_and_caption():
    assert mask_views.kind_defaults(None, None, 8) == ((8, 32, 32), 0.7)
    keep = make_mask((4, 16, 16), 0.3, "random", 0)
    assert mask_views.kind_defaults(keep, {"ratio": 0.3}, 8) == ((4, 16, 16), 0.3)
    shown, panels = mask_views.kind_panels((6, 8, 8), 0.5, 2, channel=10)
    assert shown == 5 and [p["kind"] for p in panels] == ["random", "SM", "DC"]
    assert panels[1]["title"] == "SM (same mask, all channels)"
    for panel in panels:
        mask = make_mask((6, 8, 8), 0.5, panel["kind"], 2)
        assert torch.equal(panel["channel"], mask[5].int())
        assert torch.allclose(panel["frequency"], (~mask).float().mean(0))
        assert panel["sees"] == f"{100 * _sees_brute_force(mask).float().mean().item():.1f}%"
    assert all(p["sees"] is None for p in mask_views.kind_panels((4, 8, 6), 0.5, 0, 0)[1])  # not square
    assert all(p["sees"] is None for p in mask_views.kind_panels((4, 4, 4), 0.5, 0, 0)[1])  # too small
    assert "9 × (1 − ratio) = 45% of the image" in mask_views.kinds_caption((4, 8, 8), 0.95)
    assert "= 100% of" in mask_views.kinds_caption((4, 8, 8), 0.7)  # 9 × 0.3 > 1: capped
    assert mask_views.kinds_caption((4, 8, 6), 0.5).startswith("Layer shape 4×8×6, drop ratio 0.5.")


def test_model_stem_and_stand_in_stem():
    model = build_model("0.7-Shallow", width=4)
    keep, text = mask_views.model_stem(model)
    assert torch.equal(keep, model.body.mask1.mask.cpu())
    assert text == "the model's stem mask (body.mask1, (4, 32, 32))"
    assert mask_views.model_stem(build_model("0.9-B12", width=4)) is None  # blocks 1-2 masked, not the stem
    keep, text = mask_views.stand_in_stem("SM", 0.5, 6, "mnist")
    assert torch.equal(keep, make_mask((6, 28, 28), 0.5, "SM", 0))
    assert text == "a SM mask of ratio 0.5 on a 6-channel stem (this model's stem is unmasked)"
    assert mask_views.stand_in_stem("DC", 0.5, 6, "cifar10")[0].shape == (6, 32, 32)


def test_filter_view_matches_brute_force_coverage():
    keep = make_mask((3, 6, 6), 0.7, "random", 4)
    image = torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(0))
    view = mask_views.filter_view(keep, image, channel=1, row=0, col=5)
    per_channel = [_sees_brute_force(keep[c:c + 1]) for c in range(3)]
    assert view["channel_sees"] == f"{100 * per_channel[1].float().mean().item():.1f}% of pixels"
    assert view["layer_sees"] == f"{100 * _sees_brute_force(keep).float().mean().item():.1f}% of pixels"
    assert view["bound"] == f"{100 * min(1.0, 9 * keep.float().mean().item()):.0f}%"
    assert torch.equal(view["channels_seeing"], torch.stack(per_channel).sum(0))
    assert view["field_rows"] == [0, 1, 2, 3, 4] and view["field_cols"] == [1, 2, 3, 4, 5]  # 9×9, cut at the border
    assert torch.equal(view["field"], mask_views.receptive_field(keep, 0, 5)[0:5, 1:6])
    assert torch.equal(view["window"], mask_views.filter_window(keep, 0, 5).sum(0))
    assert view["seen"].shape == (48, 48, 3)
    pixels = np.round(image.numpy().transpose(1, 2, 0) * 255)
    for r, c in [(0, 0), (2, 3), (5, 5)]:
        expected = pixels[r, c] if per_channel[1][r, c] else np.round(pixels[r, c] * 0.12)
        assert view["seen"][8 * r, 8 * c].tolist() == expected.tolist()


# ------------------------------------------------------------------------------------------------ gallery
def test_choose_images_from_start_and_only_correct_ones():
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    c = CONFIDENT_CLASS
    y = torch.tensor([c, 1, c, c, 0, c, 2, c])
    models = [constant_model("0.9-Shallow"), constant_model("0.7-Shallow")]  # both always say CONFIDENT_CLASS
    assert gallery.choose_images(models, x, y, 6, 4, only_correct=False) == [6, 7]  # stops at the end
    assert gallery.choose_images(models, x, y, 1, 3, only_correct=True) == [2, 3, 5]
    assert gallery.choose_images(models, x, y, 5, 8, only_correct=True) == [5, 7]
    with pytest.raises(RandmaskError, match="untick the box"):
        gallery.choose_images(models, x[:2], torch.tensor([c + 1, c + 2]), 0, 2, only_correct=True)


def test_gallery_for_attacks_the_chosen_images_of_both_networks():
    normal = build_model("Normal ResNet-18", width=TINY_WIDTH).eval()
    masked = build_model("0.9-Shallow", width=TINY_WIDTH).eval()
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(5)).mul(255).round().div(255)
    y = torch.arange(5)
    built = gallery.gallery_for({"N": normal, "M": masked}, "FGSM8", x, y, [4, 1])
    reference = gallery.build_gallery(normal, masked, "FGSM8", x[[4, 1]], y[[4, 1]], names=("N", "M"),
                                      indices=[4, 1])
    assert built.indices == [4, 1] and built.names == ("N", "M") and built.labels.tolist() == [4, 1]
    assert torch.equal(built.clean, x[[4, 1]])
    assert all(torch.equal(built.adv[k], reference.adv[k]) for k in ("N", "M"))
    with pytest.raises(RandmaskError):
        gallery.gallery_for({"N": normal}, "FGSM8", x, y, [0])


def test_perturbation_legend_runs_from_blue_through_white_to_red():
    legend = gallery.perturbation_legend(8.0)
    assert legend.shape == (14, 256, 3) and legend.dtype == np.uint8
    assert legend[0, 0].tolist() == [33, 102, 172] and legend[13, -1].tolist() == [178, 24, 43]
    assert (legend[:, 127].astype(int) - 247).__abs__().max() <= 2  # the middle is near white
    assert (legend == legend[0]).all()  # every row the same


def _hand_gallery() -> gallery.Gallery:
    clean = torch.zeros(2, 3, 2, 2)
    adv_n, adv_m = clean.clone(), clean.clone()
    adv_n[0, :, 0, 0] = 8 / 255
    adv_m[1, :, 1, 1] = 4 / 255
    probs = torch.tensor([[0.0, 0.0, 0.0, 0.9, 0.1, 0, 0, 0, 0, 0], [0.6, 0.4, 0, 0, 0, 0, 0, 0, 0, 0]])
    preds = {column: {"N": probs, "M": probs.flip(0)} for column in ("clean", "N", "M")}
    return gallery.Gallery("FGSM8", ("N", "M"), [7, 9], torch.tensor([3, 8]), clean, {"N": adv_n, "M": adv_m},
                           preds, {"N": torch.tensor([8.0, 0.0]), "M": torch.tensor([0.0, 4.0])}, "cifar10", 8.0)


def test_display_rows_caption_every_image_and_colour_both_perturbations():
    built = _hand_gallery()
    assert gallery.column_titles(built) == ["original", "adversarial vs N", "adversarial vs M",
                                            "perturbation vs N", "perturbation vs M"]
    rows = gallery.display_rows(built, factor=3)
    assert len(rows) == 2
    first = rows[0]
    assert [caption for _, caption in first["images"]] == [
        "#7, true: cat  \nN: cat 90%  \nM: airplane 60%", "N: cat 90%  \nM: airplane 60%",
        "N: cat 90%  \nM: airplane 60%"]
    assert rows[1]["images"][0][1].startswith("#9, true: ship  \nN: airplane 60%")
    assert torch.equal(first["images"][0][0], built.clean[0])
    assert torch.equal(first["images"][1][0], built.adv["N"][0]) and torch.equal(first["images"][2][0], built.adv["M"][0])
    (tile_n, text_n), (tile_m, text_m) = first["perturbations"]
    assert (text_n, text_m) == ("l-inf 8/255", "l-inf 0/255")
    assert tile_n.shape == (6, 6, 3)
    assert tile_n[0, 0].tolist() == [178, 24, 43]  # +8/255 on every channel is the top of the ±8 scale: red
    assert tile_n[5, 5].tolist() == [247, 247, 247] == tile_m[0, 0].tolist()  # no change: white
    # the second image against M: its own change, on the gallery's ±8 scale (not its own 4)
    expected, _ = images.perturbation_image(built.adv["M"][1], built.clean[1], 8.0)
    assert rows[1]["perturbations"][1][0][3, 3].tolist() == expected[1, 1].tolist() != [178, 24, 43]


# ------------------------------------------------------------------------------------------------ robustness
def _comparison(ours_in: str | None) -> pd.DataFrame:
    """A compare_with_paper-like frame: two targets × clean / FGSM16 / PGD16, ours only in `ours_in`."""
    rows = []
    for target, base in (("Normal ResNet-18", 10.0), ("0.7-Shallow", 40.0)):
        for attack, metric in (("", "clean_accuracy"), ("FGSM16", "defense_rate"), ("PGD16", "defense_rate")):
            column = attack or "clean"
            mine = base + 5 if column == ours_in else None
            rows.append({"target": target, "attack": attack, "metric": metric, "paper": base,
                         "ours": mine, "ours_low": None if mine is None else mine - 2,
                         "ours_high": None if mine is None else mine + 3})
    return pd.DataFrame(rows).astype({"ours": float, "ours_low": float, "ours_high": float})


def test_comparison_words_columns_and_commands():
    comp = _comparison("PGD16")
    assert robustness_view.metric_names(comp) == "clean accuracy, defense rate"
    assert robustness_view.has_ours(comp) and not robustness_view.has_ours(_comparison(None))
    assert robustness_view.chart_columns(comp) == (["clean", "FGSM16", "PGD16"], 2)  # opens where ours are
    assert robustness_view.chart_columns(_comparison("clean"))[1] == 0
    assert robustness_view.chart_columns(_comparison(None)) == (["clean", "FGSM16", "PGD16"], 0)
    assert robustness_view.train_commands([("a", "python -m randmask train a"), ("b", "train b")]) == (
        "python -m randmask train a\ntrain b")
    assert "column" not in comp.columns  # the page's frame is left as it was


def test_chart_bars_carry_our_intervals_only_where_we_have_numbers():
    comp = _comparison("PGD16")
    bars = robustness_view.chart_bars(comp, "PGD16")
    assert bars["target"].tolist() == ["Normal ResNet-18", "0.7-Shallow"] and bars["paper"].tolist() == [10.0, 40.0]
    assert bars["ours"].tolist() == [15.0, 45.0]
    assert bars["plus"].tolist() == [3.0, 3.0] and bars["minus"].tolist() == [2.0, 2.0]
    fgsm = robustness_view.chart_bars(comp, "FGSM16")
    assert fgsm["ours"] is None and fgsm["plus"] is None and fgsm["paper"].tolist() == [10.0, 40.0]


def test_option_index_and_tradeoff_series():
    assert robustness_view.option_index(["FGSM8", "FGSM16"], "FGSM16") == 1
    assert robustness_view.option_index(["PGD16"], "FGSM16") == 0
    points = pd.DataFrame([
        {"origin": "paper", "ratio": 0.0, "clean_accuracy": 95.0, "defense_rate": 10.0},
        {"origin": "paper", "ratio": 0.7, "clean_accuracy": 90.0, "defense_rate": 50.0},
        {"origin": "ours", "ratio": 0.5, "clean_accuracy": 88.0, "defense_rate": 40.0, "clean_low": 87.0,
         "clean_high": 88.5, "defense_low": 35.0, "defense_high": 46.0}])
    series = robustness_view.tradeoff_series(points)
    assert series["paper"]["text"] == ["0", "0.7"] and series["paper"]["x"].tolist() == [95.0, 90.0]
    ours = series["ours"]
    assert ours["text"] == ["0.5"] and ours["y"].tolist() == [40.0]
    assert (ours["x_plus"].item(), ours["x_minus"].item(), ours["y_plus"].item(), ours["y_minus"].item()) == (
        0.5, 1.0, 6.0, 5.0)
    assert robustness_view.tradeoff_series(points[points["origin"] == "paper"])["ours"] is None


def test_run_transfer_attacks_from_the_first_model_to_the_picked_targets():
    source = build_model("Normal ResNet-18", width=TINY_WIDTH).eval()
    masked = build_model("0.7-Shallow", width=TINY_WIDTH).eval()
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(3)).mul(255).round().div(255)
    with torch.no_grad():
        y = source(x).argmax(1)  # every image is one the source classifies correctly
    entries = [NORMAL, SHALLOW7]
    models = {"Normal ResNet-18": source, "0.7-Shallow": masked}
    rows = robustness_view.run_transfer(models, entries, ["zoo:s7"], "FGSM8", x, y, n=4, dataset="cifar10")
    expected = transfer(source, {"0.7-Shallow": masked}, ["FGSM8"], x, y, source_name="Normal ResNet-18", n=4,
                        n_cw=4, dataset="cifar10")
    assert rows == expected
    assert {r["target"] for r in rows if r["metric"] == "defense_rate"} == {"0.7-Shallow"}
    both = robustness_view.run_transfer(models, entries, ["zoo:s7", "zoo:normal"], "FGSM8", x, y, n=4,
                                        dataset="cifar10")
    assert {r["target"] for r in both if r["metric"] == "defense_rate"} == {"Normal ResNet-18", "0.7-Shallow"}


def test_transfer_summary():
    clean = {"metric": "clean_accuracy", "attack": "", "source": "", "n_attacked": 0, "n": 100}
    rows = [clean, {"metric": "defense_rate", "attack": "FGSM16", "source": "DenseNet-121", "n_attacked": 50,
                    "n": 31}]
    assert robustness_view.transfer_summary(rows) == ("**FGSM16** from **DenseNet-121**: 50 images attacked, 31 "
                                                      "fooled the source and were passed on.")
    rows[1]["n"] = 0
    assert robustness_view.transfer_summary(rows).endswith(
        "0 fooled the source and were passed on. With none to pass on, there is no defense rate to measure.")
    assert robustness_view.transfer_summary([clean]) is None


# ------------------------------------------------------------------------------------------------ train
def job(name: str, state: str, notation: str = "0.7-Shallow", message: str = "", **settings) -> job_progress.JobStatus:
    return job_progress.JobStatus(folder=Path("/runs") / name, state=state, message=message,
                          settings={"notation": notation, "preset": "quick", "dataset": "cifar10", **settings})


def test_job_settings_read_zero_as_the_presets_value():
    assert train_view.job_settings("0.7-Shallow", "quick", "cifar10", 3) == jobs.JobSettings(
        "0.7-Shallow", "quick", "cifar10", epochs=3)
    settings = train_view.job_settings("0.5-Deep", "paper", "mnist", 2, width=8, train_n=1000, eval_n=500)
    assert (settings.width, settings.train_n, settings.eval_n, settings.preset) == (8, 1000, 500, "paper")


def test_start_message_and_a_bad_notation_starting_nothing(tmp_path, monkeypatch):
    info = {"notation": "0.7-Shallow", "params": 1234567, "masked_layers": [{}, {}]}
    assert train_view.start_message(info, "/runs/0.7-Shallow") == (
        "Started 0.7-Shallow (1,234,567 parameters, 2 masked layers) in /runs/0.7-Shallow.")
    monkeypatch.setenv("RANDMASK_RUNS", str(tmp_path / "runs"))
    with pytest.raises(RandmaskError, match="0.7-Shalow"):
        train_view.start_training("0.7-Shalow", "quick", "cifar10", 1)
    assert not (tmp_path / "runs").exists()


def test_zoo_accuracies_and_the_budget_note_against_them():
    entries = [entry("zoo:a", "0.7-Shallow", clean_accuracy=0.8), entry("zoo:b", "0.7-Shallow", seed=1,
                                                                         clean_accuracy=0.1),
               entry("user:c", "0.5-Shallow", source="user", clean_accuracy=0.2), STAND_IN,
               entry("zoo:n", "Normal ResNet-18", clean_accuracy=0.9)]
    accuracies = train_view.zoo_accuracies(entries)
    assert accuracies == {("0.7-Shallow", "cifar10"): 0.8, ("Normal ResNet-18", "cifar10"): 0.9}
    small = job("x", "done", "0.70-Shallow", epochs=2, train_n=512)  # spelled otherwise: still the zoo's model
    assert "(the zoo's 0.70-Shallow: 80.0%)" in train_view.job_note(small, accuracies)
    assert "the zoo's" not in train_view.job_note(job("y", "done", "0.5-Shallow", epochs=2), accuracies)
    assert train_view.job_note(job("z", "running", epochs=2), accuracies) == ""  # only finished jobs


def test_job_title_history_and_resumable():
    assert train_view.job_title(job("0.7-Shallow", "done", message="clean accuracy 91.0%")) == (
        "**0.7-Shallow** · quick preset · cifar10 · done · clean accuracy 91.0%")
    assert train_view.job_title(job("0.7-Shallow-2", "running")) == (
        "**0.7-Shallow (0.7-Shallow-2)** · quick preset · cifar10 · running")
    assert [train_view.resumable(job("a", s)) for s in job_progress.STATES] == [False, False, False, False, True, True]
    history = [{"epoch": 1, "test_acc": 0.25, "train_acc": 0.3}, {"epoch": 2, "test_acc": 0.5, "train_acc": 0.625}]
    assert train_view.history_series(history) == {"epoch": [1, 2], "test": [25.0, 50.0], "train": [30.0, 62.5]}


def test_output_text_is_the_processes_last_lines(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / job_progress.OUTPUT_FILE).write_text("".join(f"line {i}\n" for i in range(30)) + "\n  \nerror: boom\n")
    status = job_progress.JobStatus(folder=folder, state="failed", settings={})
    assert train_view.output_text(status, lines=3) == "line 28\nline 29\nerror: boom"  # blank lines skipped
    assert train_view.output_text(status).count("\n") == 19


def test_job_changes_toast_once_for_jobs_that_finished_since():
    statuses = [job("a", "done"), job("b", "running"), job("c", "cancelled")]
    assert train_view.any_running(statuses) and not train_view.any_running(statuses[::2])
    assert train_view.job_changes({"a", "b"}, statuses) == (
        {"b"}, "A training job has finished: its model is now in the picker.")
    assert train_view.job_changes({"c"}, statuses) == ({"b"}, "A training job has finished.")
    assert train_view.job_changes({"b"}, statuses) == ({"b"}, None)  # still running: nothing to say
    assert train_view.job_changes(set(), statuses) == ({"b"}, None)
