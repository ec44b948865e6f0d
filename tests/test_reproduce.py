"""The reproduce pipeline end to end on a tiny stand-in zoo (width-4 untrained nets made confident)."""
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from randmask.core import cluster
from randmask.core.models import build_model
from randmask.experiments.checkpoint import save_checkpoint
from randmask.results.plan import ACCURACY_CONTROLS, MATCHED, PRESETS, experiments, recorded_runs
from randmask.results.reproduce import reproduce
from randmask.results.verdict_rule import compare

TINY = dict(n_pool=200, n=12, n_cw=3, n_whitebox=12, n_noise=24, n_shuffle=12, n_beyond=6, cw="CW40(search=2, steps=5)",
            square="Square{eps}(queries=10)", apgd="APGD{eps}(steps=3)", beyond_eps=(8, 16))


def _fake_zoo(root, names):
    from randmask.results.zoo import DEFAULT_WIDTH, ENSEMBLES, ZOO

    planned = {e.name: e for e in ZOO}
    for name in names:
        dataset, folder = name.split("/")
        entry = planned.get(name)
        if entry is not None:
            notation, seed, mask_seed, label = entry.notation, entry.seed, entry.mask_seed, entry.label
        else:
            notation, seed, mask_seed = ENSEMBLES[name][0] if name in ENSEMBLES else folder, 0, 0
            notation, label = notation.replace("x", "×").replace("_", " "), ""
        # width 4 is cheapest; 0.9-ShallowDC would drop all 4 channels of a layer there, so it needs 8
        width = 8 if "DC" in notation else 4
        model = build_model(notation, dataset=dataset, width=width, seed=seed, mask_seed=mask_seed)
        with torch.no_grad():  # a large output scale makes the untrained nets confident (patch shuffle needs it)
            for module in model.modules():
                if isinstance(module, torch.nn.Linear):
                    module.weight.mul_(200)
        # as `zoo train` exports: controls and wider nets carry a label ('0.7-Shallow@w32'), the rest their notation
        labelled = entry is not None and (entry.matched_to or entry.width != DEFAULT_WIDTH)
        extra = {"clean_accuracy": 0.1, "train_time_s": 60.0, **({"label": label} if labelled else {})}
        save_checkpoint(model, root / name, extra=extra)


def test_missing_models_are_reported_as_pending(tmp_path, data_dir):
    status = reproduce("quick", zoo_root=tmp_path / "empty", out=tmp_path, overrides=TINY, only=["table3_shuffle"])
    assert status["table3_shuffle"]["ran"] is False
    report = (tmp_path / "REPRODUCTION.md").read_text()
    assert "Pending: the zoo lacks `cifar10/Normal_ResNet-18`" in report


