"""Attacks on toy models: agreement with torchattacks, closed-form linear cases, budgets, model untouched."""

import math

import pytest
import torch
from test_attack_support import (
    Linear,
    TinyCNN,
    assert_flips_only_within_rounding,
    assert_unchanged,
    input_gradients,
    snapshot,
)
from torch import nn

from randmask.attacks import APGD, CW, FGSM, PGD, AttackInputError, Square, make_attack

ALL_ATTACKS = ["FGSM8", "PGD4", "PGD2,7,8", "PGD4(random_start=true)", "CW5(search=3, steps=10)",
               "APGD8(steps=10)", "APGD2(steps=4, restarts=3)", "Square8(queries=30)", "Square2(queries=5, restarts=2)"]


def toy_cnn(seed: int = 0) -> TinyCNN:
    torch.manual_seed(seed)
    return TinyCNN(width=8).eval()


def toy_images(n: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    # on the uint8 grid, like real images
    return torch.randint(0, 256, (n, 3, 32, 32), generator=gen).float() / 255, torch.randint(0, 10, (n,), generator=gen)


# ------------------------------------------------------------------ agreement with torchattacks
torchattacks = pytest.importorskip("torchattacks")
pytestmark = pytest.mark.agreement  # scripts/test.sh runs these again under each instruction set


@pytest.mark.parametrize("eps", [4, 16])
def test_fgsm_matches_torchattacks(eps):
    model = toy_cnn()
    x, y = toy_images()
    ours = FGSM(model, eps=eps, exact=True)(x, y)
    theirs = torchattacks.FGSM(model, eps=eps / 255)(x, y)
    assert (ours - theirs).abs().max() <= 1e-6


@pytest.mark.parametrize("step, steps, eps", [(1, 20, 16), (2, 10, 16), (2, 7, 8)])
def test_pgd_without_random_start_matches_torchattacks_bim(step, steps, eps):
    model = toy_cnn()
    x, y = toy_images()
    ours = PGD(model, eps=eps, step=step, steps=steps, exact=True)(x, y)
    theirs = torchattacks.BIM(model, eps=eps / 255, alpha=step / 255, steps=steps)(x, y)
    assert (ours - theirs).abs().max() <= 1e-6
    assert (ours - x).abs().max() * 255 <= eps + 1e-4


def toy_resnet(seed: int = 0) -> nn.Module:
    """A width-8 Normal ResNet-18 with non-trivial BatchNorm statistics: the fast path folds all 20 of them."""
    from randmask.core.models import build_model

    model = build_model("Normal ResNet-18", width=8, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
            m.weight.data.copy_(0.5 + torch.rand(m.num_features, generator=gen))
    return model.eval()


@pytest.mark.parametrize("notation, theirs", [
    ("FGSM8", lambda m: torchattacks.FGSM(m, eps=8 / 255)),
    ("PGD2,16", lambda m: torchattacks.BIM(m, eps=16 / 255, alpha=2 / 255, steps=10))])
def test_exact_mode_matches_torchattacks_on_a_resnet_and_the_fast_path_stays_close(notation, theirs):
    model = toy_resnet()
    x, y = toy_images(24)
    reference = theirs(model)(x, y)
    exact = make_attack(notation, model, exact=True)(x, y)
    assert (exact - reference).abs().max() <= 1e-6  # as strict as the reference tests above
    fast = make_attack(notation, model)(x, y)  # the default
    eps = 8 if notation == "FGSM8" else 16
    assert fast.min() >= 0 and fast.max() <= 1
    assert ((fast - x).abs().amax() * 255 <= eps + 1e-4)
    if notation == "FGSM8":  # one step: only gradient components within float32 rounding of zero may flip sign
        assert_flips_only_within_rounding(input_gradients(model, x, y), fast, reference)
    # after several steps the paths may diverge from such a flip on (CPU-dependent): budget and outcome hold
    with torch.no_grad():
        fooled_fast = (model(fast).argmax(1) != y).float().mean().item()
        fooled_ref = (model(reference).argmax(1) != y).float().mean().item()
    assert abs(fooled_fast - fooled_ref) <= 2 / len(x)


def test_fast_view_folds_batchnorm_and_leaves_the_model_alone():
    from randmask.attacks import fast_view

    model = toy_resnet().train()
    ptrs = [(p.data_ptr(), p.stride()) for p in model.parameters()]
    before = snapshot(model)
    x, _ = toy_images(4)
    view = fast_view(model, x)
    assert view is not model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in view.modules())
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in view.parameters() if p.dim() == 4)
    assert not any(p.requires_grad for p in view.parameters())
    assert_unchanged(model, before)
    assert model.training and [(p.data_ptr(), p.stride()) for p in model.parameters()] == ptrs
    with torch.no_grad():
        want = model.eval()(x)
        got = view(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4)
    assert fast_view(model, x) is view  # cached while the weights stay as they are
    with torch.no_grad():
        model.body.linear.bias.add_(1.0)  # an in-place change (as an optimizer step makes) rebuilds the view
    again = fast_view(model, x)
    assert again is not view
    with torch.no_grad():
        assert torch.allclose(again(x), model(x), rtol=1e-4, atol=1e-4)


