"""Agreement statistics against textbook values, and exports against hand-computed answers."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import test_study_support as support

from study import consent, get_study, join, next_trial, open_db, record_answer
from study.admin import overview, set_excluded
from study.export import export_study
from study.sets import load_cifar10h
from study.stats import (
    bootstrap_ci,
    fleiss_kappa,
    krippendorff_alpha_nominal,
    majority,
    pooled_mean,
    proportion_ci,
)

cifar, study_sets = support.cifar, support.study_sets

# Fleiss (1971), "Measuring nominal scale agreement among many raters", Table 1: 30 patients, each diagnosed
# by 6 psychiatrists into 5 categories (depression, personality disorder, schizophrenia, neurosis, other);
# the paper's overall kappa is .430.
FLEISS_1971 = [[0, 0, 0, 6, 0], [0, 3, 0, 0, 3], [0, 1, 4, 0, 1], [0, 0, 0, 0, 6], [0, 3, 0, 3, 0], [2, 0, 4, 0, 0],
               [0, 0, 4, 0, 2], [2, 0, 3, 1, 0], [2, 0, 0, 4, 0], [0, 0, 0, 0, 6], [1, 0, 0, 5, 0], [1, 1, 0, 4, 0],
               [0, 3, 3, 0, 0], [1, 0, 0, 5, 0], [0, 2, 0, 3, 1], [0, 0, 5, 0, 1], [3, 0, 0, 1, 2], [5, 1, 0, 0, 0],
               [0, 2, 0, 4, 0], [1, 0, 2, 0, 3], [0, 0, 0, 0, 6], [0, 1, 0, 5, 0], [0, 2, 0, 1, 3], [2, 0, 0, 4, 0],
               [1, 0, 0, 4, 1], [0, 5, 0, 1, 0], [4, 0, 0, 0, 2], [0, 2, 0, 4, 0], [1, 0, 5, 0, 0], [0, 0, 0, 0, 6]]

# Fleiss' kappa worked example (10 subjects, 14 raters, 5 categories), as on Wikipedia's "Fleiss' kappa" page.
FLEISS_TABLE = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
                [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]

# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", nominal example: 4 observers, 12 units,
# missing values as None; published nominal alpha = 0.743.
KRIPPENDORFF_DATA = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def test_fleiss_kappa_textbook_example():
    assert fleiss_kappa(FLEISS_TABLE) == pytest.approx(0.2099, abs=1e-4)  # published: 0.210
    # the published intermediate values: P-bar = 0.378, P-bar_e = 0.213
    counts = np.array(FLEISS_TABLE, float)
    p_bar = ((counts * (counts - 1)).sum(1) / (14 * 13)).mean()
    assert p_bar == pytest.approx(0.378, abs=5e-4)
    assert ((counts.sum(0) / counts.sum()) ** 2).sum() == pytest.approx(0.213, abs=5e-4)


def test_fleiss_kappa_fleiss_1971():
    assert np.array(FLEISS_1971).sum(axis=1).tolist() == [6] * 30
    assert fleiss_kappa(FLEISS_1971) == pytest.approx(0.430, abs=5e-4)


def test_krippendorff_alpha_textbook_example():
    counts = np.zeros((12, 5), int)
    for observer in KRIPPENDORFF_DATA:
        for unit, value in enumerate(observer):
            if value is not None:
                counts[unit, value - 1] += 1
    assert krippendorff_alpha_nominal(counts) == pytest.approx(0.743, abs=5e-4)


def test_agreement_edge_cases():
    perfect = [[3, 0, 0], [0, 3, 0], [0, 0, 3]]
    assert fleiss_kappa(perfect) == pytest.approx(1.0)
    assert krippendorff_alpha_nominal(perfect) == pytest.approx(1.0)
    # two units, each rated once 0 and once 1, by hand:
    # coincidences o_01 = o_10 = 2, n_0 = n_1 = 2, n = 4 -> alpha = 1 - (n - 1) * 4 / (2 * n_0 * n_1) = -0.5
    assert krippendorff_alpha_nominal([[1, 1], [1, 1]]) == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa([[2, 0], [1, 2]])
    assert np.isnan(krippendorff_alpha_nominal([[1, 0], [0, 1]]))  # no unit has two ratings
    assert majority([0, 2, 2, 1]) == (1, True)
    assert majority([0, 0, 3]) == (2, False)
    assert majority([0, 0, 0]) == (None, False)


# --- the closed forms these functions had before they called statsmodels / krippendorff / scipy ---------


def closed_form_kappa(counts: np.ndarray) -> float:
    n = counts.sum(axis=1)[0]
    p_bar = ((counts * (counts - 1)).sum(axis=1) / (n * (n - 1))).mean()
    p_expected = ((counts.sum(axis=0) / counts.sum()) ** 2).sum()
    return float("nan") if p_expected == 1 else (p_bar - p_expected) / (1 - p_expected)


def closed_form_alpha(counts: np.ndarray) -> float:
    m = counts.sum(axis=1)
    counts, m = counts[m >= 2], m[m >= 2]
    if len(counts) == 0:
        return float("nan")
    weighted = counts / (m - 1)[:, None]  # coincidences o_ck = sum_u n_uc (n_uk - [c == k]) / (m_u - 1)
    o = weighted.T @ counts - np.diag(weighted.sum(axis=0))
    n_c = o.sum(axis=1)
    n = n_c.sum()
    expected = (n ** 2 - (n_c ** 2).sum()) / (n - 1)
    return float("nan") if expected == 0 else 1 - (o.sum() - np.trace(o)) / expected


def closed_form_bootstrap(groups, statistic, n_boot, level, seed):
    """Resample groups with numpy's generator, drop NaN values, take the percentile interval."""
    rng = np.random.default_rng(seed)
    values = np.array([statistic([groups[i] for i in rng.integers(0, len(groups), size=len(groups))])
                       for _ in range(n_boot)])
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    return float(np.quantile(values, (1 - level) / 2)), float(np.quantile(values, (1 + level) / 2))


