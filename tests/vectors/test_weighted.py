"""Cold-tier recall through the handle on LanceDB: consolidated memories are ranked by
cosine x utility inside the index (the ``ranked`` column, metric dot), so the handle's
top 5 matches brute force over the same rows — exactly without the ANN index, and at
recall@5 >= 0.95 with it. Also: the score LanceDB's dot distance turns into, and a
table written without ``ranked`` gaining it when opened."""

from __future__ import annotations

import uuid
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from moneta import Moneta
from moneta.lance_index import (
    RANKED_COLUMN,
    RANKED_INDEX,
    TABLE_NAME,
    LanceVectorIndex,
    table_schema,
)
from moneta.protocols import VectorRecord
from moneta.store import VECTORS_DIR
from moneta.types import EntityState
from tests.vectors.support import Clock, store_config

DIM = 64
ROWS = 2_500
QUERIES = 40
LIMIT = 5
COLD = frozenset({EntityState.CONSOLIDATED})


def clustered(seed: int, n: int, dim: int = DIM) -> np.ndarray:
    """Unit vectors with low intrinsic dimension (like sentence embeddings): 40
    clusters in 8 latent dimensions, projected to `dim`, plus a little noise."""
    model = np.random.default_rng(99)
    projection = model.standard_normal((8, dim)).astype(np.float32)
    centres = 2.0 * model.standard_normal((40, 8)).astype(np.float32)
    rng = np.random.default_rng(seed)
    latent = centres[rng.integers(0, 40, n)] + rng.standard_normal((n, 8)).astype(np.float32)
    v = latent @ projection + 0.05 * rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def cold_records(n: int = ROWS, dim: int = DIM) -> list[VectorRecord]:
    vectors = clustered(1, n, dim)
    utility = np.random.default_rng(2).uniform(0.1, 0.3, n)
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
            usd_link=f"/Memory_{i}",
        )
        for i in range(n)
    ]


def brute_force(records: list[VectorRecord], q: np.ndarray, k: int) -> list[uuid.UUID]:
    block = np.stack([r.vector for r in records])
    utility = np.array([r.utility for r in records])
    scores = (block @ q) / np.linalg.norm(block, axis=1) * utility
    return [records[i].entity_id for i in np.argsort(-scores, kind="stable")[:k]]


def queries(n: int = QUERIES) -> np.ndarray:
    """Noisy copies of stored rows: questions about what the store holds."""
    base = clustered(1, ROWS)[np.random.default_rng(3).integers(0, ROWS, n)]
    q = base + 0.3 * np.random.default_rng(4).standard_normal(base.shape).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


@pytest.mark.parametrize("ann", [False, True], ids=["exact", "ann"])
def test_handle_cold_recall_against_brute_force(tmp_path: Path, ann: bool) -> None:
    threshold = 1_000 if ann else 1 << 30
    records = cold_records()
    index = LanceVectorIndex(tmp_path / VECTORS_DIR, ann_threshold=threshold)
    index.upsert(records)
    index.maintain()  # commit; with ann: train the IVF_RQ indices
    assert index.count() == ROWS
    assert (RANKED_INDEX in index.table_stats().indices) is ann
    index.close()

    config = store_config(tmp_path, Clock(), ann_index_threshold=threshold)
    with Moneta(config) as m:
        assert m._index.ann_indexed is ann
        hits = []
        for q in queries():
            got = m.query(q.tolist(), limit=LIMIT)
            assert len(got) == LIMIT
            assert all(mem.state == EntityState.CONSOLIDATED for mem in got)
            truth = set(brute_force(records, q, LIMIT))
            hits.append(len({mem.entity_id for mem in got} & truth))
    recall = sum(hits) / (LIMIT * QUERIES)
    if ann:
        assert recall >= 0.95, recall
    else:
        assert recall == 1.0, recall


def test_weighted_scores_are_cosine_times_utility(tmp_path: Path) -> None:
    """LanceDB reports dot distance as 1 - dot; the index turns it back into the score,
    committed rows and buffered ones alike, and unweighted search stays cosine."""
    records = cold_records(600)
    index = LanceVectorIndex(tmp_path, ann_threshold=1 << 30)
    index.upsert(records[:500])
    index.commit()
    index.upsert(records[500:])  # buffered: scored by the overlay
    q = queries(1)[0]
    got = index.search(q, 600, states=COLD, weighted=True)
    assert len(got) == 600
    for record, score in got:
        cosine = float(np.dot(record.vector, q) / np.linalg.norm(record.vector))
        assert score == pytest.approx(cosine * record.utility, abs=1e-5)
    assert [r.entity_id for r, _ in got[:LIMIT]] == brute_force(records, q, LIMIT)
    plain = index.search(q, 3, states=COLD)
    for record, score in plain:
        assert score == pytest.approx(float(np.dot(record.vector, q)), abs=1e-5)
    index.close()


def test_table_without_ranked_column_gains_it_on_open(tmp_path: Path) -> None:
    """A store written before ``ranked`` existed keeps every row and ranks by it."""
    records = cold_records(300)
    db = lancedb.connect(str(tmp_path))
    vectors = np.stack([r.vector for r in records])
    columns = [
        pa.array([str(r.entity_id) for r in records], pa.string()),
        pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM),
        pa.array([r.payload for r in records], pa.string()),
        pa.array([int(r.state) for r in records], pa.int8()),
        pa.array([r.utility for r in records], pa.float64()),
        pa.array([r.attended_count for r in records], pa.int64()),
        pa.array([r.protected_floor for r in records], pa.float64()),
        pa.array([r.last_evaluated for r in records], pa.float64()),
        pa.array([r.usd_link for r in records], pa.string()),
    ]
    db.create_table(TABLE_NAME, pa.Table.from_arrays(columns, schema=table_schema(DIM)))

    index = LanceVectorIndex(tmp_path)
    assert index.count() == 300
    q = queries(1)[0]
    got = index.search(q, LIMIT, states=COLD, weighted=True)
    assert [r.entity_id for r, _ in got] == brute_force(records, q, LIMIT)
    index.close()

    table = lancedb.connect(str(tmp_path)).open_table(TABLE_NAME)
    assert RANKED_COLUMN in table.schema.names
    rows = table.to_arrow()
    assert rows.num_rows == 300
    stored = {
        uuid.UUID(i): np.asarray(v, dtype=np.float32)
        for i, v in zip(
            rows.column("id").to_pylist(), rows.column(RANKED_COLUMN).to_pylist(), strict=True
        )
    }
    for r in records:
        assert np.allclose(stored[r.entity_id], r.vector * r.utility, atol=1e-6)
