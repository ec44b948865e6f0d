"""Every shipped zoo checkpoint loads, keeps its recorded masks, and still has its stated accuracy."""
import json
import shutil

import pytest
import torch

from randmask.core.masks import RandomMask, layer_seed, make_mask
from randmask.experiments.checkpoint import load_model
from randmask.experiments.data import load_test_sample
from randmask.experiments.train import accuracy
from randmask.results.zoo import BELOW_THEIR_NET, CHECK_N, ENSEMBLES, ZOO, ZOO_ROOT, list_zoo, zoo_name

ZOO_LABELS = {e.name: e.label for e in ZOO}

SHIPPED = sorted(p.parent for p in ZOO_ROOT.glob("*/*/config.json"))


def test_zoo_plan_names_are_unique_and_cover_the_issue():
    names = [e.name for e in ZOO]
    assert len(names) == len(set(names))
    notations = {e.notation for e in ZOO if e.dataset == "cifar10"}
    assert {"Normal ResNet-18", "0.3-Shallow", "0.5-Shallow", "0.7-Shallow", "0.85-Shallow", "0.9-Shallow",
            "0.5-Deep", "0.7-Deep", "0.5-ShallowDC", "0.5-ShallowSM", "0.9-Shallow×2", "DenseNet-121",
            "VGG-19"} <= notations
    assert sum(e.notation == "0.85-Shallow" for e in ZOO) == 5
    assert len(list_zoo()) == len(ZOO) + len(ENSEMBLES) == len(ZOO) + 2


def test_each_en_has_five_members_with_consecutive_seeds_and_stays_out_of_the_transfer_targets():
    from randmask.results.plan import TRANSFER_TARGETS

    assert set(ENSEMBLES) == {"cifar10/0.85-ShallowEN", "cifar10/Normal_ResNet-18EN"}
    for name, (notation, members) in ENSEMBLES.items():
        assert [e.seed for e in members] == [0, 1, 2, 3, 4] and name in TRANSFER_TARGETS
        assert {e.notation for e in members} == {notation.removesuffix("EN")} and not any(e.matched_to for e in members)
        masked = notation.startswith("0.")
        assert [e.mask_seed for e in members] == ([0, 1, 2, 3, 4] if masked else [0] * 5)
    labels = [ZOO_LABELS[n] for n in TRANSFER_TARGETS if n in ZOO_LABELS]
    assert len(labels) == len(set(labels))  # no two targets a table would name alike (Normal members stay out)
    assert all(row["current"] is False for row in list_zoo() if not row["trained"])


def test_zoo_plan_trains_in_the_issues_stage_order():
    stages = [e.stage for e in ZOO]
    assert stages == sorted(stages) and set(stages) == {1, 2, 3, 4, 5, 6, 7, 8}
    by_stage = {s: {e.notation for e in ZOO if e.stage == s and e.dataset == "cifar10"} for s in range(1, 7)}
    assert {"Normal ResNet-18", "0.5-ShallowDC", "0.5-ShallowSM", "DenseNet-121", "VGG-19"} <= by_stage[1]
    assert {"0.3-Shallow", "0.85-Shallow", "0.7-Deep", "0.9-Shallow×2"} <= by_stage[2]
    assert by_stage[3] == {"0.85-Shallow"}
    assert by_stage[4] == {"SENet-18", "ResNet-50"}  # "if time allows": after everything the issue requires
    # the controls before the rest of Table 7, which comes in the order its issue asks for
    assert by_stage[5] == {"Normal ResNet-18", "0.7-ShallowDropout"}
    rest = [e.notation for e in ZOO if e.stage == 6]
    assert rest[:4] == ["0.75-Shallow", "0.8-Shallow", "0.95-Shallow", "0.3-Deep"]
    assert set(rest[4:8]) == {"0.7-ShallowDC", "0.9-ShallowDC", "0.7-ShallowSM", "0.9-ShallowSM"}
    assert rest[-3:] == ["0.5-Shallow×2", "0.7-Shallow×2", "0.9-Shallow×4"] and len(rest) == 16
    assert [(e.notation, e.seed) for e in ZOO if e.stage == 7] == [("Normal ResNet-18", i) for i in (2, 3, 4)]


