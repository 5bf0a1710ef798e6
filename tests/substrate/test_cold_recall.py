"""Cold-tier ranking of a memory:// store: the in-memory index ranks consolidated rows by
cosine x stored utility (weighted search), so the handle's top 5 over 2,500 cold
memories with utilities in [0.1, 0.3] is exactly brute force over the same rows."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from moneta import Moneta, MonetaConfig
from moneta.protocols import VectorRecord
from moneta.types import EntityState
from moneta.vector_index import InMemoryVectorIndex

DIM = 32
ROWS = 2_500
LIMIT = 5
COLD = frozenset({EntityState.CONSOLIDATED})


def cold_records(n: int = ROWS) -> list[VectorRecord]:
    rng = np.random.default_rng(21)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors *= rng.uniform(0.5, 2.0, (n, 1)).astype(np.float32)  # lengths differ
    utility = rng.uniform(0.1, 0.3, n)
    return [
        VectorRecord(
            entity_id=uuid.UUID(int=i + 1),
            vector=vectors[i],
            payload=f"cold {i}",
            utility=float(utility[i]),
            attended_count=3,
            protected_floor=0.0,
            last_evaluated=1_000.0,
            state=EntityState.CONSOLIDATED,
            usd_link=None,
        )
        for i in range(n)
    ]


def brute_force(records: list[VectorRecord], q: np.ndarray, k: int) -> list[uuid.UUID]:
    block = np.stack([r.vector for r in records]).astype(np.float64)
    utility = np.array([r.utility for r in records])
    scores = (block @ q) / np.linalg.norm(block, axis=1) * utility
    return [records[i].entity_id for i in np.argsort(-scores, kind="stable")[:k]]


def queries(n: int) -> np.ndarray:
    q = np.random.default_rng(22).standard_normal((n, DIM))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def test_handle_cold_top5_is_brute_force_of_cosine_times_utility() -> None:
    records = cold_records()
    with Moneta(MonetaConfig.ephemeral(auto_sleep=False, embedding_dim=DIM)) as m:
        m._index.upsert(records)  # the cold tier's copy, as consolidation leaves it
        m._index.commit()
        assert m._index.count() == ROWS
        hits = 0
        for q in queries(50):
            got = m.query(q.tolist(), limit=LIMIT)
            assert [mem.state for mem in got] == [EntityState.CONSOLIDATED] * LIMIT
            assert [mem.entity_id for mem in got] == brute_force(records, q, LIMIT)
            hits += LIMIT
    assert hits == 50 * LIMIT  # recall@5 == 1.0 over every query


def test_weighted_search_scores_and_ignores_hot_partitions() -> None:
    records = cold_records(400)
    hot = [
        VectorRecord(
            uuid.uuid4(), np.ones(DIM, np.float32), "hot", 1.0, 0, 0.0, 0.0, EntityState.VOLATILE
        )
    ]
    index = InMemoryVectorIndex()
    index.upsert(records + hot)
    q = queries(1)[0]
    got = index.search(q, 400, states=COLD, weighted=True)
    assert len(got) == 400
    for record, score in got:
        cosine = float(np.dot(record.vector, q) / np.linalg.norm(record.vector))
        assert score == pytest.approx(cosine * record.utility, abs=1e-5)
    assert [r.entity_id for r, _ in got[:LIMIT]] == brute_force(records, q, LIMIT)
    with pytest.raises(ValueError, match="states must be"):
        index.search(q, LIMIT, weighted=True)  # hot utilities decay: not ranked by them
    plain = index.search(q, LIMIT, states=COLD)  # unweighted stays cosine
    block = np.stack([r.vector for r in records])
    cosines = (block @ q) / np.linalg.norm(block, axis=1)
    assert [s for _, s in plain] == pytest.approx(np.sort(cosines)[::-1][:LIMIT].tolist())
