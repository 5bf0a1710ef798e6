"""Content-addressed text blobs in Redis: a run's snapshot, constitution and config.

The snapshot can be hundreds of kilobytes and every one of a run's 40 jobs needs it,
so it is stored once under its sha256 and jobs carry only the hash. Storing is
idempotent (SET NX): re-running or resuming a run never rewrites a blob, and two runs
of the same repository share one copy. A read re-hashes the bytes, so a blob that
was damaged in Redis is refused instead of being sent to a model.
"""

from __future__ import annotations

import hashlib
import re

import redis

_HASH_RE = re.compile(r"^[0-9a-f]{64}\Z")


class BlobMissing(LookupError):
    """A job referenced a blob that is not (or no longer) in Redis."""


class BlobCorrupt(ValueError):
    """A blob's bytes no longer hash to its key."""


def blob_key(prefix: str, digest: str) -> str:
    return f"{prefix}:blob:{digest}"


def digest_of(text: str) -> str:
    """The sha256 (64 hex) of `text` encoded as UTF-8: the blob's address."""
    if not isinstance(text, str):
        raise TypeError(f"text: must be str, got {type(text).__name__}")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_digest(digest: object) -> str:
    if not isinstance(digest, str) or not _HASH_RE.match(digest):
        raise ValueError(f"digest: must be 64 lowercase hex characters, got {digest!r}")
    return digest


def put_blob(conn: redis.Redis, prefix: str, text: str) -> tuple[str, bool]:
    """Store `text` under its hash; return (digest, True if this call wrote it)."""
    digest = digest_of(text)
    wrote = conn.set(blob_key(prefix, digest), text.encode("utf-8"), nx=True)
    return digest, bool(wrote)


def get_blob(conn: redis.Redis, prefix: str, digest: str) -> str:
    """The text stored under `digest`; BlobMissing or BlobCorrupt instead of wrong text."""
    check_digest(digest)
    data = conn.get(blob_key(prefix, digest))
    if data is None:
        raise BlobMissing(f"blob {digest[:16]}… is not in Redis (key {blob_key(prefix, digest)})")
    if hashlib.sha256(data).hexdigest() != digest:
        raise BlobCorrupt(f"blob {digest[:16]}… does not hash to its key: refusing to use it")
    return data.decode("utf-8")
