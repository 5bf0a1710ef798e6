"""Moneta: a memory substrate for LLM agents.

Usage::

    with Moneta(MonetaConfig(storage_uri="./memories")) as m:
        entity_id = m.deposit("the user prefers tabs", embedding)
        hits = m.query(embedding, limit=5)
        m.signal_attention({hits[0].entity_id: 0.3})
        staged = m.get_consolidation_manifest()
"""

from moneta.api import Moneta, StoreStats
from moneta.audit import AuditEntry
from moneta.config import MonetaConfig
from moneta.consolidation import SleepPassReport, SleepPreview
from moneta.errors import (
    AuthoringError,
    MonetaClosedError,
    MonetaError,
    MonetaResourceLockedError,
    ProtectedQuotaExceededError,
    SnapshotCorruptError,
)
from moneta.types import EntityState, Memory, Vector

__all__ = [
    "AuditEntry",
    "AuthoringError",
    "EntityState",
    "Memory",
    "Moneta",
    "MonetaClosedError",
    "MonetaConfig",
    "MonetaError",
    "MonetaResourceLockedError",
    "ProtectedQuotaExceededError",
    "SleepPassReport",
    "SleepPreview",
    "SnapshotCorruptError",
    "StoreStats",
    "Vector",
]
