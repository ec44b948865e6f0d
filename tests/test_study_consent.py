"""What a participant reads before agreeing: the study's own title, and a length that fits the study."""
from __future__ import annotations

import json

import test_study_support as support
from test_study_pages import label_page, texts

from study import get_study, open_db
from study.design import LEGACY_CONSENT

cifar, study_sets = support.cifar, support.study_sets


def test_consent_gives_this_studys_images_and_minutes(tmp_path, study_sets):
    path = tmp_path / "s.db"
    support.make_study(path, study_sets, title="Small photos")  # 6 images + 2 catch + 3 practice
    support.make_study(path, study_sets, slug="long", items_per_participant=12, catch_per_participant=6,
                       labels_per_item=3)
    db = open_db(path)
    try:
        short, long = get_study(db, "s1"), get_study(db, "long")
        assert "You will see 11 tiny" in short.consent_text and "about 2 minutes" in short.consent_text
        assert "You will see 21 tiny" in long.consent_text and "about 3 minutes" in long.consent_text
        # a study made before stored the old fixed text (and no practice count): it gets its own length too
        design = {**short.design, "consent_text": LEGACY_CONSENT}
        del design["practice_images"]
        db.execute("UPDATE studies SET design_json = ? WHERE slug = 's1'", [json.dumps(design)])
        db.conn.commit()
        assert "You will see 8 tiny" in get_study(db, "s1").consent_text
        assert "10 minutes" not in get_study(db, "s1").consent_text
    finally:
        db.close()


def test_participant_sees_the_title_at_consent(tmp_path, study_sets, monkeypatch):
    path = tmp_path / "t.db"
    support.make_study(path, study_sets, title="How people see small photos")
    monkeypatch.setenv("STUDY_DB", str(path))
    at = label_page(pid="reader", study="s1")
    assert [h.value for h in at.header] == ["How people see small photos"]
    assert "You will see 11 tiny" in texts(at) and "about 2 minutes" in texts(at)