def test_fast_view_refuses_a_fold_that_changes_the_outputs():
    from randmask.attacks import fast_view

    class Reuse(nn.Module):  # the conv output feeds the BatchNorm *and* the sum: folding would be wrong
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4, 10)

        def forward(self, x):
            z = self.conv(x)
            return self.head((self.bn(z) + z).mean((2, 3)))

    torch.manual_seed(0)
    model = Reuse().eval()
    model.bn.running_var.fill_(4.0)
    x, _ = toy_images(3)
    view = fast_view(model, x)
    assert any(isinstance(m, nn.BatchNorm2d) for m in view.modules())  # kept unfolded
    with torch.no_grad():
        assert torch.allclose(view(x), model(x), atol=1e-5)


def test_a_masked_model_predicts_then_attacks_through_one_cached_view():
    from randmask.core.models import build_model
    from randmask.experiments.evaluate import predict

    model = build_model("0.7-Shallow", width=8).eval()
    x, y = toy_images(6)
    logits = predict(model, x)  # builds and caches the view (and the mask it casts) without gradients
    with torch.no_grad():
        assert torch.allclose(logits, model(x), rtol=1e-4, atol=1e-4)
    adv = make_attack("PGD2,4", model).run(x, y)  # then takes gradients through the same view
    exact = make_attack("PGD2,4", model, exact=True).run(x, y)
    assert ((adv.adv - exact.adv).abs() <= 1e-6).float().mean() >= 0.99
    assert torch.equal(predict(model, x, exact=True), predict(model, x, exact=True))


def test_a_model_that_cannot_be_copied_is_attacked_as_it_is():
    from randmask.attacks import fast_view

    model = toy_cnn()
    model.scale = torch.ones(1, requires_grad=True) * 2  # a non-leaf tensor: deepcopy refuses the model
    x, y = toy_images(4)
    assert fast_view(model, x) is model
    before = snapshot(model)
    fast = make_attack("PGD2,4", model).run(x, y)
    assert_unchanged(model, before)
    assert torch.allclose(fast.adv, make_attack("PGD2,4", model, exact=True).run(x, y).adv, atol=1e-6)


def test_exact_and_fast_crafted_sets_never_share_a_cache_entry():
    from randmask.experiments.evaluate import crafted_fingerprint

    model, (x, y) = toy_cnn(), toy_images(4)
    fast = crafted_fingerprint(model, make_attack("FGSM8", model), x, y, True, 4)
    exact = crafted_fingerprint(model, make_attack("FGSM8", model, exact=True), x, y, True, 4)
    assert fast != exact
    assert fast == crafted_fingerprint(model, make_attack("FGSM8", model), x, y, True, 4)


def test_randmask_exact_sets_the_default(monkeypatch):
    model = toy_cnn()
    assert make_attack("FGSM8", model).exact is False
    monkeypatch.setenv("RANDMASK_EXACT", "1")
    assert make_attack("FGSM8", model).exact is True
    assert make_attack("FGSM8", model, exact=False).exact is False