@pytest.mark.slow
def test_reproduce_writes_every_table_and_a_regenerable_report(tmp_path, data_dir):
    plan = experiments(PRESETS["quick"])
    names = sorted({n for exp in plan for n in exp.needs + exp.wants} - {"cifar10/0.85-ShallowEN"})
    _fake_zoo(tmp_path / "zoo", names)
    status = reproduce("quick", zoo_root=tmp_path / "zoo", out=tmp_path / "out", overrides=TINY,
                       cache=tmp_path / "crafted")
    assert all(s["ran"] for s in status.values()), status
    assert len(list((tmp_path / "crafted").glob("*.safetensors"))) > 10
    results = tmp_path / "out" / "results"
    for exp in plan:
        frame = pd.read_csv(results / f"{exp.key}.csv")
        assert {"source", "target", "attack", "n", "accuracy", "ci_low", "ci_high"} <= set(frame.columns)
        measured = frame[frame["n"] > 0]  # an untrained source may be fooled by nothing: n = 0, no interval
        assert ((measured["ci_low"] <= measured["accuracy"]) & (measured["accuracy"] <= measured["ci_high"])).all()
        assert frame.loc[frame["n"] == 0, "accuracy"].isna().all()
    t2 = pd.read_csv(results / "table2_transfer.csv")
    assert {"FGSM16", "PGD16", "PGD32"} <= set(t2["attack"].dropna()) and "0.5-ShallowDC" in set(t2["target"])
    for key in ("table11_transfer", "table8_transfer"):  # every available source gets its own table
        frame = pd.read_csv(results / f"{key}.csv")
        assert set(frame["source"].dropna()) - {""} == {"VGG-19" if key == "table11_transfer" else "ResNet-18"}
    beyond_rows = pd.read_csv(results / "beyond_apgd_square.csv")
    beyond = set(beyond_rows["attack"].dropna())
    # both 0.7-Shallow controls face APGD and Square beside it, as 0.9-Shallow's matched Normal does
    assert {"0.7-Shallow", "0.7-ShallowDropout", *(e.label for e in MATCHED.values())} <= set(beyond_rows["target"])
    assert beyond == {"APGD8(steps=3)", "APGD16(steps=3)", "Square8(queries=10)", "Square16(queries=10)"}
    fig7 = pd.read_csv(results / "figure7_ratio.csv")
    ladder = fig7[fig7["ratio"].notna()]
    assert set(ladder["ratio"]) == {0.0, 0.3, 0.5, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95}
    assert set(fig7["source"]) == {"DenseNet-121"}
    # the accuracy-matched Normals join Figure 7 as points without a ratio
    assert set(fig7.loc[fig7["ratio"].isna(), "target"]) == {e.label for e in MATCHED.values()}
    t2_targets = set(t2["target"])
    assert {"0.7-ShallowDropout", "0.5-Shallow, 0.5-Deep", "0.9-Shallow×4"} <= t2_targets
    assert {e.label for e in MATCHED.values()} <= t2_targets
    # the width ladder: every wider net under its own name in the transfer tables, Table 4 and the noise curves
    assert {"Normal ResNet-18@w32", "0.7-Shallow@w32", "0.7-Shallow@w64"} <= t2_targets
    assert {"Normal ResNet-18@w32", "0.5-Shallow@w32", "0.7-Shallow@w32"} <= set(
        pd.read_csv(results / "table4_whitebox.csv")["target"])
    assert {"Normal ResNet-18@w32", "0.9-Shallow@w32", "0.7-Shallow@w64"} <= set(
        pd.read_csv(results / "figure3_noise.csv")["target"])
    scale = pd.read_csv(results / "controls_logit_scale.csv")
    controls = {e.label for es in ACCURACY_CONTROLS.values() for e in es}  # stopped early and trained as long
    assert len(controls) == 7 and sorted(scale["target"]) == sorted(
        {"Normal ResNet-18", "0.7-Shallow", "0.9-Shallow", "0.7-ShallowDropout", "0.7-Shallow@w32", *controls})
    assert (scale["logit_gap_q25"] <= scale["logit_gap_median"]).all()
    assert (scale["logit_gap_median"] <= scale["logit_gap_q75"]).all()
    assert fig7.loc[(fig7["ratio"] == 0.5) & (fig7["attack"] == "PGD16"), "paper_defense_rate"].notna().all()
    report = (tmp_path / "out" / "REPRODUCTION.md").read_text()
    assert "## Verdicts" in report and "Table 2" in report and "paper %" in report and "our clean %" in report
    assert "Attack path: every table ran on the fast default path" in report
    # every paper model but the four masked ENs (0.85-ShallowEN is left out of this fake zoo too) is measured
    assert "The paper's Table 7 names 33 attacked models; 28 of them have numbers of ours here." in report
    assert "Data: `results/table2_transfer.csv` (fast attack path)." in report
    assert "Not yet in the zoo: `cifar10/0.85-ShallowEN`" in report
    assert "| Beyond the paper: 0.9-Shallow keeps more images correct than Normal" in report
    assert "| Controls: transfer robustness is not fully explained by lower clean accuracy" in report
    assert "**How a verdict is reached.**" in report and "| claim | width 16 | width 32 | width 64 | evidence |" in report
    assert "## Controls · lower accuracy" in report and "Mixed training budgets" not in report
    table5 = report.split("## Table 5")[1].split("\n## ")[0]
    assert "| source | target | attack | paper %" in table5 and "| 0.7-Shallow | VGG-19 | FGSM16 |" in table5
    assert "## Figure 7" in report and "![Figure 7](results/plots/figure7_ratio.png)" in report
    pngs = {p.name for p in (results / "plots").glob("*.png")}
    assert {"figure3_noise.png", "figure7_ratio.png", "table2_transfer.png", "table4_whitebox.png"} <= pngs
    assert all((results / "plots" / name).read_bytes()[:4] == b"\x89PNG" for name in pngs)
    first, first_png = report, (results / "plots" / "figure7_ratio.png").read_bytes()
    first_csvs = {p.name: p.read_bytes() for p in results.glob("*.csv")}
    # --jobs 2: the cells as tasks on a local Ray cluster of 2 CPUs, started for the run and gone after it
    again = reproduce("quick", zoo_root=tmp_path / "zoo", out=tmp_path / "out", overrides=TINY, cache=False, jobs=2)
    assert list(again) == list(status)  # plan order, whichever worker finished first
    assert not cluster.connected()
    # seeded: neither the cache nor the cluster's worker processes change a number
    assert {p.name: p.read_bytes() for p in results.glob("*.csv")} == first_csvs
    assert (tmp_path / "out" / "REPRODUCTION.md").read_text() == first
    assert (results / "plots" / "figure7_ratio.png").read_bytes() == first_png
    assert recorded_runs(tmp_path / "out")["table2_transfer"] | {"seconds": 0} == {
        "attacks": "fast", "preset": "quick", "seconds": 0, "threads": 1, "jobs": 2, "ray": True}


def test_compare_uses_interval_overlap():
    a = {"n": 9, "ci_low": 0.6, "ci_high": 0.7}
    assert compare(a, {"n": 9, "ci_low": 0.3, "ci_high": 0.5}) == "higher"
    assert compare(a, {"n": 9, "ci_low": 0.75, "ci_high": 0.8}) == "lower"
    assert compare(a, {"n": 9, "ci_low": 0.65, "ci_high": 0.8}) == "no clear difference"
    assert compare(None, a) == "untested"


def _rate(low, high, n=500):
    return {"n": n, "accuracy": (low + high) / 2, "ci_low": low, "ci_high": high}


def test_the_verdict_rule_gives_each_word():
    from randmask.results.verdict_rule import Comparison, judge

    high, low, mid = _rate(0.6, 0.7), _rate(0.3, 0.4), _rate(0.35, 0.65)
    up, flat, down = Comparison("up", high, low), Comparison("flat", mid, low), Comparison("down", low, high)
    assert judge([up, up]) == "supported"
    assert judge([up, flat]) == "partly supported"
    assert judge([flat, flat]) == "not supported"
    assert judge([up, up, down]) == "contradicted"  # one reversed outweighs any number in the claimed direction
    assert judge([flat, down]) == "contradicted"
    assert judge([]) == "untested"
    # a claim of 'lower' reads the same comparisons the other way round
    assert judge([Comparison("x", low, high, "lower")]) == "supported"
    assert judge([Comparison("x", high, low, "lower")]) == "contradicted"
    # a claim that two rates are alike holds while their intervals overlap
    assert judge([Comparison("x", mid, low, "alike")]) == "supported"
    assert judge([Comparison("x", high, low, "alike")]) == "contradicted"


