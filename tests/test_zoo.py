"""Every shipped zoo checkpoint loads, keeps its recorded masks, and still has its stated accuracy."""
import json

import pytest
import torch

from randmask.checkpoint import load_model
from randmask.data import load_test_sample
from randmask.masks import RandomMask, layer_seed, make_mask
from randmask.train import accuracy
from randmask.zoo import CHECK_N, ZOO, ZOO_ROOT, list_zoo

SHIPPED = sorted(p.parent for p in ZOO_ROOT.glob("*/*/config.json"))


def test_zoo_plan_names_are_unique_and_cover_the_issue():
    names = [e.name for e in ZOO]
    assert len(names) == len(set(names))
    notations = {e.notation for e in ZOO if e.dataset == "cifar10"}
    assert {"Normal ResNet-18", "0.3-Shallow", "0.5-Shallow", "0.7-Shallow", "0.85-Shallow", "0.9-Shallow",
            "0.5-Deep", "0.7-Deep", "0.5-ShallowDC", "0.5-ShallowSM", "0.9-Shallow×2", "DenseNet-121",
            "VGG-19"} <= notations
    assert sum(e.notation == "0.85-Shallow" for e in ZOO) == 5
    assert len(list_zoo()) == len(ZOO) + 1


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
    from randmask.checkpoint import save_checkpoint
    from randmask.explore import load_paper_tables
    from randmask.models import build_model
    from randmask.zoo import zoo_markdown

    for notation, acc in (("Normal ResNet-18", 0.9), ("0.7-Shallow", 0.75)):
        model = build_model(notation, dataset="cifar10", width=4)
        save_checkpoint(model, tmp_path / "cifar10" / notation.replace(" ", "_"), dtype=torch.float16,
                        extra={"clean_accuracy": acc, "clean_accuracy_ci95": [acc - 0.01, acc + 0.01],
                               "train_time_s": 120.0})
    lines = zoo_markdown(tmp_path, load_paper_tables())
    shallow = next(line for line in "\n".join(lines).splitlines() if line.startswith("| cifar10/0.7-Shallow"))
    cells = [c.strip() for c in shallow.strip("|").split("|")]
    paper = load_paper_tables()
    t7 = paper[(paper["table"] == 7) & (paper["metric"] == "clean_accuracy")].set_index("target")["percent"]
    assert cells[3] == "75.0 [74.0, 76.0]" and cells[5] == "-15.0"
    assert cells[6] == f"{t7['0.7-Shallow'] - t7['Normal ResNet-18']:+.1f}" and cells[7] == "2.0"
    size = sum(f.stat().st_size for f in tmp_path.glob("*/*/*") if f.is_file())
    assert f"2 models, {size / 1e6:.1f} MB in all" in "\n".join(lines)


def test_readme_shows_the_shipped_zoo_as_it_is():
    from randmask.data import PROJECT_ROOT
    from randmask.explore import load_paper_tables
    from randmask.zoo import zoo_markdown

    table = "\n".join(zoo_markdown(paper=load_paper_tables())[2:]).strip()
    assert table in (PROJECT_ROOT / "README.md").read_text(), "run: python -m randmask zoo table --update-readme"