# ------------------------------------------------------------------ closed form: a linear model
def linear_case(margin_scale: float = 1.0):
    """Two live classes (0 and 1); the others sit at -50 so only w1 - w0 matters. True class 0."""
    gen = torch.Generator().manual_seed(3)
    d = 3 * 4 * 4
    weight = torch.zeros(10, d)
    weight[0] = torch.randn(d, generator=gen)
    weight[1] = torch.randn(d, generator=gen)
    bias = torch.full((10,), -50.0)
    x = 0.3 + 0.4 * torch.rand(5, 3, 4, 4, generator=gen)  # interior: x +- eps stays inside [0, 1]
    w = weight[1] - weight[0]
    bias[0] = margin_scale + (x.flatten(1) @ w).max().item()  # class 0 wins by at least margin_scale
    bias[1] = 0.0
    return Linear(weight, bias).eval(), x, torch.zeros(5, dtype=torch.long), w


def margin01(model, x):
    with torch.no_grad():
        z = model(x)
    return z[:, 1] - z[:, 0]


@pytest.mark.parametrize("attack", [lambda m: FGSM(m, eps=4), lambda m: PGD(m, eps=4, step=1, steps=6),
                                    lambda m: PGD(m, eps=4, step=0.5, steps=9),
                                    lambda m: APGD(m, eps=4, steps=30)])
def test_linf_attacks_reach_the_optimal_vertex_of_a_linear_model(attack):
    # max over ||d||_inf <= eps of w.d is eps * ||w||_1, reached only at d = eps * sign(w)
    model, x, y, w = linear_case(margin_scale=5.0)  # beyond reach (eps·|w|_1 < 1): APGD returns its best point
    adv = attack(model)(x, y)
    eps = 4 / 255
    assert torch.allclose(adv - x, (eps * w.sign()).view(1, 3, 4, 4).expand_as(x), atol=1e-6)
    assert (margin01(model, adv) < 0).all()  # still correct, so the optimum is the right reference
    gain = margin01(model, adv) - margin01(model, x)
    assert torch.allclose(gain, torch.full_like(gain, eps * w.abs().sum().item()), rtol=1e-4)


def test_cw_finds_the_minimal_l2_perturbation_of_a_linear_model():
    # the smallest d with (w.d) >= m0 + kappa has ||d||_2 = (m0 + kappa) / ||w||_2
    model, x, y, w = linear_case(margin_scale=0.5)
    kappa = 1.0
    result = CW(model, kappa=kappa, search=12, steps=300, lr=0.005, c=0.1).run(x, y)
    assert result.success.all()
    minimal = (-margin01(model, x) + kappa) / w.norm() * 255
    assert (result.l2 >= minimal * (1 - 1e-3)).all()  # cannot beat the optimum
    assert (result.l2 <= minimal * 1.01).all(), (result.l2 / minimal)
    assert (margin01(model, result.adv) >= kappa - 1e-4).all()


# ------------------------------------------------------------------ contracts every attack keeps
class Fussy(TinyCNN):
    """A model in train mode, with dropout and a frozen parameter: every flag must survive an attack."""

    def __init__(self):
        super().__init__(width=8)
        self.body[-3].p = 0.5
        self.body[0].bias.requires_grad_(False)


@pytest.mark.parametrize("notation", ALL_ATTACKS)
def test_model_is_left_exactly_as_it_was(notation):
    torch.manual_seed(0)
    model = Fussy().train()
    model.body[4].eval()  # mixed flags survive too
    before = snapshot(model)
    x, y = toy_images(8)
    result = make_attack(notation, model).run(x, y, batch_size=5)
    assert_unchanged(model, before)
    assert model.training and not model.body[4].training
    assert result.adv.shape == x.shape and result.adv.min() >= 0 and result.adv.max() <= 1


