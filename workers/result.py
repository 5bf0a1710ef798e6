"""What a reviewer job hands to the synthesiser: plain data, JSON round-trippable so
the same value crosses an RQ queue unchanged."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

ReviewerStatus = Literal["ok", "failed"]


@dataclass(slots=True)
class ReviewerResult:
    """One reviewer call's outcome.

    `status="ok"` means the model answered; `findings_raw` is then the extracted JSON
    array (or None with `extraction_error` saying why nothing was extracted).
    `status="failed"` means every attempt failed; `error` says why.
    `findings_over_limit` counts items the model returned beyond the per-reviewer
    limit; they are cut off at extraction and never reach the synthesis.
    """

    role: str
    loop: int
    status: ReviewerStatus
    findings_raw: list[Any] | None = None
    extraction_error: str | None = None
    error: str | None = None
    attempts: int = 0
    usage: dict[str, int] = field(default_factory=dict)  # input, output, cache_write, cache_read
    findings_over_limit: int = 0  # items past the per-reviewer limit, not passed on

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReviewerResult:
        return cls(**data)
