"""Evaluation protocols: selection, quantisation, transfer bookkeeping, noise, shuffle, gray-box relations."""

import math

import pytest
import torch
from scipy.stats import binomtest
from test_attack_support import TinyCNN, held_out, trained_cnn
from torch import nn

from randmask.attacks import make_attack
from randmask.core.errors import RandmaskError
from randmask.experiments.corruptions import gaussian_noise, noise, patch_shuffle, shuffle
from randmask.experiments.evaluate import (
    accuracy_fields,
    craft,
    perturbation_norms,
    predict,
    quantize,
    select_correct,
    write_csv,
)
from randmask.experiments.protocols import (
    COLUMNS,
    MNIST_ATTACK,
    graybox,
    madry,
    paper_transfer_attacks,
    relation,
    transfer,
    whitebox,
)


class Lookup(nn.Module):
    """Returns stored logits for image i, where i is written in the first pixel (i / 255)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", logits)

    def forward(self, x):
        return self.table[(x[:, 0, 0, 0] * 255).round().long()]


def id_images(n: int) -> torch.Tensor:
    x = torch.full((n, 3, 4, 4), 0.5)
    x[:, 0, 0, 0] = torch.arange(n) / 255
    return x


# ------------------------------------------------------------------ shared pieces
@pytest.mark.parametrize("correct, n", [(81, 263), (15, 148), (0, 20), (29, 29), (1, 29)])
def test_accuracy_rows_carry_wilson_intervals(correct, n):
    row = accuracy_fields(correct, n)
    ci = binomtest(correct, n).proportion_ci(method="wilson")
    assert row["n"] == n and row["correct"] == correct and row["accuracy"] == correct / n
    assert row["ci_low"] == pytest.approx(ci.low, abs=1e-9) and row["ci_high"] == pytest.approx(ci.high, abs=1e-9)
    empty = accuracy_fields(0, 0)
    assert empty["n"] == 0 and math.isnan(empty["accuracy"])


def test_select_correct_takes_the_first_n_in_order_and_applies_confidence():
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    logits = torch.full((8, 10), -10.0)
    preds = torch.tensor([0, 9, 2, 3, 9, 5, 6, 7])  # images 1 and 4 wrong
    logits[torch.arange(8), preds] = 10.0
    logits[3, 4] = 9.5  # image 3 right but unsure (p ~ 0.62)
    a = Lookup(logits)
    x = id_images(8)
    assert select_correct([a], x, labels).tolist() == [0, 2, 3, 5, 6, 7]
    assert select_correct([a], x, labels, n=3, batch_size=2).tolist() == [0, 2, 3]
    assert select_correct([a], x, labels, min_confidence=0.99).tolist() == [0, 2, 5, 6, 7]
    other = logits.clone()
    other[5] = other[5].roll(1)  # a second model wrong on image 5
    assert select_correct([a, Lookup(other)], x, labels, min_confidence=0.99).tolist() == [0, 2, 6, 7]
    with pytest.raises(RandmaskError):
        select_correct([a], x, labels, n=0)


def test_quantize_rounds_to_uint8_and_keeps_the_budget():
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 256, (4, 3, 8, 8), generator=gen).float() / 255
    adv = (clean + (torch.rand(clean.shape, generator=gen) * 2 - 1) * 8.9 / 255).clamp(0, 1)
    q = quantize(adv, clean, 8)
    levels = q * 255
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert ((levels.round() - clean * 255).round().abs() <= 8).all()
    beyond = ((adv - clean) * 255).abs() > 8.5  # plain rounding would land on 9 grey levels here
    assert beyond.any() and (((q - clean) * 255).round().abs()[beyond] == 8).all()
    inside = ~beyond & (adv > 0) & (adv < 1)
    assert ((q - adv).abs()[inside] <= 0.5 / 255 + 1e-6).all()
    # a fractional budget allows only whole grey levels inside it (76.5 -> 76)
    far = (clean + 0.5).clamp(0, 1)
    assert (((quantize(far, clean, 76.5) - clean) * 255).round().abs().max()) <= 76
    # without a budget (CW) it is plain rounding
    assert torch.equal(quantize(adv, clean), adv.mul(255).round().div(255))
    linf, l2 = perturbation_norms(q, clean, levels=True)
    assert torch.equal(linf, linf.round()) and linf.max() <= 8


def test_write_csv_keeps_column_order_and_adds_extras(tmp_path):
    path = write_csv([{"b": 1, "a": 0.5, "x": float("nan")}, {"a": 2, "c": "z"}], tmp_path / "sub" / "o.csv", ["a", "b"])
    assert path.read_text().splitlines() == ["a,b,x,c", "0.5,1,,", "2,,,z"]


# ------------------------------------------------------------------ transfer on a trained source
@pytest.fixture(scope="module")
def net(data_dir):
    return trained_cnn()


@pytest.fixture(scope="module")
def other():
    torch.manual_seed(7)
    return TinyCNN(width=8).eval()  # untrained: a target that disagrees with the source


def test_transfer_keeps_only_images_that_fool_the_source(net, other):
    x, y = held_out(200)
    rows = transfer(net, {"self": net, "other": other}, ["FGSM2", "PGD2,4,4"], x, y, source_name="src", n=40,
                    dataset="cifar10", batch_size=64)
    adv_rows = [r for r in rows if r["metric"] == "defense_rate"]
    assert [(r["target"], r["attack"]) for r in adv_rows] == [
        ("self", "FGSM2"), ("other", "FGSM2"), ("self", "PGD2,4"), ("other", "PGD2,4")]
    for r in adv_rows:
        assert r["n_attacked"] == 40 and set(COLUMNS) <= set(r)
        assert r["n"] == round(r["source_fooled"] * 40) and r["n"] > 5
        assert r["mean_linf"] <= 2 if r["attack"] == "FGSM2" else r["mean_linf"] <= 4
    assert all(r["correct"] == 0 for r in adv_rows if r["target"] == "self")  # all fool the source, as stored

    # recompute independently: first 40 source-correct images, attack, round to uint8, keep fooling ones
    with torch.no_grad():
        ok = (net(x).argmax(1) == y).nonzero().squeeze(1)[:40]
    adv = make_attack("FGSM2", net).run(x[ok], y[ok]).adv
    stored = (adv * 255).round() / 255
    with torch.no_grad():
        keep = net(stored).argmax(1) != y[ok]
        expected = int((other(stored[keep]).argmax(1) == y[ok][keep]).sum())
    row = next(r for r in adv_rows if r["target"] == "other" and r["attack"] == "FGSM2")
    assert (row["n"], row["correct"]) == (int(keep.sum()), expected)

    clean = {r["target"]: r for r in rows if r["metric"] == "clean_accuracy"}
    assert set(clean) == {"self", "other"} and clean["self"]["n"] == 200  # the source is a target: not twice
    with torch.no_grad():
        assert clean["other"]["correct"] == int((other(x).argmax(1) == y).sum())


def test_transfer_uses_fewer_images_for_cw_and_can_skip_rounding(net, other):
    x, y = held_out(120)
    calls = []
    rows = transfer(net, {"other": other}, ["CW0(search=2, steps=10)", "FGSM4"], x, y, source_name="s", n=30,
                    n_cw=7, clean=False, quantize_images=False, batch_size=16, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (37, 37) and [d for d, _ in calls] == sorted(d for d, _ in calls)
    by_attack = {r["attack"]: r for r in rows}
    assert by_attack["CW0(search=2, steps=10)"]["n_attacked"] == 7 and by_attack["FGSM4"]["n_attacked"] == 30
    assert by_attack["FGSM4"]["quantized"] is False
    assert {r["metric"] for r in rows} == {"defense_rate"}


def test_an_ensemble_of_sources_is_attacked_as_one(net, other):
    x, y = held_out(100)
    rows = transfer([net, other], {"net": net}, ["FGSM8"], x, y, source_name="net + other", n=20, clean=False)
    from randmask.core.models import Ensemble

    ensemble = Ensemble([net, other])
    chosen = select_correct([ensemble], x, y, n=20)
    crafted = craft(ensemble, "FGSM8", x[chosen], y[chosen])
    assert rows[0]["n"] == int(crafted.fooled.sum())


def test_whitebox_accuracy_falls_along_table_4(net):
    x, y = held_out(100)
    rows = whitebox({"net": net}, ["FGSM1", "FGSM4", "PGD1,10,8"], x, y)
    acc = {r["attack"]: r["accuracy"] for r in rows}
    assert acc[""] >= acc["FGSM1"] >= acc["FGSM4"] >= acc["PGD1,10,8"] and acc["PGD1,10,8"] <= 0.05
    assert [r["paper_attack"] for r in rows if r["attack"] == "PGD1,10,8"] == ["PGD8"]  # Table 4's name
    # images already wrong stay counted as wrong: accuracy under attack never exceeds clean accuracy
    assert all(r["n"] == 100 for r in rows)


def test_madry_preset_uses_madrys_attacks(net, other):
    x, y = held_out(60)
    rows = madry(net, {"other": other}, x, y, source_name="natural", n=10, clean=False)
    assert [(r["attack"], r["paper_attack"], r["protocol"]) for r in rows] == [
        ("FGSM8", "FGSM8", "madry"), ("PGD2,7,8", "PGD 7x2 eps8", "madry")]


def test_mnist_preset_runs_on_grey_images():
    torch.manual_seed(0)
    source = TinyCNN(in_channels=1, width=4).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (30, 1, 28, 28), generator=gen).float() / 255
    with torch.no_grad():
        y = source(x).argmax(1)  # the source is right on every image
    from randmask.experiments.protocols import mnist

    rows = mnist(source, {"t": source}, x, y, source_name="s", n=6, clean=False)
    assert rows[0]["attack"] == MNIST_ATTACK == "PGD2.55,40,76.5" and rows[0]["dataset"] == "mnist"
    assert rows[0]["n_attacked"] == 6 and rows[0]["mean_linf"] <= 76


def test_graybox_relations_from_configs():
    base = {"notation": "0.5-Shallow", "seed": 0, "mask_seed": 0}
    assert relation(base, dict(base)) == "same model"
    assert relation(base, {**base, "seed": 1}) == "other init"
    assert relation(base, {**base, "mask_seed": 1}) == "DIF"
    assert relation(base, {**base, "mask_seed": 1, "seed": 1}) == "DIF"
    assert relation(base, {**base, "notation": "VGG-19"}) == "other architecture"


def test_graybox_labels_rows(net, other):
    x, y = held_out(60)
    rows = graybox({"a": net}, {"b": other, "c": net}, x, y, n=10, relations={("a", "b"): "other init"})
    adv = [r for r in rows if r["metric"] == "defense_rate"]
    assert [(r["target"], r["relation"], r["attack"]) for r in adv] == [("b", "other init", "FGSM16"),
                                                                       ("c", "", "FGSM16")]
    assert sorted(r["target"] for r in rows if r["metric"] == "clean_accuracy") == ["a", "b", "c"]
    rows = transfer(net, {"b": other}, ["FGSM2"], x, y, source_name="a", n=5)
    assert [r["target"] for r in rows if r["metric"] == "clean_accuracy"] == ["a", "b"]


def test_paper_attack_lists():
    assert paper_transfer_attacks("DenseNet-121")[-1] == "CW40"
    assert paper_transfer_attacks("Normal ResNet-18")[-1] == "CW20"
    assert paper_transfer_attacks("0.5-Shallow")[:6] == ["FGSM8", "FGSM16", "FGSM32", "PGD16", "PGD2,16", "PGD32"]


# ------------------------------------------------------------------ noise
def test_gaussian_noise_is_clipped_at_two_sigma_then_to_the_image_range():
    x = torch.full((20, 3, 32, 32), 0.5)
    sigma = 8
    noisy = gaussian_noise(x, sigma, torch.Generator().manual_seed(0))
    delta = (noisy - x) * 255
    assert delta.abs().max() <= 2 * sigma + 1e-3
    assert (delta.abs() > 2 * sigma - 1e-3).float().mean() == pytest.approx(0.0455, abs=0.005)  # P(|Z| > 2)
    # std of a normal clamped at +-2 sigma: sqrt(E[Z^2; |Z|<2] + 4 P(|Z|>2)) = 0.9595 sigma
    assert delta.std().item() == pytest.approx(0.9595 * sigma, rel=0.02)
    assert delta.mean().abs() < 0.05
    edge = gaussian_noise(torch.ones(2, 3, 8, 8), 32, torch.Generator().manual_seed(0))
    assert edge.max() <= 1 and edge.min() >= 1 - 64 / 255 - 1e-6


def test_noise_protocol_rows(net):
    x, y = held_out(100)
    rows = noise({"net": net}, x, y, sigmas=(4, 32))
    assert [(r["attack"], r["sigma"]) for r in rows] == [("noise0", 0.0), ("noise4", 4.0), ("noise32", 32.0)]
    with torch.no_grad():
        assert rows[0]["correct"] == int((net(x).argmax(1) == y).sum())  # sigma 0 is the clean accuracy
    assert rows[2]["accuracy"] < rows[0]["accuracy"] - 0.05
    assert noise({"net": net}, x, y, sigmas=(4, 32)) == rows  # seeded
    with pytest.raises(RandmaskError):
        noise({"net": net}, x, y, sigmas=(-1,))


# ------------------------------------------------------------------ patch shuffle
def test_patch_shuffle_permutes_whole_patches():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 8, 8, generator=gen)
    assert torch.equal(patch_shuffle(x, 1, torch.Generator().manual_seed(0)), x)
    out = patch_shuffle(x, 4, torch.Generator().manual_seed(1))
    assert not torch.equal(out, x)

    def patches(img):
        return sorted(tuple(p.flatten().tolist()) for p in img.unfold(1, 2, 2).unfold(2, 2, 2).permute(1, 2, 0, 3, 4)
                      .reshape(16, -1))

    for i in range(5):
        assert patches(out[i]) == patches(x[i])
    assert torch.equal(out, patch_shuffle(x, 4, torch.Generator().manual_seed(1)))
    with pytest.raises(RandmaskError, match="does not divide"):
        patch_shuffle(x, 3, gen)


def test_shuffle_protocol_uses_confident_images_of_every_model(net):
    x, y = held_out(300)
    rows = shuffle({"net": net}, x, y, ks=(2, 8), n=20, min_confidence=0.9)
    chosen = select_correct([net], x, y, n=20, min_confidence=0.9)
    probs = predict(net, x[chosen]).softmax(1)
    assert (probs.max(1).values >= 0.9).all() and len(chosen) == rows[0]["n"]
    assert [r["attack"] for r in rows] == ["shuffle2x2", "shuffle8x8"]
    assert rows[1]["accuracy"] <= rows[0]["accuracy"]


def test_paper_names_match_however_the_attack_is_spelt():
    from randmask.core.models import build_model
    from randmask.experiments.protocols import transfer

    torch.manual_seed(0)
    net = build_model("Normal ResNet-18", width=4).eval()
    x, y = torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long)
    rows = transfer(net, {"t": net}, ["CW40(search=1, steps=100)"], x, y, source_name="s", n=4, n_cw=2,
                    clean=False, paper_names={"CW40(search=1, steps=100)": "CW40"})  # steps=100 is the default
    assert rows[0]["attack"] == "CW40(search=1)" and rows[0]["paper_attack"] == "CW40"


# ------------------------------------------------------------------ crafted-set cache
def _untrained(seed: int = 0) -> TinyCNN:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyCNN().eval()


def _fields(crafted) -> list[torch.Tensor]:
    return [crafted.adv, crafted.labels, crafted.logits, crafted.success, crafted.linf, crafted.l2]


def test_craft_cache_reuses_only_an_identical_set(tmp_path, monkeypatch):
    import randmask.experiments.evaluate as evaluate

    model, (x, y) = _untrained(), held_out(24)
    first = craft(model, "PGD2,8", x, y, cache=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    real, calls = evaluate._craft, []
    monkeypatch.setattr(evaluate, "_craft", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = craft(model, "PGD2,8", x, y, cache=tmp_path)
    assert calls == [] and all(torch.equal(a, b) for a, b in zip(_fields(first), _fields(again), strict=True))
    assert again.success.dtype == torch.bool and again.labels.dtype == torch.long
    craft(model, "PGD1,8", x, y, cache=tmp_path)            # another step size
    craft(model, "PGD2,8", x, y, cache=tmp_path, seed=1)    # another seed
    craft(model, "PGD2,8", x[:20], y[:20], cache=tmp_path)  # other images
    craft(model, "PGD2,8", x, y, cache=tmp_path, quantize_images=False)
    craft(_untrained(1), "PGD2,8", x, y, cache=tmp_path)    # other weights
    assert len(calls) == 5 and len(list(tmp_path.glob("*.safetensors"))) == 6


def test_cache_entries_keep_the_key_names_of_earlier_versions(tmp_path, monkeypatch):
    # entries crafted before Crafted merged into AttackResult store logits and success as source_logits and
    # attack_success: both directions must keep those names, field by field
    from safetensors.torch import load_file, save_file

    import randmask.experiments.evaluate as evaluate

    model, (x, y) = _untrained(), held_out(8)
    first = craft(model, "FGSM8", x, y, cache=tmp_path)
    (entry,) = tmp_path.glob("*.safetensors")
    stored = load_file(entry)
    assert set(stored) == {"adv", "labels", "source_logits", "attack_success", "linf", "l2"}
    assert torch.equal(stored["source_logits"], first.logits) and torch.equal(stored["attack_success"], first.success)
    marked = {**stored, "source_logits": stored["source_logits"] + 7, "attack_success": ~stored["attack_success"],
              "l2": stored["l2"] + 1}
    save_file(marked, str(entry))
    monkeypatch.setattr(evaluate, "_craft", lambda *a, **k: pytest.fail("an old-style entry was not read"))
    again = craft(model, "FGSM8", x, y, cache=tmp_path)
    assert torch.equal(again.logits, first.logits + 7) and torch.equal(again.success, ~first.success)
    assert torch.equal(again.l2, first.l2 + 1) and torch.equal(again.linf, first.linf)
    assert torch.equal(again.pred, (first.logits + 7).argmax(1)) and torch.equal(again.fooled, first.fooled)


def test_a_second_crafter_of_one_entry_waits_for_the_first_and_reads_its_set(tmp_path, monkeypatch):
    # reproduce --jobs runs experiments that share a crafted set in separate processes; flock locks conflict
    # between file descriptors, so a thread of this process stands in for the other process
    import threading

    from filelock import FileLock

    import randmask.experiments.evaluate as evaluate

    model, (x, y) = _untrained(), held_out(16)
    reference = craft(model, "FGSM8", x, y)  # no cache: what the first crafter would store
    runner = evaluate.parse_attack("FGSM8").build(model, seed=0)  # as craft builds it
    entry = tmp_path / f"{evaluate.crafted_fingerprint(model, runner, x, y, True, evaluate.DEFAULT_BATCH)}.safetensors"
    calls, result = [], {}
    monkeypatch.setattr(evaluate, "_craft", lambda *a, **k: calls.append(1) or reference)
    with FileLock(entry.with_name(f".{entry.name}.lock")):  # the first crafter is at work
        waiting = threading.Thread(target=lambda: result.setdefault("set", craft(model, "FGSM8", x, y, cache=tmp_path)))
        waiting.start()
        waiting.join(timeout=1.0)
        assert waiting.is_alive() and not calls  # it waits instead of crafting the same set again
        evaluate._write_crafted(entry, reference)
    waiting.join(timeout=30)
    assert not waiting.is_alive() and not calls
    assert all(torch.equal(a, b) for a, b in zip(_fields(reference), _fields(result["set"]), strict=True))


def test_a_corrupt_cache_entry_is_recomputed_and_replaced(tmp_path):
    model, (x, y) = _untrained(), held_out(16)
    first = craft(model, "FGSM8", x, y, cache=tmp_path)
    (entry,) = tmp_path.glob("*.safetensors")
    entry.write_bytes(b"not a safetensors file")
    again = craft(model, "FGSM8", x, y, cache=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(_fields(first), _fields(again), strict=True))
    assert entry.stat().st_size > 100 and not list(tmp_path.glob(".*.tmp"))


def test_transfer_with_a_cache_gives_the_same_rows_and_a_new_target_costs_no_crafting(tmp_path, monkeypatch):
    import randmask.experiments.evaluate as evaluate

    source, (x, y) = _untrained(), held_out(40)
    targets = {"a": _untrained(1)}
    rows = transfer(source, targets, ["FGSM8", "PGD2,8"], x, y, source_name="s", n=20, n_cw=5, cache=tmp_path)
    monkeypatch.setattr(evaluate, "_craft", lambda *a, **k: pytest.fail("crafted again despite the cache"))
    more = transfer(source, {**targets, "b": _untrained(2)}, ["FGSM8", "PGD2,8"], x, y, source_name="s", n=20,
                    n_cw=5, cache=tmp_path)
    assert [r for r in more if r["target"] != "b"] == rows
    assert {r["target"] for r in more} == {"s", "a", "b"}


def test_a_rerun_with_a_cache_evaluates_only_new_or_changed_targets(tmp_path, monkeypatch):
    import randmask.experiments.evaluate as evaluate

    source, (x, y) = _untrained(), held_out(120)
    a, b = _untrained(1), _untrained(2)
    attacks = ["FGSM32", "PGD4,32"]  # large budgets: the untrained source is fooled, so each set has images
    rows = transfer(source, {"a": a}, attacks, x, y, source_name="s", n=20, n_cw=5, cache=tmp_path)
    assert all(r["n"] > 0 for r in rows if r["metric"] == "defense_rate")
    assert rows == transfer(source, {"a": a}, attacks, x, y, source_name="s", n=20, n_cw=5)  # same as uncached
    entries = sorted((tmp_path / "predictions").glob("*.safetensors"))
    assert len(entries) == 2 + 2  # a on each attack's set and on the pool; s on the pool
    real, seen = evaluate.predict, []
    monkeypatch.setattr(evaluate, "predict", lambda model, *args, **kw: seen.append(model) or real(model, *args, **kw))
    more = transfer(source, {"a": a, "b": b}, attacks, x, y, source_name="s", n=20, n_cw=5, cache=tmp_path)
    assert [r for r in more if r["target"] != "b"] == rows
    assert not any(m is a for m in seen) and sum(m is b for m in seen) == 3  # b: two attack sets and the pool
    seen.clear()
    with torch.no_grad():
        a.body[-1].weight.add_(0.5)  # other weights: another key, evaluated afresh
    transfer(source, {"a": a}, attacks, x, y, source_name="s", n=20, n_cw=5, cache=tmp_path)
    assert sum(m is a for m in seen) == 3
    monkeypatch.setenv("RANDMASK_EXACT", "1")  # the exact path never reads the fast path's predictions
    seen.clear()
    transfer(source, {"a": a}, attacks, x, y, source_name="s", n=20, n_cw=5, cache=tmp_path)
    assert sum(m is a for m in seen) == 3


def test_a_corrupt_prediction_entry_is_recomputed_and_replaced(tmp_path):
    from randmask.experiments.evaluate import predicted_labels

    model, (x, _) = _untrained(), held_out(16)
    first = predicted_labels(model, x, cache=tmp_path)
    (entry,) = (tmp_path / "predictions").glob("*.safetensors")
    entry.write_bytes(b"not a safetensors file")
    assert torch.equal(predicted_labels(model, x, cache=tmp_path), first)
    assert entry.stat().st_size > 50 and torch.equal(first, model(x).argmax(1))


def test_noise_graybox_and_whitebox_reruns_reuse_every_prediction(tmp_path, monkeypatch):
    import randmask.experiments.evaluate as evaluate
    from randmask.experiments.corruptions import noise
    from randmask.experiments.protocols import graybox, whitebox

    (x, y), a, b = held_out(40), _untrained(1), _untrained(2)
    first = [noise({"a": a, "b": b}, x, y, sigmas=(0.05, 0.1), cache=tmp_path),
             graybox({"a": a}, {"b": b}, x, y, attack="FGSM8", n=20, n_cw=5, cache=tmp_path),
             whitebox({"a": a}, ["FGSM8"], x, y, cache=tmp_path)]
    assert first[0] == noise({"a": a, "b": b}, x, y, sigmas=(0.05, 0.1))  # the same rows as uncached
    real, seen = evaluate.predict, []
    monkeypatch.setattr(evaluate, "predict", lambda model, *args, **kw: seen.append(model) or real(model, *args, **kw))
    assert first[0] == noise({"a": a, "b": b}, x, y, sigmas=(0.05, 0.1), cache=tmp_path)
    assert first[2] == whitebox({"a": a}, ["FGSM8"], x, y, cache=tmp_path)
    assert seen == []  # no noisy, clean or adversarial pass is repeated
    assert first[1] == graybox({"a": a}, {"b": b}, x, y, attack="FGSM8", n=20, n_cw=5, cache=tmp_path)
    assert seen and all(model is a for model in seen)  # only the source, choosing the images it attacks


def test_transfer_says_each_stage_and_counts_crafted_images_by_craft_batch(net, other):
    x, y = held_out(120)
    calls, stages = [], []
    transfer(net, {"self": net, "other": other}, ["FGSM4"], x, y, source_name="src", n=30, batch_size=64,
             craft_batch=10, progress=lambda d, t: calls.append((d, t)), stage=stages.append)
    assert calls == [(10, 30), (20, 30), (30, 30)]  # a count as each batch of 10 is crafted, not one at the end
    assert stages[:2] == ["choosing the images src classifies correctly", "crafting FGSM4 against src on 30 images"]
    # target by target (as a cluster evaluates them, one task each): its defense rate, then its clean accuracy
    assert stages[2].startswith("FGSM4: evaluating self (1 of 2) on the ") and "other (2 of 2)" in stages[4]
    assert stages[3] == "clean accuracy of self (1 of 2) on 120 images"
    assert stages[5:] == ["clean accuracy of other (2 of 2) on 120 images"]
