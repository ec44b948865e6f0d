"""How many participants a study needs, before paying for it: simulate whole studies through the real
assignment (assign.choose_items, the least-labelled-first allocation every participant gets at consent) and the
real analysis (results.difference_test, the test the Results show), and cross-check with statsmodels' analytic
power for two proportions.

The question planned for: is human accuracy in each attacked condition lower than in the reference condition
(the first one, normally `clean`) by at least `difference`? Two-sided two-proportion z-test at level `alpha`
per comparison, over answers. Answers are simulated as independent draws with the expected accuracy (people
who differ in skill are not modelled: each sees every condition, so that would mostly cancel in the comparison).
No Streamlit import here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_effectsize

from .assign import Candidate, choose_items
from .results import difference_test

MAX_PARTICIPANTS = 20_000
MAX_DRAWS = 50_000_000  # simulated (study, participant, condition) counts held at once: 200 MB


class PlanError(ValueError):
    """The planner's inputs describe no study it can plan."""


@dataclass(frozen=True)
class PlanInput:
    conditions: list[str]  # the first is the reference (normally clean)
    accuracy: list[float]  # expected human accuracy per condition
    difference: float = 0.10  # smallest drop from the reference worth detecting
    alpha: float = 0.05
    power: float = 0.80
    items_per_condition: int = 100  # images each condition offers
    items_per_participant: int = 30  # trial items, split equally over the conditions
    catch_per_participant: int = 3
    practice: int = 3
    min_labels_per_item: int = 1
    seconds_per_item: float = 4.0
    overhead_min: float = 2.0  # consent, instructions and the end page
    pay_per_hour: float = 12.0
    fee_share: float = 0.0  # the platform's fee on top of the pay (Prolific: about a third)
    simulations: int = 1000
    seed: int = 0

    def check(self) -> None:
        if len(self.conditions) < 2 or len(set(self.conditions)) != len(self.conditions):
            raise PlanError("give at least two different conditions (the first is the reference)")
        if len(self.accuracy) != len(self.conditions):
            raise PlanError(f"{len(self.conditions)} conditions but {len(self.accuracy)} accuracies")
        if not all(0 < a < 1 for a in self.accuracy):
            raise PlanError("expected accuracies are shares between 0 and 1 (exclusive)")
        if not 0 < self.difference < self.accuracy[0]:
            raise PlanError(f"--difference must be above 0 and below the reference accuracy {self.accuracy[0]:g}")
        if not (0 < self.alpha < 0.5 and self.alpha < self.power < 1):
            raise PlanError("need 0 < alpha < 0.5 and alpha < power < 1")
        if self.items_per_participant % len(self.conditions):
            raise PlanError(f"items per participant ({self.items_per_participant}) must be a multiple of the "
                            f"{len(self.conditions)} conditions")
        if self.items_per_condition < self.items_per_participant // len(self.conditions):
            raise PlanError("each condition needs at least as many images as a participant sees from it")
        if self.items_per_participant > self.items_per_condition:  # conditions share their test images
            raise PlanError(f"a participant sees each test image once, in one condition: {self.items_per_participant} "
                            f"items per participant need at least as many images per condition, not "
                            f"{self.items_per_condition}")
        for name in ("catch_per_participant", "practice", "seconds_per_item", "overhead_min", "pay_per_hour",
                     "fee_share"):
            if not getattr(self, name) >= 0:  # also refuses NaN
                raise PlanError(f"{name.replace('_', '-')} must be 0 or more")
        if not 10 <= self.simulations <= 100_000 or self.min_labels_per_item < 1:
            raise PlanError("simulations must be from 10 to 100000, labels per item at least 1")

    @property
    def per_condition(self) -> int:
        """Answers one participant gives to each condition."""
        return self.items_per_participant // len(self.conditions)


@dataclass(frozen=True)
class Plan:
    input: PlanInput
    participants: int  # smallest number whose simulated power reaches the target
    labels_per_item: float  # mean labels per item at that size
    answers_per_condition: int
    simulated_power: float
    analytic_answers: float  # statsmodels: answers per condition for the target power
    simulated_answers: float  # the same, read off the simulated power curve (interpolated)
    minutes_per_participant: float
    cost: float
    curve: pd.DataFrame  # participants, answers per condition, simulated power, analytic power
    expected_power: pd.DataFrame  # per condition: power at the planned size for its expected accuracy

    @property
    def participant_hours(self) -> float:
        return self.participants * self.minutes_per_participant / 60


def analytic_answers(p_reference: float, p_other: float, alpha: float, power: float) -> float:
    """Answers per condition for a two-sided two-proportion test (statsmodels, arcsine effect size)."""
    effect = proportion_effectsize(p_reference, p_other)
    return float(NormalIndPower().solve_power(effect_size=abs(effect), alpha=alpha, power=power, ratio=1.0,
                                              alternative="two-sided"))


