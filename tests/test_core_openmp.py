"""How idle OpenMP threads wait: randmask's entry points set a bounded spin before torch loads its OpenMP runtime,
their children inherit it, and a policy the user set is never overridden (issue 33, item 6)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from randmask.core.settings import OPENMP_BOUNDED_SPIN, OPENMP_WAIT_VARIABLES, openmp_wait_policy
from randmask.views import job_progress, jobs

ROOT = Path(__file__).resolve().parents[1]


def runtime_settings(extra: dict[str, str]) -> dict[str, str]:
    """What libgomp read in a fresh `python -m randmask info` (which imports torch), from OMP_DISPLAY_ENV."""
    env = {k: v for k, v in os.environ.items() if k not in OPENMP_WAIT_VARIABLES}
    env.update(extra, OMP_DISPLAY_ENV="VERBOSE", PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-m", "randmask", "info", "0.7-Shallow", "--width", "4"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    shown = dict(re.findall(r"^\s+(OMP_WAIT_POLICY|GOMP_SPINCOUNT) = '([^']*)'", run.stderr, re.M))
    if "GOMP_SPINCOUNT" not in shown:
        pytest.skip("torch's OpenMP runtime here is not libgomp (it shows no GOMP_SPINCOUNT)")
    return shown


def test_the_cli_sets_the_bounded_spin_before_torch_loads_openmp():
    """Without the entry point's setting libgomp reads no variable and spins 300000 rounds (fails on the old cli)."""
    assert runtime_settings({})["GOMP_SPINCOUNT"] == OPENMP_BOUNDED_SPIN["GOMP_SPINCOUNT"]


@pytest.mark.parametrize(("given", "expected"), [
    ({"OMP_WAIT_POLICY": "ACTIVE"}, {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "30000000000"}),
    ({"OMP_WAIT_POLICY": "PASSIVE"}, {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0"}),
    ({"GOMP_SPINCOUNT": "5"}, {"GOMP_SPINCOUNT": "5"}),
    ({"KMP_BLOCKTIME": "0"}, {"GOMP_SPINCOUNT": "300000"}),  # Intel's variable chosen: libgomp keeps its default
])
def test_a_policy_the_user_set_is_never_overridden(given, expected):
    shown = runtime_settings(given)
    assert {k: shown[k] for k in expected} == expected


def test_the_policy_says_why_and_a_childs_inherited_spin_is_still_randmasks():
    add, why = openmp_wait_policy({})
    assert add == OPENMP_BOUNDED_SPIN and "short spin" in why
    add, why = openmp_wait_policy(dict(OPENMP_BOUNDED_SPIN))  # a job started by the app, which set it
    assert add == {} and "randmask's default" in why
    add, why = openmp_wait_policy({"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": ""})
    assert add == {} and why == "OpenMP waits as the environment sets them: OMP_WAIT_POLICY=PASSIVE"


@pytest.mark.parametrize("user", [{}, {"OMP_WAIT_POLICY": "PASSIVE"}])
def test_a_training_job_gets_the_bounded_spin_or_the_users_policy(tmp_path, monkeypatch, user):
    """The app's jobs used to get OMP_WAIT_POLICY=PASSIVE whatever randmask chose; a user's setting passes through."""
    for name in OPENMP_WAIT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in user.items():
        monkeypatch.setenv(name, value)
    started = {}

    class Recorded:
        pid = os.getpid()

        def __init__(self, command, env, **kwargs):
            started.update(env)

    monkeypatch.setattr(jobs.subprocess, "Popen", Recorded)
    monkeypatch.setattr(job_progress, "_CHILDREN", {})  # the stand-in process must not outlive this test in the registry
    settings = jobs.JobSettings(notation="0.7-Shallow", preset="quick", dataset="cifar10", epochs=1)
    folder = tmp_path / "job"
    folder.mkdir()
    jobs._launch(folder, {"settings": settings.__dict__})
    assert {k: started[k] for k in OPENMP_WAIT_VARIABLES if k in started} == (user or OPENMP_BOUNDED_SPIN)