def test_library_statistics_agree_with_the_closed_forms_on_random_counts():
    rng = np.random.default_rng(11)
    nan_kappa = nan_alpha = 0
    for _ in range(300):
        items, categories, raters = rng.integers(1, 25), rng.integers(1, 6), rng.integers(2, 7)
        # skewed category probabilities, so some matrices use a single category (kappa, alpha undefined)
        counts = rng.multinomial(raters, rng.dirichlet(np.full(categories, 0.3)), size=items)
        expected = closed_form_kappa(counts.astype(float))
        nan_kappa += np.isnan(expected)
        assert fleiss_kappa(counts) == pytest.approx(expected, abs=1e-12, nan_ok=True)
        # unequal numbers of ratings, some items with 0 or 1 (not pairable): alpha only
        ragged = counts * (rng.random((items, 1)) < 0.7) + (rng.random((items, categories)) < 0.2)
        expected = closed_form_alpha(ragged.astype(float))
        nan_alpha += np.isnan(expected)
        assert krippendorff_alpha_nominal(ragged) == pytest.approx(expected, abs=1e-12, nan_ok=True)
    assert 0 < nan_kappa < 300 and 0 < nan_alpha < 300  # the undefined cases were exercised, and not only them


def test_bootstrap_agrees_with_the_closed_form_resampling():
    rng = np.random.default_rng(12)
    for seed in range(20):
        groups = [rng.integers(0, 2, size=rng.integers(1, 5)).astype(float) for _ in range(rng.integers(2, 40))]
        reference = closed_form_bootstrap(groups, pooled_mean, 300, 0.9, seed)
        # same seed, same resamples: the exported intervals did not move when scipy took over
        assert proportion_ci(groups, n_boot=300, level=0.9, seed=seed)[1:] == pytest.approx(reference, abs=1e-12)
        assert bootstrap_ci(groups, pooled_mean, n_boot=300, level=0.9, seed=seed) == pytest.approx(reference, abs=1e-12)

        def undefined_without_group_0(picked, first=groups[0]):  # NaN resamples (no group 0) are left out
            return pooled_mean(picked) if any(g is first for g in picked) else float("nan")

        reference = closed_form_bootstrap(groups, undefined_without_group_0, 200, 0.95, seed)
        assert bootstrap_ci(groups, undefined_without_group_0, n_boot=200, seed=seed) == pytest.approx(
            reference, abs=1e-12, nan_ok=True)


