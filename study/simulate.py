"""Simulated participants, for load tests and benchmarks: they go through exactly the calls the
labeling page makes (join, consent, next_trial, record_answer), each on its own connection.

    python -m study.simulate --db DB --study NAME --ids p1,p2,... [--threads N] [--think-ms MS] [--double]

prints one line per stored answer, after its commit: `ACK <pid> <assignment_id> <label>`.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable

import numpy as np

from .allocation import StudyFull
from .db import open_db
from .design import get_study
from .participant import Trial, consent, join, next_trial, record_answer


def simulate_participant(db_path, slug: str, external_id: str, *, seed: int = 0, think_ms: float = 0.0,
                         double_submit: bool = False, on_ack: Callable[[str, int, int], None] | None = None,
                         choose: Callable[[Trial, np.random.Generator], int] | None = None) -> list[tuple[int, int]]:
    """Label every item of one participant; returns [(assignment_id, label)] in answer order.
    Answers are random but reproducible from (seed, external_id); `choose` picks the label instead of a
    uniform draw (a participant with known behaviour)."""
    rng = np.random.default_rng([seed, *external_id.encode("utf-8")])
    db = open_db(db_path, create=False)
    answers = []
    try:
        study = get_study(db, slug)
        participant = consent(db, join(db, study, external_id))
        while (trial := next_trial(db, participant.id)) is not None:
            if think_ms:
                time.sleep(rng.uniform(0, think_ms) / 1000)
            label = int(choose(trial, rng)) if choose else int(rng.integers(0, 10))
            result = record_answer(db, participant.id, trial.assignment_id, label, rt_ms=float(rng.uniform(300, 3000)),
                                   mode="unlimited", input="click")
            if not result.stored:
                raise AssertionError(f"{external_id}: fresh answer to {trial.assignment_id} reported as duplicate")
            answers.append((trial.assignment_id, label))
            if on_ack:
                on_ack(external_id, trial.assignment_id, label)
            if double_submit:  # a double click / network retry of the same answer
                repeat = record_answer(db, participant.id, trial.assignment_id, (label + 1) % 10, rt_ms=1.0,
                                       mode="unlimited", input="click")
                if repeat.stored or repeat.label != label:
                    raise AssertionError(f"{external_id}: a repeated answer changed the stored one")
    finally:
        db.close()
    return answers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.simulate")
    parser.add_argument("--db", required=True)
    parser.add_argument("--study", required=True)
    parser.add_argument("--ids", required=True, help="comma-separated participant ids")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--think-ms", type=float, default=0.0)
    parser.add_argument("--double", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    ids = [i for i in args.ids.split(",") if i]
    lock = threading.Lock()
    failures = []

    def ack(pid: str, assignment_id: int, label: int) -> None:
        with lock:
            print(f"ACK {pid} {assignment_id} {label}", flush=True)

    def worker(chunk: list[str]) -> None:
        for pid in chunk:
            try:
                simulate_participant(args.db, args.study, pid, seed=args.seed, think_ms=args.think_ms,
                                     double_submit=args.double, on_ack=ack)
            except StudyFull:
                with lock:
                    print(f"FULL {pid}", flush=True)
            except Exception as e:  # report and go on: the caller counts failures
                with lock:
                    failures.append(pid)
                    print(f"FAIL {pid} {type(e).__name__}: {e}", flush=True)

    chunks = [ids[t::args.threads] for t in range(args.threads)]
    threads = [threading.Thread(target=worker, args=(c,)) for c in chunks if c]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
