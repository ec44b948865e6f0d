"""`python -m study paper-study`: the paper's study from the shipped zoo in one command.

Refusals are checked in process (one line, nothing written). One small real run (7 images per condition, Normal
ResNet-18 and 0.9-Shallow: 5 conditions, four randmask runs) is checked for what the study must hold: the same
images in every condition, each classified correctly by every chosen net and unambiguous per CIFAR-10H (share of
the true label >= 0.98, the default threshold), exactly the first such images in the seeded candidate order; the
conditions, their attacks and sources; catch and practice images of their own; the plan's numbers and the link it
printed. End to end, that link (Prolific's placeholders filled in) opens in headless Chromium on the real
participant server, and after the practice images the first trial shows an image of this study: byte for byte the
item the database assigned, pixel for pixel the image in the set the command wrote.
"""
from __future__ import annotations

import base64
import csv
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from badinput import assert_unchanged, tree_state
from streamlit_server import CHROMIUM, chromium_browser, participant_server

from study import open_db
from study.cli import main as study_main
from study.paper_design import (
    CATCH_IMAGES,
    DEFAULT_UNAMBIGUOUS,
    NORMAL,
    PRACTICE_IMAGES,
    PaperStudyError,
    PaperStudyOptions,
    candidates,
    check_options,
    conditions_for,
    human_accuracy,
    resolve_nets,
)
from study.serve import DEFAULT_BASE_URL
from study.sets import decode_png, load_cifar10_test, load_cifar10h
from study.validate import participant_link

pytestmark = pytest.mark.usefixtures("data_dir")
ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "assets" / "zoo" / "cifar10"
MASKED = ("0.9-Shallow",)
IMAGES = 7
PER_PARTICIPANT = 5  # one image of each condition
NAME = "paper-small"
PID = "e2e-tester"
WAIT_MS = 30_000


def shares(counts: np.ndarray, labels: np.ndarray, indices) -> np.ndarray:
    indices = np.asarray(list(indices))
    return counts[indices, labels[indices]] / counts[indices].sum(axis=1)


# ------------------------------------------------------------------------------------------------ parts
def test_nets_are_the_zoo_folders_of_normal_resnet18_and_the_masked_nets_asked_for():
    nets = resolve_nets(["0.9-Shallow", "0.7-Shallow"])
    assert [n.name for n in nets] == [NORMAL, "0.9-Shallow", "0.7-Shallow"]
    assert [n.folder for n in nets] == [ZOO / "Normal_ResNet-18", ZOO / "0.9-Shallow", ZOO / "0.7-Shallow"]
    names = [c.name for c in conditions_for(nets, 16)]
    assert names == ["FGSM16-vs-Normal ResNet-18", "PGD16-vs-Normal ResNet-18", "FGSM16-vs-0.9-Shallow",
                     "PGD16-vs-0.9-Shallow", "FGSM16-vs-0.7-Shallow", "PGD16-vs-0.7-Shallow"]
    assert [c.name for c in conditions_for(nets[:2], 8)][-1] == "PGD8-vs-0.9-Shallow"


@pytest.mark.parametrize("masked, fragment", [
    (["0.9-Shallowz"], "--masked '0.9-Shallowz': not a trained net of the zoo (the zoo's masked nets: 0.3-Deep,"),
    (["VGG-19"], "--masked 'VGG-19': not a masked net"),
    ([NORMAL], "Normal ResNet-18 is always attacked"),
    (["0.9-Shallow", "0.9-Shallow"], "names a net twice"),
    (["0.5-Shallow, 0.5-Deep"], "holds a comma"),
    ([], "at least one masked net"),
])
def test_nets_that_are_not_masked_zoo_nets_are_refused(masked, fragment):
    with pytest.raises(PaperStudyError, match=re.escape(fragment)):
        resolve_nets(masked)


