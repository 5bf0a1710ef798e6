"""Configuration of one Moneta handle: immutable, keyword-only, validated on creation."""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

MEMORY_SCHEME = "memory://"
FILE_SCHEME = "file://"
MIN_HALF_LIFE_SECONDS = 60.0
MAX_HALF_LIFE_SECONDS = 86_400.0
MAX_QUOTA_OVERRIDE = 1000
MAX_BATCH_SIZE = 500
VECTOR_BACKENDS = ("memory", "lancedb")
COLD_TIERS = ("jsonl", "usd")


def _require_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _require_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be in {bound}, got {value}")


def _require_positive(name: str, value: Any) -> None:
    if _require_number(name, value) <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class MonetaConfig:
    """Everything a handle needs; frozen so a running handle cannot be reconfigured.

    ``storage_uri`` is a directory (or ``file://`` URI) for a durable store, created if
    missing, or ``memory://<name>`` for an in-memory store.
    """

    storage_uri: str | os.PathLike[str]
    half_life_seconds: float = 6 * 3600.0
    quota_override: int = 100
    max_entities: int = 10_000
    embedding_dim: int | None = None
    clock: Callable[[], float] = field(default=time.time, repr=False)
    auto_sleep: bool = True
    idle_window_seconds: float = 5.0
    batch_size: int = MAX_BATCH_SIZE
    durability: bool = True
    vector_backend: str | None = None
    cold_tier: str | None = None  # None: "usd" for file stores, "jsonl" for memory://
    cold_writer_process: bool = False  # usd: write and Save() in a child process
    watch_interval_seconds: float = 0.25
    index_commit_interval_seconds: float = 1.0
    index_commit_every_records: int = 1024
    ann_index_threshold: int = 10_000
    checkpoint_every_records: int = 50_000
    checkpoint_interval_seconds: float = 300.0
    wal_fsync_interval_seconds: float = 1.0
    # Gists (moneta.gist): a GistSink receives consolidated memories to summarise.
    gist_sink: Any = field(default=None, repr=False, compare=False)
    gist_max_pending: int = 64  # jobs handed out and not yet answered, per store
    gist_protected: bool = False  # operator requests gist protected memories by default
    gist_pending_timeout_seconds: float = 3600.0  # a job unanswered this long is re-queued

    def __post_init__(self) -> None:
        uri = self.storage_uri
        if not isinstance(uri, str | os.PathLike):
            raise TypeError(f"storage_uri must be a str or path, got {type(uri).__name__}")
        text = os.fspath(uri)
        if not isinstance(text, str) or not text.strip():
            raise ValueError("storage_uri must be a non-empty directory path or memory://<name>")
        if text.startswith(MEMORY_SCHEME) and not text[len(MEMORY_SCHEME) :]:
            raise ValueError("storage_uri memory:// needs a name, e.g. memory://scratch")
        if text.startswith(FILE_SCHEME) and not urlparse(text).path:
            raise ValueError(f"storage_uri {text!r} has no path")
        half_life = _require_number("half_life_seconds", self.half_life_seconds)
        if not MIN_HALF_LIFE_SECONDS <= half_life <= MAX_HALF_LIFE_SECONDS:
            raise ValueError(
                f"half_life_seconds must be in {MIN_HALF_LIFE_SECONDS:g}..{MAX_HALF_LIFE_SECONDS:g}"
                f" (1 min .. 24 h), got {self.half_life_seconds!r}"
            )
        _require_int("quota_override", self.quota_override, 1, MAX_QUOTA_OVERRIDE)
        _require_int("max_entities", self.max_entities, 1)
        if self.embedding_dim is not None:
            _require_int("embedding_dim", self.embedding_dim, 1)
        if not callable(self.clock):
            raise TypeError("clock must be a zero-argument callable returning unix seconds")
        _require_int("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        _require_positive("idle_window_seconds", self.idle_window_seconds)
        _require_positive("watch_interval_seconds", self.watch_interval_seconds)
        _require_positive("index_commit_interval_seconds", self.index_commit_interval_seconds)
        _require_int("index_commit_every_records", self.index_commit_every_records, 1)
        _require_int("ann_index_threshold", self.ann_index_threshold, 1)
        _require_positive("checkpoint_interval_seconds", self.checkpoint_interval_seconds)
        _require_int("checkpoint_every_records", self.checkpoint_every_records, 1)
        if _require_number("wal_fsync_interval_seconds", self.wal_fsync_interval_seconds) < 0:
            raise ValueError("wal_fsync_interval_seconds must be >= 0 (0 fsyncs every append)")
        if self.gist_sink is not None and not callable(getattr(self.gist_sink, "submit", None)):
            raise TypeError("gist_sink must be a moneta.protocols.GistSink (a submit method)")
        _require_int("gist_max_pending", self.gist_max_pending, 1)
        _require_positive("gist_pending_timeout_seconds", self.gist_pending_timeout_seconds)
        for name in ("auto_sleep", "durability", "cold_writer_process", "gist_protected"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool")
        if self.vector_backend is not None and self.vector_backend not in VECTOR_BACKENDS:
            raise ValueError(
                f"vector_backend must be one of {VECTOR_BACKENDS} or None (automatic),"
                f" got {self.vector_backend!r}"
            )
        if self.cold_tier is not None and self.cold_tier not in COLD_TIERS:
            raise ValueError(
                f"cold_tier must be one of {COLD_TIERS} or None (automatic), got {self.cold_tier!r}"
            )

    @classmethod
    def ephemeral(cls, **overrides: Any) -> MonetaConfig:
        """A config for a fresh, uniquely named in-memory store (tests, experiments)."""
        overrides.setdefault("storage_uri", f"{MEMORY_SCHEME}ephemeral-{uuid.uuid4().hex}")
        return cls(**overrides)

    def with_changes(self, **changes: Any) -> MonetaConfig:
        """A copy with some fields replaced (validated again)."""
        return replace(self, **changes)

    @property
    def is_memory(self) -> bool:
        return os.fspath(self.storage_uri).startswith(MEMORY_SCHEME)

    @property
    def directory(self) -> Path | None:
        """The store directory (absolute, symlinks resolved), or None for memory stores."""
        text = os.fspath(self.storage_uri)
        if text.startswith(MEMORY_SCHEME):
            return None
        if text.startswith(FILE_SCHEME):
            text = unquote(urlparse(text).path)
        return Path(text).expanduser().resolve()

    @property
    def storage_key(self) -> str:
        """Identity of the store for the one-handle-per-store rule within a process."""
        directory = self.directory
        if directory is None:
            return os.fspath(self.storage_uri)
        return f"{FILE_SCHEME}{directory}"

    @property
    def durable(self) -> bool:
        """Whether the hot tier is covered by the write-ahead log and snapshots."""
        return self.durability and not self.is_memory
