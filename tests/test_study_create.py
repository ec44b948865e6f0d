"""The organiser's Create tab finds the set folders that exist, and the exclusion button counts in words."""
from __future__ import annotations

import shutil

import test_study_support as support
from streamlit.testing.v1 import AppTest
from test_study_pages import ADMIN_PAGE, PASSWORD, sign_in, texts

from study import get_study, open_db
from study.admin import find_sets, study_from_form
from study.display import exclude_label

cifar, study_sets = support.cifar, support.study_sets


def test_find_sets_lists_folders_with_their_conditions(tmp_path, study_sets):
    root = tmp_path / "lab"
    for name in ("clean", "pgd-normal"):
        shutil.copytree(study_sets["root"] / name, root / "sets" / name)
    (root / "sets" / "broken").mkdir()
    (root / "sets" / "broken" / "meta.csv").write_text("not,a\nset")
    (root / "a" / "b" / "c" / "d").mkdir(parents=True)  # deeper than three levels: not searched
    shutil.copytree(study_sets["root"] / "catch", root / "a" / "b" / "c" / "d" / "catch")
    found = find_sets(root).set_index("folder")
    assert list(found.index) == [str(root / "sets" / n) for n in ("broken", "clean", "pgd-normal")]
    assert found.loc[str(root / "sets" / "pgd-normal"), "conditions"] == "PGD16-vs-Normal ResNet-18"
    assert found.loc[str(root / "sets" / "clean"), "images"] == 24
    assert found.loc[str(root / "sets" / "broken"), "conditions"].startswith("unreadable")
    assert find_sets(tmp_path / "missing").empty


def test_picked_and_typed_sets_are_both_used():
    form = {"slug": "x", "title": "", "sets": "typed\n\npicked-too\n", "catch_set": "", "practice_set": "",
            "labels_per_item": 1, "items_per_participant": 3, "catch_per_participant": 0, "presentation_ms": 0,
            "completion_code": "", "redirect_url": ""}
    _, folders, _, _ = study_from_form(**form, picked_sets=["picked", "picked-too"])
    assert folders == ["typed", "picked-too", "picked"]


def test_exclude_label_counts_in_words():
    assert exclude_label(1) == "Exclude this participant"
    assert exclude_label(3) == "Exclude these 3 participants"


def test_create_tab_offers_the_sets_it_found(tmp_path, study_sets, monkeypatch):
    monkeypatch.setenv("STUDY_DB", str(tmp_path / "new.db"))
    monkeypatch.setenv("STUDY_ADMIN_PASSWORD", PASSWORD)
    monkeypatch.setenv("STUDY_SETS", str(study_sets["root"]))
    at = sign_in(AppTest.from_file(ADMIN_PAGE, default_timeout=60).run(), PASSWORD)
    options = at.multiselect(key="new-picked").options
    assert {str(p) for p in study_sets["conditions"]} <= set(options) and len(options) == 5
    at.text_input(key="new-slug").input("picked")
    at.multiselect(key="new-picked").set_value([str(p) for p in study_sets["conditions"]])
    at.text_input(key="new-catch").input(str(study_sets["catch"]))
    at.number_input(key="new-n").set_value(6)
    next(b for b in at.button if "Create" in b.label).click().run()
    assert "Created study picked" in texts(at)
    db = open_db(tmp_path / "new.db")
    try:
        assert len(get_study(db, "picked").conditions) == 3
    finally:
        db.close()