@pytest.mark.parametrize("notation", ALL_ATTACKS)
def test_results_are_measured_on_the_returned_images(notation):
    model, (x, y) = toy_cnn(), toy_images(10)
    attack = make_attack(notation, model, seed=5)
    result = attack.run(x, y, batch_size=4)
    with torch.no_grad():
        logits = model(result.adv)
    assert torch.allclose(result.logits, logits, atol=1e-5)
    assert torch.equal(result.success, attack.is_success(result.logits, y))
    delta = (result.adv - x).flatten(1) * 255
    assert torch.allclose(result.linf, delta.abs().amax(1), atol=1e-4)
    assert torch.allclose(result.l2, delta.norm(dim=1), atol=1e-3)
    if attack.eps is not None:
        assert result.linf.max() <= attack.eps + 1e-4
    # same seed, same images, however the batches fall
    again = make_attack(notation, model, seed=5).run(x, y, batch_size=4)
    assert torch.equal(again.adv, result.adv)


@pytest.mark.parametrize("notation", ["FGSM8", "PGD2,16", "CW5(search=2, steps=5)"])
def test_deterministic_attacks_do_not_depend_on_batch_size(notation):
    model, (x, y) = toy_cnn(), toy_images(9)
    a = make_attack(notation, model).run(x, y, batch_size=2).adv
    b = make_attack(notation, model).run(x, y).adv
    assert (a - b).abs().max() <= 1e-6


def test_progress_reports_every_batch():
    calls = []
    make_attack("FGSM4", toy_cnn()).run(*toy_images(10), batch_size=4, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(4, 10), (8, 10), (10, 10)]


class NoGradients(TinyCNN):
    def forward(self, x):
        assert not torch.is_grad_enabled(), "gradient tracking was on"
        assert not x.requires_grad
        return super().forward(x)


def test_square_attack_uses_no_gradients():
    torch.manual_seed(0)
    model = NoGradients(width=8).eval()
    x, y = toy_images(6)
    attack = Square(model, eps=16, queries=40)
    result = attack.run(x, y)
    assert result.linf.max() <= 16 + 1e-4
    assert attack.last_queries is not None and (attack.last_queries <= 40).all()
    assert result.logits.shape == (6, 10)
    with pytest.raises(AssertionError, match="gradient tracking"):
        FGSM(model, eps=8)(x, y)  # the guard really catches a gradient attack


def test_square_never_loses_ground():
    model, (x, y) = toy_cnn(), toy_images(12)
    from randmask.attacks import margin

    with torch.no_grad():
        start = margin(model(x), y)
    short = Square(model, eps=8, queries=5, seed=1).run(x, y)
    long = Square(model, eps=8, queries=200, seed=1).run(x, y)
    # same seed: the long run begins as the short one did and only accepts improvements
    assert (margin(long.logits, y) >= margin(short.logits, y) - 1e-5).all()
    assert margin(long.logits, y).mean() > start.mean()


def test_cw_reports_failures_as_failures():
    # an impossible margin: nothing may be reported as a success, and failed images come back unchanged
    model, (x, y) = toy_cnn(), toy_images(6)
    result = CW(model, kappa=1e4, search=2, steps=5).run(x, y)
    assert not result.success.any()
    assert torch.equal(result.adv, x)


def test_bad_inputs_are_refused_clearly():
    model, (x, y) = toy_cnn(), toy_images(4)
    attack = FGSM(model, eps=8)
    with pytest.raises(AttackInputError, match=r"\[0, 1\]"):
        attack(x * 255, y)
    with pytest.raises(AttackInputError, match="N×C×H×W"):
        attack(x[0], y)
    with pytest.raises(AttackInputError, match="uint8"):
        attack((x * 255).to(torch.uint8), y)
    with pytest.raises(AttackInputError, match="vector of 4"):
        attack(x, y[:3])
    with pytest.raises(AttackInputError, match="out of range"):
        attack(x, torch.full((4,), 10))
    with pytest.raises(AttackInputError, match="batch size"):
        attack.run(x, y, batch_size=0)
    with pytest.raises(TypeError):
        FGSM("not a model", eps=8)


def test_empty_input_gives_empty_result():
    result = make_attack("PGD4", toy_cnn()).run(torch.zeros(0, 3, 32, 32), torch.zeros(0, dtype=torch.long))
    assert len(result.adv) == 0 and math.isnan(result.success_rate)


