"""Names in the cold tier: layer files, their order in the sublayer stack, prim names.

Pure functions with no USD calls, so the naming rules can be read (and tested) on
their own. Layout of a cold-tier directory::

    cortex.usda                  root layer; its subLayerPaths are the stack below
    cortex_protected.usda        strongest: pinned memories (protect / unpin)
    cortex_2026_03_02_001.usda   continuation of 2026-03-02 after rotation
    cortex_2026_03_02.usda       daily layer (UTC date of the authoring time)
    cortex_2026_03_01.usda       older days are weaker
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from uuid import UUID

ROOT_LAYER = "cortex.usda"
PROTECTED_LAYER = "cortex_protected.usda"
PRIM_PREFIX = "Memory_"

_DAILY_RE = re.compile(r"^cortex_(\d{4})_(\d{2})_(\d{2})(?:_(\d{3,}))?\.usda$")
_PRIM_RE = re.compile(r"^Memory_([0-9a-f]{32})$")


@dataclass(frozen=True, order=True, slots=True)
class DailyLayer:
    """One rolling layer: a UTC day and a rotation sequence (0 = the day's first file).

    Ordering is (day, seq), so the largest value is the newest, strongest layer.
    """

    day: date
    seq: int = 0

    @property
    def filename(self) -> str:
        stem = f"cortex_{self.day.year:04d}_{self.day.month:02d}_{self.day.day:02d}"
        return f"{stem}.usda" if self.seq == 0 else f"{stem}_{self.seq:03d}.usda"

    def next(self) -> DailyLayer:
        """The continuation layer used when this one is full."""
        return DailyLayer(self.day, self.seq + 1)

    @classmethod
    def for_time(cls, unix_seconds: float) -> DailyLayer:
        """The day's first layer for a unix time, by its UTC date (never local time)."""
        return cls(datetime.fromtimestamp(unix_seconds, tz=UTC).date(), 0)

    @classmethod
    def parse(cls, filename: str) -> DailyLayer | None:
        """The layer a file name denotes, or None if it is not a daily layer name."""
        match = _DAILY_RE.match(filename)
        if match is None:
            return None
        year, month, day, seq = match.groups()
        try:
            parsed = date(int(year), int(month), int(day))
        except ValueError:
            return None
        return cls(parsed, int(seq) if seq else 0)


def stack_order(daily: list[DailyLayer] | set[DailyLayer]) -> list[str]:
    """Sublayer paths of the root layer, strongest first: protected, then newest daily."""
    newest_first = sorted(set(daily), reverse=True)
    return [f"./{PROTECTED_LAYER}"] + [f"./{layer.filename}" for layer in newest_first]


def prim_name(entity_id: UUID) -> str:
    """The prim name of a memory: built from the UUID only, never from its text."""
    return f"{PRIM_PREFIX}{entity_id.hex}"


def prim_link(entity_id: UUID) -> str:
    """The prim path returned to the handle as the memory's ``usd_link``."""
    return f"/{prim_name(entity_id)}"


def parse_prim_name(name: str) -> UUID | None:
    """The entity id a root prim name denotes, or None for any other prim."""
    match = _PRIM_RE.match(name)
    return UUID(hex=match.group(1)) if match else None
