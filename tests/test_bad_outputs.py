"""Outputs that never destroy: every command's --out is refused in one line, with every file of the working
folder unchanged, when it exists (without --overwrite), is an input or lies inside or around one (even with
--overwrite), or is not a regular file or folder; and a command that is refused or fails leaves nothing."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from badinput import assert_one_line_error, assert_unchanged, run_main, tree_state

import randmask.core.safe_files as safe_files
from randmask.cli.main import main as randmask_main
from randmask.core.safe_files import Output, OutputError
from study.cli import main as study_main

pytestmark = pytest.mark.usefixtures("data_dir")
SMALL = ["--width", "4", "--pool", "12", "--batch-size", "12", "--quiet"]


# ------------------------------------------------------------------------------------------ the module itself
def test_a_file_is_written_whole_under_a_new_name_then_renamed(tmp_path):
    out = Output(tmp_path / "a" / "b" / "x.csv", folder=False)
    with out as tmp:
        assert tmp.parent == tmp_path / "a" / "b" and tmp.name.startswith(".x.csv.") and tmp.stat().st_size == 0
        tmp.write_text("1")
    assert (tmp_path / "a" / "b" / "x.csv").read_text() == "1"
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["x.csv"]


def test_a_failure_leaves_nothing_not_even_the_folders_made_for_it(tmp_path):
    before = tree_state(tmp_path)
    with pytest.raises(RuntimeError), Output(tmp_path / "a" / "b" / "x.csv", folder=False) as tmp:
        tmp.write_text("half")
        raise RuntimeError("failed")
    assert_unchanged(before, tree_state(tmp_path))


def test_a_failure_after_commit_brings_the_replaced_output_back(tmp_path):
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "meta.csv").write_text("old")
    before = tree_state(tmp_path)
    out = Output(tmp_path / "set", folder=True, overwrite=True)
    with pytest.raises(RuntimeError), out as tmp:
        (tmp / "meta.csv").write_text("new")
        out.commit()
        assert (tmp_path / "set" / "meta.csv").read_text() == "new"
        raise RuntimeError("the step after failed")
    assert_unchanged(before, tree_state(tmp_path))


def test_overwrite_replaces_a_whole_folder(tmp_path):
    (tmp_path / "set" / "images").mkdir(parents=True)
    (tmp_path / "set" / "images" / "stale.png").write_bytes(b"x")
    with Output(tmp_path / "set", folder=True, overwrite=True) as tmp:
        (tmp / "meta.csv").write_text("new")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["meta.csv", "set"]


def test_a_link_planted_at_the_temporary_name_is_never_written_through(tmp_path, monkeypatch):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    names = iter(["planted", "fresh"])
    monkeypatch.setattr(safe_files.secrets, "token_hex", lambda n: next(names))
    (tmp_path / ".x.csv.planted.tmp").symlink_to(victim)
    with Output(tmp_path / "x.csv", folder=False) as tmp:
        assert tmp.name == ".x.csv.fresh.tmp"
        tmp.write_text("new")
    assert victim.read_text() == "keep" and (tmp_path / "x.csv").read_text() == "new"


@pytest.mark.parametrize("kind", ["fifo", "symlink", "dir-for-file", "file-for-dir"])
def test_anything_but_a_regular_file_or_folder_is_refused_even_with_overwrite(tmp_path, kind):
    target, folder = tmp_path / "out", kind == "file-for-dir"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "symlink":
        (tmp_path / "real.csv").write_text("keep")
        target.symlink_to(tmp_path / "real.csv")
    elif kind == "dir-for-file":
        (target / "inner").mkdir(parents=True)
    else:
        target.write_text("keep")
    before = tree_state(tmp_path)
    with pytest.raises(OutputError, match="symbolic link|not a regular file|not a folder"):
        Output(target, folder=folder, overwrite=True)
    assert_unchanged(before, tree_state(tmp_path))


@pytest.mark.parametrize("out,folder", [("m", True), ("m/model.safetensors", False), ("m/new.csv", False),
                                        (".", True), ("", True)])
def test_an_input_its_inside_or_a_folder_around_it_is_refused_even_with_overwrite(tmp_path, monkeypatch, out,
                                                                                   folder):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.safetensors").write_bytes(b"w")
    with pytest.raises(OutputError, match="input|names no new"):
        Output(out, folder=folder, overwrite=True, inputs=["m"])
    with pytest.raises(OutputError, match="input"):
        Output(tmp_path, folder=True, overwrite=True, inputs=[tmp_path / "m" / "model.safetensors"])


# ------------------------------------------------------------------------------------------ randmask commands
@pytest.fixture
def models(tmp_path) -> Path:
    """Two tiny trained-looking checkpoints (consecutive seeds, so they also make a valid EN)."""
    from randmask.core.models import build_model
    from randmask.experiments.checkpoint import save_checkpoint

    for seed in (0, 1):
        save_checkpoint(build_model("Normal ResNet-18", width=4, seed=seed), tmp_path / f"M{seed}")
    return tmp_path


def _refused(capsys, main, argv, root: Path, fragment: str = "", *, sqlite_readers: bool = False) -> None:
    def state() -> dict:  # a reader's SQLite companions (-wal, -shm) may come and go; the database may not change
        return {k: v for k, v in tree_state(root).items() if not (sqlite_readers and k.endswith(("-wal", "-shm")))}

    before = state()
    code, _, err = run_main(main, argv, capsys)
    assert_one_line_error(code, err, fragment)
    after = state()
    if sqlite_readers:
        after["."] = before["."]
    assert_unchanged(before, after)


@pytest.mark.parametrize("argv", [
    ["transfer", "--source", "{d}/M0", "--targets", "{d}/M1", "--attack", "FGSM8", "--n", "3",
     "--out", "{d}/M1/model.safetensors"],
    ["noise", "--models", "{d}/M0", "--out", "{d}/M0/config.json", "--overwrite"],
    ["whitebox", "--models", "{d}/M0", "--attack", "FGSM1", "--out", "{d}/M0", "--overwrite"],
    ["graybox", "--sources", "{d}/M0", "--targets", "{d}/M1", "--out", "{d}/M1/x.csv"],
    ["madry", "--source", "{d}/M0", "--targets", "{d}/M1", "--out", "{d}/M0/config.json", "--overwrite"],
    ["shuffle", "--models", "{d}/M1", "--out", "{d}/M1/model.safetensors", "--overwrite"],
    ["attack", "--model", "{d}/M0", "--attack", "FGSM8", "--n", "2", "--out", "{d}/M0", "--overwrite"],
    ["ensemble", "{d}/M0", "{d}/M1", "--out", "{d}/M0"],
    ["ensemble", "{d}/M0", "{d}/M1", "--out", "{d}/M0", "--overwrite"],
    ["ensemble", "{d}/M0", "{d}/M1", "--out", "{d}", "--overwrite"],
], ids=lambda a: " ".join(a[:1] + a[-2:]).replace("{d}/", ""))
def test_an_output_never_replaces_a_model(models, capsys, argv):
    argv = [a.format(d=models) for a in argv]
    if argv[0] not in ("ensemble",):
        argv += SMALL
    _refused(capsys, randmask_main, argv, models, "input")


def test_an_output_inside_the_data_folder_is_refused(models, capsys, data_dir):
    _refused(capsys, randmask_main, ["noise", "--models", str(models / "M0"), "--out",
                                     str(data_dir / "cifar10" / "test.npz"), "--overwrite", *SMALL], data_dir / "cifar10")


def test_csv_outputs_need_overwrite_and_then_replace_only_a_file(models, capsys):
    out = models / "n.csv"
    argv = ["noise", "--models", str(models / "M0"), "--sigmas", "8", "--out", str(out), *SMALL]
    code, _, err = run_main(randmask_main, argv, capsys)
    assert code == 0, err
    first = out.read_bytes()
    _refused(capsys, randmask_main, argv, models, "already exists")
    os.utime(out, ns=(0, 0))
    code, _, err = run_main(randmask_main, [*argv, "--overwrite"], capsys)
    assert code == 0, err
    assert out.read_bytes() == first and out.stat().st_mtime_ns != 0  # written afresh, same numbers
    assert sorted(p.name for p in models.iterdir()) == ["M0", "M1", "n.csv"]  # no temporary left beside it


@pytest.mark.parametrize("make", ["fifo", "dir", "link"])
def test_csv_output_that_is_not_a_regular_file_is_refused(models, capsys, make):
    target = models / "out"
    if make == "fifo":
        os.mkfifo(target)
    elif make == "dir":
        (target / "keep").mkdir(parents=True)
    else:
        target.symlink_to(models / "M0" / "config.json")
    _refused(capsys, randmask_main, ["noise", "--models", str(models / "M0"), "--out", str(target), "--overwrite",
                                     *SMALL], models)


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_device_at_out_is_refused_and_stays_a_device(models, capsys, overwrite):
    import stat
    device = Path("/dev/null")
    before = os.lstat(device)
    _refused(capsys, randmask_main, ["noise", "--models", str(models / "M0"), "--out", str(device), *overwrite,
                                     *SMALL], models)
    after = os.lstat(device)
    assert stat.S_ISCHR(after.st_mode) and (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)


def test_attack_replaces_only_a_set(models, capsys):
    (models / "notes").mkdir()
    (models / "notes" / "todo.txt").write_text("mine")
    _refused(capsys, randmask_main, ["attack", "--model", str(models / "M0"), "--attack", "FGSM8", "--n", "2",
                                     "--out", str(models / "notes"), "--overwrite", *SMALL], models, "not an adversarial set")


def test_ensemble_writes_a_new_folder_whole(models, capsys):
    code, _, err = run_main(randmask_main, ["ensemble", str(models / "M0"), str(models / "M1"), "--out",
                                            str(models / "EN"), "--eval-n", "4"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (models / "EN").iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in models.iterdir()) == ["EN", "M0", "M1"]


@pytest.mark.parametrize("argv", [["0.7-Shallow", "--seed", "-1"], ["0.7-Shallow", "--dataset", "nope"],
                                  ["0.7-Shallow", "--width", "100000"], ["0.99999-Shallow", "--width", "4"],
                                  ["0.7-Shallow", "--width", "4", "--train-n", "0"]])
@pytest.mark.parametrize("out", ["new/run", "empty", "job"])
def test_refused_training_leaves_no_folder(tmp_path, capsys, argv, out):
    (tmp_path / "empty").mkdir()
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "job.json").write_text("{}")  # the app's job folder, made before its trainer starts
    _refused(capsys, randmask_main, ["train", *argv, "--out", str(tmp_path / out), "--epochs", "1", "--no-bar"],
             tmp_path)


def test_training_that_fails_in_its_first_epoch_leaves_only_what_was_there(tmp_path, capsys, monkeypatch):
    import randmask.experiments.train

    def boom(*args, **kwargs):
        raise ValueError("boom")

    monkeypatch.setattr(randmask.experiments.train, "train_step", boom)
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "job.json").write_text("{}")
    for out in ("job", "new/run"):
        code, _, err = run_main(randmask_main, ["train", "0.7-Shallow", "--width", "4", "--epochs", "1", "--train-n",
                                                "8", "--eval-n", "8", "--no-bar", "--out", str(tmp_path / out)], capsys)
        assert_one_line_error(code, err, "boom")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["job", "job/job.json"]


@pytest.mark.parametrize("where", ["M0", "M0/config.json", "log", "data"])
def test_training_into_a_model_or_over_its_files_is_refused(models, capsys, data_dir, where):
    (models / "log").mkdir()
    (models / "log" / "progress.jsonl").write_text("{}\n")
    out = data_dir if where == "data" else models / where
    _refused(capsys, randmask_main, ["train", "0.7-Shallow", "--width", "4", "--epochs", "1", "--out", str(out),
                                     "--no-bar"], models, {"data": "input", "M0/config.json": "not a folder"}.get(
                                         where, "already holds"))


# ------------------------------------------------------------------------------------------ study commands
@pytest.fixture
def sets(tmp_path, cifar) -> Path:
    from study.sets import build_clean_set

    x, y = cifar
    build_clean_set(tmp_path / "set", np.arange(10, 14), x=x, y=y)
    return tmp_path


@pytest.fixture(scope="module")
def cifar(data_dir):
    from study.sets import load_cifar10_test

    return load_cifar10_test(str(data_dir))


def test_clean_set_never_replaces_a_set_without_overwrite(sets, capsys):
    _refused(capsys, study_main, ["clean-set", "--out", str(sets / "set"), "--count", "2"], sets, "already exists")


def test_clean_set_never_replaces_the_set_it_avoids(sets, capsys):
    _refused(capsys, study_main, ["clean-set", "--out", str(sets / "set"), "--count", "2", "--avoid",
                                  str(sets / "set"), "--overwrite"], sets, "input")


def test_clean_set_overwrite_replaces_the_whole_set(sets, capsys):
    code, _, err = run_main(study_main, ["clean-set", "--out", str(sets / "set"), "--count", "2", "--overwrite"],
                            capsys)
    assert code == 0, err
    from study.sets import read_set

    assert len(read_set(sets / "set")) == 2 and len(list((sets / "set" / "images").iterdir())) == 2
    assert sorted(p.name for p in sets.iterdir()) == ["set"]


def test_a_refused_clean_set_leaves_nothing(sets, capsys):
    _refused(capsys, study_main, ["clean-set", "--out", str(sets / "new" / "set"), "--count", "100000"], sets,
             "qualify")


def test_demo_never_replaces_an_existing_folder(sets, capsys):
    _refused(capsys, study_main, ["demo", "--db", str(sets / "s.db"), "--out", str(sets / "set"), "--images", "6"],
             sets, "already exists")
    _refused(capsys, study_main, ["demo", "--db", str(sets / "s.db"), "--out", str(sets), "--overwrite"], sets, "input")


def test_demo_writes_its_sets_and_study_and_overwrite_replaces_only_demo_sets(tmp_path, capsys):
    argv = ["demo", "--db", str(tmp_path / "s.db"), "--out", str(tmp_path / "sets"), "--images", "6"]
    code, out, err = run_main(study_main, argv, capsys)
    assert code == 0 and "created study 'demo'" in out, err
    assert sorted(p.name for p in (tmp_path / "sets").iterdir()) == ["catch", "clean", "noise16", "noise32", "practice"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db", "sets"]  # no temporary folder left
    old = (tmp_path / "sets" / "clean" / "meta.csv").stat().st_ino
    code, _, err = run_main(study_main, [*argv, "--name", "demo2", "--overwrite"], capsys)
    assert code == 0, err
    assert (tmp_path / "sets" / "clean" / "meta.csv").stat().st_ino != old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db", "sets"]
    _refused(capsys, study_main, [*argv[:-2], "--images", "6", "--name", "demo3", "--out", str(tmp_path / "sets" / "clean"),
                                  "--overwrite"], tmp_path, "not earlier demo sets")


@pytest.mark.parametrize("argv", [["--name", "Bad Name!"], ["--images", "0"], ["--images", "1"],
                                  ["--images", "5"], ["--images", "-3"]])
def test_a_refused_demo_leaves_no_sets_and_no_database(tmp_path, capsys, argv):
    _refused(capsys, study_main, ["demo", "--db", str(tmp_path / "db" / "s.db"), "--out", str(tmp_path / "sets"),
                                  *argv], tmp_path)


@pytest.mark.parametrize("argv, fragment", [(["--name", "Bad Name!"], "study name 'Bad Name!'"),
                                             (["--db", "{d}/empty.db"], "is empty, not a study database")])
def test_demo_refuses_a_bad_name_or_database_before_building_its_sets(tmp_path, capsys, monkeypatch, argv, fragment):
    import study.cli_create

    def no_work(*args, **kwargs):  # the sets take minutes on a loaded machine: nothing may start before the checks
        raise AssertionError("demo loaded CIFAR-10 before refusing")

    monkeypatch.setattr(study.cli_create, "load_cifar10_test", no_work)
    (tmp_path / "empty.db").write_bytes(b"")
    _refused(capsys, study_main, ["demo", "--db", str(tmp_path / "s.db"), "--out", str(tmp_path / "sets"),
                                  *(a.format(d=tmp_path) for a in argv)], tmp_path, fragment)


@pytest.fixture
def study_db(sets, capsys) -> Path:
    code, _, err = run_main(study_main, ["create", "--db", str(sets / "s.db"), "--name", "s1", "--set",
                                         str(sets / "set"), "--catch-per-participant", "0",
                                         "--items-per-participant", "2", "--labels-per-item", "1"], capsys)
    assert code == 0, err
    return sets / "s.db"


def test_create_with_a_bad_base_url_adds_no_study(study_db, capsys):
    argv = ["create", "--db", str(study_db), "--name", "s2", "--set", str(study_db.parent / "set"),
            "--catch-per-participant", "0", "--items-per-participant", "2", "--labels-per-item", "1"]
    _refused(capsys, study_main, [*argv, "--base-url", "https://x/?q"], study_db.parent, "base URL",
             sqlite_readers=True)
    code, _, err = run_main(study_main, argv, capsys)  # the same study, with a good address, is created afresh
    assert code == 0, err


def test_backup_never_writes_through_a_planted_link(study_db, capsys):
    victim = study_db.parent / "victim.txt"
    victim.write_text("keep")
    (study_db.parent / "copy.db.partial").symlink_to(victim)
    code, _, err = run_main(study_main, ["backup", "--db", str(study_db), "--out", str(study_db.parent / "copy.db")],
                            capsys)
    assert code == 0, err
    assert victim.read_text() == "keep"
    assert (study_db.parent / "copy.db").read_bytes()[:16] == b"SQLite format 3\x00"
    assert not [p for p in study_db.parent.iterdir() if p.name.startswith(".")]


def test_backup_onto_a_dangling_link_or_its_own_database_is_refused(study_db, capsys):
    (study_db.parent / "dangling.db").symlink_to(study_db.parent / "nowhere")
    _refused(capsys, study_main, ["backup", "--db", str(study_db), "--out", str(study_db.parent / "dangling.db")],
             study_db.parent, "already exists")
    _refused(capsys, study_main, ["backup", "--db", str(study_db), "--out", str(study_db)], study_db.parent)


def test_export_needs_overwrite_and_replaces_only_an_export(study_db, capsys):
    argv = ["export", "--db", str(study_db), "--no-cifar10h", "--bootstrap", "0"]
    code, out, err = run_main(study_main, [*argv, "--out", str(study_db.parent / "exp")], capsys)
    assert code == 0, err
    assert all(Path(line).parent == study_db.parent / "exp" and Path(line).is_file() for line in out.splitlines())
    _refused(capsys, study_main, [*argv, "--out", str(study_db.parent / "exp")], study_db.parent, "already exists",
             sqlite_readers=True)
    _refused(capsys, study_main, [*argv, "--out", str(study_db.parent / "set"), "--overwrite"], study_db.parent,
             "not an earlier export", sqlite_readers=True)
    _refused(capsys, study_main, [*argv, "--out", str(study_db.parent), "--overwrite"], study_db.parent, "input",
             sqlite_readers=True)
    code, _, err = run_main(study_main, [*argv, "--out", str(study_db.parent / "exp"), "--overwrite"], capsys)
    assert code == 0, err


def test_an_export_that_fails_half_way_leaves_no_csv(study_db, capsys, monkeypatch):
    """Two studies: the first study's CSVs are written, then the second fails; nothing may remain."""
    code, _, err = run_main(study_main, ["create", "--db", str(study_db), "--name", "s2", "--set",
                                         str(study_db.parent / "set"), "--catch-per-participant", "0",
                                         "--items-per-participant", "2", "--labels-per-item", "1"], capsys)
    assert code == 0, err
    import study.export

    real, calls = study.export.export_frames, []

    def second_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("summary failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(study.export, "export_frames", second_fails)
    _refused(capsys, study_main, ["export", "--db", str(study_db), "--no-cifar10h", "--bootstrap", "0", "--out",
                                  str(study_db.parent / "exp")], study_db.parent, "summary failed", sqlite_readers=True)
    assert len(calls) == 2


def test_replace_text_swaps_whole_files_and_a_failed_write_leaves_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "runs.json"
    safe_files.replace_text(target, "old")
    safe_files.replace_text(target, "new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["runs.json"]

    def fail(*args):  # the rename fails after the temporary file was written
        raise OSError("disk full")

    monkeypatch.setattr(safe_files.os, "replace", fail)
    with pytest.raises(OSError):
        safe_files.replace_text(target, "lost")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["runs.json"]
