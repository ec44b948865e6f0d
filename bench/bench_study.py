"""How fast the study database serves participants at a realistic size.

    python bench/bench_study.py [--images 1000] [--conditions 4] [--participants 200]

Builds a study of IMAGES test images x CONDITIONS conditions (random pixels: only sizes matter here),
lets PARTICIPANTS simulated participants finish it, and prints the median and 95th-percentile time of
the two write steps a participant waits for (allocation at consent, storing an answer) as the study
fills, plus answer throughput with 1 and 8 concurrent participants side by side.
"""
from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from study import StudyConfig, consent, create_study, get_study, join, next_trial, open_db, record_answer
from study.sets import write_set


def build(root: Path, images: int, conditions: int) -> Path:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(images, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=images)
    folders = []
    for c in range(conditions):
        rows = [{"index": i, "true_label": int(labels[i]), "source": f"model{c}", "attack": "PGD16",
                 "source_pred": int((labels[i] + 1) % 10), "linf": 0.06, "l2": 1.0} for i in range(images)]
        folders.append(write_set(root / f"c{c}", rows, list(pixels)))
    catch_rows = [{"index": 9_980 + i, "true_label": 0, "source": "", "attack": "clean", "source_pred": "", "linf": 0,
                   "l2": 0} for i in range(20)]
    write_set(root / "catch", catch_rows, list(pixels[:20]))
    db_path = root / "bench.db"
    db = open_db(db_path)
    create_study(db, StudyConfig(slug="bench", labels_per_item=5, items_per_participant=8 * conditions,
                                 catch_per_participant=2), folders, root / "catch")
    db.close()
    return db_path


def participant(db_path: Path, pid: str, consent_times: list, answer_times: list) -> int:
    db = open_db(db_path, create=False)
    study = get_study(db, "bench")
    t0 = time.perf_counter()
    p = consent(db, join(db, study, pid))
    consent_times.append(time.perf_counter() - t0)
    n = 0
    while (trial := next_trial(db, p.id)) is not None:
        t0 = time.perf_counter()
        record_answer(db, p.id, trial.assignment_id, n % 10, rt_ms=500.0, mode="unlimited", input="click")
        answer_times.append(time.perf_counter() - t0)
        n += 1
    db.close()
    return n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--conditions", type=int, default=4)
    parser.add_argument("--participants", type=int, default=200)
    args = parser.parse_args()
    if not 1 <= args.images <= 9_980:  # CIFAR-10 test indices; the last 20 are the catch set's
        parser.error("--images must be between 1 and 9980")
    with tempfile.TemporaryDirectory() as tmp:
        db_path = build(Path(tmp), args.images, args.conditions)
        consent_times, answer_times = [], []
        for i in range(args.participants):
            participant(db_path, f"seq{i}", consent_times, answer_times)
        ms = lambda xs, q: 1000 * float(np.quantile(xs, q))  # noqa: E731
        print(f"study: {args.images} images x {args.conditions} conditions; {args.participants} participants in sequence")
        print(f"consent+allocation  median {ms(consent_times, 0.5):7.1f} ms   p95 {ms(consent_times, 0.95):7.1f} ms")
        print(f"store one answer    median {ms(answer_times, 0.5):7.1f} ms   p95 {ms(answer_times, 0.95):7.1f} ms")
        rates = {}
        for threads in (1, 8):
            done: list[int] = []

            def work(pid: str, done: list[int] = done) -> None:
                done.append(participant(db_path, pid, [], []))

            t0 = time.perf_counter()
            workers = [threading.Thread(target=work, args=(f"t{threads}-{k}",)) for k in range(threads)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            rates[threads] = sum(done) / (time.perf_counter() - t0)
            print(f"{threads} concurrent participant(s): {rates[threads]:7.0f} answers/s")
        print(f"throughput ratio 8 vs 1 concurrent: {rates[8] / rates[1]:.2f}x (writes are serialised by SQLite)")


if __name__ == "__main__":
    main()
