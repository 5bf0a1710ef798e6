"""Assembles the parts of a store from its config: vector index, cold tier, audit log.

Each backend choice is one branch here, so adding an implementation of a seam
(``VectorIndex``, ``AuthoringTarget``) does not touch the handle. Also owns the
process-wide registry that allows one live handle per store.

Directory layout of a file store::

    .moneta.lock  wal/  snapshot.bin      durability (moneta.durability)
    vectors/                              persistent vector index (LanceDB)
    cold/                                 cold tier (USD layers or mock JSONL)
    audit.jsonl                           prune / consolidation / forget trail
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from moneta.audit import AuditLog
from moneta.config import MonetaConfig
from moneta.errors import MonetaResourceLockedError
from moneta.mock_usd_target import JsonlMockTarget
from moneta.protocols import AuthoringTarget, VectorIndex
from moneta.vector_index import InMemoryVectorIndex

VECTORS_DIR = "vectors"
COLD_DIR = "cold"
MOCK_COLD_FILE = "mock_batches.jsonl"
AUDIT_FILE = "audit.jsonl"

_open_lock = threading.Lock()
_open_stores: set[str] = set()


def claim(key: str) -> None:
    """Register a live handle for ``key``; a second claim raises until released."""
    with _open_lock:
        if key in _open_stores:
            raise MonetaResourceLockedError(
                f"store {key} is already open by another handle in this process"
            )
        _open_stores.add(key)


def release(key: str) -> None:
    with _open_lock:
        _open_stores.discard(key)


def vector_backend(config: MonetaConfig) -> str:
    """The configured backend, or the default for this kind of store: LanceDB for a
    file store (the persistent vector authority), numpy in memory for ``memory://``."""
    if config.vector_backend is not None:
        return config.vector_backend
    return "memory" if config.directory is None else "lancedb"


@dataclass(slots=True)
class StoreParts:
    index: VectorIndex
    target: AuthoringTarget
    audit: AuditLog


def open_index(config: MonetaConfig, directory: Path | None) -> VectorIndex:
    backend = vector_backend(config)
    if backend == "memory":
        if directory is not None and cold_tier(config) == "usd":
            # The USD cold tier keeps no vectors and this index does not outlive the
            # process: consolidated memories could never be found again after a reopen.
            raise ValueError(
                "vector_backend 'memory' on a file store needs cold_tier 'jsonl' (which keeps"
                " each memory's vector); the 'usd' cold tier keeps none, so use"
                " vector_backend 'lancedb' (the default for file stores) with it"
            )
        return InMemoryVectorIndex(dim=config.embedding_dim)
    if directory is None:
        raise ValueError("vector_backend 'lancedb' needs a file store, not memory://")
    from moneta.lance_index import LanceVectorIndex  # optional backend, imported on use

    return LanceVectorIndex(
        directory / VECTORS_DIR,
        dim=config.embedding_dim,
        commit_every=config.index_commit_every_records,
        commit_interval_s=config.index_commit_interval_seconds,
        ann_threshold=config.ann_index_threshold,
    )


def cold_tier(config: MonetaConfig) -> str:
    """The configured cold tier, or the default: OpenUSD for file stores, the JSONL
    mock (in memory) for ``memory://`` stores, which have no directory for layers."""
    if config.cold_tier is not None:
        return config.cold_tier
    return "jsonl" if config.is_memory else "usd"


def open_target(config: MonetaConfig, directory: Path | None) -> AuthoringTarget:
    if cold_tier(config) == "jsonl":
        path = None if directory is None else directory / COLD_DIR / MOCK_COLD_FILE
        return JsonlMockTarget(path)
    if directory is None:
        raise ValueError("cold_tier 'usd' needs a file store, not memory://")
    from moneta.usd_target import UsdTarget  # optional backend, imported on use

    return UsdTarget(directory / COLD_DIR, writer_process=config.cold_writer_process)


def open_parts(config: MonetaConfig) -> StoreParts:
    """Open the index, cold tier and audit log; close what opened if a later part fails."""
    directory = config.directory
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    index = open_index(config, directory)
    try:
        target = open_target(config, directory)
    except Exception:
        index.close()
        raise
    audit = AuditLog(None if directory is None else directory / AUDIT_FILE)
    return StoreParts(index=index, target=target, audit=audit)
