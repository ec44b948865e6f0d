"""Every app page through app.py with AppTest on a tiny zoo: it renders without an exception, and its main
widgets change what is shown (checked on the data behind the charts and images, not only their presence)."""
from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import test_app_support as support
from streamlit.testing.v1 import AppTest

from randmask.core.models import build_model
from randmask.views import job_progress, jobs

ROOT = Path(__file__).resolve().parents[1]
tiny_zoo, app_env = support.tiny_zoo, support.app_env  # fixtures
CONFIDENT_CLASS, sample_labels = support.CONFIDENT_CLASS, support.sample_labels
TIMEOUT = 180
ZOO_KEYS = ["zoo:cifar10/Normal_ResNet-18", "zoo:cifar10/0.9-Shallow", "zoo:cifar10/0.7-Shallow"]
CONSTANT_KEYS = ZOO_KEYS[1:]  # the two always-"cat" models of the tiny zoo


def open_app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    if page:
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, at.exception
    return at


def chart(at: AppTest, key: str) -> dict:
    """The plotly figure (as JSON) of the chart created with `key`."""
    for element in at.get("plotly_chart"):
        if element.proto.id.endswith(f"-{key}"):
            return json.loads(element.proto.spec)
    raise AssertionError(f"no chart {key!r}; have {[e.proto.id for e in at.get('plotly_chart')]}")


def values(data) -> list:
    """A plotly array as a list: plotly 6+ ships numeric arrays as base64 'bdata' with a dtype and shape."""
    if isinstance(data, dict) and "bdata" in data:
        array = np.frombuffer(base64.b64decode(data["bdata"]), dtype=np.dtype(data["dtype"]))
        if "shape" in data:
            array = array.reshape([int(n) for n in str(data["shape"]).split(",")])
        return array.tolist()
    return list(data)


def image_urls(at: AppTest) -> list[str]:
    return [img.url for element in at.get("image") for img in element.proto.imgs]


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "error", "warning", "info", "success", "title", "subheader")
             for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def test_home_shows_the_zoo_and_the_picker_defaults(app_env):
    at = open_app()
    assert at.title[0].value == "Random Mask, hands on"
    assert at.sidebar.multiselect(key="picked_models").value == ZOO_KEYS  # trained copies, not stand-ins
    # one static table a data set (long names wrap), under its name: no column repeating the data set
    headings = [m.value for m in at.markdown if m.value.startswith("**") and m.value.endswith(" models")]
    assert [h.split("**")[1] for h in headings] == ["CIFAR-10", "MNIST"] and len(at.table) == 2
    zoo, mnist = at.table[0].value, at.table[1].value
    assert "data set" not in zoo.columns and f"· {len(mnist)} models" in headings[1]
    trained = zoo[zoo["status"].str.startswith("trained")]
    assert set(trained["model"]) == {"Normal ResNet-18", "0.9-Shallow", "0.7-Shallow"}
    assert trained["accuracy (%)"].tolist() == ["10.0"] * 3 and not mnist["status"].str.startswith("trained").any()
    assert set(zoo[~zoo["status"].str.startswith("trained")]["accuracy (%)"]) == {"–"}  # not None
    stale = zoo[zoo["model"] == "0.7-Shallow"]["status"].item()
    assert stale == "trained (older recipe: 15 epochs)"
    assert set(zoo[zoo["status"] == "trained"]["model"]) == {"Normal ResNet-18", "0.9-Shallow"}
    assert "0.7-Shallow@s0m1" in set(zoo["model"])  # seeds named by the model reference, as in the picker
    assert len(image_urls(at)) == 6 and all(url.endswith(".png") for url in image_urls(at))  # lossless images
    sidebar = "\n".join(c.value for c in at.sidebar.caption)
    assert "3 trained CIFAR-10 models to pick from" in sidebar and "UNTRAINED stand-in" in sidebar