def test_model_without_parameters_runs_on_cpu():
    model = nn.Sequential(nn.Flatten(), nn.Identity())
    x = torch.rand(2, 1, 2, 5)
    y = torch.tensor([0, 3])
    adv = FGSM(model, eps=8)(x, y)
    assert adv.shape == x.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_attacks_run_on_cuda_and_return_to_the_callers_device():
    model = toy_cnn().cuda()
    x, y = toy_images(8)
    for notation in ALL_ATTACKS:
        result = make_attack(notation, model).run(x, y)
        assert result.adv.device == x.device
        assert torch.allclose(result.adv.cuda(), make_attack(notation, model).run(x.cuda(), y.cuda()).adv)


def test_cuda_graphs_stay_out_of_the_cpu_path_which_gives_the_eager_gradient():
    from randmask.attacks import cuda_graphs, fast_view

    model = toy_resnet().eval()
    x, y = toy_images(8)
    view = fast_view(model, x)
    assert cuda_graphs.graphed_gradient(view, x, y) is None and not cuda_graphs._GRAPHS
    attack = FGSM(model, eps=8)
    with torch.no_grad():
        attack._net = view
    grad, loss, logits = attack.input_gradient(x.contiguous(memory_format=torch.channels_last), y)
    want = cuda_graphs.cross_entropy_gradient(view, x.contiguous(memory_format=torch.channels_last), y)
    assert torch.allclose(grad, want[0], atol=1e-7) and torch.allclose(loss, want[1]) and torch.allclose(logits, want[2])


def test_a_capture_that_runs_out_of_gpu_memory_stays_eager_and_frees_the_other_graphs(monkeypatch):
    from randmask.attacks import cuda_graphs

    def no_memory(*_args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(cuda_graphs._Graph, "__init__", no_memory)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setitem(cuda_graphs._GRAPHS, ("an earlier graph",), None)
    x, y = toy_images(2)
    assert cuda_graphs._Graph.capture(toy_cnn(), x, y) is None
    assert not cuda_graphs._GRAPHS


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_replayed_cuda_graph_gives_the_eager_gradient_and_a_random_model_stays_eager():
    from randmask.attacks import cuda_graphs, fast_view

    model = toy_resnet().cuda().eval()
    x, y = (t.cuda() for t in toy_images(16))
    view = fast_view(model, x)
    for seed in (1, 2):  # the second batch replays the graph captured on the first
        xb, yb = (t.cuda() for t in toy_images(16, seed=seed))
        got = cuda_graphs.graphed_gradient(view, xb, yb)
        want = cuda_graphs.cross_entropy_gradient(view, xb, yb)
        assert got is not None
        for g, w in zip(got, want, strict=True):
            assert torch.allclose(g, w, rtol=1e-4, atol=1e-6)

    class Noisy(nn.Module):  # draws random numbers in eval mode: its graph cannot match the eager pass
        def __init__(self):
            super().__init__()
            self.body = toy_cnn().cuda()

        def forward(self, images):
            return self.body(images + 0.1 * torch.randn_like(images))

    assert cuda_graphs.graphed_gradient(Noisy().eval(), x, y) is None
    model.cpu()
    assert cuda_graphs.graphed_gradient(fast_view(model, x.cpu()), x.cpu(), y.cpu()) is None  # CPU: eager


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_cuda_fast_path_fools_as_often_as_torchattacks():
    model = toy_resnet().cuda().eval()
    x, y = (t.cuda() for t in toy_images(64))
    ours = PGD(model, eps=8, step=2, steps=10)(x, y)
    theirs = torchattacks.BIM(model, eps=8 / 255, alpha=2 / 255, steps=10)(x, y)
    assert (ours - x).abs().max() * 255 <= 8 + 1e-4 and 0 <= ours.min() and ours.max() <= 1
    with torch.no_grad():
        fooled = [(model(a).argmax(1) != y).float().mean().item() for a in (ours, theirs)]
    assert abs(fooled[0] - fooled[1]) <= 2 / len(x)
