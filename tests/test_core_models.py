import pytest
import torch

from randmask.core.errors import RandmaskError
from randmask.core.masks import RandomMask
from randmask.core.models import DATASETS, Ensemble, build_model, count_params, list_models


@pytest.mark.parametrize("dataset", list(DATASETS))
@pytest.mark.parametrize("arch", ["Normal ResNet-18", "0.5-Shallow", "ResNet-50", "DenseNet-121", "VGG-19",
                                  "SENet-18"])
def test_every_architecture_runs_on_every_input_size(arch, dataset):
    model = build_model(arch, dataset=dataset, width=4).eval()
    with torch.no_grad():
        out = model(torch.rand(2, *DATASETS[dataset]))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_registry_lists_all_architectures():
    assert set(list_models()) == {"resnet18", "resnet50", "densenet121", "vgg19", "senet18"}


def test_width_scales_parameters():
    small, big = count_params(build_model("Normal ResNet-18", width=8)), count_params(build_model("Normal ResNet-18", width=16))
    assert 3.5 < big / small < 4.1  # conv weights scale with width squared
    assert 10_000_000 < count_params(build_model("Normal ResNet-18", width=64)) < 12_000_000  # ResNet-18: 11.2M


def test_multiplier_widens_only_masked_blocks():
    normal, wide = build_model("Normal ResNet-18", width=8), build_model("0.9-Shallow×2", width=8)
    assert wide.body.conv1.out_channels == 16 and normal.body.conv1.out_channels == 8
    assert wide.body.layer2[0].conv1.out_channels == 32  # block 2: 2·(2·8)
    assert wide.body.layer3[0].conv1.out_channels == normal.body.layer3[0].conv1.out_channels == 32


def test_ensemble_members_differ_in_masks_and_init_and_average_logits():
    model = build_model("0.5-ShallowEN", width=4, mask_seed=10, seed=20).eval()
    assert isinstance(model, Ensemble) and len(model.members) == 5
    first_masks = [next(m for m in member.modules() if isinstance(m, RandomMask)) for member in model.members]
    assert first_masks[1].seed != first_masks[0].seed
    assert not torch.equal(first_masks[0].mask, first_masks[1].mask)
    assert not torch.equal(model.members[0].body.conv1.weight, model.members[1].body.conv1.weight)
    single = build_model("0.5-Shallow", width=4, mask_seed=11, seed=21)
    assert torch.equal(single.body.mask1.mask, model.members[1].body.mask1.mask)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), torch.stack([m(x) for m in model.members]).mean(0))


def test_build_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model("0.7-Shallow", width=4, seed=7)
    after = torch.rand(1)
    b = build_model("0.7-Shallow", width=4, seed=7)
    assert torch.equal(before, after)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_pixel_mean_is_inside_the_model():
    model = build_model("Normal ResNet-18", width=4).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        plain = model(x)
        model.pixel_mean.fill_(0.25)
        shifted = model(x + 0.25)
    assert torch.allclose(plain, shifted, atol=1e-5)


@pytest.mark.parametrize("kwargs,fragment", [({"dataset": "imagenet"}, "unknown dataset"),
                                             ({"width": 0}, "width")])
def test_bad_build_arguments(kwargs, fragment):
    with pytest.raises(RandmaskError, match=fragment):
        build_model("0.5-Shallow", **kwargs)
