"""InMemoryVectorIndex against a plain dict of records: single-record deposits and
every other write, in random order, read back through get, count and exact search."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from moneta.protocols import VectorRecord
from moneta.types import EntityState
from moneta.vector_index import InMemoryVectorIndex
from tests.vectors.support import DIM, record, unit

STATES = (EntityState.VOLATILE, EntityState.STAGED_FOR_SYNC, EntityState.CONSOLIDATED)


def _fields(r: VectorRecord) -> tuple:
    return (r.entity_id, r.payload, r.utility, r.state, r.usd_link,
            np.asarray(r.vector, dtype=np.float32).tobytes())  # fmt: skip


def _brute_force(
    model: dict[uuid.UUID, VectorRecord], query: np.ndarray, states: frozenset | None
) -> list[uuid.UUID]:
    scored = [
        (float(np.dot(r.vector, query) / np.linalg.norm(r.vector)), r.entity_id)
        for r in model.values()
        if states is None or r.state in states
    ]
    return [e for _, e in sorted(scored, key=lambda s: s[0], reverse=True)]


def test_deposits_read_back_exactly_among_every_other_write() -> None:
    rng = np.random.default_rng(7)
    index = InMemoryVectorIndex()
    model: dict[uuid.UUID, VectorRecord] = {}
    seed = 0

    def fresh(state: EntityState = EntityState.VOLATILE) -> VectorRecord:
        nonlocal seed
        seed += 1
        return record(seed, state=state)

    def check() -> None:
        assert index.count() == len(model)
        wanted = list(model)
        got = {r.entity_id: _fields(r) for r in index.get(wanted)}
        assert got == {e: _fields(r) for e, r in model.items()}
        query = unit(int(rng.integers(1 << 30)))
        for states in (None, frozenset({EntityState.CONSOLIDATED})):
            hits = index.search(query, 3, states=states)
            assert [r.entity_id for r, _ in hits] == _brute_force(model, query, states)[:3]

    deposits = 0
    for step in range(800):
        roll = rng.random()
        if roll < 0.8 or not model:  # a deposit: one new record
            r = fresh()
            index.upsert([r])
            model[r.entity_id] = r
            deposits += 1
        elif roll < 0.88:  # one known record rewritten: new state and payload
            old = model[list(model)[int(rng.integers(len(model)))]]
            state = STATES[int(rng.integers(len(STATES)))]
            new = record(int(rng.integers(1 << 30)), state=state, entity_id=old.entity_id)
            index.upsert([new])
            model[new.entity_id] = new
        elif roll < 0.93:  # a batch mixing new and known ids, a repeated id last-wins
            ids = list(model)
            known = {*ids[: int(rng.integers(1, 4))], ids[-1]}
            batch = [fresh(EntityState.CONSOLIDATED), fresh()]
            batch += [record(seed + 1000 + i, entity_id=e) for i, e in enumerate(known)]
            batch.append(record(seed + 2000, entity_id=batch[0].entity_id))
            index.upsert(batch)
            for r in batch:
                model[r.entity_id] = r
        elif roll < 0.98:  # deletes of the newest ids, and an unknown id
            doomed = list(model)[-int(rng.integers(1, 4)) :]
            index.delete([*doomed, uuid.uuid4()])
            for e in doomed:
                del model[e]
        else:
            check()
        if step % 97 == 0:
            check()
    check()
    assert deposits > 500 and len(model) > 400


def test_a_rejected_upsert_stores_nothing() -> None:
    index = InMemoryVectorIndex(dim=DIM)
    with pytest.raises(ValueError, match="dimension"):
        index.upsert([record(1, dim=DIM + 1)])
    assert index.count() == 0