def test_bootstrap_edge_cases():
    one = [np.array([1.0, 0.0, 1.0])]  # a single cluster: every resample is that cluster
    assert proportion_ci(one, n_boot=50) == pytest.approx((2 / 3,) * 3)
    assert bootstrap_ci(one, pooled_mean, n_boot=50) == pytest.approx((2 / 3,) * 2)
    assert np.isnan(bootstrap_ci([], pooled_mean)).all() and np.isnan(proportion_ci([])).all()
    assert np.isnan(bootstrap_ci(one * 3, pooled_mean, n_boot=0)).all()
    assert np.isnan(bootstrap_ci(one * 3, lambda picked: float("nan"), n_boot=20)).all()
    with pytest.raises(ValueError, match="n_boot"):
        proportion_ci(one * 3, n_boot=0)


def test_bootstrap_is_seeded_and_matches_generic_version():
    rng = np.random.default_rng(5)
    groups = [rng.integers(0, 2, size=rng.integers(1, 5)) for _ in range(60)]
    share, lo, hi = proportion_ci(groups, n_boot=500, seed=3)
    assert (share, lo, hi) == proportion_ci(groups, n_boot=500, seed=3)
    assert share == pytest.approx(np.concatenate(groups).mean())
    assert (lo, hi) == pytest.approx(bootstrap_ci([g.astype(float) for g in groups], pooled_mean, n_boot=500, seed=3))
    assert lo < share < hi


def test_bootstrap_interval_width_matches_binomial_theory():
    # 400 independent answers with p = 0.7: 95% interval half-width ~ 1.96 * sqrt(p (1 - p) / n) = 0.0449
    groups = [np.array([1.0])] * 280 + [np.array([0.0])] * 120
    share, lo, hi = proportion_ci(groups, n_boot=4000, seed=0)
    assert share == pytest.approx(0.7)
    assert (hi - lo) / 2 == pytest.approx(0.0449, rel=0.12)
    assert proportion_ci([np.ones(3)] * 5) == (1.0, 1.0, 1.0)


# --- exports ----------------------------------------------------------------------------------------

# Each participant follows one rule, whatever items they get, so the expected shares follow by hand.
RULES = {
    "p1": lambda role, true, src: true,  # always right
    "p2": lambda role, true, src: src if src is not None else true,  # fooled like the source model
    "p3": lambda role, true, src: src if src is not None else true,
    "p4": lambda role, true, src: (true + 5) % 10,  # always wrong, never the source model's label
}


@pytest.fixture()
def answered_study(tmp_path, study_sets):
    path = tmp_path / "s.db"
    support.make_study(path, study_sets, slug="hand", labels_per_item=2, items_per_condition=2,
                       items_per_participant=2, catch_per_participant=1, practice=True,
                       conditions=["PGD16-vs-Normal ResNet-18", "clean"])
    db = open_db(path)
    study = get_study(db, "hand")
    for pid, rule in RULES.items():
        p = consent(db, join(db, study, pid))
        while (t := next_trial(db, p.id)) is not None:
            role, true, src = db.execute(
                "SELECT i.role, i.true_label, i.source_pred FROM assignments a JOIN items i ON i.id = a.item_id "
                "WHERE a.id = ?", [t.assignment_id]).fetchone()
            record_answer(db, p.id, t.assignment_id, rule(role, true, src), rt_ms=100.0 * len(pid), mode="unlimited",
                          input="click")
    return db, study


def read(out):
    return {name: pd.read_csv(out / f"{name}.csv") for name in ("responses", "items", "summary", "participants")}