@pytest.mark.parametrize("changes, fragment", [
    ({"eps": 0}, "--eps must be a whole number of grey levels from 1 to 64"),
    ({"eps": 65}, "--eps must be a whole number of grey levels from 1 to 64"),
    ({"unambiguous": 1.5}, "--unambiguous is a share"),
    ({"unambiguous": float("nan")}, "--unambiguous is a share"),
    ({"images": 0}, "--images must be at least 1"),
    ({"images": 20}, "each participant sees 30 study images, all of different test images"),
    ({"items_per_participant": 12}, "must be a multiple of the 5 conditions"),
    ({"catch_per_participant": CATCH_IMAGES + 1}, "--catch-per-participant must be from 0 to 30"),
    ({"difference": 1.0}, "--difference is a drop in accuracy"),
    ({"name": "Paper_Study"}, "use 1-40 lowercase letters"),
    ({"presentation_ms": 5}, "presentation_ms must be"),
])
def test_bad_options_are_refused(changes, fragment):
    options = PaperStudyOptions(**{"name": "ok", **changes})
    with pytest.raises(ValueError, match=re.escape(fragment)):
        check_options(options, 5)


def test_candidates_are_the_unambiguous_images_in_a_seeded_order(cifar10h):
    (_, y), counts = cifar10h
    pool = candidates(y, counts, 0.98, seed=0)
    assert len(pool) == len(set(pool.tolist())) == int((shares(counts, y, range(len(y))) >= 0.98).sum())
    assert (shares(counts, y, pool) >= 0.98).all()
    assert not np.array_equal(pool, np.sort(pool))  # drawn, not the start of the test set
    assert np.array_equal(pool, candidates(y, counts, 0.98, seed=0))
    assert not np.array_equal(pool, candidates(y, counts, 0.98, seed=1))
    # the plan's clean accuracy: CIFAR-10H annotators' answers on these images
    some = pool[:5].tolist()
    assert human_accuracy(y, counts, some) == pytest.approx(
        counts[some, y[some]].sum() / counts[some].sum())


@pytest.fixture(scope="module")
def cifar10h(data_dir):
    return load_cifar10_test(str(data_dir)), load_cifar10h(data_dir / "cifar10h" / "counts.npy")


# ------------------------------------------------------------------------------------------------ refusals
def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = study_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("extra, fragment", [
    (["--masked", "0.9-Shallowz"], "not a trained net of the zoo"),
    (["--masked", "VGG-19"], "not a masked net"),
    (["--eps", "0"], "--eps must be a whole number of grey levels from 1 to 64"),
    (["--eps", "100"], "--eps must be a whole number of grey levels from 1 to 64"),
    (["--images", "6600"], "only 6548 test images are unambiguous (CIFAR-10H share of the true label >= 0.98); "
                           "6633 are needed"),
    (["--images", "4380", "--unambiguous", "1"], "only 4392 test images are unambiguous"),
    (["--name", "Bad Name"], "study name 'Bad Name'"),
    (["--base-url", "ftp://x"], "base URL"),
])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, capsys, extra, fragment):
    before = tree_state(tmp_path)
    argv = ["paper-study", "--name", "p1", "--db", tmp_path / "d" / "s.db", "--out", tmp_path / "d" / "sets", *extra]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and fragment in err, err
    assert_unchanged(before, tree_state(tmp_path))  # no database, no sets, not even the folder `d`


def test_an_existing_out_folder_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "sets").mkdir()
    (tmp_path / "sets" / "mine.txt").write_text("keep me")
    before = tree_state(tmp_path)
    code, _, err = run_cli(capsys, "paper-study", "--name", "p1", "--db", tmp_path / "s.db", "--out", tmp_path / "sets")
    assert code == 2 and err.count("\n") == 1 and "already exists" in err
    assert_unchanged(before, tree_state(tmp_path))
    code, _, err = run_cli(capsys, "paper-study", "--name", "p1", "--db", tmp_path / "s.db", "--out", tmp_path / "sets",
                           "--overwrite")
    assert code == 2 and err.count("\n") == 1 and "is not earlier paper-study sets" in err
    assert_unchanged(before, tree_state(tmp_path))


