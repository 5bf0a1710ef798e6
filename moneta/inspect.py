"""``moneta inspect STORE``: the cold tier as text, so nobody needs usdview to see it.

Prints the sublayer stack (strongest first) with each layer's prim count and last
batch, the number of distinct memories, and a few sample memories as the stage
composes them (protected opinions win). Layer files are read from disk with
``Sdf.Layer.OpenAsAnonymous``, so counts are what is durable; nothing is written.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from pxr import Sdf, Usd

from moneta import usd_schema  # registers MonetaMemory before any stage is opened
from moneta.config import MonetaConfig
from moneta.store import COLD_DIR, MOCK_COLD_FILE
from moneta.usd_layers import PROTECTED_LAYER, ROOT_LAYER, parse_prim_name

PAYLOAD_PREVIEW_CHARS = 80
_LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


@dataclass(frozen=True, slots=True)
class LayerSummary:
    """One sublayer as it is on disk."""

    name: str
    memories: frozenset[str]  # root prim names that are memories
    last_batch: str | None
    last_authored_at: float | None
    missing: bool = False

    @property
    def prims(self) -> int:
        return len(self.memories)


def main(store_path: str | Path, *, samples: int = 5, out: TextIO | None = None) -> int:
    """Print the cold tier of the store at `store_path`; return a process exit code.

    0 when a cold tier was shown, 1 when the store has none (nothing consolidated
    yet, a ``memory://`` store, or a path that is not a store).
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
        raise ValueError(f"samples must be an int >= 0, got {samples!r}")
    out = out or sys.stdout
    directory = MonetaConfig(storage_uri=store_path).directory
    if directory is None:
        print(f"{store_path}: memory:// stores live in one process; nothing on disk", file=out)
        return 1
    cold = directory / COLD_DIR
    root_path = cold / ROOT_LAYER
    if not root_path.is_file():
        mock = cold / MOCK_COLD_FILE
        if mock.is_file():
            _print_mock(mock, out)
            return 0
        print(f"{directory}: no cold tier ({root_path} does not exist)", file=out)
        return 1
    layers = layer_stack(root_path)
    names = frozenset().union(*(s.memories for s in layers))
    print(f"Cold tier: {cold}", file=out)
    print(f"Root layer: {ROOT_LAYER}; sublayers, strongest first:", file=out)
    width = max((len(s.name) for s in layers), default=0)
    for number, summary in enumerate(layers, 1):
        print(f"  {number:>2}. {summary.name:<{width}}  {_describe(summary)}", file=out)
    opinions = sum(s.prims for s in layers)
    print(f"Memories: {len(names)} distinct ({opinions} prim opinions)", file=out)
    shown = sample_memories(root_path, layers, samples)
    if shown:
        print(f"Sample memories ({len(shown)} of {len(names)}):", file=out)
        for header, payload in shown:
            print(header, file=out)
            print(payload, file=out)
    return 0


def layer_stack(root_path: Path) -> list[LayerSummary]:
    """The root layer's sublayers, strongest first, each summarised from its file."""
    root = Sdf.Layer.OpenAsAnonymous(str(root_path))
    summaries = []
    for listed in root.subLayerPaths:
        path = (root_path.parent / listed).resolve()
        if not path.is_file():
            summaries.append(LayerSummary(Path(listed).name, frozenset(), None, None, True))
            continue
        layer = Sdf.Layer.OpenAsAnonymous(str(path))
        data = dict(layer.customLayerData)
        authored = data.get("monetaLastAuthoredAt")
        summaries.append(
            LayerSummary(
                name=path.name,
                memories=_memory_names(layer),
                last_batch=data.get("monetaLastBatchId"),
                last_authored_at=float(authored) if authored is not None else None,
            )
        )
    return summaries


def sample_memories(
    root_path: Path, layers: list[LayerSummary], limit: int
) -> list[tuple[str, str]]:
    """Up to `limit` memories from the strongest layers, composed: (header, payload) lines."""
    picked: list[str] = []
    for summary in layers:
        for name in sorted(summary.memories):
            if len(picked) >= limit:
                break
            if f"/{name}" not in picked:
                picked.append(f"/{name}")
    if not picked:
        return []
    stage = Usd.Stage.Open(str(root_path), Usd.Stage.LoadNone)
    lines = []
    for path in picked:
        prim = stage.GetPrimAtPath(path)
        values = {a: prim.GetAttribute(a).Get() for a in usd_schema.MEMORY_ATTRIBUTES}
        strongest = Path(prim.GetPrimStack()[0].layer.identifier).name
        payload = str(values["payload"] or "")
        preview = json.dumps(payload[:PAYLOAD_PREVIEW_CHARS], ensure_ascii=False)
        preview = preview.translate(_LINE_BREAKS)  # json leaves these unescaped
        if len(payload) > PAYLOAD_PREVIEW_CHARS:
            preview += f" ... ({len(payload)} chars)"
        header = (
            f"  {path}  [{strongest}] {prim.GetTypeName()}"
            f" utility={values['utility']:.3f} attended={values['attendedCount']}"
            f" floor={values['protectedFloor']:.3f} priorState={values['priorState']}"
            f" lastEvaluated={_utc(values['lastEvaluated'])}"
        )
        lines.append((header, f"      payload {preview}" + _fidelity_lines(stage, path)))
    return lines


def _fidelity_lines(stage: Usd.Stage, path: str) -> str:
    """Both texts of a gisted memory (``moneta.gist``), so the detail stays in sight."""
    from moneta.gist import fidelity_of

    layers = stage.GetLayerStack(includeSessionLayers=False)
    specs = [spec for layer in layers if (spec := layer.GetPrimAtPath(path)) is not None]
    view = fidelity_of(specs)
    if view is None:
        return ""
    text = f"\n      fidelity selection={view.selection} status={view.status}"
    if view.reason:
        text += f" reason={json.dumps(view.reason, ensure_ascii=False)}"
    for name, value in (("detail", view.detail), ("gist", view.gist)):
        if value is not None:
            shown = json.dumps(value, ensure_ascii=False).translate(_LINE_BREAKS)
            text += f"\n      {name} {shown}"
    return text


def _memory_names(layer: Sdf.Layer) -> frozenset[str]:
    names = layer.rootPrims.keys()  # iterating the proxy itself yields specs
    return frozenset(n for n in names if parse_prim_name(n) is not None)


def _describe(summary: LayerSummary) -> str:
    if summary.missing:
        return "MISSING (listed by the root layer, no file)"
    text = f"{summary.prims:>7} prims"
    if summary.name == PROTECTED_LAYER:
        text += "  (protected: wins over every daily layer)"
    if summary.last_batch is not None:
        text += f"  last batch {summary.last_batch!r}"
    if summary.last_authored_at is not None:
        text += f" at {_utc(summary.last_authored_at)}"
    return text


def _utc(seconds: object) -> str:
    try:
        moment = datetime.fromtimestamp(float(seconds), tz=UTC)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, OSError):
        return repr(seconds)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _print_mock(path: Path, out: TextIO) -> None:
    batches = entries = 0
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                batches += 1
                entries += len(json.loads(line).get("entries", []))
    print(f"Cold tier: JSONL mock {path}: {batches} batches, {entries} memories", file=out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m moneta.inspect STORE", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
