"""Which items a participant labels, and in which order.

At consent, each participant gets all their items at once: `trials_per_condition` from every
condition plus `catch_per_participant` catch trials, all from different original test images.
Among the items that satisfy this, we take those with the fewest labels so far (answers plus the
pending items of participants still active), solved exactly as an assignment problem
(slots x original images), so every item reaches its k labels before any gets k+1. Ties are
broken, and the order shuffled, by a generator seeded from the study seed and the participant's id:
the same state and id always give the same list.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

# Cost tiers: an item that already has its k labels is used only when nothing else fits;
# among the rest, fewer labels first; the random part only breaks ties.
_FULL_PENALTY = 1e6
_PER_LABEL = 1e3
_PER_PRESSURE = 1.0
_IMPOSSIBLE = 1e12


class AllocationError(RuntimeError):
    """The design cannot give this participant a valid item list."""


@dataclass(frozen=True)
class Candidate:
    item_id: int
    role: str  # "trial" or "catch"
    condition: str
    test_index: int
    load: int  # labels given or pending


def participant_rng(seed: int, external_id: str, stream: int = 0) -> np.random.Generator:
    """Reproducible generator for one participant of one study."""
    digest = int.from_bytes(hashlib.sha256(external_id.encode("utf-8")).digest()[:8], "big")
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, digest, stream])


def choose_items(candidates: list[Candidate], conditions: list[str], trials_per_condition: int,
                 catch_per_participant: int, labels_per_item: int, rng: np.random.Generator) -> list[int]:
    """Item ids for one participant (unordered): exact quota per condition, distinct test images,
    least-labelled first."""
    slots = [(("trial", c)) for c in conditions for _ in range(trials_per_condition)]
    slots += [("catch", "")] * catch_per_participant
    if not slots:
        return []
    origins = sorted({c.test_index for c in candidates})
    column = {o: j for j, o in enumerate(origins)}
    if len(slots) > len(origins):
        raise AllocationError(f"{len(slots)} items per participant need as many different test images; only {len(origins)} exist")
    # For each (slot kind, origin), the best item there and its cost.
    kinds = sorted(set(slots))
    kind_row = {kind: r for r, kind in enumerate(kinds)}
    cost = np.full((len(kinds), len(origins)), _IMPOSSIBLE)
    best = np.full((len(kinds), len(origins)), -1, dtype=np.int64)
    # Images that still need many labels across conditions are the bottleneck at the end of a
    # study (one participant can take only one of their versions), so they go first among equals.
    pressure: dict[int, int] = {}
    for cand in candidates:
        if cand.role == "trial":
            pressure[cand.test_index] = pressure.get(cand.test_index, 0) + max(0, labels_per_item - cand.load)
    noise = rng.random(len(candidates))
    for cand, u in zip(candidates, noise, strict=True):
        kind = ("catch", "") if cand.role == "catch" else ("trial", cand.condition)
        if kind not in kind_row:
            continue
        full = cand.role == "trial" and cand.load >= labels_per_item
        value = _FULL_PENALTY * full + _PER_LABEL * cand.load - _PER_PRESSURE * pressure.get(cand.test_index, 0) + u
        r, j = kind_row[kind], column[cand.test_index]
        if value < cost[r, j]:
            cost[r, j], best[r, j] = value, cand.item_id
    slot_rows = np.array([kind_row[s] for s in slots])
    rows, cols = linear_sum_assignment(cost[slot_rows])
    chosen = best[slot_rows[rows], cols]
    if (cost[slot_rows[rows], cols] >= _IMPOSSIBLE).any() or (chosen < 0).any():
        raise AllocationError("not enough different test images to fill every condition's quota for one participant")
    return [int(i) for i in chosen]


def order_items(item_ids: list[int], rng: np.random.Generator) -> list[int]:
    """Random presentation order, reproducible: sort first so only the seed decides."""
    ids = sorted(item_ids)
    return [ids[i] for i in rng.permutation(len(ids))]