@pytest.mark.slow
def test_too_few_images_the_nets_classify_correctly_is_one_line_after_the_first_attack(tmp_path, capsys, monkeypatch,
                                                                                       cifar10h, data_dir):
    """A data folder whose CIFAR-10H counts make 4 images that both nets get right and 40 that 0.9-Shallow gets
    wrong unambiguous: 5 images cannot be found. The first randmask run says so and nothing is kept."""
    import torch

    from randmask.experiments.checkpoint import load_model
    from randmask.experiments.evaluate import predict

    (x, y), counts = cifar10h
    images = torch.from_numpy(x[:400]).permute(0, 3, 1, 2).float().div(255)
    right = [predict(load_model(ZOO / name, "cpu")[0], images).argmax(1).numpy() == y[:400]
             for name in ("Normal_ResNet-18", "0.9-Shallow")]
    both, missed = np.flatnonzero(right[0] & right[1])[:4], np.flatnonzero(~right[1])[:40]
    assert len(missed) == 40
    data = tmp_path / "data"
    (data / "cifar10").mkdir(parents=True)
    (data / "cifar10h").mkdir()
    (data / "cifar10" / "test.npz").symlink_to(data_dir / "cifar10" / "test.npz")
    fake = np.zeros_like(counts)
    fake[np.arange(len(y)), (y + 1) % 10] = 50  # everyone disagrees with the label ...
    unanimous = np.concatenate([both, missed])
    fake[unanimous] = 0
    fake[unanimous, y[unanimous]] = 50  # ... except on these 44 images
    np.save(data / "cifar10h" / "counts.npy", fake)
    monkeypatch.setenv("RANDMASK_DATA", str(data))
    work = tmp_path / "work"
    work.mkdir()
    before = tree_state(work)
    code, out, err = run_cli(capsys, "paper-study", "--name", "p1", "--images", "5", "--items-per-participant", "5",
                             "--db", work / "s.db", "--out", work / "sets")
    assert code == 2 and err.count("\n") == 1, err
    assert ("error: choosing the study's images (FGSM16 against Normal ResNet-18): only 4 of the 44 given images are "
            "classified correctly by Normal ResNet-18 and 0.9-Shallow; 5 were asked for") in err
    assert "[2/8] FGSM16 against Normal ResNet-18" in out and out.rstrip().endswith("failed")
    assert_unchanged(before, tree_state(work))


# ------------------------------------------------------------------------------------------------ one real run
# four randmask runs: about 40 s of CPU
@pytest.fixture(scope="module")
def built(tmp_path_factory, data_dir):
    """`python -m study paper-study` as a user runs it (from another folder), small: 7 images, the default nets."""
    root = tmp_path_factory.mktemp("paper")
    # passive OpenMP waits, as scripts/test.sh: spinning threads crawl when other jobs share the cores
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "PYTHONPATH": str(ROOT), "RANDMASK_DATA": str(data_dir)}
    command = [sys.executable, "-m", "study", "paper-study", "--name", NAME, "--images", str(IMAGES),
               "--items-per-participant", str(PER_PARTICIPANT), "--db", str(root / "s.db"), "--out", str(root / "sets")]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=1800, check=False)
    assert done.returncode == 0, done.stderr
    db = open_db(root / "s.db")
    rows = db.execute("SELECT role, condition, test_index, true_label, attack, source_model, linf, png "
                      "FROM items ORDER BY id").fetchall()
    study = db.execute("SELECT labels_per_item, trials_per_condition, catch_per_participant, link_key, design_json "
                       "FROM studies WHERE slug = ?", [NAME]).fetchone()
    db.close()
    return {"root": root, "stdout": done.stdout, "stderr": done.stderr, "items": rows, "study": study}


def trial_images(built) -> dict[str, list[int]]:
    by_condition: dict[str, list[int]] = {}
    for role, condition, index, *_ in built["items"]:
        if role == "trial":
            by_condition.setdefault(condition, []).append(index)
    return by_condition


@pytest.mark.slow
def test_it_says_what_it_does_one_line_per_stage(built):
    lines = built["stdout"].splitlines()
    stages = [line for line in lines if re.match(r"\[\d+/\d+\] ", line)]
    assert [s.split("]")[0] + "]" for s in stages] == [f"[{n}/8]" for n in range(1, 9)]
    assert all(re.search(r"; \d+\.\d s$", s) for s in stages), stages
    assert lines[:8] == stages  # nothing between them
    assert "[6/8] PGD16 against 0.9-Shallow ... 7 images," in stages[5]
    assert re.fullmatch(r"done in \d+ s \(\d+ s of CPU, this process and its randmask runs\)", lines[-1])


@pytest.mark.slow
def test_every_condition_holds_the_same_images(built):
    images = trial_images(built)
    assert sorted(images) == sorted(["clean", *(f"{a}16-vs-{n}" for n in (NORMAL, *MASKED) for a in ("FGSM", "PGD"))])
    first = images["clean"]
    assert len(first) == len(set(first)) == IMAGES
    assert all(sorted(v) == sorted(first) for v in images.values()), images