def test_the_verdict_rule_leaves_rows_below_the_minimum_n_out():
    from randmask.results.verdict_rule import MIN_N, Comparison, judge, outcome

    tiny_reversed = Comparison("CW40 from VGG-19", _rate(0.0, 0.2, n=3), _rate(0.5, 1.0, n=3))
    assert outcome(tiny_reversed) == "not counted" and judge([tiny_reversed]) == "untested"
    up = Comparison("PGD16", _rate(0.6, 0.7), _rate(0.3, 0.4))
    assert judge([up, tiny_reversed]) == "supported"  # the n = 3 row neither supports nor contradicts
    at_minimum = Comparison("x", _rate(0.0, 0.2, n=MIN_N), _rate(0.5, 1.0, n=MIN_N - 1))
    assert outcome(at_minimum) == "not counted" and outcome(at_minimum, min_n=MIN_N - 1) == "reversed"
    empty = Comparison("CW40 fooled nothing", {"n": 0, "accuracy": None, "ci_low": None, "ci_high": None},
                       _rate(0.3, 0.4))
    assert outcome(empty) == "not counted"


def test_intervals_that_touch_do_not_separate():
    from randmask.results.verdict_rule import Comparison, judge, outcome

    touching = Comparison("edge", _rate(0.4, 0.5), _rate(0.3, 0.4))  # 0.4 == 0.4: not wholly above
    assert outcome(touching) == "no separation" and judge([touching]) == "not supported"
    apart = Comparison("edge", _rate(0.4 + 1e-9, 0.5), _rate(0.3, 0.4))
    assert outcome(apart) == "as claimed"
    assert outcome(Comparison("edge", _rate(0.3, 0.4), _rate(0.4, 0.5), "alike")) == "as claimed"


def test_the_rise_with_the_ratio_stops_where_no_higher_ratio_is_clearly_above():
    from randmask.results.verdicts import rises_up_to

    low, mid, high = (_rate(c - 0.04, c + 0.04) for c in (0.3, 0.5, 0.7))
    near_high, above_mid_only = _rate(0.68, 0.74), _rate(0.55, 0.68)
    assert rises_up_to([(0.3, low), (0.5, mid), (0.7, high)]) == 0.7
    assert rises_up_to([(0.3, low), (0.5, mid), (0.7, high), (0.9, near_high)]) == 0.7
    # clearly above 0.3 and 0.5 but not above 0.7: the rise stops at 0.7 even though 0.95 is above 0.5
    assert rises_up_to([(0.3, low), (0.5, mid), (0.7, high), (0.95, above_mid_only)]) == 0.7
    assert rises_up_to([(0.3, low), (0.5, mid), (0.7, high), (0.8, near_high), (0.95, _rate(0.8, 0.9))]) == 0.95
    assert rises_up_to([(0.3, low)]) is None


def test_clean_correct_rate_divides_by_the_images_correct_without_attack():
    from randmask.results.verdicts import clean_correct_rate

    attacked = {"n": 200, "correct": 29, "accuracy": 0.145, "ci_low": 0.1, "ci_high": 0.2}
    rate = clean_correct_rate(attacked, {"n": 200, "correct": 152})
    assert rate["n"] == 152 and rate["correct"] == 29 and rate["accuracy"] == pytest.approx(29 / 152)
    assert rate["ci_low"] < 29 / 152 < rate["ci_high"]
    assert clean_correct_rate(attacked, {"n": 100, "correct": 90}) is None  # other images: no ratio
    assert clean_correct_rate(attacked, None) is None


def test_shallow_ratio_reads_the_notation():
    from randmask.results.paper import shallow_ratio

    assert shallow_ratio("Normal ResNet-18") == 0.0 and shallow_ratio("0.85-Shallow") == 0.85
    assert shallow_ratio(".5-Shallow") == 0.5
    for other in ("0.5-Deep", "0.5-ShallowDC", "0.9-Shallow×2", "0.85-ShallowEN", "DenseNet-121", ""):
        assert shallow_ratio(other) is None


def _transfer_row(target, attack, metric, correct, n, source="VGG-19", paper_attack=None):
    from randmask.core.stats import wilson_interval

    low, high = wilson_interval(correct, n)
    return {"protocol": "transfer", "dataset": "cifar10", "source": source if metric != "clean_accuracy" else "",
            "target": target, "attack": attack, "metric": metric, "n": n, "correct": correct,
            "accuracy": correct / n, "ci_low": low, "ci_high": high, "paper_attack": paper_attack or attack}


def test_figure7_pairs_each_ratio_with_its_clean_accuracy_and_the_papers_numbers(tmp_path):
    from randmask.experiments.evaluate import write_csv
    from randmask.results.figures import figure7
    from randmask.results.paper import load_paper_tables

    rows = [_transfer_row("Normal ResNet-18", "PGD16", "defense_rate", 10, 100),
            _transfer_row("0.7-Shallow", "PGD16", "defense_rate", 60, 100),
            _transfer_row("0.5-Deep", "PGD16", "defense_rate", 40, 100),  # not a ratio point
            _transfer_row("0.7-Shallow", "CW40(search=2, steps=5)", "defense_rate", 70, 80, paper_attack="CW40"),
            _transfer_row("Normal ResNet-18", "", "clean_accuracy", 900, 1000),
            _transfer_row("0.7-Shallow", "", "clean_accuracy", 800, 1000),
            _transfer_row("0.5-Deep", "", "clean_accuracy", 850, 1000)]
    (tmp_path / "results").mkdir()
    write_csv(rows, tmp_path / "results" / "table11_transfer.csv")  # only VGG-19 ran: it becomes the source
    paper = load_paper_tables()
    found, curve = figure7(tmp_path, paper)
    assert [(r["ratio"], r["attack"]) for r in found] == [(0.7, "CW40"), (0.0, "PGD16"), (0.7, "PGD16")]
    seven = {r["attack"]: r for r in found if r["ratio"] == 0.7}
    assert seven["PGD16"]["accuracy"] == 0.6 and seven["PGD16"]["clean_accuracy"] == 0.8
    t11 = paper[(paper["table"] == 11) & (paper["target"] == "0.7-Shallow")]
    expected = t11[t11["attack"] == "PGD16"]["percent"].iloc[0]
    assert seven["PGD16"]["paper_defense_rate"] == expected
    assert seven["PGD16"]["paper_clean_accuracy"] == t11[t11["metric"] == "clean_accuracy"]["percent"].iloc[0]
    assert (0.7, seven["PGD16"]["paper_clean_accuracy"], expected) in curve["PGD16"]
    assert [r for r, _, _ in curve["PGD16"]] == sorted(r for r, _, _ in curve["PGD16"]) and len(curve["PGD16"]) > 5


