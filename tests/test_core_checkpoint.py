import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from randmask.core.errors import CheckpointError
from randmask.core.masks import RandomMask
from randmask.core.models import build_model
from randmask.experiments.checkpoint import load_any, load_model, save_checkpoint


def _perturbed(notation="0.7-Shallow", **kw):
    model = build_model(notation, width=4, mask_seed=3, seed=4, **kw)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
        for m in model.modules():
            if hasattr(m, "pixel_mean"):
                m.pixel_mean.fill_(0.4)
    return model.eval()


def test_round_trip_is_bit_exact(tmp_path):
    model = _perturbed()
    save_checkpoint(model, tmp_path / "m", extra={"clean_accuracy": 0.5})
    loaded, config = load_model(tmp_path / "m")
    assert config["notation"] == "0.7-Shallow" and config["mask_seed"] == 3 and config["clean_accuracy"] == 0.5
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    stored = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert stored["body.mask1.mask"].dtype == torch.bool
    assert torch.equal(stored["body.mask1.mask"], model.body.mask1.mask)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))
    assert not loaded.training


def test_ensemble_and_fp16_round_trip(tmp_path):
    model = _perturbed("0.5-ShallowEN")
    save_checkpoint(model, tmp_path / "en", dtype=torch.float16)
    loaded, config = load_model(tmp_path / "en")
    assert config["weights_dtype"] == "float16" and len(loaded.members) == 5
    masks = [m.mask for m in loaded.modules() if isinstance(m, RandomMask)]
    assert all(torch.equal(a, b.mask) for a, b in zip(masks, [m for m in model.modules() if isinstance(m, RandomMask)], strict=True))
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(model(x), loaded(x), atol=1e-2)


def test_missing_truncated_and_corrupt_files_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        load_model(tmp_path / "nothing")
    folder = save_checkpoint(_perturbed(), tmp_path / "m")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(folder)
    weights.write_bytes(data)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(folder)
    (folder / "config.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(CheckpointError, match="not a randmask checkpoint"):
        load_model(folder)


def test_config_that_does_not_match_weights(tmp_path):
    folder = save_checkpoint(_perturbed(), tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    for change, fragment in [({"width": 8}, "shape"), ({"notation": "Normal ResNet-18"}, "does not match"),
                             ({"mask_seed": 99}, "mask seed 99"), ({"notation": "0.5-Middle"}, "cannot read")]:
        (folder / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(CheckpointError, match=fragment):
            load_model(folder)


def test_tampered_mask_is_detected(tmp_path):
    folder = save_checkpoint(_perturbed(), tmp_path / "m")
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["body.mask1.mask"] = ~tensors["body.mask1.mask"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="mask body.mask1"):
        load_model(folder)


def test_a_pickle_is_never_loaded(tmp_path):
    folder = save_checkpoint(_perturbed(), tmp_path / "m")
    torch.save({"evil": 1}, folder / "model.safetensors")  # a pickle where safetensors belongs
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(folder)


def test_load_any_accepts_notation_only_when_asked_for_an_untrained_model(tmp_path):
    model, config = load_any("0.5-ShallowDC", untrained=True, width=4)
    assert config["trained"] is False and config["notation"] == "0.5-ShallowDC"
    with pytest.raises(CheckpointError, match="pass --untrained"):
        load_any("0.5-ShallowDC", width=4)