@pytest.mark.slow
def test_the_images_are_the_first_unambiguous_candidates_every_net_classifies_correctly(built, cifar10h):
    """Recomputed here, in process: the seeded candidates (CIFAR-10H share >= 0.98), and of them the first 7
    that Normal ResNet-18 and 0.9-Shallow both classify correctly."""
    import torch

    from randmask.experiments.checkpoint import load_model
    from randmask.experiments.evaluate import predict

    (x, y), counts = cifar10h
    pool = candidates(y, counts, DEFAULT_UNAMBIGUOUS, seed=0)[:60]
    images = torch.from_numpy(x[pool]).permute(0, 3, 1, 2).float().div(255)
    right = np.ones(len(pool), dtype=bool)
    for folder in ("Normal_ResNet-18", "0.9-Shallow"):
        right &= predict(load_model(ZOO / folder, "cpu")[0], images).argmax(1).numpy() == y[pool]
    assert not right[:IMAGES].all()  # some early candidates are skipped: the test can tell
    expected = pool[right][:IMAGES].tolist()
    for folder in ("clean", "FGSM16-vs-Normal_ResNet-18", "PGD16-vs-0.9-Shallow"):  # each set, in its own order
        with open(built["root"] / "sets" / folder / "meta.csv", newline="") as handle:
            assert [int(row["index"]) for row in csv.DictReader(handle)] == expected, folder
    assert sorted(trial_images(built)["clean"]) == sorted(expected)
    assert (shares(counts, y, expected) >= DEFAULT_UNAMBIGUOUS).all()


@pytest.mark.slow
def test_catch_and_practice_images_are_unambiguous_and_their_own(built, cifar10h):
    (_, y), counts = cifar10h
    trial = set(trial_images(built)["clean"])
    catch = [r[2] for r in built["items"] if r[0] == "catch"]
    practice = [r[2] for r in built["items"] if r[0] == "practice"]
    assert len(set(catch)) == CATCH_IMAGES and len(set(practice)) == PRACTICE_IMAGES
    assert not (set(catch) & trial) and not (set(practice) & trial) and not (set(catch) & set(practice))
    assert (shares(counts, y, catch + practice) >= DEFAULT_UNAMBIGUOUS).all()
    assert {r[4] for r in built["items"] if r[0] != "trial"} == {"clean"}


@pytest.mark.slow
def test_the_attacked_images_are_the_papers_attacks_on_the_clean_ones(built, cifar10h):
    (x, y), _ = cifar10h
    for _role, condition, index, label, attack, source, linf, png in built["items"]:
        assert label == y[index]
        pixels = decode_png(png)
        if condition == "clean":
            assert np.array_equal(pixels, x[index])
            continue
        assert condition == f"{attack}-vs-{source}" and attack in ("FGSM16", "PGD16")
        change = np.abs(pixels.astype(int) - x[index].astype(int)).max()
        assert 0 < change <= 16 and linf == change
    sets = built["root"] / "sets"
    with open(sets / "PGD16-vs-0.9-Shallow" / "meta.csv", newline="") as handle:
        meta = list(csv.DictReader(handle))
    assert "pred:Normal ResNet-18" in meta[0]  # the other net's answers, recorded
    assert sorted(p.name for p in sets.iterdir()) == sorted(
        ["clean", "catch", "practice", *(f"{a}16-vs-{f}" for f in ("Normal_ResNet-18", *MASKED)
                                         for a in ("FGSM", "PGD"))])


@pytest.mark.slow
def test_the_study_is_sized_by_the_plan_it_prints_and_its_link_is_printed(built):
    labels, per_condition, catch, key, _ = built["study"]
    out = built["stdout"]
    analytic, simulated = map(int, re.search(r"NormalIndPower\): (\d+) answers per condition; simulated: (\d+)$", out,
                                             re.M).groups())
    needed = max(analytic, simulated)
    assert f"needs {needed} answers a condition, so {labels} label" in out
    # k x images answers a condition reach what the plan needs; one label less would not
    assert labels * IMAGES >= needed - 0.5 and (labels - 1) * IMAGES < needed + 0.5
    assert (per_condition, catch) == (1, 3)
    assert f"participant link: {participant_link(DEFAULT_BASE_URL, NAME, key)}" in out.splitlines()
    assert "python -m study plan --conditions 'clean,FGSM16-vs-Normal ResNet-18," in out