def test_figure7_draws_one_curve_per_width(tmp_path):
    """Issue 34: the width ladder's nets join Figure 7 as their own curve, named by width; the width-16 curve is
    the one it always was, and a second seed stays off the figure."""
    import pandas as pd

    from randmask.experiments.evaluate import write_csv
    from randmask.results.figures import figure7
    from randmask.results.paper import load_paper_tables
    from randmask.results.plots import ratio_figure

    rows = []
    for target, defended, clean in (("Normal ResNet-18", 10, 900), ("0.7-Shallow", 60, 800),
                                    ("Normal ResNet-18@w32", 20, 930), ("0.7-Shallow@w32", 55, 880),
                                    ("0.7-Shallow@s1m0", 50, 810)):
        rows += [_transfer_row(target, "PGD16", "defense_rate", defended, 100),
                 _transfer_row(target, "", "clean_accuracy", clean, 1000)]
    (tmp_path / "results").mkdir()
    write_csv(rows, tmp_path / "results" / "table2_transfer.csv")
    found, curve = figure7(tmp_path, load_paper_tables())
    assert [(r["width"], r["ratio"], r["target"]) for r in found] == [
        (16, 0.0, "Normal ResNet-18"), (16, 0.7, "0.7-Shallow"), (32, 0.0, "Normal ResNet-18@w32"),
        (32, 0.7, "0.7-Shallow@w32")]
    wide = next(r for r in found if r["target"] == "0.7-Shallow@w32")
    assert (wide["accuracy"], wide["clean_accuracy"]) == (0.55, 0.88)
    figure = ratio_figure(pd.DataFrame(found), ["PGD16"], curve)
    labels = figure.axes[0].get_legend_handles_labels()[1]
    assert {"ours, width 16", "ours, width 32", "paper"} <= set(labels) and "ours" not in labels


def test_beyond_verdict_compares_the_masked_net_with_normal_under_each_attack(tmp_path):
    from randmask.experiments.evaluate import write_csv
    from randmask.results.verdicts import verdicts

    def row(target, attack, correct):
        return {**_transfer_row(target, attack, "accuracy", correct, 200, source=target), "protocol": "beyond"}

    (tmp_path / "results").mkdir()
    write_csv([row("Normal ResNet-18", "APGD16", 0), row("0.9-Shallow", "APGD16", 60),
               row("Normal ResNet-18", "Square16", 2), row("0.9-Shallow", "Square16", 3)],
              tmp_path / "results" / "beyond_apgd_square.csv")
    found = {claim: (result, evidence) for claim, result, evidence in verdicts(tmp_path, PRESETS["quick"])}
    result, evidence = next(v for k, v in found.items() if k.startswith("Beyond the paper"))
    assert result == "partly supported"
    assert "APGD16: 0.9-Shallow vs Normal: 30.0% (n=200) vs 0.0% (n=200) (as claimed)" in evidence
    assert "Square16: 0.9-Shallow vs Normal: 1.5% (n=200) vs 1.0% (n=200) (no separation)" in evidence


def test_the_ensemble_verdicts_judge_clean_accuracy_and_robustness_apart(tmp_path):
    from randmask.experiments.evaluate import write_csv
    from randmask.results.verdicts import EN_CLEAN_CLAIM, EN_ROBUST_CLAIM, verdicts

    def rows(target, attacked_correct, clean_correct):
        return [_transfer_row(target, "PGD16", "defense_rate", attacked_correct, 200),
                _transfer_row(target, None, "clean_accuracy", clean_correct, 10000)]

    (tmp_path / "results").mkdir()
    path = tmp_path / "results" / "table2_transfer.csv"
    write_csv([*rows("0.85-Shallow", 140, 7700), *rows("0.85-ShallowEN", 170, 8000)], path)
    found = {c: (result, evidence) for c, result, evidence in verdicts(tmp_path, PRESETS["quick"])}
    assert found[EN_CLEAN_CLAIM][0] == found[EN_ROBUST_CLAIM][0] == "supported"  # 85% vs 70%, 80% vs 77% clean
    # ensembling five Normal nets raises clean accuracy but not the defense rate
    write_csv([*rows("0.85-Shallow", 140, 7700), *rows("0.85-ShallowEN", 141, 8000),
               *rows("Normal ResNet-18", 1, 9100), *rows("Normal ResNet-18EN", 1, 9300)], path)
    found = {c: (result, evidence) for c, result, evidence in verdicts(tmp_path, PRESETS["quick"])}
    assert found[EN_CLEAN_CLAIM] == ("supported", "clean accuracy: 0.85-ShallowEN vs 0.85-Shallow: 80.0% (n=10000) "
                                     "vs 77.0% (n=10000) (as claimed); Normal ResNet-18EN vs Normal ResNet-18: "
                                     "93.0% (n=10000) vs 91.0% (n=10000) (as claimed)")
    assert found[EN_ROBUST_CLAIM][0] == "not supported"
    write_csv(rows("Normal ResNet-18", 1, 9100), path)
    found = {c: r for c, r, _ in verdicts(tmp_path, PRESETS["quick"])}
    assert found[EN_CLEAN_CLAIM] == found[EN_ROBUST_CLAIM] == "untested"


