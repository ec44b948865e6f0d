"""The reproduce pipeline end to end on a tiny stand-in zoo (width-4 untrained nets made confident)."""
import pandas as pd
import pytest
import torch

from randmask.checkpoint import save_checkpoint
from randmask.models import build_model
from randmask.reproduce import PRESETS, compare, experiments, reproduce

TINY = dict(n_pool=200, n=12, n_cw=3, n_whitebox=12, n_noise=24, n_shuffle=12, n_beyond=6, cw="CW40(search=2, steps=5)",
            square="Square16(queries=10)", apgd="APGD16(steps=3)")


def _fake_zoo(root, names):
    for name in names:
        dataset, folder = name.split("/")
        seed = mask_seed = 0
        if "-s" in folder and folder.rsplit("-s", 1)[1][:1].isdigit():
            folder, tail = folder.rsplit("-s", 1)
            seed, mask_seed = (int(v) for v in tail.split("m"))
        notation = folder.replace("x", "×").replace("_", " ")
        model = build_model(notation, dataset=dataset, width=4, seed=seed, mask_seed=mask_seed)
        with torch.no_grad():  # a large output scale makes the untrained nets confident (patch shuffle needs it)
            for module in model.modules():
                if isinstance(module, torch.nn.Linear):
                    module.weight.mul_(200)
        save_checkpoint(model, root / name, extra={"clean_accuracy": 0.1, "train_time_s": 60.0})


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
    status = reproduce("quick", zoo_root=tmp_path / "zoo", out=tmp_path / "out", overrides=TINY)
    assert all(s["ran"] for s in status.values()), status
    results = tmp_path / "out" / "results"
    for exp in plan:
        frame = pd.read_csv(results / f"{exp.key}.csv")
        assert {"source", "target", "attack", "n", "accuracy", "ci_low", "ci_high"} <= set(frame.columns)
        measured = frame[frame["n"] > 0]  # an untrained source may be fooled by nothing: n = 0, no interval
        assert ((measured["ci_low"] <= measured["accuracy"]) & (measured["accuracy"] <= measured["ci_high"])).all()
        assert frame.loc[frame["n"] == 0, "accuracy"].isna().all()
    t2 = pd.read_csv(results / "table2_transfer.csv")
    assert {"FGSM16", "PGD16", "PGD32"} <= set(t2["attack"].dropna()) and "0.5-ShallowDC" in set(t2["target"])
    report = (tmp_path / "out" / "REPRODUCTION.md").read_text()
    assert "## Verdicts" in report and "Table 2" in report and "paper %" in report
    assert "Not yet in the zoo: `cifar10/0.85-ShallowEN`" in report
    first = report
    reproduce("quick", zoo_root=tmp_path / "zoo", out=tmp_path / "out", overrides=TINY)
    assert (tmp_path / "out" / "REPRODUCTION.md").read_text() == first  # seeded: rerunning reproduces it


def test_compare_uses_interval_overlap():
    a = {"n": 9, "ci_low": 0.6, "ci_high": 0.7}
    assert compare(a, {"n": 9, "ci_low": 0.3, "ci_high": 0.5}) == "higher"
    assert compare(a, {"n": 9, "ci_low": 0.75, "ci_high": 0.8}) == "lower"
    assert compare(a, {"n": 9, "ci_low": 0.65, "ci_high": 0.8}) == "no clear difference"
    assert compare(None, a) == "untested"


def test_verdict_summaries():
    from randmask.reproduce import verdict

    assert verdict(["higher", "higher"], "higher") == "supported"
    assert verdict(["higher", "no clear difference"], "higher") == "partly supported"
    assert verdict(["lower", "no clear difference"], "higher") == "contradicted"
    assert verdict(["lower", "higher"], "higher") == "mixed"
    assert verdict(["no clear difference"], "lower") == "no clear difference"
    assert verdict(["untested", "higher"], "higher") == "untested"
    assert compare({"n": 0, "ci_low": 0, "ci_high": 1}, {"n": 5, "ci_low": 0, "ci_high": 1}) == "untested"