def test_accuracy_matched_controls_keep_the_recipe_but_its_length():
    from randmask.experiments.train_config import asdict_json
    from randmask.results.plan import MATCHED as matched  # the early-stopped control of each masked net
    from randmask.results.zoo import planned_config

    assert set(matched) == {"0.7-Shallow", "0.9-Shallow"}
    base = asdict_json(planned_config(next(e for e in ZOO if e.notation == "Normal ResNet-18" and not e.matched_to)))
    for entry in matched.values():
        recipe = asdict_json(planned_config(entry))
        # a shorter schedule of the same shape, over all or most training images
        assert {k for k in recipe if recipe[k] != base[k]} <= {"epochs", "train_n"}
        assert recipe["epochs"] < base["epochs"] and (recipe["train_n"] or 50_000) >= 40_000
        images = f"n{entry.train_n}" if entry.train_n else ""
        assert entry.name == f"cifar10/Normal_ResNet-18-e{entry.epochs}{images}"
        assert entry.label.startswith(f"Normal ResNet-18 ({entry.epochs} epochs")

    def steps(e):
        return e.epochs * -(-(e.train_n or 50_000) // 128)
    assert steps(matched["0.7-Shallow"]) > steps(matched["0.9-Shallow"])  # the more accurate net needs more


def test_controls_trained_as_long_differ_from_the_baseline_only_in_images_or_width():
    """Issue 34: beside each early-stopped control, Normals that train the masked nets' full schedule and reach
    their accuracy by fewer images or by a narrower width, each named and labelled by what sets it apart; a
    wider masked net's control differs from the Normal of that width the same way."""
    from randmask.core.notation import parse_ref
    from randmask.experiments.train_config import asdict_json
    from randmask.results.plan import ACCURACY_CONTROLS
    from randmask.results.zoo import planned_config

    ways = set()
    for masked, controls in ACCURACY_CONTROLS.items():
        width = parse_ref(masked).width
        normal = next(e for e in ZOO if e.notation == "Normal ResNet-18" and not e.matched_to and e.width == width)
        base = asdict_json(planned_config(normal))
        early = [e for e in controls if not e.trained_as_long]
        assert controls == early + [e for e in controls if e.trained_as_long], masked  # stopped early first
        assert len(early) == (1 if width == 16 else 0), masked  # early-stopped controls only at the zoo's width
        for entry in controls[len(early):]:
            recipe = asdict_json(planned_config(entry))
            changed = {k for k in recipe if recipe[k] != base[k]}
            # a width below 8 also trains without channels_last (torch 2.14's CPU kernels hang there)
            assert changed in ({"train_n"}, {"width"}, {"width", "channels_last"}), (entry.name, changed)
            assert recipe["epochs"] == base["epochs"]
            ways.add((masked, "images" if entry.train_n else "width"))
            at_width = f"width {entry.width}, " if entry.width != 16 else ""
            if entry.train_n:
                assert entry.name.endswith(f"-e40n{entry.train_n}")
                assert entry.label == f"Normal ResNet-18 ({at_width}40 epochs, {entry.train_n:,} images)"
            else:
                assert entry.name == f"cifar10/Normal_ResNet-18-w{entry.width}-e40"
                assert entry.label == f"Normal ResNet-18 ({at_width}40 epochs)"
    # both ways for both masked nets, as the issue asks; fewer images for 0.7-Shallow at width 32
    assert ways == {(m, way) for m in ("0.7-Shallow", "0.9-Shallow") for way in ("images", "width")} | {
        ("0.7-Shallow@w32", "images")}


def test_shipped_controls_land_within_their_accuracy_window():
    shipped = {p.parent.relative_to(ZOO_ROOT).as_posix(): json.loads(p.read_text())
               for p in ZOO_ROOT.glob("*/*/config.json")}
    checked = 0
    for entry in ZOO:
        if entry.matched_to and entry.name in shipped:
            control = shipped[entry.name]["clean_accuracy"]
            masked = shipped[zoo_name(entry.matched_to)]["clean_accuracy"]
            if entry.name in BELOW_THEIR_NET:  # no whole width gets within 1.5 points: below, never above
                assert masked - 0.05 <= control < masked, (entry.name, control, masked)
            else:
                assert abs(control - masked) <= 0.015, (entry.name, control, masked)
            assert shipped[entry.name]["label"] == entry.label
            checked += 1
    if not checked:
        pytest.skip("no accuracy-matched control shipped yet")


@pytest.mark.parametrize("folder", SHIPPED, ids=[str(p.relative_to(ZOO_ROOT)) for p in SHIPPED])
def test_shipped_checkpoint_matches_its_config(folder):
    model, config = load_model(folder)  # verifies every mask against the recorded mask seed
    meta = json.loads((folder / "config.json").read_text())
    assert meta["weights_dtype"] == "float16" and meta["train_time_s"] > 0
    masks = [m for m in model.modules() if isinstance(m, RandomMask)]
    for index, module in enumerate(masks if not hasattr(model, "members") else []):
        expected = make_mask(module.shape, module.ratio, module.kind, layer_seed(config["mask_seed"], index))
        assert torch.equal(module.mask, expected)
    x, y = load_test_sample(config["dataset"], CHECK_N)
    correct, n = accuracy(model, x, y)
    assert abs(correct / n - meta[f"clean_accuracy_first{CHECK_N}"]) <= 2 / CHECK_N
    assert abs(correct / n - meta["clean_accuracy"]) < 0.05  # the subset agrees with the full test set


def test_zoo_table_lists_every_shipped_model_with_the_papers_gap(tmp_path):
    from randmask.core.models import build_model
    from randmask.experiments.checkpoint import save_checkpoint
    from randmask.results.paper import load_paper_tables
    from randmask.results.zoo_table import zoo_markdown

    for notation, acc, label in (("Normal ResNet-18", 0.9, ""), ("0.7-Shallow", 0.75, ""),
                                 ("Normal ResNet-18", 0.76, "Normal ResNet-18 (4 epochs)")):  # a control, not the base
        model = build_model(notation, dataset="cifar10", width=4)
        folder = notation.replace(" ", "_") + ("-e4" if label else "")
        save_checkpoint(model, tmp_path / "cifar10" / folder, dtype=torch.float16,
                        extra={"clean_accuracy": acc, "clean_accuracy_ci95": [acc - 0.01, acc + 0.01],
                               "train_time_s": 120.0, "threads": 1, "host_cpus": 2, **({"label": label} if label else {})})
    lines = zoo_markdown(tmp_path, load_paper_tables())
    shallow = next(line for line in "\n".join(lines).splitlines() if line.startswith("| cifar10/0.7-Shallow"))
    cells = [c.strip() for c in shallow.strip("|").split("|")]
    paper = load_paper_tables()
    t7 = paper[(paper["table"] == 7) & (paper["metric"] == "clean_accuracy")].set_index("target")["percent"]
    assert cells[3] == "75.0 [74.0, 76.0]" and cells[5] == "-15.0"
    assert cells[6] == f"{t7['0.7-Shallow'] - t7['Normal ResNet-18']:+.1f}" and cells[7] == "2.0"
    assert cells[9] == "1 of 2" and cells[10] == "unknown (no recipe recorded)"
    size = sum(f.stat().st_size for f in tmp_path.glob("*/*/*") if f.is_file())
    control = next(line for line in "\n".join(lines).splitlines() if line.startswith("| cifar10/Normal_ResNet-18-e4"))
    assert [c.strip() for c in control.strip("|").split("|")][5:7] == ["-14.0", "–"]  # the paper has no such row
    assert f"3 models, {size / 1e6:.1f} MB in all" in "\n".join(lines)


def test_readme_shows_the_shipped_zoo_as_it_is():
    from randmask.core.settings import PROJECT_ROOT
    from randmask.results.paper import load_paper_tables
    from randmask.results.zoo_table import zoo_markdown

    table = "\n".join(zoo_markdown(paper=load_paper_tables())[2:]).strip()
    assert table in (PROJECT_ROOT / "README.md").read_text(), "run: python -m randmask zoo table --update-readme"


def test_zoo_plan_gives_every_compared_cifar_model_one_recipe():
    from randmask.results.zoo import planned_config

    compared = [e for e in ZOO if e.dataset == "cifar10" and not e.is_source and not e.matched_to]
    recipes = {json.dumps({k: v for k, v in vars(planned_config(e)).items()
                           if k not in ("notation", "seed", "mask_seed", "width")}, sort_keys=True) for e in compared}
    assert len(recipes) == 1 and planned_config(compared[0]).epochs == 40  # the width ladder: only width differs
    assert {planned_config(e).width for e in compared} == {16, 32, 64}
    assert planned_config(compared[0]).label_smoothing == 0.1
    sources = [e for e in ZOO if e.is_source]
    assert {e.dataset for e in sources} == {"cifar10", "mnist"}
    assert all(planned_config(e).label_smoothing == 0 for e in sources)  # CW40 needs unsmoothed logits
    assert {planned_config(e).epochs for e in sources if e.dataset == "cifar10"} == {15}


def test_train_zoo_retrains_a_model_of_an_older_recipe_and_keeps_old_runs(tmp_path, monkeypatch, data_dir):
    from dataclasses import replace

    from randmask.core.models import build_model
    from randmask.experiments.checkpoint import save_checkpoint
    from randmask.experiments.train_config import asdict_json
    from randmask.results import zoo, zoo_table, zoo_train

    entry = zoo.Entry("0.5-Shallow", role="test")
    monkeypatch.setattr(zoo, "ZOO", [entry])
    monkeypatch.setattr(zoo, "ENSEMBLES", {})
    trained = []

    def fake_train(cfg, out, show_bar=None):  # a width-4 net stands in for hours of training
        trained.append(cfg)
        model = build_model(cfg.notation, dataset=cfg.dataset, width=4, mask_seed=cfg.mask_seed)
        save_checkpoint(model, out, extra={"recipe": asdict_json(cfg), "clean_accuracy": 0.1, "train_time_s": 1.0})

    monkeypatch.setattr(zoo_train, "train", fake_train)
    old = replace(zoo.planned_config(entry), epochs=15)
    fake_train(old, tmp_path / "zoo" / entry.name)  # shipped under the old recipe
    fake_train(old, tmp_path / "runs" / entry.name)  # and its finished run, left from an earlier session
    trained.clear()
    assert not zoo.is_current(tmp_path / "zoo" / entry.name, entry)
    assert [(r["trained"], r["current"], r["epochs"]) for r in zoo.list_zoo(tmp_path / "zoo")] == [(True, False, 15)]
    old_config = json.loads((tmp_path / "zoo" / entry.name / "config.json").read_text())
    assert zoo_table.recipe_status(entry.name, {**old_config, "autocast": "fp32"}) == "older: epochs=15 (fp32)"

    said = []
    zoo_train.train_zoo(tmp_path / "runs", tmp_path / "zoo", say=said.append)
    assert [c.epochs for c in trained] == [40]
    assert said[0] == f"{entry.name}: training; progress in {tmp_path / 'runs' / entry.name / 'progress.jsonl'}"
    assert said[1].startswith(f"{entry.name}: in the zoo, ") and said[1].endswith(f"% clean ({tmp_path / 'zoo' / entry.name})")
    assert zoo.is_current(tmp_path / "zoo" / entry.name, entry)
    assert [(r["trained"], r["current"], r["epochs"]) for r in zoo.list_zoo(tmp_path / "zoo")] == [(True, True, 40)]
    shipped = json.loads((tmp_path / "zoo" / entry.name / "config.json").read_text())
    assert zoo_table.recipe_status(entry.name, shipped) == "as planned (?)"
    assert shipped["weights_dtype"] == "float16" and shipped["role"] == "test" and shipped["clean_accuracy_n"] == 10000
    kept = list((tmp_path / "runs" / "cifar10").glob("0.5-Shallow.old-recipe-*"))
    assert len(kept) == 1 and json.loads((kept[0] / "config.json").read_text())["recipe"]["epochs"] == 15

    said.clear()
    zoo_train.train_zoo(tmp_path / "runs", tmp_path / "zoo", say=said.append)  # now current: nothing to do
    assert len(trained) == 1 and said == [f"{entry.name}: already in the zoo ({tmp_path / 'zoo' / entry.name})"]
    with zoo_train.claim(tmp_path / "runs" / entry.name):  # a lane holds it while a retrain is due: said, and skipped
        shutil.rmtree(tmp_path / "zoo" / entry.name)
        said.clear()
        zoo_train.train_zoo(tmp_path / "runs", tmp_path / "zoo", say=said.append)
    assert len(trained) == 1 and said == [f"{entry.name}: another process is training it "
                                          f"({tmp_path / 'runs' / entry.name}.lock); skipped"]


def test_a_wider_net_is_shipped_under_a_label_that_names_its_width(tmp_path, monkeypatch, data_dir):
    """Reports name models by Zoo.label: a width-32 0.7-Shallow shipped without a label would be reported as
    '0.7-Shallow', the width-16 model's name (the old export passed a label for controls only)."""
    from randmask.core.models import build_model
    from randmask.experiments.checkpoint import save_checkpoint
    from randmask.experiments.train_config import asdict_json
    from randmask.results import zoo, zoo_train

    wide, base = zoo.Entry("0.7-Shallow", width=32, role="width ladder"), zoo.Entry("0.7-Shallow")
    monkeypatch.setattr(zoo, "ZOO", [wide, base])
    monkeypatch.setattr(zoo, "ENSEMBLES", {})

    def fake_train(cfg, out, show_bar=None):  # a width-4 net stands in for the hours of training
        model = build_model(cfg.notation, dataset=cfg.dataset, width=4, mask_seed=cfg.mask_seed)
        save_checkpoint(model, out, extra={"recipe": asdict_json(cfg), "clean_accuracy": 0.1, "train_time_s": 1.0})

    monkeypatch.setattr(zoo_train, "train", fake_train)
    zoo_train.train_zoo(tmp_path / "runs", tmp_path / "zoo", say=lambda line: None)
    shipped = zoo.Zoo(tmp_path / "zoo")
    assert (wide.name, base.name) == ("cifar10/0.7-Shallow-w32", "cifar10/0.7-Shallow")
    assert shipped.label(wide.name) == "0.7-Shallow@w32" and shipped.label(base.name) == "0.7-Shallow"
    assert "label" not in shipped.config(base.name)


def test_the_zoo_table_measures_a_wider_nets_gap_against_normal_of_its_own_width(tmp_path):
    """Issue 34's clean gap: a width-32 net's gap is to Normal ResNet-18 at width 32, beside the paper's gap for the
    same model (the old table compared it with the width-16 Normal and found no paper row for its label)."""
    from randmask.results.paper import load_paper_tables
    from randmask.results.zoo_table import clean_gap_markdown, zoo_markdown

    for name, acc, width in (("Normal_ResNet-18", None, 16), ("0.7-Shallow", None, 16),
                             ("Normal_ResNet-18-w32", 0.930, 32), ("0.7-Shallow-w32", 0.900, 32)):
        source = ZOO_ROOT / "cifar10" / name.removesuffix("-w32")
        config = json.loads((source / "config.json").read_text())
        if width != 16:
            config.update(clean_accuracy=acc, label=f"{config['notation']}@w{width}")
            config["recipe"]["width"] = width
        (tmp_path / "cifar10" / name).mkdir(parents=True)
        (tmp_path / "cifar10" / name / "config.json").write_text(json.dumps(config))
    lines = "\n".join(zoo_markdown(tmp_path, load_paper_tables())).splitlines()
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in lines if line.startswith("| cifar10/")}
    assert rows["cifar10/0.7-Shallow-w32"][5] == "-3.0"  # 90.0 against 93.0, not against width 16's Normal
    assert rows["cifar10/Normal_ResNet-18-w32"][5] == "+0.0"
    assert rows["cifar10/0.7-Shallow-w32"][6] == rows["cifar10/0.7-Shallow"][6] != "–"  # the paper's 0.7-Shallow

    # the report's clean-gap table: a column pair per width shipped, each gap to that width's Normal
    gaps = clean_gap_markdown(tmp_path, load_paper_tables())[0].splitlines()
    assert gaps[0] == ("| model | paper clean % | paper gap | width 16 clean % | width 16 gap | width 32 clean % "
                       "| width 32 gap |")
    normal16 = json.loads((ZOO_ROOT / "cifar10" / "Normal_ResNet-18" / "config.json").read_text())["clean_accuracy"]
    shallow16 = json.loads((ZOO_ROOT / "cifar10" / "0.7-Shallow" / "config.json").read_text())["clean_accuracy"]
    assert gaps[3] == (f"| 0.7-Shallow | 91.8 | -3.5 | {100 * shallow16:.1f} | {100 * (shallow16 - normal16):+.1f} "
                       "| 90.0 | -3.0 |")  # the paper's 91.8 and 95.3 (Table 7)
    assert gaps[4].startswith("| 0.9-Shallow | 87.7 | -7.6 | – | – | – | – |")  # not shipped in this zoo


