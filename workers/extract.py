"""Pull the findings array out of a reviewer's answer.

The answer should hold one ```json fenced block with a JSON array. Models add prose,
use CRLF or `JSON`, leave trailing spaces, or get cut off at the token limit; this
module tolerates the first three and, whatever it is given, never raises: when no
array can be extracted it says why, so the synthesis counts an extraction failure
instead of reporting "0 findings".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_OPEN = re.compile(r"```[ \t]*json[ \t]*\r?\n", re.IGNORECASE)
_CLOSE = re.compile(r"^[ \t]*```[ \t]*\r?$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Extraction:
    """`findings` is the array (possibly empty) or None with `error` saying why."""

    findings: list[Any] | None
    error: str | None
    over_limit: int = 0


def _blocks(text: str) -> list[tuple[str | None, int]]:
    """Bodies of ```json blocks in order (None for an unclosed block) with their index."""
    out: list[tuple[str | None, int]] = []
    pos = 0
    index = 0
    while (m := _OPEN.search(text, pos)) is not None:
        index += 1
        close = _CLOSE.search(text, m.end())
        if close is None:
            out.append((None, index))
            break
        out.append((text[m.end() : close.start()], index))
        pos = close.end()
    return out


def extract_findings(answer: object, *, limit: int, stop_reason: str | None = None) -> Extraction:
    """The first ```json fenced block that holds an array, capped at `limit` items."""
    try:
        return _extract(answer, limit=limit, stop_reason=stop_reason)
    except Exception as exc:  # never let odd model output take the run down
        return Extraction(None, f"extraction failed unexpectedly: {type(exc).__name__}: {exc}")


def _extract(answer: object, *, limit: int, stop_reason: str | None) -> Extraction:
    if not isinstance(answer, str):
        return Extraction(None, f"answer is {type(answer).__name__}, not text")
    text = answer.lstrip("\ufeff")
    if not text.strip():
        return Extraction(None, _with_stop("answer is empty", stop_reason))
    blocks = _blocks(text)
    if not blocks:
        return Extraction(
            None,
            _with_stop(f"no ```json fenced block in the answer ({len(text)} chars)", stop_reason),
        )
    reasons: list[str] = []
    for body, index in blocks:
        if body is None:
            reasons.append(f"```json block {index} is never closed")
            continue
        try:
            value = json.loads(body)
        except json.JSONDecodeError as exc:
            reasons.append(f"```json block {index} is not valid JSON: {exc}")
            continue
        if not isinstance(value, list):
            kind = "an object" if isinstance(value, dict) else type(value).__name__
            reasons.append(f"```json block {index} holds {kind}, not an array")
            continue
        over = max(0, len(value) - limit)
        return Extraction(value[:limit], None, over)
    return Extraction(None, _with_stop("; ".join(reasons), stop_reason))


def _with_stop(reason: str, stop_reason: str | None) -> str:
    if stop_reason == "max_tokens":
        return f"{reason} (the answer hit the output token limit)"
    return reason