def test_an_attack_that_fooled_nothing_is_explained(tmp_path):
    from randmask.experiments.evaluate import write_csv
    from randmask.results.report import _unfooled_note

    dead = {**_transfer_row("0.9-Shallow", "CW40", "defense_rate", 0, 1), "n": 0, "accuracy": None,
            "ci_low": None, "ci_high": None, "n_attacked": 100, "source_logit_gap": 4.3512}
    alive = {**_transfer_row("0.9-Shallow", "PGD16", "defense_rate", 50, 90), "n_attacked": 100,
             "source_logit_gap": 4.1}
    (tmp_path / "results").mkdir()
    write_csv([dead, alive], tmp_path / "results" / "table11_transfer.csv")
    notes = _unfooled_note(tmp_path, "table11_transfer")
    assert len(notes) == 1 and notes[0].startswith("CW40 fooled the source on none of the 100 images")
    assert "median gap between its top two logits on these images is 4.35, far below κ = 40." in notes[0]


def test_median_logit_gap_is_the_gap_between_the_two_largest_logits():
    from randmask.experiments.protocols import median_logit_gap

    class Fixed(torch.nn.Module):  # returns the image's first row as logits
        def forward(self, x):
            return x[:, 0, 0, :4]

    logits = torch.tensor([[5.0, 1.0, 2.0, 0.0], [0.0, 3.0, 2.5, 9.0], [1.0, 1.0, 0.0, 0.0]])
    x = torch.zeros(3, 1, 1, 4)
    x[:, 0, 0] = logits
    assert median_logit_gap(Fixed(), x) == pytest.approx(3.0)  # gaps 3, 6, 0
    assert math.isnan(median_logit_gap(Fixed(), x[:0]))


def test_an_experiment_mixing_training_budgets_says_so(tmp_path, data_dir):
    import json

    _fake_zoo(tmp_path / "zoo", ["cifar10/Normal_ResNet-18", "cifar10/0.7-Shallow"])
    for folder, epochs in (("Normal_ResNet-18", 40), ("0.7-Shallow", 15)):
        path = tmp_path / "zoo" / "cifar10" / folder / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "recipe": {"epochs": epochs}}))
    reproduce("quick", zoo_root=tmp_path / "zoo", out=tmp_path, overrides=TINY, only=["table3_shuffle"])
    shuffle = (tmp_path / "REPRODUCTION.md").read_text().split("## Table 3")[1].split("\n## ")[0]
    assert "**Mixed training budgets**: `cifar10/Normal_ResNet-18` 40 epochs, `cifar10/0.7-Shallow` 15 epochs" in shuffle

    path = tmp_path / "zoo" / "cifar10" / "0.7-Shallow" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "recipe": {"epochs": 40}}))
    reproduce("quick", zoo_root=tmp_path / "zoo", out=tmp_path, overrides=TINY, only=["table3_shuffle"])
    assert "Mixed training budgets" not in (tmp_path / "REPRODUCTION.md").read_text()


def test_graybox_columns_name_target_models_as_the_paper_does(tmp_path, data_dir):
    from randmask.experiments.evaluate import write_csv
    from randmask.results.paper import load_paper_tables
    from randmask.results.report import _side_by_side

    _fake_zoo(tmp_path / "zoo", ["cifar10/Normal_ResNet-18", "cifar10/0.7-Shallow", "cifar10/Normal_ResNet-18-s1m0",
                                 "cifar10/VGG-19"])
    reproduce("quick", zoo_root=tmp_path / "zoo", out=tmp_path, overrides=TINY, only=["table5_graybox"])
    path = tmp_path / "results" / "table5_graybox.csv"
    clean = pd.read_csv(path).query("metric == 'clean_accuracy'")
    assert clean["relation"].fillna("").tolist() == ["", "", "other init", ""]  # two sources, two targets

    rows = pd.read_csv(path).to_dict("records")  # give each seed its own clean accuracy to see which one shows
    for row, accuracy in zip([r for r in rows if r["metric"] == "clean_accuracy"], (0.911, 0.8, 0.877, 0.5), strict=True):
        row["accuracy"] = accuracy
    write_csv(rows, path)
    table = _side_by_side(tmp_path, "table5_graybox", 5, load_paper_tables())
    other_init = [line for line in table.splitlines() if "| Normal ResNet-18 (other init) |" in line]
    assert [line.split(" | ")[0].strip("| ") for line in other_init] == ["Normal ResNet-18", "0.7-Shallow"]
    assert all(line.rstrip(" |").endswith("| 87.7 | –") for line in other_init)
    assert "| 0.7-Shallow | Normal ResNet-18 (other init) | FGSM16 | 28.4 |" in table  # the paper's column, any source
    assert "Also measured" not in table


def test_side_by_side_figure_names_the_source_only_when_a_table_has_several():
    from randmask.results.plots import side_by_side_figure

    def row(source, target):
        return {"source": source, "target": target, "attack": "FGSM16", "metric": "defense_rate", "paper": 20.0,
                "ours": 30.0, "ours_low": 25.0, "ours_high": 35.0}

    def labels(rows):
        fig = side_by_side_figure(pd.DataFrame(rows), "t")
        return [t.get_text() for t in fig.axes[0].get_yticklabels()]

    assert labels([row("Normal ResNet-18", "VGG-19"), row("0.7-Shallow", "VGG-19")]) == [
        "Normal ResNet-18 → VGG-19 · FGSM16", "0.7-Shallow → VGG-19 · FGSM16"]
    assert labels([row("DenseNet-121", "VGG-19"), row("DenseNet-121", "0.7-Shallow")]) == [
        "VGG-19 · FGSM16", "0.7-Shallow · FGSM16"]
    assert labels([row("Normal ResNet-18", "Normal ResNet-18"), row("0.7-Shallow", "0.7-Shallow")]) == [
        "Normal ResNet-18 · FGSM16", "0.7-Shallow · FGSM16"]  # white-box: each net attacked by itself