def test_train_zoo_trains_only_the_named_models_in_the_order_given(tmp_path, monkeypatch):
    from randmask.core.errors import RandmaskError
    from randmask.results import zoo_train

    order = []
    monkeypatch.setattr(zoo_train, "train", lambda cfg, out, show_bar=None: order.append(cfg.notation) or 1 / 0)
    with pytest.raises(ZeroDivisionError):  # stops at the first model: only the order is under test
        zoo_train.train_zoo(tmp_path / "runs", tmp_path / "zoo", only=["cifar10/0.5-Deep", "cifar10/Normal_ResNet-18"])
    assert order == ["0.5-Deep"]
    with pytest.raises(RandmaskError, match="not in the zoo plan: cifar10/0.4-Shallow"):
        zoo_train.train_zoo(tmp_path / "runs", tmp_path / "zoo", only=["cifar10/0.4-Shallow"])
    assert order == ["0.5-Deep"]


def test_a_run_claimed_by_a_live_lane_is_skipped_and_a_dead_lanes_claim_is_taken_over(tmp_path):
    import os
    import subprocess
    import sys

    from randmask.results.zoo_train import claim

    run = tmp_path / "cifar10" / "0.5-Shallow"
    with claim(run) as first:
        assert first and (tmp_path / "cifar10" / "0.5-Shallow.lock").read_text() == str(os.getpid())
        with claim(run) as second:
            assert not second  # held by a live process (this one)
    assert not (tmp_path / "cifar10" / "0.5-Shallow.lock").exists()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "cifar10" / "0.5-Shallow.lock").write_text(gone.stdout.strip())
    with claim(run) as third:
        assert third