@pytest.mark.slow
def test_a_taken_name_is_refused_before_any_work(built, capsys):
    root = built["root"]
    before = tree_state(root)
    code, _, err = run_cli(capsys, "paper-study", "--name", NAME, "--db", root / "s.db", "--out", root / "other-sets")
    assert code == 2 and err == f"error: a study named '{NAME}' already exists in {root / 's.db'}; choose another --name\n"
    assert_unchanged(before, tree_state(root), sqlite_readers=True)


# ------------------------------------------------------------------------------------------------ in the browser
def shown_png(widget) -> bytes:
    """The PNG the trial widget shows now (a data URL on its stage's image)."""
    from playwright.sync_api import expect

    image = widget.locator("#stage img")
    expect(image).to_be_visible(timeout=WAIT_MS)
    src = image.get_attribute("src")
    assert src.startswith("data:image/png;base64,")
    return base64.b64decode(src.removeprefix("data:image/png;base64,"))


def assigned(db_path: Path) -> list[tuple]:
    """The test participant's items in the order they are shown: role, PNG, condition, set folder, set file."""
    db = open_db(db_path)
    try:
        return db.execute(
            "SELECT i.role, i.png, i.condition, i.set_dir, i.set_file FROM assignments a "
            "JOIN items i ON i.id = a.item_id JOIN participants p ON p.id = a.participant_id "
            "JOIN studies s ON s.id = i.study_id WHERE p.external_id = ? AND s.slug = ? ORDER BY a.position",
            [PID, NAME]).fetchall()
    finally:
        db.close()


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="playwright not installed")
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed at /usr/bin/chromium")
def test_the_printed_link_opens_the_study_and_its_first_trial_shows_a_study_image(built, tmp_path):
    from playwright.sync_api import expect

    root = built["root"]
    (link,) = [line.removeprefix("participant link: ") for line in built["stdout"].splitlines()
               if line.startswith("participant link: ")]
    parts = urlsplit(link)
    assert f"{parts.scheme}://{parts.netloc}" == DEFAULT_BASE_URL
    assert parse_qs(parts.query)["study"] == [NAME]
    # what Prolific does with the printed link: its placeholders filled in
    filled = (parts.query.replace("{{%PROLIFIC_PID%}}", PID).replace("{{%STUDY_ID%}}", "study1")
              .replace("{{%SESSION_ID%}}", "session1"))
    assert "{{%" not in filled
    with participant_server(root / "s.db", tmp_path / "server.log") as url, chromium_browser() as browser:
        page = browser.new_context(viewport={"width": 1000, "height": 1100}).new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(f"{url}/?{filled}")
        page.get_by_role("button", name="I agree and want to take part").click()
        page.get_by_role("button", name="Start").click()
        widget = page.frame_locator("iframe").first
        items = assigned(root / "s.db")
        assert [role for role, *_ in items[:3]] == ["practice"] * 3 and len(items) == 3 + PER_PARTICIPANT + 3
        for n in range(3):
            expect(widget.get_by_text(re.compile(f"Practice {n + 1} of 3"))).to_be_visible(timeout=WAIT_MS)
            assert shown_png(widget) == items[n][1]
            widget.locator("button[data-label='0']").click()
            expect(widget.get_by_text(re.compile("Correct|Not quite")).first).to_be_visible(timeout=WAIT_MS)
            widget.get_by_role("button", name="Continue").click()
        expect(widget.get_by_text(re.compile(f"Image 1 of {PER_PARTICIPANT + 3}"))).to_be_visible(timeout=WAIT_MS)
        png = shown_png(widget)
        page.screenshot(path=str(tmp_path / "first-trial.png"))
    # read again: the unshown part of a list is chosen anew at the first answer (study/README.md)
    role, stored, _, set_dir, set_file = assigned(root / "s.db")[3]
    assert role in ("trial", "catch") and png == stored  # the image the study assigned, exactly
    assert Path(set_dir).parent == root / "sets"  # from a set this command wrote ...
    assert np.array_equal(decode_png(png), decode_png((Path(set_dir) / set_file).read_bytes()))  # ... its pixels