@pytest.mark.parametrize("dif_correct,expected", [(60, "supported"), (150, "contradicted"), (None, "untested")])
def test_graybox_verdict_reads_table5_as_the_paper_does(tmp_path, dif_correct, expected):
    from randmask.experiments.evaluate import write_csv
    from randmask.results.verdicts import GRAYBOX_CLAIM, GRAYBOX_DIF_CLAIM, verdicts

    def row(source, target, relation, correct):
        return {**_transfer_row(target, "FGSM16", "defense_rate", correct, 200, source=source),
                "protocol": "graybox", "relation": relation}

    rows = [row("Normal ResNet-18", "Normal ResNet-18", "other init", 20),
            row("0.7-Shallow", "0.7-Shallow", "other init", 65),
            row("Normal ResNet-18", "0.7-Shallow", "other init", 100)]  # another source: not a twin
    if dif_correct is not None:
        rows.append(row("0.7-Shallow", "0.7-Shallow", "DIF", dif_correct))
    (tmp_path / "results").mkdir()
    write_csv(rows, tmp_path / "results" / "table5_graybox.csv")
    found = {claim: (result, evidence) for claim, result, evidence in verdicts(tmp_path, PRESETS["quick"])}
    result, evidence = found[GRAYBOX_CLAIM]
    assert result == "supported" and "0.7-Shallow vs Normal: 32.5% (n=200) vs 10.0% (n=200) (as claimed)" in evidence
    assert found[GRAYBOX_DIF_CLAIM][0] == expected  # the other-mask twin alike (overlapping) or not


def test_report_names_the_paper_models_not_trained_here_with_their_commands(tmp_path, monkeypatch):
    """REPRODUCTION.md says which of a table's models have only the paper's numbers, and how to train them;
    a second table with the same missing models refers back instead of repeating the list (issue 18)."""
    from randmask.experiments.evaluate import write_csv
    from randmask.results.paper import load_paper_tables
    from randmask.results.report import _side_by_side, zoo_trained_keys
    from randmask.results.zoo import Zoo

    monkeypatch.delenv("RANDMASK_RUNS", raising=False)
    _fake_zoo(tmp_path / "zoo", ["cifar10/Normal_ResNet-18", "cifar10/0.7-Shallow", "cifar10/0.7-Shallow-s1m0"])
    trained = zoo_trained_keys(Zoo(tmp_path / "zoo"))
    assert trained == {"Normal ResNet-18", "0.7-Shallow", "0.7-Shallow@s1m0"}
    rows = [{"protocol": "transfer", "dataset": "cifar10", "source": "DenseNet-121", "target": t, "attack": "FGSM16",
             "metric": "defense_rate", "n": 100, "correct": 50, "accuracy": 0.5, "ci_low": 0.4, "ci_high": 0.6,
             "paper_attack": "FGSM16"} for t in ("Normal ResNet-18", "0.7-Shallow")]
    write_csv(rows, tmp_path / "results" / "table2_transfer.csv")
    listed: set = set()
    first = _side_by_side(tmp_path, "table2_transfer", 7, load_paper_tables(), trained, listed)
    assert 'python -m randmask train "0.9-ShallowEN" --preset quick --out runs/user/0.9-ShallowEN' in first
    assert "python -m randmask zoo train --only cifar10/0.75-Shallow" in first  # planned in the zoo, not trained
    assert "`0.7-Shallow`" not in first.split("Not trained here")[1]  # trained models are not listed
    second = _side_by_side(tmp_path, "table2_transfer", 7, load_paper_tables(), trained, listed)
    assert "the same 31 models as above" in second and "0.75-Shallow" not in second.split("| --- |")[-1]
    assert "Not trained here" not in _side_by_side(tmp_path, "table2_transfer", 7, load_paper_tables())


