"""Which items a participant labels, and in which order.

At consent, each participant gets all their items at once: `trials_per_condition` from every
condition plus `catch_per_participant` catch trials, all from different original test images. At their
first answer, the part no page has been sent yet is chosen again (allocation.settle_list).
Among the items that satisfy this, we take those with the fewest labels so far (answers plus the
pending items of participants still active), solved exactly as an assignment problem
(slots x original images), so every item reaches its k labels before any gets k+1. When some item
must go past k, the choice is ranked by how sure the extra label is to be wasted: an item with k answers
last, then one that answers and the holds of people who answer take to k, then one that holds of fresh
consents take to k, and first one that only old holds of people who never answered (consent-only bots,
mostly) fill. Ties are
broken, and the order shuffled, by a generator seeded from the study seed and the participant's id:
the same state and id always give the same list.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

# Cost tiers, each 100 times everything below it in one slot: an item already at k answers only when nothing
# else fits; then one that answers plus holds of people answering take to k; then one that holds of fresh
# consents take to k; then one that any hold takes to k; among the rest, fewer labels first; the random part
# only breaks ties. Every tier's count is at most `load`, so lists that fit below k are chosen as before.
_PER_LABEL = 1e3
_LOAD_CAP = 99  # labels counted in the per-label tier: keeps it below the tiers above
_FULL_PENALTY = 1e7
_FRESH_FULL = 1e9
_ANSWERING_FULL = 1e11
_ANSWERED_FULL = 1e13
_PER_PRESSURE = 1.0
_IMPOSSIBLE = 1e16


class AllocationError(RuntimeError):
    """The design cannot give this participant a valid item list."""


@dataclass(frozen=True)
class Candidate:
    item_id: int
    role: str  # "trial" or "catch"
    condition: str
    test_index: int
    load: int  # answers, plus pending items of every participant active within the inactivity window
    answered: int | None = None  # answers only (None: `load`)
    answering: int | None = None  # answers plus pending items of people who have answered something (None: `load`)
    fresh: int | None = None  # `answering` plus pending items of consents younger than the grace time (None: `load`)


def participant_rng(seed: int, external_id: str, stream: int = 0) -> np.random.Generator:
    """Reproducible generator for one participant of one study."""
    digest = int.from_bytes(hashlib.sha256(external_id.encode("utf-8")).digest()[:8], "big")
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, digest, stream])


def choose_items(candidates: list[Candidate], conditions: list[str], trials_per_condition: int,
                 catch_per_participant: int, labels_per_item: int, rng: np.random.Generator, *,
                 slots: list[tuple[str, str]] | None = None, taken: frozenset[int] = frozenset()) -> list[int]:
    """Item ids for one participant (unordered): exact quota per condition, distinct test images,
    least-labelled first. `slots` ((role, condition) pairs, catch as ("catch", "")) replaces the quota when part
    of a list is chosen again; `taken`: test images the list holds already."""
    if slots is None:
        slots = [(("trial", c)) for c in conditions for _ in range(trials_per_condition)]
        slots += [("catch", "")] * catch_per_participant
    if not slots:
        return []
    candidates = [c for c in candidates if c.test_index not in taken]
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
        value = _PER_LABEL * min(cand.load, _LOAD_CAP) - _PER_PRESSURE * pressure.get(cand.test_index, 0) + u
        if cand.role == "trial":
            for count, penalty in ((cand.load, _FULL_PENALTY), (cand.fresh, _FRESH_FULL),
                                   (cand.answering, _ANSWERING_FULL), (cand.answered, _ANSWERED_FULL)):
                value += penalty * ((cand.load if count is None else count) >= labels_per_item)
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
