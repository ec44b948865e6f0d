"""The study planner (study/plan.py, `python -m study plan`): simulated studies through the real allocation and
test agree with statsmodels' analytic power, and a study of the planned size has the planned power."""
from __future__ import annotations

import numpy as np
import pytest
import test_study_support as support
from statsmodels.stats.proportion import proportions_ztest

from study import get_study, open_db
from study.cli import main as cli
from study.plan import PlanError, PlanInput, allocation, make_plan, power_figure, simulated_power
from study.results import compute_results, difference_test

cifar, study_sets = support.cifar, support.study_sets


def small(**overrides) -> PlanInput:
    settings = {"conditions": ["clean", "a", "b"], "accuracy": [0.9, 0.7, 0.8], "difference": 0.1,
                "items_per_condition": 60, "items_per_participant": 6, "catch_per_participant": 2,
                "simulations": 1000, "seed": 0}
    return PlanInput(**{**settings, **overrides})


def test_difference_test_is_statsmodels_ztest():
    right_a, n_a, right_b, n_b = np.array([40, 90, 5]), np.array([50, 100, 60]), np.array([30, 70, 9]), np.array([50, 80, 61])
    diff, p = difference_test(right_a, n_a, right_b, n_b)
    for i in range(3):
        _, expected = proportions_ztest([right_a[i], right_b[i]], [n_a[i], n_b[i]])
        assert p[i] == pytest.approx(expected, rel=1e-9)
        assert diff[i] == pytest.approx(right_a[i] / n_a[i] - right_b[i] / n_b[i])
    assert difference_test(5, 5, 7, 7)[1] == 1.0  # both perfect: no evidence of a difference


@pytest.mark.parametrize("reference, difference", [(0.9, 0.1), (0.8, 0.15), (0.95, 0.2)])
def test_simulated_plan_agrees_with_analytic_power(reference, difference):
    plan = make_plan(small(accuracy=[reference, 0.5, 0.5], difference=difference, items_per_condition=20))
    assert plan.simulated_answers == pytest.approx(plan.analytic_answers, rel=0.05)
    assert plan.answers_per_condition == pytest.approx(plan.analytic_answers, rel=0.05, abs=2)
    # simulated and analytic power curves within 5 points wherever the normal approximation applies (>= 30 answers)
    large = plan.curve[plan.curve["answers_per_condition"] >= 30]
    assert len(large) >= 10 and (np.abs(large["simulated_power"] - large["analytic_power"]) < 0.05).all()
    assert plan.curve["analytic_power"].is_monotonic_increasing


def test_a_study_of_the_planned_size_has_the_planned_power():
    made = make_plan(small())
    assert made.simulated_power >= 0.8
    # new studies of that size, drawn with another seed through the same allocation and test
    check = small(simulations=4000)
    slots = allocation(check, made.participants)
    power = simulated_power(check, [0.9, 0.8, 0.8], slots, np.array([made.participants]), seed=12345).mean()
    assert abs(power - 0.8) <= 0.05, power
    # a smaller study has less power (the plan is the smallest size that reaches the target)
    below = simulated_power(check, [0.9, 0.8, 0.8], slots, np.array([made.participants - 3]), seed=12345).mean()
    assert below < power


def test_allocation_is_the_real_balanced_one():
    slots = allocation(small(), 90)
    assert slots.shape == (90, 6) and (np.stack([(slots == c).sum(axis=1) for c in range(3)], axis=1) == 2).all()


def test_expected_power_and_costs():
    made = make_plan(small(pay_per_hour=10.0, fee_share=0.5, seconds_per_item=6.0, overhead_min=1.0, practice=2))
    minutes = 1.0 + (6 + 2 + 2) * 6.0 / 60
    assert made.minutes_per_participant == pytest.approx(minutes)
    assert made.cost == pytest.approx(made.participants * minutes / 60 * 10.0 * 1.5)
    power = made.expected_power.set_index("condition")["power"]
    assert power["a"] > 0.99 and power["b"] >= 0.7  # a 20-point drop is easy, 10 points is the design
    fig = power_figure(made)
    assert [t.name for t in fig.data] == ["simulated (real allocation and test)", "analytic (statsmodels)"]


