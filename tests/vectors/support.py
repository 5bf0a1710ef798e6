"""Shared helpers of the vector tests: reproducible vectors, a settable clock, configs,
and a direct look at the LanceDB table a store left on disk."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import lancedb
import numpy as np

from moneta.config import MonetaConfig
from moneta.lance_index import TABLE_NAME
from moneta.protocols import VectorRecord
from moneta.store import VECTORS_DIR
from moneta.types import EntityState
from tests.support.redis_server import wait_until as poll_until

DIM = 16


def unit(seed: int | list[int], dim: int = DIM) -> np.ndarray:
    """A random unit vector, the same for the same seed in any process."""
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def record(
    seed: int,
    *,
    dim: int = DIM,
    state: EntityState = EntityState.VOLATILE,
    entity_id: uuid.UUID | None = None,
    utility: float = 1.0,
    usd_link: str | None = None,
) -> VectorRecord:
    return VectorRecord(
        entity_id=entity_id or uuid.uuid4(),
        vector=unit(seed, dim),
        payload=f"memory {seed}",
        utility=utility,
        attended_count=0,
        protected_floor=0.0,
        last_evaluated=1_000.0,
        state=state,
        usd_link=usd_link,
    )


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_772_452_800.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def store_config(path: Path, clock: Callable[[], float] | None = None, **overrides: object):
    """A file store on LanceDB with no background sleep pass (the test runs passes)."""
    settings: dict[str, object] = {
        "storage_uri": str(path),
        "vector_backend": "lancedb",
        "cold_tier": "jsonl",
        "auto_sleep": False,
        "half_life_seconds": 60.0,
    }
    if clock is not None:
        settings["clock"] = clock
    settings.update(overrides)
    return MonetaConfig(**settings)  # type: ignore[arg-type]


def table_rows(store: Path) -> dict[uuid.UUID, dict]:
    """Every row of the store's vector table, read straight from LanceDB (no buffer)."""
    db = lancedb.connect(str(store / VECTORS_DIR))
    if TABLE_NAME not in db.list_tables().tables:
        return {}
    rows = db.open_table(TABLE_NAME).to_arrow().to_pylist()
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)), "duplicate ids in the vector table"
    return {uuid.UUID(row["id"]): row for row in rows}


def wait_for(predicate: Callable[[], bool], *, timeout: float = 30.0, what: str = "") -> None:
    """Poll until ``predicate()`` holds; fail with ``what`` after ``timeout`` seconds."""
    poll_until(predicate, timeout=timeout, interval=0.02, what=what)