def test_empty_zoo_falls_back_to_marked_untrained_models(app_env, tmp_path, monkeypatch):
    monkeypatch.setenv("RANDMASK_ZOO", str(tmp_path / "empty"))
    at = open_app()
    picks = at.sidebar.multiselect(key="picked_models").value
    assert picks and all(key.startswith("untrained:") for key in picks)
    assert "No trained models yet" in "\n".join(w.value for w in at.sidebar.warning)
    at.switch_page("pages/shuffle.py").run()
    assert not at.exception and "UNTRAINED" in texts(at)


@pytest.mark.parametrize("param", ["pid", "PROLIFIC_PID"])
def test_participants_see_only_the_labeling_page(app_env, tmp_path, monkeypatch, param):
    monkeypatch.setenv("STUDY_DB", str(tmp_path / "study.db"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.query_params[param] = "someone"
    at.run()
    assert not at.exception
    assert not at.sidebar.multiselect  # no picker
    titles = [t.value for t in at.title]
    assert titles and "Random Mask, hands on" not in titles and "Random Mask" not in texts(at)


def test_mask_page_follows_layer_channel_and_notation(app_env):
    at = open_app("masks")
    assert "0.9-Shallow" in texts(at) and f"width {support.TINY_WIDTH}" in texts(at)
    reference = build_model("0.9-Shallow", width=support.TINY_WIDTH)
    stem = reference.body.mask1.mask
    assert values(chart(at, "map_channel")["data"][0]["z"]) == stem[0].int().tolist()
    at.slider(key="masks_channel").set_value(2).run()
    assert values(chart(at, "map_channel")["data"][0]["z"]) == stem[2].int().tolist()
    at.selectbox(key="masks_layer").set_value("body.layer2.0.mask1").run()
    assert at.slider(key="masks_channel").max == 2 * support.TINY_WIDTH - 1  # block 2 doubles the channels
    at.slider(key="masks_channel").set_value(2).run()
    z = values(chart(at, "map_channel")["data"][0]["z"])
    assert z == reference.body.layer2[0].mask1.mask[2].int().tolist() and len(z) == 16  # 16×16 in block 2
    at.button_group(key="masks_view").set_value("Drop statistics").run()
    stats = at.dataframe[0].value
    assert len(stats) == 10 and stats["measured"].tolist() == pytest.approx([0.9004, 0.9004, 0.9004, 0.9004,
                                                                           0.9004, 0.8984, 0.8984, 0.8984,
                                                                           0.8984, 0.8984], abs=1e-4)

    at.radio(key="masks_mode").set_value("a notation").run()
    at.text_input(key="masks_notation").set_value("0.5-ShallowSM").run()
    assert at.button_group(key="masks_view").value == "Drop statistics"  # the view stays
    assert not at.exception and "kind" not in at.dataframe[0].value.columns  # one kind: said once, above
    assert "Every masked layer: kind: SM; nominal drop ratio: 0.5." in texts(at)
    at.text_input(key="masks_notation").set_value("0.5-Shalow").run()
    assert not at.exception and "cannot read '0.5-Shalow'" in at.error[0].value
    at.text_input(key="masks_notation").set_value("Normal ResNet-18").run()
    assert not at.exception and "no masked layers" in texts(at)


def test_mask_page_comparison_and_filter_view_respond(app_env):
    at = open_app("masks")
    assert not [e for e in at.get("plotly_chart") if "kind_" in e.proto.id]  # one view at a time
    at.button_group(key="masks_view").set_value("Random vs SM vs DC").run()
    freq = values(chart(at, "kind_SM_freq")["data"][0]["z"])
    assert {v for row in freq for v in row} <= {0.0, 1.0}  # SM: a position is dropped in all channels or none
    at.slider(key="kinds_ratio").set_value(0.5).run()
    dropped = sum(1 - v for row in values(chart(at, "kind_random_channel")["data"][0]["z"]) for v in row)
    assert dropped == 512  # exactly half of 32×32
    at.button_group(key="masks_view").set_value("What one 3×3 filter sees").run()
    before = chart(at, "filter_field")["data"][0]
    at.slider(key="filter_row").set_value(0).run()
    after = chart(at, "filter_field")["data"][0]
    assert values(after["y"])[0] == 0 and values(after["y"]) != values(before["y"])  # moved to the top border


def test_shuffle_page_reshuffles_and_reproduces_table3(app_env):
    at = open_app("shuffle")
    shuffled = image_urls(at)[1]
    at.button_group(key="shuffle_k").set_value(8).run()
    assert not at.exception and image_urls(at)[1] != shuffled
    predictions = at.dataframe[0].value.set_index("model")
    assert predictions.loc["0.9-Shallow", "shuffled 8×8"].startswith("cat (100%")

    # AppTest (Streamlit 1.67) reruns only the page after the first run, not app.py with its sidebar picker,
    # so the pick is set the way the picker stores it; the browser test drives the real picker
    at.session_state["picks"] = CONSTANT_KEYS
    at.run()
    at.number_input(key="shuffle_pool").set_value(200).run()
    at.button(key="shuffle_run").click().run()
    assert not at.exception
    rows = at.session_state["shuffle_result"]["rows"]
    cats = int((sample_labels(200) == CONFIDENT_CLASS).sum())
    assert {(r["target"], r["k"]) for r in rows} == {(m, k) for m in ("0.9-Shallow", "0.7-Shallow") for k in (2, 4, 8)}
    assert all(r["n"] == cats and r["accuracy"] == 1.0 for r in rows)  # only the cats qualify; shuffling can't hurt
    assert chart(at, "shuffle_chart")["layout"]["yaxis"]["title"]["text"] == "accuracy (%)"


def test_noise_page_draws_curves_with_the_chosen_settings(app_env):
    at = open_app("noise")
    at.multiselect(key="noise_models").set_value(CONSTANT_KEYS).run()
    at.slider(key="noise_range").set_value((0, 8)).run()
    assert len(image_urls(at)) == 5  # σ = 0, 1, 2, 4, 8
    at.number_input(key="noise_n").set_value(20).run()
    at.button(key="noise_run").click().run()
    assert not at.exception
    rows = at.session_state["noise_result"]["rows"]
    share = float((sample_labels(20) == CONFIDENT_CLASS).float().mean())
    assert sorted({r["sigma"] for r in rows}) == [0, 1, 2, 4, 8]
    assert all(r["n"] == 20 and r["accuracy"] == pytest.approx(share) for r in rows)
    figure = chart(at, "noise_chart")
    assert figure["layout"]["xaxis"]["title"]["text"] == "noise σ (/255)" and len(figure["data"]) == 2
    assert values(figure["data"][0]["error_y"]["array"])  # intervals drawn


def test_gallery_page_builds_and_offers_a_png(app_env):
    at = open_app("gallery")
    assert at.selectbox(key="gallery_normal").value == "zoo:cifar10/Normal_ResNet-18"
    assert at.selectbox(key="gallery_masked").value == "zoo:cifar10/0.9-Shallow"
    at.button_group(key="gallery_attack").set_value("Square").run()
    at.number_input(key="gallery_queries").set_value(100).run()
    assert "Square16(queries=100)" in texts(at)
    at.button_group(key="gallery_attack").set_value("CW").run()
    at.number_input(key="gallery_cw_steps").set_value(20).run()
    assert "CW40(search=5, steps=20)" in texts(at)
    at.button_group(key="gallery_attack").set_value("FGSM").run()
    at.slider(key="gallery_eps").set_value(8).run()
    assert "FGSM8" in texts(at)
    at.number_input(key="gallery_n").set_value(2).run()
    at.checkbox(key="gallery_correct").uncheck().run()
    at.button(key="gallery_run").click().run()
    assert not at.exception
    gallery = at.session_state["gallery"]
    assert gallery.attack == "FGSM8" and gallery.indices == [0, 1]
    assert float(gallery.linf["Normal ResNet-18"].max()) <= 8
    assert len(image_urls(at)) == 1 + 2 * 5  # colour legend + two rows of five
    assert "0.9-Shallow: cat 100%" in texts(at)
    assert any(b.proto.label == "Download the gallery as PNG" for b in at.get("download_button"))


def test_gallery_says_when_an_attack_left_the_images_unchanged(app_env):
    at = open_app("gallery")
    at.button_group(key="gallery_attack").set_value("CW").run()
    at.number_input(key="gallery_cw_search").set_value(1).run()
    at.number_input(key="gallery_cw_steps").set_value(10).run()
    at.number_input(key="gallery_n").set_value(2).run()
    at.checkbox(key="gallery_correct").uncheck().run()
    at.button(key="gallery_run").click().run()
    assert not at.exception
    warnings = [w.value for w in at.warning]
    assert float(at.session_state["gallery"].linf["Normal ResNet-18"].max()) == 0  # what the warning is about
    assert any("CW40(search=1, steps=10) left every image unchanged against Normal ResNet-18" in w
               and "Lower κ" in w for w in warnings), warnings
    at.button_group(key="gallery_attack").set_value("FGSM").run()
    at.button(key="gallery_run").click().run()
    built = at.session_state["gallery"]
    assert built.attack == "FGSM16" and float(built.linf["Normal ResNet-18"].min()) > 0
    warnings = [w.value for w in at.warning if "unchanged" in w.value]
    assert not any("against Normal ResNet-18" in w for w in warnings), warnings
    # the test zoo's 0.9-Shallow is saturated (100% on every image): float32 gradients are exactly zero there
    if float(built.linf["0.9-Shallow"].max()) == 0:
        assert any("against 0.9-Shallow" in w and "gradient was exactly zero" in w for w in warnings), warnings


def test_robustness_page_puts_ours_beside_the_paper(app_env):
    at = open_app("robustness")
    table = at.dataframe[0].value.set_index("target")
    assert table.loc["0.7-Shallow", "FGSM16 · paper"] == "48.6"  # the paper file's 48.57, one decimal
    assert table.loc["0.7-Shallow", "FGSM16 · ours"] == "55.0"
    assert table.loc["Normal ResNet-18", "clean · ours"] == "90.0"
    bars = {t["name"]: t for t in chart(at, "robust_chart")["data"]}  # opens on a column we have numbers for
    assert at.selectbox(key="robust_chart_attack").value == "FGSM16" and set(bars) == {"paper", "ours"}
    at.selectbox(key="robust_table").set_value(8).run()
    assert "FGSM16 · ours" not in at.dataframe[0].value.columns  # our rows are from DenseNet-121 only
    traces = {t["name"]: t for t in chart(at, "tradeoff_chart")["data"]}
    assert set(traces) == {"paper", "ours"} and values(traces["ours"]["y"]) == pytest.approx([20.0, 55.0])
    at.selectbox(key="tradeoff_source").set_value("ResNet-18").run()
    assert {t["name"] for t in chart(at, "tradeoff_chart")["data"]} == {"paper"}

    at.text_input(key="run_attack").set_value("FGSM").run()
    at.button(key="run_go").click().run()
    assert not at.exception and "FGSM takes 1 number(s), got 0" in at.error[0].value
    at.text_input(key="run_attack").set_value("FGSM16").run()
    at.number_input(key="run_n").set_value(10).run()
    at.button(key="run_go").click().run()
    assert not at.exception
    rows = at.session_state["run_result"]
    attacked = [r for r in rows if r["metric"] == "defense_rate"]
    # no DenseNet-121 in the tiny zoo: the trained Normal net is the source, and never its own target
    assert {r["source"] for r in attacked} == {"Normal ResNet-18"}
    assert {r["target"] for r in attacked} == {"0.7-Shallow", "0.9-Shallow"}
    assert all(r["n_attacked"] <= 10 and r["n"] <= r["n_attacked"] for r in attacked)
    fooled = attacked[0]["n"]
    assert f"{attacked[0]['n_attacked']} images attacked, {fooled} fooled the source" in texts(at)


def test_robustness_page_without_results_shows_the_paper(app_env, tmp_path, monkeypatch):
    monkeypatch.setenv("RANDMASK_RESULTS", str(tmp_path / "nothing"))
    at = open_app("robustness")
    assert "No reproduction results" in texts(at)
    table = at.dataframe[0].value
    assert not [c for c in table.columns if c.endswith("ours")] and len(table) == 33


def test_train_page_starts_lists_and_cancels_a_job(app_env):
    at = open_app("train")
    runs = Path(app_env["RANDMASK_RUNS"])
    try:
        # form widgets: set the values, then submit (a run in between would drop them)
        at.text_input(key="train_notation").set_value("0.7-Shalow")
        at.button[0].click().run()  # the form's submit button
        assert not at.exception and "Cannot start" in at.error[0].value
        assert not runs.exists() or not any(runs.iterdir())

        at.text_input(key="train_notation").set_value("0.7-Shallow")
        at.number_input(key="train_epochs").set_value(1)
        at.number_input(key="train_width").set_value(4)
        at.number_input(key="train_n").set_value(256)
        at.number_input(key="train_eval_n").set_value(100)
        at.button[0].click().run()
        folder = runs / "0.7-Shallow"
        assert not at.exception and "Started 0.7-Shallow" in texts(at)
        settings = json.loads((folder / job_progress.JOB_FILE).read_text())["settings"]
        assert (settings["width"], settings["train_n"], settings["epochs"], settings["eval_n"]) == (4, 256, 1, 100)
        assert "**0.7-Shallow** · quick preset · cifar10" in texts(at)  # the notation once, not twice
        at.button(key="cancel_0.7-Shallow").click().run()
        assert not at.exception
        assert job_progress.wait_job(folder, 60).state == "cancelled"
        at.run()
        assert "cancelled" in texts(at) and at.button(key="resume_0.7-Shallow")
    finally:
        for status in job_progress.list_jobs(runs):  # never leave a trainer running
            if not status.finished:
                jobs.cancel_job(status.folder, force=True)
                job_progress.wait_job(status.folder, 30)


def test_train_page_ray_field_refuses_what_it_cannot_run_and_shows_where_a_job_runs(app_env, monkeypatch):
    runs = Path(app_env["RANDMASK_RUNS"])
    at = open_app("train")
    assert at.text_input(key="train_ray").value == "" and jobs.RAY_EXTRA not in texts(at)  # Ray is installed here
    at.text_input(key="train_notation").set_value("0.7-Shallow")
    at.text_input(key="train_ray").set_value("my-cluster")  # no port
    at.button[0].click().run()
    assert not at.exception and len(at.error) == 1
    assert at.error[0].value.startswith("Cannot start") and "Ray cluster address 'my-cluster'" in at.error[0].value
    assert not runs.exists() or not any(runs.iterdir())

    monkeypatch.setitem(sys.modules, "ray", None)  # as without the extra
    at = open_app("train")
    assert [c.value for c in at.caption if "Ray" in c.value] == [jobs.RAY_EXTRA]  # one line, in the form
    at.text_input(key="train_notation").set_value("0.7-Shallow")
    at.text_input(key="train_ray").set_value("auto")
    at.button[0].click().run()
    assert not at.exception and len(at.error) == 1 and jobs.RAY_EXTRA in at.error[0].value
    assert not runs.exists() or not any(runs.iterdir())

    # a job sent to a cluster (its driver gone) says where it ran
    folder = runs / "0.7-Shallow"
    folder.mkdir(parents=True)
    settings = jobs.JobSettings("0.7-Shallow", epochs=2, width=4, ray="10.0.0.1:6379")
    (folder / job_progress.JOB_FILE).write_text(json.dumps({"settings": settings.__dict__, "created": 1.0, "launched": 1.0}))
    (folder / job_progress.CLUSTER_FILE).write_text(json.dumps({"address": "10.0.0.1:6379",
                                                         "dashboard": "http://10.0.0.1:8265"}))
    at.run()
    assert "Ray cluster at 10.0.0.1:6379 · dashboard http://10.0.0.1:8265" in texts(at)


def test_mask_views_show_only_the_controls_they_use(app_env):
    at = open_app("masks")
    assert len(at.selectbox(key="masks_layer").options) == 10 and at.slider(key="masks_channel")
    at.slider(key="masks_channel").set_value(2).run()
    at.button_group(key="masks_view").set_value("Drop statistics").run()
    keys = {w.key for w in at.selectbox} | {w.key for w in at.slider}
    assert "masks_layer" not in keys and "masks_channel" not in keys  # this view draws no layer's channel
    # 0.9-Shallow: ten layers at one nominal ratio, so a sentence instead of ten equal bars
    assert not [e for e in at.get("plotly_chart") if e.proto.id.endswith("-stats_bar")]
    assert "All 10 masked layers drop the nominal 0.9 of their neurons" in texts(at)
    at.button_group(key="masks_view").set_value("What one 3×3 filter sees").run()
    sliders = [w.key for w in at.slider]
    assert "masks_channel" not in sliders and sliders.count("filter_channel") == 1  # one channel slider
    field = chart(at, "filter_field")["data"][0]
    assert field["textfont"]["size"] >= 14 and "0" not in {t for row in field["text"] for t in row}
    at.button_group(key="masks_view").set_value("Heatmaps").run()
    assert at.slider(key="masks_channel").value == 2  # the pick survived the views without the control
    at.radio(key="masks_mode").set_value("a notation").run()
    at.text_input(key="masks_notation").set_value("0.5-Shallow, 0.3-Deep").run()
    at.button_group(key="masks_view").set_value("Drop statistics").run()
    assert chart(at, "stats_bar")  # two ratios: the chart says something


def test_every_researcher_page_has_the_glossary(app_env, monkeypatch):
    monkeypatch.setenv("STUDY_ADMIN_PASSWORD", "test-organiser-pw")
    at = open_app()
    for page in (None, "masks", "shuffle", "noise", "gallery", "robustness", "train", "study_admin"):
        if page:
            at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, page
        glossary = [e for e in at.sidebar.expander if e.label == "Glossary"]
        assert len(glossary) == 1, page
        words = "\n".join(m.value for m in glossary[0].caption)
        for term in ("l-inf", "partly measured", "body.layer1.0.mask1", "ε", "κ", "transfer", "white-box",
                     "gray-box", "EN", "×2", "DC / SM", "clean accuracy", "robust accuracy"):
            assert term in words, (page, term)


def test_robustness_table_opens_with_the_columns_that_fit_and_figure7_labels_part(app_env):
    at = open_app("robustness")
    chosen = at.multiselect(key="robust_columns_7")
    assert chosen.value[:2] == ["clean", "FGSM16"]  # clean accuracy, then what we measured, first
    assert list(at.dataframe[0].value.columns[:5]) == ["target", "clean · paper", "clean · ours", "FGSM16 · paper",
                                                       "FGSM16 · ours"]
    assert "here" not in at.dataframe[0].value.columns  # said once in the caption
    chosen.set_value(["PGD16"]).run()
    assert list(at.dataframe[0].value.columns) == ["target", "PGD16 · paper"]
    assert "Not shown (add them above): clean, FGSM16" in texts(at)
    paper = next(t for t in chart(at, "tradeoff_chart")["data"] if t["name"] == "paper")
    positions = dict(zip(paper["text"], paper["textposition"], strict=True))
    assert positions["0.75"] != positions["0.8"]  # the paper's close points label on opposite sides