def test_control_verdicts_compare_each_masked_net_with_its_controls(tmp_path):
    from randmask.experiments.evaluate import write_csv
    from randmask.results.plan import ACCURACY_CONTROLS, MATCHED
    from randmask.results.report import render_report
    from randmask.results.verdicts import (
        ACCURACY_CLAIM,
        ACCURACY_LONG_CLAIM,
        RESAMPLED_CLAIM,
        RESAMPLED_OTHER_CLAIM,
        at_width,
        verdicts,
    )

    matched7, matched9 = MATCHED["0.7-Shallow"].label, MATCHED["0.9-Shallow"].label
    assert matched7.startswith("Normal ResNet-18 (") and matched7 != matched9
    # the controls trained as long: the ones by fewer images defend as the masked nets do, the narrower ones less
    # (those of the zoo's width: a control matched to a wider net is compared at that net's width)
    as_long = {e.label: (lambda masked, control, e=e: masked if e.train_n else control)
               for masked, controls in ACCURACY_CONTROLS.items() if at_width(masked) is not None
               for e in controls if e.trained_as_long}

    def rows(source, masked_correct, control_correct, dropout_correct):
        found = []
        for attack, paper in (("FGSM16", "FGSM16"), ("PGD16", "PGD16"), ("CW40(search=10)", "CW40")):
            for target, correct in (("0.7-Shallow", masked_correct), ("0.9-Shallow", masked_correct),
                                    (matched7, control_correct), (matched9, control_correct),
                                    ("0.7-ShallowDropout", dropout_correct),
                                    *((label, rule(masked_correct, control_correct)) for label, rule in as_long.items())):
                n = 0 if paper == "CW40" and source == "VGG-19" else 200  # CW fooled no VGG-19 image
                row = _transfer_row(target, attack, "defense_rate", min(correct, n), max(n, 1), source=source,
                                    paper_attack=paper)
                found.append({**row, "n": n})
        return found

    (tmp_path / "results").mkdir()
    write_csv(rows("DenseNet-121", 140, 40, 130), tmp_path / "results" / "table2_transfer.csv")
    write_csv(rows("VGG-19", 150, 30, 60), tmp_path / "results" / "table11_transfer.csv")
    write_csv(rows("SENet-18", 40, 150, 60), tmp_path / "results" / "table10_transfer.csv")  # the section's only
    found = {claim: (result, evidence) for claim, result, evidence in verdicts(tmp_path, PRESETS["quick"])}
    result, evidence = found[ACCURACY_CLAIM]
    assert result == "supported"  # 70% / 75% vs 20% / 15% everywhere it was measured
    assert f"PGD16 from DenseNet-121: 0.7-Shallow vs {matched7}: 70.0% (n=200) vs 20.0% (n=200) (as claimed)" \
        in evidence
    assert evidence.count("(not counted: n < 30)") == 2  # CW40 from VGG-19 fooled nothing: n = 0
    assert "stopped early" in ACCURACY_CLAIM and all(label not in evidence for label in as_long)
    result, evidence = found[ACCURACY_LONG_CLAIM]
    assert result == "partly supported"  # above the narrower controls, level with those on fewer images
    assert all(label in evidence for label in as_long) and matched7 not in evidence
    assert "(no separation)" in evidence and "(as claimed)" in evidence and "reversed" not in evidence
    result, evidence = found[RESAMPLED_CLAIM]
    assert result == "partly supported"  # no clear difference from DenseNet-121 (130 vs 140), higher from VGG-19
    assert "FGSM16 from VGG-19: 0.7-Shallow vs 0.7-ShallowDropout: 75.0% (n=200) vs 30.0% (n=200)" in evidence
    assert "PGD16" not in evidence and found[RESAMPLED_OTHER_CLAIM][0] == "partly supported"

    report = render_report(tmp_path, PRESETS["quick"], "quick", {}, _EmptyZoo(tmp_path / "zoo"))
    controls = report.split("## Controls · lower accuracy")[1].split("\n## ")[0]
    assert "Accuracy-matched Normal, stopped early" in controls and "0.7-ShallowDropout" in controls
    # which images each control saw, from its plan entry (the 3-epoch control passes over 40,000, not all 50,000)
    assert f"| {matched9} | 0.9-Shallow | 16 | 3 | 40,000 | 939 |" in controls
    assert "| Normal ResNet-18 (40 epochs, 10,000 images) | 0.7-Shallow | 16 | 40 | 10,000 | 3,160 |" in controls
    assert "all 50,000 training images), trained for fewer epochs" not in controls
    assert f"| DenseNet-121 | PGD16 | 0.9-Shallow | 70.0 [63.3, 75.9] | {matched9} | 20.0 [15.0, 26.1] | higher |" \
        in controls
    # every transfer source is shown; SENet-18's reversed pattern (lower) stays out of the verdicts
    assert f"| SENet-18 | PGD16 | 0.9-Shallow | 20.0 [15.0, 26.1] | {matched9} | 75.0 [68.6, 80.5] | lower |" \
        in controls
    assert "SENet-18" not in found[ACCURACY_CLAIM][1] and "SENet-18" not in found[RESAMPLED_CLAIM][1]


def test_the_resampled_control_is_also_judged_under_attacks_aimed_at_each_net(tmp_path):
    from randmask.experiments.evaluate import write_csv
    from randmask.results.report import render_report
    from randmask.results.verdicts import RESAMPLED_ATTACKED_CLAIM, verdicts

    def attacked(model, attack, correct, n):  # accuracy of a net under an attack aimed at itself
        return {**_transfer_row(model, attack, "accuracy", correct, n, source=model), "protocol": "whitebox"}

    (tmp_path / "results").mkdir()
    write_csv([attacked("0.7-Shallow", "FGSM2", 200, 500), attacked("0.7-ShallowDropout", "FGSM2", 250, 500),
               attacked("0.7-Shallow", "PGD1,4,2", 140, 500), attacked("0.7-ShallowDropout", "PGD1,4,2", 230, 500),
               attacked("Normal ResNet-18", "FGSM2", 400, 500)],  # no partner: not compared
              tmp_path / "results" / "table4_whitebox.csv")
    write_csv([attacked("0.7-Shallow", "Square8(queries=1000)", 5, 200),
               attacked("0.7-ShallowDropout", "Square8(queries=1000)", 6, 200)],
              tmp_path / "results" / "beyond_apgd_square.csv")
    found = {claim: (result, evidence) for claim, result, evidence in verdicts(tmp_path, PRESETS["quick"])}
    result, evidence = found[RESAMPLED_ATTACKED_CLAIM]
    assert result == "contradicted"  # the resampled mask keeps clearly more images twice, and no less once
    assert "Table 4 FGSM2: 40.0% (n=500) vs 50.0% (n=500) (reversed)" in evidence
    assert "Table 4 PGD1,4,2: 28.0% (n=500) vs 46.0% (n=500) (reversed)" in evidence
    assert "APGD-CE / Square Square8(queries=1000): 2.5% (n=200) vs 3.0% (n=200) (no separation)" in evidence
    assert "Normal" not in evidence
    report = render_report(tmp_path, PRESETS["quick"], "quick", {}, _EmptyZoo(tmp_path / "zoo"))
    assert RESAMPLED_ATTACKED_CLAIM in report


