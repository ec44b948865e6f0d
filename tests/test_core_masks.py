"""Random Mask against its spec: counts, independence, variants, placement, zero output and gradient."""
import math

import pytest
import torch

from randmask.core.architectures import BasicBlock
from randmask.core.masks import RandomMask, make_mask, n_dropped
from randmask.core.models import build_model, masked_layers


@pytest.mark.parametrize("shape,ratio", [((16, 32, 32), 0.7), ((32, 16, 16), 0.3), ((8, 4, 4), 0.9),
                                         ((5, 7, 3), 0.5), ((64, 8, 8), 0.85)])
def test_exact_count_per_channel(shape, ratio):
    keep = make_mask(shape, ratio, "random", seed=3)
    assert keep.dtype == torch.bool and keep.shape == shape
    dropped = (~keep).flatten(1).sum(1)
    assert (dropped == round(ratio * shape[1] * shape[2])).all()


def test_channels_are_independent_and_uniform():
    c, h, w, ratio = 2000, 8, 8, 0.5
    keep = make_mask((c, h, w), ratio, "random", seed=0).flatten(1).float()
    patterns = {tuple(row.tolist()) for row in keep}
    assert len(patterns) == c  # C(64,32) patterns: collisions would betray shared draws
    # each position dropped with probability 0.5: per-position frequency within 5 sigma
    freq = 1 - keep.mean(0)
    assert (freq - ratio).abs().max() < 5 * math.sqrt(ratio * (1 - ratio) / c)
    # independence between channels: correlation of neighbouring channels' patterns is ~0
    a, b = keep[:-1] - keep[:-1].mean(), keep[1:] - keep[1:].mean()
    assert abs((a * b).mean() / (a.std() * b.std())) < 0.02


def test_same_seed_same_mask_and_seeds_differ():
    assert torch.equal(make_mask((4, 8, 8), 0.5, "random", 1), make_mask((4, 8, 8), 0.5, "random", 1))
    assert not torch.equal(make_mask((4, 8, 8), 0.5, "random", 1), make_mask((4, 8, 8), 0.5, "random", 2))


def test_sm_shares_one_pattern_across_channels():
    keep = make_mask((16, 8, 8), 0.7, "SM", seed=5)
    assert all(torch.equal(keep[0], keep[i]) for i in range(16))
    assert (~keep[0]).sum() == n_dropped(0.7, 64)


def test_dc_drops_whole_channels():
    keep = make_mask((16, 8, 8), 0.5, "DC", seed=5)
    per_channel = keep.flatten(1).float().mean(1)
    assert set(per_channel.tolist()) == {0.0, 1.0}
    assert (per_channel == 0).sum() == 8


def test_layers_get_different_masks_and_measured_ratios():
    model = build_model("0.7-Shallow", width=8)
    layers = masked_layers(model)
    assert len(layers) == 10  # stem + 4 convs of stage 1 + 4 convs and 1 shortcut of stage 2
    assert {layer["block"] for layer in layers} == {0, 1, 2}
    for layer in layers:
        assert abs(layer["drop_ratio"] - 0.7) < 0.5 / (layer["shape"][1] * layer["shape"][2])
    masks = [m.mask for m in model.modules() if isinstance(m, RandomMask)]
    assert not torch.equal(masks[0], masks[1])


def test_mask_is_a_buffer_not_a_parameter():
    model = build_model("0.5-Shallow", width=8)
    names = {n for n, _ in model.named_parameters()}
    assert not any("mask" in n for n in names)
    assert any(n.endswith("mask1.mask") for n in model.state_dict())


def test_deep_and_block_sets_mask_the_right_blocks():
    assert {layer["block"] for layer in masked_layers(build_model("0.5-Deep", width=8))} == {3, 4}
    assert {layer["block"] for layer in masked_layers(build_model("0.9-B12", width=8))} == {1, 2}
    combo = masked_layers(build_model("0.3-Shallow, 0.7-Deep", width=8))
    assert {(m["block"], round(m["drop_ratio"], 1)) for m in combo} >= {(0, 0.3), (4, 0.7)}


def _capture(module, store, key):
    return module.register_forward_hook(lambda m, i, o: store.__setitem__(key, (i[0], o)))


