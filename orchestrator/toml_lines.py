"""Line numbers for keys of a TOML document.

`tomllib` reports line numbers for syntax errors only; a value that parses but breaks
a rule (a wrong type, an unknown role) has no position. This scanner walks the text
once and remembers where each table header and key sits, so a semantic problem can
be reported as `file:line: message`.

It understands what configuration files use: `[table]`, `[[array.of.tables]]`,
`key = value` (bare, quoted and dotted keys), multi-line strings and multi-line
arrays. Inline tables are located by their key only.
"""

from __future__ import annotations

import re

KeyPath = tuple[str | int, ...]

_ARRAY_HEADER = re.compile(r"^\[\[\s*(.+?)\s*\]\]")
_TABLE_HEADER = re.compile(r"^\[\s*(.+?)\s*\]")
_KEY = re.compile(
    r"""^((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*="""
)
_KEY_PART = re.compile(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""")


def _split_key(dotted: str) -> tuple[str, ...]:
    return tuple(p.strip("\"'") for p in _KEY_PART.findall(dotted))


def _bracket_delta(value: str) -> tuple[int, str | None]:
    """Net `[`/`]` depth change of a value fragment, skipping strings and comments.

    Also returns the multi-line string delimiter left open at the end, if any.
    """
    depth = 0
    i = 0
    while i < len(value):
        c = value[i]
        if value.startswith('"""', i) or value.startswith("'''", i):
            delim = value[i : i + 3]
            end = value.find(delim, i + 3)
            if end == -1:
                return depth, delim
            i = end + 3
            continue
        if c in "\"'":
            end = value.find(c, i + 1)
            while c == '"' and end != -1 and value[end - 1] == "\\":
                end = value.find(c, end + 1)
            i = len(value) if end == -1 else end + 1
            continue
        if c == "#":
            break
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
        i += 1
    return depth, None


class KeyLocator:
    """Maps key paths such as ("roles", 2, "prefix") to 1-based line numbers."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self._where: dict[KeyPath, int] = {}
        self._scan()

    def _scan(self) -> None:
        table: KeyPath = ()
        counts: dict[tuple[str, ...], int] = {}
        open_string: str | None = None
        array_depth = 0
        for lineno, raw in enumerate(self.lines, start=1):
            if open_string is not None:
                if raw.count(open_string) % 2 == 1:
                    open_string = None
                continue
            if array_depth > 0:
                delta, open_string = _bracket_delta(raw)
                array_depth = max(0, array_depth + delta)
                continue
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if m := _ARRAY_HEADER.match(line):
                name = _split_key(m.group(1))
                counts[name] = counts.get(name, -1) + 1
                table = (*name, counts[name])
                self._where.setdefault(table, lineno)
                self._where.setdefault(name, lineno)
            elif m := _TABLE_HEADER.match(line):
                table = _split_key(m.group(1))
                self._where.setdefault(table, lineno)
            elif m := _KEY.match(line):
                self._where.setdefault((*table, *_split_key(m.group(1))), lineno)
                delta, open_string = _bracket_delta(line[m.end() :])
                array_depth = max(0, delta)

    def line(self, path: KeyPath) -> int | None:
        """Line of `path`, else of its nearest located ancestor, else None."""
        for cut in range(len(path), 0, -1):
            if (found := self._where.get(path[:cut])) is not None:
                return found
        return None

    def value_line(self, path: KeyPath, needle: str) -> int | None:
        """First line at or after `path`'s key that contains `needle` (an array element)."""
        start = self.line(path)
        if start is None:
            return None
        for lineno in range(start, min(len(self.lines), start + 200) + 1):
            if needle in self.lines[lineno - 1]:
                return lineno
        return start