def analytic_power(p_reference: float, p_other: float, alpha: float, answers: np.ndarray) -> np.ndarray:
    effect = abs(proportion_effectsize(p_reference, p_other))
    return np.array([NormalIndPower().power(effect_size=effect, nobs1=n, alpha=alpha, ratio=1.0)
                     for n in np.asarray(answers, dtype=float)])


def allocation(plan: PlanInput, participants: int) -> np.ndarray:
    """Which condition each answer slot belongs to, participant by participant, through the real allocation:
    (participants, items per participant) condition indices; test images are shared across conditions as in
    a real study, and every participant finishes before the next one starts."""
    conditions = plan.conditions
    trial = [(c, t) for c in conditions for t in range(plan.items_per_condition)]
    n_catch = max(plan.catch_per_participant, 1) * 2
    loads = np.zeros(len(trial) + n_catch, dtype=np.int64)
    roles = ["trial"] * len(trial) + ["catch"] * n_catch
    keys = trial + [("", plan.items_per_condition + j) for j in range(n_catch)]
    cap = math.ceil(participants * plan.per_condition / plan.items_per_condition)  # labels per item at the end
    index = {c: i for i, c in enumerate(conditions)}
    rng = np.random.default_rng([plan.seed, 1])
    out = np.zeros((participants, plan.items_per_participant), dtype=np.int64)
    for p in range(participants):
        candidates = [Candidate(i, roles[i], keys[i][0], keys[i][1], int(loads[i])) for i in range(len(keys))]
        chosen = choose_items(candidates, conditions, plan.per_condition, plan.catch_per_participant, cap, rng)
        loads[chosen] += 1
        out[p] = sorted(index[keys[i][0]] for i in chosen if roles[i] == "trial")
    return out


def simulated_power(plan: PlanInput, accuracy: list[float], slots: np.ndarray, sizes: np.ndarray,
                    seed: int) -> np.ndarray:
    """(len(sizes), conditions - 1): the share of simulated studies of each size in which the test finds each
    condition's difference from the reference (p < alpha). The design's comparisons all have the same
    difference, so make_plan takes their mean: the power of one comparison, estimated from all of them."""
    rng = np.random.default_rng(seed)
    shown = np.stack([(slots == c).sum(axis=1) for c in range(len(accuracy))], axis=1)  # (people, conditions)
    # independent answers: each participant's correct answers per condition are binomial
    per_condition = rng.binomial(shown, np.asarray(accuracy), size=(plan.simulations, *shown.shape)).astype(np.int32)
    cumulative = per_condition.cumsum(axis=1)  # (reps, people, conditions): correct answers of the first p people
    answered = shown.cumsum(axis=0)
    found = np.zeros((len(sizes), len(accuracy) - 1))
    for s, size in enumerate(sizes):
        right, n = cumulative[:, size - 1, :], answered[size - 1]
        for c in range(1, len(accuracy)):
            _, p = difference_test(right[:, 0], n[0], right[:, c], n[c])
            found[s, c - 1] = np.mean(p < plan.alpha)
    return found


