"""Adversarial sets for the human study: what meta.csv reports is what the saved PNGs are."""

import csv

import pytest
import torch
from test_attack_support import TinyCNN, held_out, trained_cnn

from randmask.attacks import margin
from randmask.core.errors import RandmaskError
from randmask.experiments.adversarial_sets import read_png, save_adversarial_set

ISSUE_COLUMNS = ["index", "true_label", "source", "attack", "source_pred", "linf", "l2"]


def read_meta(folder):
    with open(folder / "meta.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def net(data_dir):
    return trained_cnn()


@pytest.mark.parametrize("attack, eps", [("PGD8", 8), ("FGSM3", 3), ("CW0(search=3, steps=20)", None)])
def test_saved_images_are_what_meta_describes(tmp_path, net, attack, eps):
    x, y = held_out(40)
    idx = torch.arange(100, 112)  # positions in the test set need not start at 0
    xs, ys = x[:12], y[:12]
    torch.manual_seed(3)
    other = TinyCNN(width=8).eval()
    rows = save_adversarial_set(net, attack, xs, ys, idx, tmp_path, source_name="tiny", seed=4,
                                predict_models={"Other Net": other}, save_clean=True)
    meta = read_meta(tmp_path)
    assert len(meta) == len(rows) == 12
    assert set(ISSUE_COLUMNS + ["file", "pred:Other Net", "fooled", "clean_file"]) <= set(meta[0])
    saved = torch.stack([read_png(tmp_path / r["file"]) for r in meta])
    originals = torch.stack([read_png(tmp_path / r["clean_file"]) for r in meta])
    assert torch.equal(originals, xs)  # lossless
    with torch.no_grad():
        preds = net(saved).argmax(1)
        other_preds = other(saved).argmax(1)
    levels = (saved * 255).round() - (xs * 255).round()
    for i, r in enumerate(meta):
        assert r["file"] == f"images/{100 + i:06d}.png" and int(r["index"]) == 100 + i
        assert int(r["true_label"]) == int(ys[i]) and r["source"] == "tiny"
        assert int(r["source_pred"]) == int(preds[i])
        assert int(r["pred:Other Net"]) == int(other_preds[i])
        assert (r["fooled"] == "True") == (int(preds[i]) != int(ys[i]))
        assert float(r["linf"]) == levels[i].abs().max().item()
        assert float(r["l2"]) == pytest.approx(levels[i].norm().item(), rel=1e-5)
    if eps is not None:
        assert levels.abs().max() <= eps  # exactly, in whole grey levels, on every saved image
        assert sum(r["fooled"] == "True" for r in meta) >= 6
    else:
        with torch.no_grad():
            m = margin(net(saved), ys)
        assert [r["attack_success"] == "True" for r in meta] == (m > 0).tolist()


def test_an_existing_set_is_never_overwritten_by_accident(tmp_path, net):
    x, y = held_out(3)
    save_adversarial_set(net, "FGSM8", x, y, torch.arange(3), tmp_path, source_name="a")
    before = (tmp_path / "meta.csv").read_bytes()
    with pytest.raises(RandmaskError, match="already exists"):
        save_adversarial_set(net, "FGSM16", x, y, torch.arange(3), tmp_path, source_name="a")
    assert (tmp_path / "meta.csv").read_bytes() == before
    save_adversarial_set(net, "FGSM16", x, y, torch.arange(3), tmp_path, source_name="a", overwrite=True)
    assert read_meta(tmp_path)[0]["attack"] == "FGSM16"


def test_grey_images_are_saved_as_one_channel(tmp_path):
    torch.manual_seed(0)
    model = TinyCNN(in_channels=1, width=4).eval()
    x = torch.randint(0, 256, (2, 1, 28, 28)).float() / 255
    save_adversarial_set(model, "FGSM20", x, torch.tensor([1, 2]), torch.tensor([5, 9]), tmp_path, source_name="m")
    image = read_png(tmp_path / "images" / "000009.png")
    assert image.shape == (1, 28, 28)
    assert ((image - x[1]) * 255).round().abs().max() <= 20
