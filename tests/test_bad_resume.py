"""Damaged `resume.pt` files: `train` refuses each in one line that names the file and how to start afresh,
never advising to turn `weights_only` off, and leaves the run folder exactly as it was."""
from __future__ import annotations

import io
import os
import pickle
import shutil
import zipfile

import pytest
import torch
from badinput import assert_one_line_error, assert_unchanged, run_main, tree_state
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from randmask.cli.main import main
from randmask.core.errors import RandmaskError
from randmask.experiments.resume import read_resume
from randmask.experiments.train import train
from randmask.experiments.train_config import make_config

pytestmark = pytest.mark.usefixtures("data_dir")
ARGS = ["0.7-Shallow", "--width", "4", "--epochs", "2", "--train-n", "64", "--eval-n", "32", "--batch-size", "32",
        "--no-bar"]


@pytest.fixture(scope="module")
def good(tmp_path_factory, data_dir) -> bytes:
    """The bytes of a real resume.pt, written after epoch 1 of a run the CLI's ARGS would start."""
    cfg = make_config("0.7-Shallow", "quick", width=4, epochs=2, train_n=64, eval_n=32, batch_size=32)
    out = tmp_path_factory.mktemp("resume") / "run"

    def stop(record: dict) -> None:
        if record["event"] == "epoch":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, progress=stop, show_bar=False)
    return (out / "resume.pt").read_bytes()


class Planted:
    def __reduce__(self):
        return (os.system, ("echo planted > /dev/null",))


def _state(data: bytes) -> dict:
    return torch.load(io.BytesIO(data), weights_only=True)


def _saved(state: object) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _edit(change):
    def make(data: bytes) -> bytes:
        state = _state(data)
        change(state)
        return _saved(state)
    return make


def _zip(data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", b"not a pickle")
        z.writestr("archive/version", b"3\n")
    return buf.getvalue()


def _first_weight(state: dict) -> str:
    return next(k for k, v in state["model"].items() if v.is_floating_point() and v.dim() == 4)


VARIANTS = {
    "truncated": lambda d: d[: len(d) // 2],
    "truncated-end": lambda d: d[:-100],
    "zero-bytes": lambda d: b"",
    "random-bytes": lambda d: os.urandom(4096),
    "zip-wrong-entries": _zip,
    "zip-empty": lambda d: b"PK\x05\x06" + bytes(18),  # an empty zip archive's end record
    "planted-pickle": lambda d: pickle.dumps(Planted()),
    "planted-in-torch-save": lambda d: _saved({"config": Planted()}),
    "a-list": lambda d: _saved([1, 2, 3]),
    "missing-optimizer": _edit(lambda s: s.pop("optimizer")),
    "missing-model": _edit(lambda s: s.pop("model")),
    "missing-rng": _edit(lambda s: s.pop("rng_torch")),
    "epoch-text": _edit(lambda s: s.update(epoch="1")),
    "epoch-zero": _edit(lambda s: s.update(epoch=0)),
    "epoch-past-the-end": _edit(lambda s: s.update(epoch=99)),
    "time-nan": _edit(lambda s: s.update(train_time_s=float("nan"))),
    "autocast-unknown": _edit(lambda s: s.update(autocast="load")),
    "wrong-shape": _edit(lambda s: s["model"].update({_first_weight(s): torch.zeros(1, 2, 3)})),
    "nan-weight": _edit(lambda s: s["model"][_first_weight(s)].fill_(float("nan"))),
    "extra-weight": _edit(lambda s: s["model"].update({"planted.weight": torch.zeros(2)})),
    "weight-not-tensor": _edit(lambda s: s["model"].update({_first_weight(s): 3})),
    "optimizer-empty": _edit(lambda s: s.update(optimizer={})),
    "optimizer-wrong-groups": _edit(lambda s: s["optimizer"].update(param_groups=[])),
    "rng-wrong": _edit(lambda s: s.update(rng_torch=torch.zeros(3))),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_a_damaged_resume_file_is_refused_in_one_line(tmp_path, capsys, good, name):
    run = tmp_path / "run"
    run.mkdir()
    (run / "resume.pt").write_bytes(VARIANTS[name](good))
    before = tree_state(tmp_path)
    code, _, err = run_main(main, ["train", *ARGS, "--out", str(run)], capsys)
    line = assert_one_line_error(code, err, str(run / "resume.pt"))
    assert "delete it" in line and "--out" in line and "weights_only" not in line, line
    assert_unchanged(before, tree_state(tmp_path))


@pytest.mark.parametrize("kind", ["fifo", "folder", "dangling-link"])
def test_a_resume_file_that_is_not_a_file_is_refused(tmp_path, capsys, kind):
    run = tmp_path / "run"
    run.mkdir()
    if kind == "fifo":
        os.mkfifo(run / "resume.pt")
    elif kind == "folder":
        (run / "resume.pt").mkdir()
    else:
        (run / "resume.pt").symlink_to(tmp_path / "nowhere")
    before = tree_state(tmp_path)
    code, _, err = run_main(main, ["train", *ARGS, "--out", str(run)], capsys)
    assert "delete it" in assert_one_line_error(code, err, str(run / "resume.pt"))
    assert_unchanged(before, tree_state(tmp_path))


def test_a_good_resume_file_still_resumes(tmp_path, capsys, good):
    run = tmp_path / "run"
    run.mkdir()
    (run / "resume.pt").write_bytes(good)
    code, _, err = run_main(main, ["train", *ARGS, "--out", str(run)], capsys)
    assert code == 0, err
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "model.safetensors", "progress.jsonl"]
    shutil.rmtree(run)


def test_a_resume_file_of_another_config_keeps_its_message(tmp_path, capsys, good):
    run = tmp_path / "run"
    run.mkdir()
    (run / "resume.pt").write_bytes(good)
    code, _, err = run_main(main, ["train", *ARGS[:-1], "--lr", "0.3", "--no-bar", "--out", str(run)], capsys)
    assert_one_line_error(code, err, "different training config")


def test_variants_really_differ_from_the_good_file(good):
    assert len({VARIANTS[name](good) for name in VARIANTS if name != "random-bytes"}) == len(VARIANTS) - 1


CFG = make_config("0.7-Shallow", "quick", width=4, epochs=2, train_n=64, eval_n=32, batch_size=32)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_damage_to_a_resume_file_is_one_line_or_a_sound_state(tmp_path, good, data):
    """Bytes changed, cut or added anywhere in a real resume.pt: the one reader either refuses it in one line
    naming the file (never advising weights_only=False) or returns a state whose every field passed its check."""
    raw = bytearray(good)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        edit = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if edit == "flip":
            raw[at] ^= data.draw(st.integers(1, 255))
        elif edit == "cut":
            del raw[at:at + data.draw(st.integers(1, 64))]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    path = tmp_path / "resume.pt"
    path.write_bytes(bytes(raw))
    try:
        state = read_resume(path, CFG)
    except RandmaskError as exc:
        message = str(exc)
        assert str(path) in message and "\n" not in message and "weights_only" not in message, message
        return
    assert 1 <= state["epoch"] <= CFG.epochs and len(state["history"]) == state["epoch"]
    assert all(not v.is_floating_point() or torch.isfinite(v).all() for v in state["model"].values())