def test_export_matches_hand_computed_shares(tmp_path, answered_study):
    db, study = answered_study
    assert overview(db, study).labels_done == overview(db, study).labels_needed == 8
    export_study(db, tmp_path / "out", "hand", n_boot=300)
    t = read(tmp_path / "out")
    assert len(t["responses"]) == 4 * (3 + 2 + 1)  # practice + trials + catch, one row per answer
    assert not t["responses"].duplicated(["participant", "item_id"]).any()
    s = t["summary"].set_index(["role", "condition"])
    pgd = s.loc[("trial", "PGD16-vs-Normal ResNet-18")]
    # PGD answers: p1 right; p2, p3 chose the source model's label; p4 wrong
    assert pgd["n_answers"] == 4 and pgd["human_accuracy"] == pytest.approx(1 / 4)
    assert pgd["share_source_pred"] == pytest.approx(2 / 4)
    # four participants: below the minimum for an interval, so the cells are empty
    assert np.isnan(pgd["human_accuracy_lo"]) and np.isnan(pgd["share_source_pred_hi"])
    clean = s.loc[("trial", "clean")]
    assert clean["human_accuracy"] == pytest.approx(3 / 4) and np.isnan(clean["share_source_pred"])
    assert s.loc[("catch", "clean"), "human_accuracy"] == pytest.approx(3 / 4)
    items = t["items"]
    pgd_items = items[items["condition"] == "PGD16-vs-Normal ResNet-18"]
    assert (pgd_items["n_labels"] == 2).all()
    count_cols = [f"n_{c}" for c in study.classes]
    assert (items[count_cols].sum(axis=1) == items["n_labels"]).all()
    # per item: share_true and share_source_pred recomputed from the raw answers
    r = t["responses"][t["responses"]["role"] != "practice"]
    for _, item in items.iterrows():
        answers = r[r["item_id"] == item["item_id"]]
        if answers.empty:  # unused catch images
            assert item["role"] == "catch" and np.isnan(item["share_true"])
            continue
        assert item["share_true"] == pytest.approx((answers["label"] == item["true_label"]).mean())
        if not np.isnan(item["source_pred"]):
            assert item["share_source_pred"] == pytest.approx((answers["label"] == item["source_pred"]).mean())
    # catch accuracy per participant
    part = t["participants"].set_index("external_id")
    assert part.loc["p1", "catch_accuracy"] == 1.0 and part.loc["p4", "catch_accuracy"] == 0.0
    assert part.loc["p4", "practice_correct"] == 0 and part.loc["p1", "practice_correct"] == 3


def test_exclusion_changes_statistics_not_raw_data(tmp_path, answered_study):
    db, study = answered_study
    uid = db.execute("SELECT uid FROM participants WHERE external_id = 'p4'").fetchone()[0]
    set_excluded(db, "hand", uid, True, "failed catch trials")
    export_study(db, tmp_path / "out", "hand", n_boot=200)
    t = read(tmp_path / "out")
    s = t["summary"].set_index(["role", "condition"])
    # the CSVs hold 4 decimals
    assert s.loc[("trial", "PGD16-vs-Normal ResNet-18"), "human_accuracy"] == pytest.approx(1 / 3, abs=5e-5)
    assert s.loc[("trial", "PGD16-vs-Normal ResNet-18"), "share_source_pred"] == pytest.approx(2 / 3, abs=5e-5)
    assert s.loc[("trial", "clean"), "human_accuracy"] == pytest.approx(1.0)
    assert len(t["responses"]) == 24 and t["responses"]["excluded"].sum() == 6  # raw answers kept, flagged


def test_cifar10h_comparison(tmp_path, answered_study, data_dir):
    db, study = answered_study
    counts = load_cifar10h(data_dir / "cifar10h" / "counts.npy")
    export_study(db, tmp_path / "out", "hand", cifar10h=counts, n_boot=200)
    c = pd.read_csv(tmp_path / "out" / "cifar10h.csv")
    items = pd.read_csv(tmp_path / "out" / "items.csv")
    clean_ids = set(items.loc[(items["attack"] == "clean") & (items["n_labels"] > 0), "item_id"])
    assert set(c["item_id"]) == clean_ids  # labelled clean controls and catch images, not the attacked ones
    for _, row in c.iterrows():
        ref = counts[row["test_index"]]
        assert row["cifar10h_n"] == ref.sum()
        assert row["cifar10h_share_true"] == pytest.approx(ref[row["true_label"]] / ref.sum(), abs=5e-5)
    summary = pd.read_csv(tmp_path / "out" / "summary.csv").set_index(["role", "condition"])
    ref_rows = counts[c.loc[c["role"] == "trial", "test_index"].to_numpy()]
    true = c.loc[c["role"] == "trial", "true_label"].to_numpy()
    assert summary.loc[("trial", "clean (CIFAR-10H)"), "human_accuracy"] == pytest.approx(
        ref_rows[np.arange(len(true)), true].sum() / ref_rows.sum(), abs=5e-5)
