"""Cold-tier recall through the handle on LanceDB: consolidated memories are ranked by
cosine x utility inside the index (the ``ranked`` column, unit vectors whose cosine with
the padded query is that score), so the handle's
top 5 matches brute force over the same rows — exactly without the ANN index, and at
recall@5 >= 0.95 with it. Also: the score LanceDB's distance turns into, a table
written without ``ranked`` (or with an older layout) gaining it when opened, and
weighted search refusing states other than consolidated."""

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
    UNRANKED_UTILITY,
    LanceVectorIndex,
    ranked_width,
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
    """LanceDB reports cosine distance; the index turns it back into the score,
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


def record_table(records: list[VectorRecord]) -> pa.Table:
    """Records in the table's column layout without ``ranked`` (how an older store
    wrote them)."""
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
    return pa.Table.from_arrays(columns, schema=table_schema(DIM))


def reopens_ranking_like_brute_force(path: Path, cold: list[VectorRecord], rows: int) -> None:
    """The index opened on `path` keeps every row and ranks `cold` like brute force."""
    index = LanceVectorIndex(path)
    assert index.count() == rows
    q = queries(1)[0]
    got = index.search(q, LIMIT, states=COLD, weighted=True)
    assert [r.entity_id for r, _ in got] == brute_force(records=cold, q=q, k=LIMIT)
    index.close()


def test_table_without_ranked_column_gains_it_on_open(tmp_path: Path) -> None:
    """A store written before ``ranked`` existed keeps every row and ranks by it."""
    records = cold_records(300)
    lancedb.connect(str(tmp_path)).create_table(TABLE_NAME, record_table(records))
    reopens_ranking_like_brute_force(tmp_path, records, 300)

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
        assert_ranked_layout(stored[r.entity_id], r)


def assert_ranked_layout(ranked: np.ndarray, record: VectorRecord) -> None:
    """``[u * unit vector, sqrt(1 - u^2), zeros]``, u the utility of a consolidated row
    and ``UNRANKED_UTILITY`` for any other."""
    assert ranked.shape == (ranked_width(DIM),)
    u = record.utility if record.state == EntityState.CONSOLIDATED else UNRANKED_UTILITY
    unit = np.asarray(record.vector) / np.linalg.norm(record.vector)
    assert np.allclose(ranked[:DIM], u * unit, atol=1e-6)
    assert ranked[DIM] == pytest.approx(np.sqrt(1 - u * u), abs=1e-6)
    assert not ranked[DIM + 1 :].any()
    assert float(np.linalg.norm(ranked)) == pytest.approx(1.0, abs=1e-5)


def test_table_with_an_older_ranked_layout_is_rewritten_on_open(tmp_path: Path) -> None:
    """``ranked`` once held u x unit vector (width dim, searched by dot); such a table
    keeps every row, gains the current layout and ranks by it."""
    records = cold_records(300)
    hot = VectorRecord(
        uuid.uuid4(), records[0].vector, "hot", 1.0, 0, 0.0, 0.0, EntityState.VOLATILE
    )
    records_all = [*records, hot]
    vectors = np.stack([r.vector for r in records_all])
    utility = np.array([r.utility for r in records_all])
    old_ranked = vectors / np.linalg.norm(vectors, axis=1, keepdims=True) * utility[:, None]
    table = record_table(records_all).append_column(
        pa.field(RANKED_COLUMN, pa.list_(pa.float32(), DIM)),
        pa.FixedSizeListArray.from_arrays(pa.array(old_ranked.astype(np.float32).ravel()), DIM),
    )
    lancedb.connect(str(tmp_path)).create_table(TABLE_NAME, table)
    reopens_ranking_like_brute_force(tmp_path, records, 301)

    rows = lancedb.connect(str(tmp_path)).open_table(TABLE_NAME).to_arrow()
    assert rows.num_rows == 301
    by_id = {r.entity_id: r for r in records_all}
    for entity_id, ranked in zip(
        rows.column("id").to_pylist(), rows.column(RANKED_COLUMN).to_pylist(), strict=True
    ):
        assert_ranked_layout(np.asarray(ranked, dtype=np.float32), by_id[uuid.UUID(entity_id)])


@pytest.mark.parametrize(
    "states", [None, frozenset(EntityState), frozenset({EntityState.VOLATILE})]
)
def test_weighted_search_takes_consolidated_states_only(
    tmp_path: Path, states: frozenset[EntityState] | None
) -> None:
    """Only a consolidated memory's stored utility is current; anything else is refused."""
    index = LanceVectorIndex(tmp_path)
    index.upsert(cold_records(10))
    with pytest.raises(ValueError, match="states must be"):
        index.search(queries(1)[0], LIMIT, states=states, weighted=True)
    assert len(index.search(queries(1)[0], LIMIT, states=COLD, weighted=True)) == LIMIT
    index.close()