def test_a_recipe_is_the_same_when_only_logging_differs_or_a_later_setting_sits_at_its_default():
    from randmask.experiments.train_config import asdict_json
    from randmask.results.zoo import planned_config, same_recipe

    planned = asdict_json(planned_config(ZOO[0]))
    older = {k: v for k, v in planned.items() if k != "channels_last"}  # as if recorded before that setting
    assert same_recipe({**planned, "log_every": 5, "eval_n": 100}, planned)
    assert not same_recipe(older, planned)  # channels_last is True in the plan, False by default
    assert same_recipe(older, {**planned, "channels_last": False})
    assert not same_recipe({**planned, "epochs": 15}, planned) and not same_recipe(None, planned)


def test_zoo_train_only_an_en_trains_its_members_then_assembles_it(tmp_path, monkeypatch, data_dir):
    """An unmasked EN (Normal ResNet-18EN): members differ in seed only, all with mask seed 0."""
    from randmask.core.models import build_model
    from randmask.experiments.checkpoint import save_checkpoint
    from randmask.experiments.train_config import asdict_json
    from randmask.results import zoo, zoo_train

    members = [zoo.Entry("Normal ResNet-18", seed=i, role=f"EN member {i}") for i in range(5)]
    other = zoo.Entry("0.5-Shallow", role="not asked for")
    monkeypatch.setattr(zoo, "ZOO", [other, *members])
    monkeypatch.setattr(zoo, "ENSEMBLES", {"cifar10/Normal_ResNet-18EN": ("Normal ResNet-18EN", members)})
    trained = []

    def fake_train(cfg, out, show_bar=None):  # width-4 nets stand in for hours of training
        trained.append((cfg.notation, cfg.seed, cfg.mask_seed))
        model = build_model(cfg.notation, dataset=cfg.dataset, width=4, seed=cfg.seed)
        save_checkpoint(model, out, extra={"recipe": asdict_json(cfg), "clean_accuracy": 0.1, "train_time_s": 1.0})

    monkeypatch.setattr(zoo_train, "train", fake_train)
    zoo_train.train_zoo(tmp_path / "runs", tmp_path / "zoo", only=["cifar10/Normal_ResNet-18EN"])
    assert trained == [("Normal ResNet-18", i, 0) for i in range(5)]
    model, config = load_model(tmp_path / "zoo" / "cifar10" / "Normal_ResNet-18EN")
    assert config["notation"] == "Normal ResNet-18EN" and len(model.members) == 5
    assert config["role"] == "EN of the five Normal ResNet-18 members"
    with pytest.raises(Exception, match="not in the zoo plan: cifar10/Nope"):
        zoo_train.train_zoo(tmp_path / "runs", tmp_path / "zoo", only=["cifar10/Nope"])


def test_assembling_masked_members_still_needs_consecutive_mask_seeds(tmp_path):
    from randmask.core.errors import RandmaskError
    from randmask.core.models import build_model
    from randmask.experiments.checkpoint import save_checkpoint
    from randmask.experiments.train import assemble_ensemble

    folders = []
    for i in range(2):
        model = build_model("0.5-Shallow", width=4, seed=i, mask_seed=0)  # the same mask twice: not an EN
        save_checkpoint(model, tmp_path / str(i), extra={"clean_accuracy": 0.1})
        folders.append(tmp_path / str(i))
    with pytest.raises(RandmaskError, match="consecutive seeds"):
        assemble_ensemble(folders, tmp_path / "en", eval_n=10)