def make_plan(plan: PlanInput) -> Plan:
    """The smallest study (participants) whose simulated power for the design difference reaches plan.power."""
    plan.check()
    reference = plan.accuracy[0]
    design = [reference] + [reference - plan.difference] * (len(plan.conditions) - 1)
    n_analytic = analytic_answers(reference, reference - plan.difference, plan.alpha, plan.power)
    at_least = math.ceil(plan.min_labels_per_item * plan.items_per_condition / plan.per_condition)
    top = max(math.ceil(1.6 * n_analytic / plan.per_condition) + 2, at_least)
    if top > MAX_PARTICIPANTS:
        raise PlanError(f"this needs about {math.ceil(n_analytic / plan.per_condition)} participants, more than "
                        f"{MAX_PARTICIPANTS} planned here; detect a larger difference")
    if top * plan.simulations * len(plan.conditions) > MAX_DRAWS:
        raise PlanError(f"{plan.simulations} simulated studies of up to {top} participants are too many to hold; "
                        f"use at most {MAX_DRAWS // (top * len(plan.conditions))} simulations")
    slots = allocation(plan, top)
    sizes = np.unique(np.linspace(max(2, top // 12), top, 24).astype(int))
    power = simulated_power(plan, design, slots, sizes, plan.seed).mean(axis=1)
    answers = sizes * plan.per_condition
    reached = np.flatnonzero(power >= plan.power)
    if not len(reached):
        raise PlanError("the simulated power never reached the target within the planned range")
    # the crossing, then every size just below it, to find the smallest that reaches the target
    first = sizes[reached[0]]
    low = sizes[reached[0] - 1] + 1 if reached[0] > 0 else 2
    fine = np.arange(low, first + 1)
    fine_power = simulated_power(plan, design, slots, fine, plan.seed + 1).mean(axis=1)
    participants = int(fine[np.flatnonzero(fine_power >= plan.power)[0]]) if (fine_power >= plan.power).any() else int(first)
    participants = max(participants, at_least)
    final = simulated_power(plan, design, slots, np.array([participants]), plan.seed + 2).mean()
    curve = pd.DataFrame({"participants": sizes, "answers_per_condition": answers, "simulated_power": power,
                          "analytic_power": analytic_power(reference, reference - plan.difference, plan.alpha, answers)})
    expected = simulated_power(plan, plan.accuracy, slots, np.array([participants]), plan.seed + 3)[0]
    minutes = (plan.overhead_min + (plan.items_per_participant + plan.catch_per_participant + plan.practice)
               * plan.seconds_per_item / 60)
    return Plan(
        input=plan, participants=participants,
        labels_per_item=participants * plan.per_condition / plan.items_per_condition,
        answers_per_condition=participants * plan.per_condition, simulated_power=float(final),
        analytic_answers=n_analytic, simulated_answers=_crossing(answers, power, plan.power),
        minutes_per_participant=minutes,
        cost=participants * minutes / 60 * plan.pay_per_hour * (1 + plan.fee_share), curve=curve,
        expected_power=pd.DataFrame({
            "condition": plan.conditions[1:], "expected_accuracy": plan.accuracy[1:],
            "expected_difference": [reference - a for a in plan.accuracy[1:]], "power": expected}))


def _crossing(answers: np.ndarray, power: np.ndarray, target: float) -> float:
    """Answers at which the (noisy, increasing) simulated power curve crosses the target, by linear
    interpolation between the last point below and the first at or above it."""
    above = np.flatnonzero(power >= target)
    if not len(above):
        return float("nan")
    i = above[0]
    if i == 0:
        return float(answers[0])
    x0, x1, y0, y1 = answers[i - 1], answers[i], power[i - 1], power[i]
    return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0)) if y1 > y0 else float(x1)


def _spread(mean: float) -> str:
    low, high = math.floor(mean), math.ceil(mean)
    return f"exactly {low} for every image" if low == high else f"every image gets {low} or {high}"


def plan_text(plan: Plan) -> str:
    """The plan in a few lines, as the CLI prints it."""
    p = plan.input
    lines = [
        f"participants needed: {plan.participants} (simulated power {plan.simulated_power:.1%} for a drop of "
        f"{100 * p.difference:g} points from {p.conditions[0]} at {p.accuracy[0]:.0%}; alpha {p.alpha:g}, two-sided, "
        "per comparison)",
        f"answers per condition: {plan.answers_per_condition} = {p.items_per_condition} images x "
        f"{plan.labels_per_item:.2f} labels per image on average ({_spread(plan.labels_per_item)})",
        f"analytic check (statsmodels NormalIndPower): {plan.analytic_answers:.0f} answers per condition; "
        f"simulated: {plan.simulated_answers:.0f}",
        f"each participant: {p.items_per_participant} images + {p.catch_per_participant} catch + {p.practice} practice, "
        f"about {plan.minutes_per_participant:.1f} min",
        f"cost: {plan.participant_hours:.1f} participant-hours at {p.pay_per_hour:g}/h"
        f"{f' + {p.fee_share:.0%} fee' if p.fee_share else ''} = {plan.cost:.2f}",
    ]
    for row in plan.expected_power.itertuples():
        lines.append(f"  {row.condition}: expected accuracy {row.expected_accuracy:.0%} (a drop of "
                     f"{100 * row.expected_difference:.0f} points), power at this size {row.power:.1%}")
    return "\n".join(lines)


def power_figure(plan: Plan) -> go.Figure:
    curve = plan.curve
    fig = go.Figure()
    fig.add_scatter(x=curve["participants"], y=curve["simulated_power"], mode="markers+lines",
                    name="simulated (real allocation and test)")
    fig.add_scatter(x=curve["participants"], y=curve["analytic_power"], mode="lines", name="analytic (statsmodels)",
                    line={"dash": "dot"})
    fig.add_hline(y=plan.input.power, line_dash="dash", annotation_text=f"target {plan.input.power:.0%}")
    fig.add_vline(x=plan.participants, line_dash="dash", annotation_text=f"{plan.participants} participants")
    fig.update_layout(title="Power to detect the smallest difference worth detecting", height=400,
                      xaxis={"title": "participants"}, yaxis={"title": "power", "range": [0, 1.02], "tickformat": ".0%"},
                      legend={"orientation": "h", "y": -0.25})
    return fig