def test_placement_after_bn_before_relu_and_before_residual_add():
    torch.manual_seed(0)
    model = build_model("0.5-Shallow", width=8).train()
    block: BasicBlock = model.body.layer2[0]  # has a projection shortcut
    seen: dict = {}
    hooks = [_capture(block.bn1, seen, "bn1"), _capture(block.mask1, seen, "mask1"),
             _capture(block.conv2, seen, "conv2"), _capture(block.bn2, seen, "bn2"),
             _capture(block.mask2, seen, "mask2"), _capture(block.shortcut[1], seen, "sc_bn"),
             _capture(block.shortcut[2], seen, "sc_mask"), _capture(block, seen, "block")]
    model(torch.rand(4, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert seen["mask1"][0] is seen["bn1"][1]  # mask input is the BN output
    assert torch.equal(seen["conv2"][0], torch.relu(seen["mask1"][1]))  # ReLU comes after the mask
    assert seen["mask2"][0] is seen["bn2"][1]
    assert seen["sc_mask"][0] is seen["sc_bn"][1]  # projection shortcut conv is masked too
    expected = torch.relu(seen["mask2"][1] + seen["sc_mask"][1])  # masks before the residual addition
    assert torch.equal(seen["block"][1], expected)
    stem: dict = {}
    hooks = [_capture(model.body.bn1, stem, "bn"), _capture(model.body.mask1, stem, "mask")]
    model(torch.rand(2, 3, 32, 32))
    assert stem["mask"][0] is stem["bn"][1]


def test_masked_neurons_are_zero_and_pass_no_gradient():
    torch.manual_seed(0)
    model = build_model("0.7-Shallow", width=8).train()
    seen = {}

    def keep(mod, inputs, out):
        inputs[0].retain_grad()
        seen[id(mod)] = (mod, inputs[0], out)

    for m in model.modules():
        if isinstance(m, RandomMask):
            m.register_forward_hook(keep)
    x = torch.rand(4, 3, 32, 32)
    model(x).square().sum().backward()
    assert len(seen) == 10
    for mod, inp, out in seen.values():
        dropped = ~mod.mask.expand_as(out)
        assert (out[dropped] == 0).all()
        assert torch.equal(out[~dropped], inp[~dropped])  # kept neurons untouched: no rescaling
        assert (inp.grad[dropped] == 0).all()
        assert inp.grad[~dropped].abs().sum() > 0


def test_mask_applies_identically_in_train_and_eval():
    mask = RandomMask((4, 8, 8), 0.5, seed=1)
    x = torch.randn(3, 4, 8, 8)
    assert torch.equal(mask.train()(x), mask.eval()(x))


def test_mask_follows_activation_dtype_and_reloaded_values():
    mask = RandomMask((4, 8, 8), 0.5, seed=1)
    x = torch.randn(2, 4, 8, 8)
    assert mask(x.bfloat16()).dtype == torch.bfloat16
    other = make_mask((4, 8, 8), 0.5, "random", 2)
    mask.load_state_dict({"mask": other})
    assert torch.equal(mask(torch.ones(1, 4, 8, 8))[0].bool(), other)  # no stale cached cast


def test_wrong_input_size_is_a_clear_error():
    model = build_model("0.5-Shallow", width=8)
    with pytest.raises(ValueError, match="another input size"):
        model(torch.rand(1, 3, 28, 28))


def test_a_compiled_masked_net_traces_once_and_matches_eager():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = build_model("0.5-Shallow", width=4).eval()
    compiled = torch.compile(model, backend="eager")  # dynamo's tracing only: no C++ toolchain needed
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        for _ in range(2):
            assert torch.allclose(compiled(x), model(x), atol=1e-6)
    assert counters["stats"]["unique_graphs"] == 1  # the eager-mode mask cache must not cause recompiles
    torch._dynamo.reset()


# --------------------------------------------------------------------- the resampled control (0.7-ShallowDropout)
def test_resampled_mask_redraws_every_training_step_with_exact_counts_and_dropout_scaling():
    from randmask.core.masks import ResampledMask

    shape, ratio = (16, 32, 32), 0.7
    layer = ResampledMask(shape, ratio, block=0).train()
    x = torch.ones(2, *shape)
    torch.manual_seed(0)
    first, second = layer(x), layer(x)
    k = n_dropped(ratio, 32 * 32)
    scale = 32 * 32 / (32 * 32 - k)
    for out in (first, second):
        assert ((out == 0).flatten(2).sum(2) == k).all()  # exactly k per channel, as Random Mask
        assert torch.allclose(out[out != 0], torch.full_like(out[out != 0], scale))  # rescaled as dropout is
        assert torch.equal(out[0], out[1])  # one mask per step, shared by the batch
    assert not torch.equal(first, second)  # a fresh mask at every step
    torch.manual_seed(0)
    assert torch.equal(layer(x), first)  # drawn from torch's seeded generator: training stays reproducible
    assert layer.measured_drop_ratio() == k / (32 * 32)


def test_resampled_mask_is_off_at_test_time_and_stores_nothing():
    from randmask.core.masks import ResampledMask

    model = build_model("0.7-ShallowDropout", width=4).eval()
    layers = [m for m in model.modules() if isinstance(m, ResampledMask)]
    fixed = build_model("0.7-Shallow", width=4)
    assert len(layers) == len([m for m in fixed.modules() if isinstance(m, RandomMask)])  # the same places
    assert not any(k.endswith(".mask") for k in model.state_dict())
    assert {layer["block"] for layer in masked_layers(model)} == {0, 1, 2}
    normal = build_model("Normal ResNet-18", width=4).eval()
    normal.load_state_dict(model.state_dict())  # no extra state: at test time it is a plain ResNet-18
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(model(x), normal(x))


def test_resampled_control_checkpoint_round_trip(tmp_path):
    from randmask.experiments.checkpoint import load_model, save_checkpoint

    model = build_model("0.7-ShallowDropout", width=4)
    save_checkpoint(model, tmp_path / "m")
    loaded, config = load_model(tmp_path / "m")
    assert config["notation"] == "0.7-ShallowDropout"
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded(x), model.eval()(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_mask_on_a_channels_last_activation_gives_the_same_values(dtype):
    mask = RandomMask((8, 6, 6), 0.5, seed=3)
    x = torch.randn(4, 8, 6, 6).to(dtype)
    plain = mask(x)
    nhwc = mask(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(plain, nhwc)
    assert nhwc.is_contiguous(memory_format=torch.channels_last)
    cast = mask._cast[-1]  # cast in the activation's layout (HWC strides), so the product is a plain loop
    assert cast.permute(1, 2, 0).is_contiguous() and torch.equal(cast, mask.mask.to(dtype))
    assert torch.equal(mask(x), plain)  # back to NCHW: recast