def test_labels_per_item_floor():
    made = make_plan(small(min_labels_per_item=8))  # far more than the power needs: every image 8 times
    assert made.labels_per_item == 8 and made.participants == 8 * 60 // 2 and made.simulated_power > 0.95


@pytest.mark.parametrize("overrides, message", [
    ({"accuracy": [0.9, 0.7]}, "3 conditions but 2 accuracies"),
    ({"difference": 0.95}, "below the reference accuracy"),
    ({"items_per_participant": 7}, "multiple of the 3 conditions"),
    ({"accuracy": [0.9, 1.0, 0.5]}, "between 0 and 1"),
    ({"conditions": ["clean"], "accuracy": [0.9]}, "at least two"),
    ({"difference": 0.001}, "more than 20000"),
    ({"difference": 0.02, "simulations": 100_000}, "too many to hold; use at most"),
    # conditions share their images: 30 items need 30 images (the allocation raised a traceback-only error)
    ({"items_per_condition": 12, "items_per_participant": 30}, "30 items per participant need at least as many"),
])
def test_plans_that_cannot_be_made(overrides, message):
    with pytest.raises(PlanError, match=message):
        make_plan(small(**overrides))


def test_plan_cli_typed_and_from_a_pilot(tmp_path, study_sets, capsys):
    assert cli(["plan", "--conditions", "clean,a,b", "--accuracy", "0.9,0.7,0.8", "--items-per-condition", "60",
                "--items-per-participant", "6", "--catch-per-participant", "2", "--simulations", "500"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("participants needed: ") and "analytic check (statsmodels NormalIndPower): 195" in out
    for args, message in ((["--conditions", "a,b"], "--accuracy, or --pilot"),
                          (["--conditions", "a,b", "--accuracy", "0.9,x"], "comma-separated numbers"),
                          (["--pilot", str(tmp_path / "none.db")], "none.db")):
        assert cli(["plan", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    from test_study_results import ACCURACY, run_study
    pilot = tmp_path / "pilot.db"
    run_study(pilot, study_sets, 24, labels_per_item=4)
    db = open_db(pilot)
    acc = compute_results(db, get_study(db, "s1"), n_boot=1, min_participants=2**31).accuracy.set_index("condition")["accuracy"]
    db.close()
    assert cli(["plan", "--pilot", str(pilot), "--difference", "0.2", "--items-per-condition", "12",
                "--items-per-participant", "6", "--simulations", "200"]) == 0
    out = capsys.readouterr().out
    assert f"from clean at {acc['clean']:.0%}" in out
    for condition in ACCURACY:
        if condition != "clean":
            assert f"{condition}: expected accuracy {acc[condition]:.0%}" in out


def test_create_tab_plans_a_study(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest
    from test_study_pages import ADMIN_PAGE, PASSWORD, sign_in
    monkeypatch.setenv("STUDY_DB", str(tmp_path / "new.db"))
    monkeypatch.setenv("STUDY_ADMIN_PASSWORD", PASSWORD)
    at = sign_in(AppTest.from_file(ADMIN_PAGE, default_timeout=60).run(), PASSWORD)
    at.text_input(key="plan-accuracy").input("0.9, 0.7, 0.8")
    next(b for b in at.button if b.label == "Plan").click().run()
    assert "No plan: 2 conditions but 3 accuracies" in [e.value for e in at.error][0]
    at.text_input(key="plan-accuracy").input("0.9, 0.7")
    at.number_input(key="plan-n").set_value(6)
    next(b for b in at.button if b.label == "Plan").click().run()
    assert not at.exception and not at.error
    expected = make_plan(PlanInput(conditions=["clean", "PGD16-vs-Normal ResNet-18"], accuracy=[0.9, 0.7],
                                   items_per_condition=100, items_per_participant=6))
    shown = next(t.value for t in at.text if t.value.startswith("participants needed"))
    assert shown.startswith(f"participants needed: {expected.participants} ") and len(at.get("plotly_chart")) == 1