def test_control_verdicts_are_untested_without_the_controls(tmp_path):
    from randmask.experiments.evaluate import write_csv
    from randmask.results.verdicts import ACCURACY_CLAIM, RESAMPLED_ATTACKED_CLAIM, RESAMPLED_CLAIM, verdicts

    (tmp_path / "results").mkdir()
    write_csv([_transfer_row("0.7-Shallow", "PGD16", "defense_rate", 100, 200, source="DenseNet-121")],
              tmp_path / "results" / "table2_transfer.csv")
    found = {claim: result for claim, result, _ in verdicts(tmp_path, PRESETS["quick"])}
    assert found[ACCURACY_CLAIM] == found[RESAMPLED_CLAIM] == found[RESAMPLED_ATTACKED_CLAIM] == "untested"


class _EmptyZoo:
    def __init__(self, root):
        self.root = root

    def has(self, name):
        return False

    def trained_refs(self, dataset="cifar10"):
        return []


def test_the_report_says_which_attack_path_made_each_table(tmp_path, monkeypatch):
    from randmask.results.plan import record_run, recorded_runs
    from randmask.results.report import _attack_path_line

    results = tmp_path / "results"
    results.mkdir()
    for key in ("table2_transfer", "table4_whitebox", "figure7_ratio"):  # the last is drawn from table 2's
        (results / f"{key}.csv").write_text("source,target\n")
    keys = ["table2_transfer", "table4_whitebox", "table9_transfer"]
    assert "`table2_transfer` not recorded" in _attack_path_line(tmp_path, recorded_runs(tmp_path), keys)
    record_run(tmp_path, "table2_transfer", {"attacks": "exact", "seconds": 1.0})
    record_run(tmp_path, "table4_whitebox", {"attacks": "exact", "seconds": 2.0})
    assert _attack_path_line(tmp_path, recorded_runs(tmp_path), keys).startswith("Attack path: every table ran with `--exact`")
    record_run(tmp_path, "table4_whitebox", {"attacks": "fast", "seconds": 3.0})
    assert recorded_runs(tmp_path)["table2_transfer"]["seconds"] == 1.0  # other records stay
    assert _attack_path_line(tmp_path, recorded_runs(tmp_path), keys) == (
        "Attack path per table: `table2_transfer` exact, `table4_whitebox` fast.")


def test_each_width_with_results_gets_its_own_verdict_column(tmp_path):
    from randmask.experiments.evaluate import write_csv
    from randmask.results.report import render_report
    from randmask.results.verdict_rule import result_widths
    from randmask.results.verdicts import RAISE_CLAIM, verdicts

    (tmp_path / "results").mkdir()
    write_csv([_transfer_row("Normal ResNet-18", "PGD16", "defense_rate", 2, 200, source="DenseNet-121"),
               _transfer_row("0.7-Shallow", "PGD16", "defense_rate", 120, 200, source="DenseNet-121"),
               _transfer_row("Normal ResNet-18@w32", "PGD16", "defense_rate", 2, 200, source="DenseNet-121"),
               _transfer_row("0.7-Shallow@w32", "PGD16", "defense_rate", 3, 200, source="DenseNet-121")],
              tmp_path / "results" / "table2_transfer.csv")
    assert result_widths(tmp_path) == [16, 32]
    narrow = {c: r for c, r, _ in verdicts(tmp_path, PRESETS["quick"])}
    wide = {c: (r, e) for c, r, e in verdicts(tmp_path, PRESETS["quick"], width=32)}
    assert narrow[RAISE_CLAIM] == "supported" and wide[RAISE_CLAIM][0] == "not supported"
    assert "0.7-Shallow vs Normal: 1.5% (n=200) vs 1.0% (n=200)" in wide[RAISE_CLAIM][1]
    report = render_report(tmp_path, PRESETS["quick"], "quick", {}, _EmptyZoo(tmp_path / "zoo"))
    assert "| claim | width 16 | width 32 | evidence |" in report
    assert f"| {RAISE_CLAIM} | supported | not supported | **width 16**: " in report


def test_the_beyond_section_gives_both_denominators(tmp_path):
    from randmask.experiments.evaluate import write_csv
    from randmask.results.report import _ours_only

    def row(target, attack, metric, correct):
        return {**_transfer_row(target, attack, metric, correct, 200, source=target), "protocol": "beyond"}

    (tmp_path / "results").mkdir()
    write_csv([row("0.9-Shallow", None, "clean_accuracy", 152), row("0.9-Shallow", "Square4", "accuracy", 29)],
              tmp_path / "results" / "beyond_apgd_square.csv")
    table = _ours_only(tmp_path, "beyond_apgd_square")
    assert "| accuracy % [95% CI] | n | over clean-correct % [95% CI] | clean-correct n |" in table
    assert "| 0.9-Shallow | 0.9-Shallow | Square4 | 14.5 [10.3, 20.0] | 200 | 19.1 [13.6, 26.1] | 152 |" in table


def test_only_nothing_refuses_experiment_keys_beside_it(tmp_path):
    from randmask.core.errors import RandmaskError

    with pytest.raises(RandmaskError, match="'nothing' re-renders the report"):
        reproduce("quick", zoo_root=tmp_path / "zoo", out=tmp_path, only=["nothing", "table3_shuffle"])
    assert not (tmp_path / "REPRODUCTION.md").exists()


@pytest.mark.slow
def test_only_nothing_rerenders_the_committed_report_byte_for_byte(tmp_path):
    """`reproduce --only nothing` runs no experiment: from the committed results/ it writes the committed
    REPRODUCTION.md again, byte for byte, and a second run changes nothing (figures included)."""
    import shutil

    from randmask.core.settings import PROJECT_ROOT

    shutil.copytree(PROJECT_ROOT / "results", tmp_path / "results")
    committed = (PROJECT_ROOT / "REPRODUCTION.md").read_bytes()
    assert reproduce("quick", out=tmp_path, only=["nothing"]) == {}
    first = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert first[Path("REPRODUCTION.md")] == committed
    reproduce("quick", out=tmp_path, only=["nothing"])
    assert {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == first
