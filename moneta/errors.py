"""Exceptions raised by the substrate. Bad arguments raise ValueError/TypeError."""

from __future__ import annotations

from collections.abc import Sequence


class MonetaError(Exception):
    """Base class of every substrate-specific error."""


class MonetaResourceLockedError(MonetaError):
    """The store is already open by another handle (this process) or another process."""


class ProtectedQuotaExceededError(MonetaError):
    """A protected deposit would exceed the handle's `quota_override`."""


class SnapshotCorruptError(MonetaError):
    """A hot-tier snapshot failed its integrity check; the message names the file."""


class AuthoringError(MonetaError):
    """A cold-tier batch was not made durable.

    Names the layers (or files) that were saved, failed and are still pending so an
    operator can tell a partial flush from a clean failure. The batch stays
    STAGED_FOR_SYNC and is retried by the next sleep pass.
    """

    def __init__(
        self,
        message: str,
        *,
        saved: Sequence[str] = (),
        failed: Sequence[str] = (),
        pending: Sequence[str] = (),
    ) -> None:
        self.saved = tuple(saved)
        self.failed = tuple(failed)
        self.pending = tuple(pending)
        detail = f"saved={list(self.saved)} failed={list(self.failed)} pending={list(self.pending)}"
        super().__init__(f"{message} ({detail})")


class MonetaClosedError(MonetaError):
    """An operation was called on a handle after ``close()``."""
