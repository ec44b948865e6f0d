"""study.display: the organiser page's tables as text, with readable headers and a dash for missing values."""
from __future__ import annotations

import math

import pandas as pd

from study.display import MISSING, header, readable


def test_readable_frames_have_no_none_and_plain_headers():
    frame = pd.DataFrame({
        "participant": ["Pa", "Pb"], "completed_at": ["2026-11-30T05:37:24.076+00:00", None],
        "excluded": [False, True], "exclusion_reason": [None, "catch accuracy below 0.50"],
        "n_answered": [11, 0], "catch_accuracy": [0.5, math.nan],
        "human_accuracy": [1 / 6, math.nan], "human_accuracy_lo": [0.0, math.nan],
        "human_accuracy_hi": [0.504, math.nan], "fleiss_kappa": [0.123, math.nan], "median_rt_ms": [1151.97, math.nan],
        "n_participants": pd.array([3, pd.NA], dtype="Int64")})
    shown = readable(frame)
    assert list(shown.columns) == ["participant", "completed", "excluded", "exclusion reason", "answered",
                                   "catch accuracy", "human accuracy", "human accuracy 95% CI", "Fleiss' kappa",
                                   "median RT (ms)", "participants"]
    assert shown.iloc[0].tolist() == ["Pa", "2026-11-30 05:37 UTC", "no", MISSING, "11", "50.0%", "16.7%",
                                      "0.0%–50.4%", "0.12", "1152", "3"]
    assert shown.iloc[1].tolist() == ["Pb", MISSING, "yes", "catch accuracy below 0.50", "0", MISSING, MISSING,
                                      MISSING, MISSING, MISSING, MISSING]
    assert header("labels_needed") == "labels needed" and header("some_new_column") == "some new column"
    assert readable(frame.iloc[:0]).empty
