"""Review configuration: the one home of roles, themes and run settings.

Workers and the synthesiser import these definitions; they never import the
orchestration logic itself.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from orchestrator.toml_lines import KeyLocator, KeyPath


@dataclass(frozen=True, slots=True)
class Role:
    """A reviewer role. `prefix` is the id prefix of its findings (`<prefix>-L<n>-...`)."""

    prefix: str
    name: str
    scope: tuple[str, ...]
    directive: str
    exempt_from_scope: bool = False


@dataclass(frozen=True, slots=True)
class Theme:
    """One loop of a run: its lens is given to every reviewer of that loop."""

    loop: int
    slug: str
    title: str
    lead_roles: tuple[str, ...]
    lens: str


@dataclass(frozen=True, slots=True)
class PathInstruction:
    """Extra directive text for reviewers whose scope can reach files matching `paths`.

    `roles` narrows it to those role prefixes (empty: every role the paths concern).
    """

    paths: tuple[str, ...]
    instruction: str
    roles: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NoiseControls:
    """What a run keeps of the valid, in-scope, deduplicated findings (see `synth.noise`).

    A limit of 0 means none. `include`/`exclude` are path globs over `file_path`.
    The defaults keep everything, so a config without a `[noise]` table changes nothing.
    """

    min_severity: str = "Note"
    max_findings_per_loop: int = 0
    max_findings_per_role: int = 0
    include: tuple[str, ...] = ("**",)
    exclude: tuple[str, ...] = ()
    path_instructions: tuple[PathInstruction, ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NoiseControls:
        """Inverse of `dataclasses.asdict` (lists back to tuples)."""
        return cls(
            min_severity=data.get("min_severity", "Note"),
            max_findings_per_loop=int(data.get("max_findings_per_loop", 0)),
            max_findings_per_role=int(data.get("max_findings_per_role", 0)),
            include=tuple(data.get("include", ("**",))),
            exclude=tuple(data.get("exclude", ())),
            path_instructions=tuple(
                PathInstruction(
                    paths=tuple(p["paths"]),
                    instruction=p["instruction"],
                    roles=tuple(p.get("roles", ())),
                )
                for p in data.get("path_instructions", ())
            ),
        )


@dataclass(frozen=True, slots=True)
class ReviewConfig:
    """Everything a run needs besides the repository and the model's answers.

    `roles` lists the role reviewers in rank order and ends with the adversarial
    role (the one with `exempt_from_scope=True`), which runs after the others.
    """

    roles: tuple[Role, ...]
    themes: tuple[Theme, ...]
    constitution_path: Path
    snapshot_include: tuple[str, ...] = ("**",)
    snapshot_exclude: tuple[str, ...] = ()
    snapshot_max_bytes: int = 1_500_000
    model: str = "claude-opus-5-5"
    backend: str = "auto"
    max_tokens_reviewer: int = 8192
    max_tokens_synthesis: int = 16384
    concurrency: int = 8
    max_findings_per_reviewer: int = 25
    cache_ttl: str = "1h"
    max_attempts: int = 3
    retry_initial_delay: float = 1.0
    retry_max_delay: float = 30.0
    request_timeout: float = 600.0
    noise: NoiseControls = field(default_factory=NoiseControls)
    extra: dict[str, object] = field(default_factory=dict)
    # model id or glob -> USD per million tokens by kind (see `orchestrator.cost`)
    prices: dict[str, dict[str, float]] = field(default_factory=dict)
    # --since REV: changed lines and the previous run's findings, JSON-ready (set by the
    # CLI from `orchestrator.incremental.incremental_scope`, never read from TOML)
    incremental: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        # A config rebuilt from JSON (e.g. carried by a queued job) holds a plain dict.
        if isinstance(self.noise, dict):
            object.__setattr__(self, "noise", NoiseControls.from_dict(self.noise))

    @property
    def role_reviewers(self) -> tuple[Role, ...]:
        return tuple(r for r in self.roles if not r.exempt_from_scope)

    @property
    def adversarial(self) -> Role:
        return next(r for r in self.roles if r.exempt_from_scope)

    def role(self, prefix: str) -> Role:
        for r in self.roles:
            if r.prefix == prefix:
                return r
        raise KeyError(prefix)

    @property
    def role_order(self) -> dict[str, int]:
        return {r.prefix: i for i, r in enumerate(self.roles)}

    def theme_for(self, loop: int) -> Theme:
        for t in self.themes:
            if t.loop == loop:
                return t
        raise KeyError(loop)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, so a queued job can carry the exact config it runs under."""
        data = asdict(self)
        data["constitution_path"] = str(self.constitution_path)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReviewConfig:
        """Inverse of `to_dict` (lists back to tuples, the path back to a Path)."""
        kw = dict(data)
        kw["roles"] = tuple(
            Role(
                prefix=r["prefix"],
                name=r["name"],
                scope=tuple(r["scope"]),
                directive=r["directive"],
                exempt_from_scope=bool(r["exempt_from_scope"]),
            )
            for r in data["roles"]
        )
        kw["themes"] = tuple(
            Theme(
                loop=int(t["loop"]),
                slug=t["slug"],
                title=t["title"],
                lead_roles=tuple(t["lead_roles"]),
                lens=t["lens"],
            )
            for t in data["themes"]
        )
        kw["constitution_path"] = Path(data["constitution_path"])
        kw["snapshot_include"] = tuple(data["snapshot_include"])
        kw["snapshot_exclude"] = tuple(data["snapshot_exclude"])
        return cls(**kw)


@lru_cache(maxsize=1024)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Translate a path glob: `**` matches across `/`, `*` and `?` stay within a segment."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "{":
            end = pattern.find("}", i)
            if end == -1:
                out.append(re.escape(c))
                i += 1
            else:
                alts = pattern[i + 1 : end].split(",")
                out.append("(?:" + "|".join(re.escape(a) for a in alts) + ")")
                i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z")


def match_glob(pattern: str, path: str) -> bool:
    """True if repo-relative POSIX `path` matches `pattern` (`**`, `*`, `?`, `{a,b}`)."""
    return _glob_regex(pattern).match(path) is not None


# --- configuration files ---------------------------------------------------------------

DEFAULT_CONFIG_NAME = "defaults.toml"
BACKENDS = ("auto", "anthropic", "anthropic-batch", "claude-cli")
CACHE_TTLS = ("5m", "1h")
MAX_FINDINGS_LIMIT = 25
MAX_ATTEMPTS_LIMIT = 3
_PREFIX_RE = re.compile(r"^[a-z]+$")
_SLUG_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")

_RUN_KEYS = {
    "constitution",
    "model",
    "backend",
    "concurrency",
    "max_findings_per_reviewer",
    "max_tokens_reviewer",
    "max_tokens_synthesis",
    "cache_ttl",
    "max_attempts",
    "retry_initial_delay",
    "retry_max_delay",
    "request_timeout",
}
_SNAPSHOT_KEYS = {"include", "exclude", "max_bytes"}
_ROLE_KEYS = {"prefix", "name", "scope", "directive", "adversarial"}
_THEME_KEYS = {"loop", "slug", "title", "lead_roles", "lens"}
_NOISE_KEYS = {
    "min_severity",
    "max_findings_per_loop",
    "max_findings_per_role",
    "include",
    "exclude",
    "path_instructions",
}
_PATH_INSTRUCTION_KEYS = {"paths", "instruction", "roles"}
_TOP_KEYS = {
    "run": "table",
    "snapshot": "table",
    "noise": "table",
    "prices": "table",
    "roles": "array",
    "themes": "array",
}


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One rule a configuration file broke; `line` is 1-based (None: not locatable)."""

    source: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return f"{where}: {self.message}"


class ConfigError(ValueError):
    """A configuration file is unusable; `problems` lists every rule it broke."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def default_config_path() -> Path:
    """The packaged configuration that reviews this repository's substrate."""
    return Path(__file__).with_name(DEFAULT_CONFIG_NAME)


def _dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class _Checker:
    """Walks a parsed document, collecting every problem with its line."""

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.locator = KeyLocator(text)
        self.problems: list[ConfigProblem] = []

    def add(self, path: KeyPath, message: str, *, needle: str | None = None) -> None:
        line = (
            self.locator.value_line(path, needle) if needle is not None else self.locator.line(path)
        )
        self.problems.append(ConfigProblem(self.source, line, f"{_dotted(path)}: {message}"))

    def unknown_keys(self, path: KeyPath, table: dict[str, object], allowed: set[str]) -> None:
        for key in table:
            if key not in allowed:
                self.add((*path, key), f"unknown key; expected one of {', '.join(sorted(allowed))}")

    def string(self, path: KeyPath, value: object, *, required_nonempty: bool = True) -> str | None:
        if not isinstance(value, str):
            self.add(path, f"must be a string, got {_toml_type(value)}")
            return None
        if required_nonempty and not value.strip():
            self.add(path, "must be a non-empty string")
            return None
        return value

    def integer(self, path: KeyPath, value: object, low: int, high: int) -> int | None:
        if not isinstance(value, int) or isinstance(value, bool):
            self.add(path, f"must be an integer, got {_toml_type(value)}")
            return None
        if not low <= value <= high:
            self.add(path, f"must be between {low} and {high}, got {value}")
            return None
        return value

    def number(self, path: KeyPath, value: object, low: float, high: float) -> float | None:
        if not isinstance(value, int | float) or isinstance(value, bool):
            self.add(path, f"must be a number, got {_toml_type(value)}")
            return None
        if not low <= value <= high:
            self.add(path, f"must be between {low} and {high}, got {value}")
            return None
        return float(value)

    def choice(self, path: KeyPath, value: object, choices: tuple[str, ...]) -> str | None:
        text = self.string(path, value)
        if text is not None and text not in choices:
            self.add(path, f"must be one of {', '.join(choices)}, got {text!r}")
            return None
        return text

    def string_list(self, path: KeyPath, value: object) -> tuple[str, ...] | None:
        if not isinstance(value, list):
            self.add(path, f"must be an array of strings, got {_toml_type(value)}")
            return None
        good = True
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                self.add((*path, i), f"must be a non-empty string, got {item!r}")
                good = False
        return tuple(value) if good else None

    def globs(self, path: KeyPath, value: object) -> tuple[str, ...] | None:
        patterns = self.string_list(path, value)
        if patterns is None:
            return None
        good = True
        for i, pattern in enumerate(patterns):
            rule = _glob_rule_broken(pattern)
            if rule:
                self.add((*path, i), f"glob {pattern!r} {rule}", needle=pattern)
                good = False
        return patterns if good else None


def _toml_type(value: object) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array"}
    return names.get(type(value), "table" if isinstance(value, dict) else type(value).__name__)


def _glob_rule_broken(pattern: str) -> str | None:
    """Why a path glob cannot match a repo-relative POSIX path, or None if it can."""
    if pattern.startswith("/"):
        return "must be repo-relative (no leading '/')"
    if "\\" in pattern:
        return "must use '/' separators (no backslashes)"
    if ".." in pattern.split("/"):
        return "must not contain '..' segments"
    depth = 0
    for c in pattern:
        depth += {"{": 1, "}": -1}.get(c, 0)
        if depth < 0 or depth > 1:
            return "has unbalanced or nested braces"
    if depth:
        return "has an unclosed '{'"
    return None


def _check_run(ck: _Checker, run: dict[str, object], out: dict[str, object]) -> None:
    ck.unknown_keys(("run",), run, _RUN_KEYS)
    p = ("run",)
    if "constitution" not in run:
        ck.add(p, "missing required key 'constitution' (path of the constitution file)")
    else:
        out["constitution_path"] = ck.string((*p, "constitution"), run["constitution"])
    fields: dict[str, tuple[object, ...]] = {
        "model": ("string",),
        "backend": ("choice", BACKENDS),
        "cache_ttl": ("choice", CACHE_TTLS),
        "concurrency": ("int", 1, 256),
        "max_findings_per_reviewer": ("int", 1, MAX_FINDINGS_LIMIT),
        "max_tokens_reviewer": ("int", 1, 128_000),
        "max_tokens_synthesis": ("int", 1, 128_000),
        "max_attempts": ("int", 1, MAX_ATTEMPTS_LIMIT),
        "retry_initial_delay": ("number", 0.0, 600.0),
        "retry_max_delay": ("number", 0.0, 3600.0),
        "request_timeout": ("number", 1.0, 3600.0),
    }
    for key, spec in fields.items():
        if key not in run:
            continue
        kp = (*p, key)
        value = run[key]
        if spec[0] == "string":
            out[key] = ck.string(kp, value)
        elif spec[0] == "choice":
            out[key] = ck.choice(kp, value, spec[1])  # type: ignore[arg-type]
        elif spec[0] == "int":
            out[key] = ck.integer(kp, value, spec[1], spec[2])  # type: ignore[arg-type]
        else:
            out[key] = ck.number(kp, value, spec[1], spec[2])  # type: ignore[arg-type]
    low, high = out.get("retry_initial_delay"), out.get("retry_max_delay")
    if isinstance(low, float) and isinstance(high, float) and high < low:
        ck.add((*p, "retry_max_delay"), f"must be >= retry_initial_delay ({low}), got {high}")


def _check_snapshot(ck: _Checker, snap: dict[str, object], out: dict[str, object]) -> None:
    ck.unknown_keys(("snapshot",), snap, _SNAPSHOT_KEYS)
    if "include" in snap:
        out["snapshot_include"] = ck.globs(("snapshot", "include"), snap["include"])
    if "exclude" in snap:
        out["snapshot_exclude"] = ck.globs(("snapshot", "exclude"), snap["exclude"])
    if "max_bytes" in snap:
        out["snapshot_max_bytes"] = ck.integer(
            ("snapshot", "max_bytes"), snap["max_bytes"], 1, 50_000_000
        )


def _check_noise(
    ck: _Checker, noise: dict[str, object], out: dict[str, object], prefixes: set[str] | None
) -> None:
    """The `[noise]` table: what a run keeps, and per-path reviewer instructions."""
    from synth.schema import SEVERITIES  # the finding schema's one home

    p: KeyPath = ("noise",)
    ck.unknown_keys(p, noise, _NOISE_KEYS)
    kw: dict[str, object] = {}
    good = True
    if "min_severity" in noise:
        kw["min_severity"] = ck.choice((*p, "min_severity"), noise["min_severity"], SEVERITIES)
    for key in ("max_findings_per_loop", "max_findings_per_role"):
        if key in noise:
            kw[key] = ck.integer((*p, key), noise[key], 0, 100_000)
    for key in ("include", "exclude"):
        if key in noise:
            kw[key] = ck.globs((*p, key), noise[key])
    if "include" in noise and kw["include"] == ():
        ck.add((*p, "include"), "must list at least one glob (omit it to keep every path)")
        good = False
    entries = noise.get("path_instructions", [])
    built: list[PathInstruction] = []
    if not isinstance(entries, list):
        ck.add((*p, "path_instructions"), "must be one or more [[noise.path_instructions]] tables")
        entries, good = [], False
    for i, raw in enumerate(entries):
        ep: KeyPath = (*p, "path_instructions", i)
        if not isinstance(raw, dict):
            ck.add(ep, "must be a table ([[noise.path_instructions]])")
            good = False
            continue
        ck.unknown_keys(ep, raw, _PATH_INSTRUCTION_KEYS)
        missing = [k for k in ("paths", "instruction") if k not in raw]
        if missing:
            ck.add(ep, f"missing required key(s): {', '.join(missing)}")
            good = False
        paths = ck.globs((*ep, "paths"), raw["paths"]) if "paths" in raw else None
        if paths == ():
            ck.add((*ep, "paths"), "must list at least one glob")
            paths = None
        text = ck.string((*ep, "instruction"), raw["instruction"]) if "instruction" in raw else None
        roles: tuple[str, ...] | None = ()
        if "roles" in raw:
            roles = ck.string_list((*ep, "roles"), raw["roles"])
            for role in roles or ():
                if prefixes is not None and role not in prefixes:
                    ck.add(
                        (*ep, "roles"),
                        f"unknown role {role!r}; roles are {', '.join(sorted(prefixes))}",
                        needle=f'"{role}"',
                    )
                    roles = None
                    break
        if paths is None or text is None or roles is None:
            good = False
            continue
        built.append(PathInstruction(paths, text, roles))
    if good and None not in kw.values():
        out["noise"] = NoiseControls(**kw, path_instructions=tuple(built))  # type: ignore[arg-type]


PRICE_KINDS = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")


def _check_prices(ck: _Checker, prices: dict[str, object], out: dict[str, object]) -> None:
    """`[prices."<model id or glob>"]`: USD per million tokens; `input` and `output` required."""
    built: dict[str, dict[str, float]] = {}
    for model, table in prices.items():
        p: KeyPath = ("prices", model)
        if not isinstance(table, dict):
            ck.add(p, f'must be a table ([prices."{model}"]), got {_toml_type(table)}')
            continue
        ck.unknown_keys(p, table, set(PRICE_KINDS))
        entry: dict[str, float] = {}
        for kind in PRICE_KINDS:
            if kind in table:
                value = ck.number((*p, kind), table[kind], 0.0, 10_000.0)
                if value is not None:
                    entry[kind] = value
            elif kind in ("input", "output"):
                ck.add(p, f"missing required key {kind!r} (USD per million tokens)")
        built[model] = entry
    out["prices"] = built


def _check_roles(ck: _Checker, roles: list[object]) -> list[Role] | None:
    built: list[Role] = []
    seen: dict[str, int] = {}
    ok = True
    for i, raw in enumerate(roles):
        p: KeyPath = ("roles", i)
        if not isinstance(raw, dict):
            ck.add(p, "must be a table ([[roles]])")
            ok = False
            continue
        ck.unknown_keys(p, raw, _ROLE_KEYS)
        missing = [k for k in ("prefix", "name", "directive") if k not in raw]
        adversarial = raw.get("adversarial", False)
        if not isinstance(adversarial, bool):
            ck.add((*p, "adversarial"), f"must be true or false, got {_toml_type(adversarial)}")
            adversarial = False
        if "scope" not in raw and not adversarial:
            missing.append("scope")
        if missing:
            ck.add(p, f"missing required key(s): {', '.join(missing)}")
        prefix = ck.string((*p, "prefix"), raw["prefix"]) if "prefix" in raw else None
        if prefix is not None and not _PREFIX_RE.match(prefix):
            ck.add(
                (*p, "prefix"),
                f"must be lowercase letters only (finding ids are "
                f"'<prefix>-L<loop>-<slug>'), got {prefix!r}",
            )
            prefix = None
        if prefix is not None:
            if prefix in seen:
                ck.add(
                    (*p, "prefix"), f"duplicate role prefix {prefix!r} (also roles[{seen[prefix]}])"
                )
                prefix = None
            else:
                seen[prefix] = i
        name = ck.string((*p, "name"), raw["name"]) if "name" in raw else None
        directive = ck.string((*p, "directive"), raw["directive"]) if "directive" in raw else None
        scope: tuple[str, ...] | None = ("**",) if adversarial else None
        if "scope" in raw:
            scope = ck.globs((*p, "scope"), raw["scope"])
            if scope is not None and not scope and not adversarial:
                ck.add(
                    (*p, "scope"), "must list at least one glob (the paths this role may file on)"
                )
                scope = None
        if None in (prefix, name, directive, scope) or missing:
            ok = False
            continue
        built.append(Role(prefix, name, scope, directive, adversarial))  # type: ignore[arg-type]
    adversaries = [
        i for i, r in enumerate(roles) if isinstance(r, dict) and r.get("adversarial") is True
    ]
    if len(adversaries) != 1:
        where: KeyPath = ("roles", adversaries[1]) if len(adversaries) > 1 else ("roles",)
        ck.add(where, f"exactly one role must set adversarial = true, found {len(adversaries)}")
        ok = False
    if len(roles) - len(adversaries) < 1:
        ck.add(("roles",), "at least one role reviewer (adversarial = false) is required")
        ok = False
    if not ok:
        return None
    # Rank order is file order, with the adversarial reviewer last: it runs last.
    return [r for r in built if not r.exempt_from_scope] + [r for r in built if r.exempt_from_scope]


def _check_themes(
    ck: _Checker, themes: list[object], prefixes: set[str] | None
) -> list[Theme] | None:
    built: list[Theme] = []
    loops: dict[int, int] = {}
    slugs: dict[str, int] = {}
    ok = True
    for i, raw in enumerate(themes):
        p: KeyPath = ("themes", i)
        if not isinstance(raw, dict):
            ck.add(p, "must be a table ([[themes]])")
            ok = False
            continue
        ck.unknown_keys(p, raw, _THEME_KEYS)
        missing = [k for k in ("loop", "slug", "title", "lead_roles", "lens") if k not in raw]
        if missing:
            ck.add(p, f"missing required key(s): {', '.join(missing)}")
        loop = ck.integer((*p, "loop"), raw["loop"], 1, 99) if "loop" in raw else None
        if loop is not None:
            if loop in loops:
                ck.add((*p, "loop"), f"duplicate loop {loop} (also themes[{loops[loop]}])")
                loop = None
            else:
                loops[loop] = i
        slug = ck.string((*p, "slug"), raw["slug"]) if "slug" in raw else None
        if slug is not None and not _SLUG_RE.match(slug):
            ck.add((*p, "slug"), f"must be lowercase words joined by '-', got {slug!r}")
            slug = None
        if slug is not None:
            if slug in slugs:
                ck.add((*p, "slug"), f"duplicate slug {slug!r} (also themes[{slugs[slug]}])")
                slug = None
            else:
                slugs[slug] = i
        title = ck.string((*p, "title"), raw["title"]) if "title" in raw else None
        lens = ck.string((*p, "lens"), raw["lens"]) if "lens" in raw else None
        leads = (
            ck.string_list((*p, "lead_roles"), raw["lead_roles"]) if "lead_roles" in raw else None
        )
        if leads is not None and prefixes is not None:
            for lead in leads:
                if lead not in prefixes:
                    ck.add(
                        (*p, "lead_roles"),
                        f"unknown role {lead!r}; roles are {', '.join(sorted(prefixes))}",
                        needle=f'"{lead}"',
                    )
                    leads = None
                    break
        if None in (loop, slug, title, lens, leads) or missing:
            ok = False
            continue
        built.append(Theme(loop, slug, title, leads, lens))  # type: ignore[arg-type]
    if loops:
        expected = set(range(1, max(loops) + 1))
        gaps = sorted(expected - set(loops))
        if gaps:
            ck.add(
                ("themes",),
                f"loops must run 1..{max(loops)} without gaps; missing {', '.join(map(str, gaps))}",
            )
            ok = False
    if not themes:
        ck.add(("themes",), "at least one [[themes]] entry is required")
        ok = False
    return sorted(built, key=lambda t: t.loop) if ok else None


def _check_document(ck: _Checker, doc: dict[str, object]) -> ReviewConfig | None:
    for key, value in doc.items():
        kind = _TOP_KEYS.get(key)
        if kind is None:
            ck.add((key,), f"unknown top-level key; expected {', '.join(_TOP_KEYS)}")
        elif kind == "table" and not isinstance(value, dict):
            ck.add((key,), f"must be a table ([{key}]), got {_toml_type(value)}")
        elif kind == "array" and not (isinstance(value, list) and value):
            ck.add((key,), f"must be one or more [[{key}]] tables")
    out: dict[str, object] = {}
    run = doc.get("run")
    if run is None:
        ck.add(("run",), 'missing [run] table (needs at least `constitution = "..."`)')
    elif isinstance(run, dict):
        _check_run(ck, run, out)
    snap = doc.get("snapshot", {})
    if isinstance(snap, dict):
        _check_snapshot(ck, snap, out)
    roles_raw = doc.get("roles")
    roles = None
    if roles_raw is None:
        ck.add(("roles",), "missing [[roles]] tables")
    elif isinstance(roles_raw, list) and roles_raw:
        roles = _check_roles(ck, roles_raw)
    themes_raw = doc.get("themes")
    themes = None
    # Theme lead roles are checked against every declared prefix, even when another
    # role entry is broken, so one mistake does not hide the next.
    prefixes = (
        {r["prefix"] for r in roles_raw if isinstance(r, dict) and isinstance(r.get("prefix"), str)}
        if isinstance(roles_raw, list)
        else None
    )
    noise = doc.get("noise", {})
    if isinstance(noise, dict):
        _check_noise(ck, noise, out, prefixes)
    prices = doc.get("prices", {})
    if isinstance(prices, dict):
        _check_prices(ck, prices, out)
    if themes_raw is None:
        ck.add(("themes",), "missing [[themes]] tables")
    elif isinstance(themes_raw, list) and themes_raw:
        themes = _check_themes(ck, themes_raw, prefixes)
    if ck.problems or roles is None or themes is None:
        return None
    settings = {k: v for k, v in out.items() if k != "constitution_path"}
    return ReviewConfig(
        roles=tuple(roles),
        themes=tuple(themes),
        constitution_path=Path(str(out["constitution_path"])),
        **settings,  # type: ignore[arg-type]
    )


def check_config_text(
    text: str, source: str = "<config>"
) -> tuple[ReviewConfig | None, list[ConfigProblem]]:
    """Parse and validate a configuration document; return it and every problem found."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        line = int(m.group(1)) if m else None
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        if m:
            message += f" (column {m.group(2)})"
        return None, [ConfigProblem(source, line, f"TOML syntax error: {message}")]
    ck = _Checker(source, text)
    config = _check_document(ck, doc)
    ck.problems.sort(key=lambda p: p.line if p.line is not None else 0)
    return config, ck.problems


def parse_config(text: str, source: str = "<config>") -> ReviewConfig:
    """Parse a configuration document; raise ConfigError listing every problem."""
    config, problems = check_config_text(text, source)
    if problems or config is None:
        raise ConfigError(problems or [ConfigProblem(source, None, "invalid configuration")])
    return config


def load_config(path: Path | None = None) -> ReviewConfig:
    """Load a configuration file (the packaged default when `path` is None)."""
    path = path if path is not None else default_config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            [ConfigProblem(str(path), None, f"cannot read config file: {exc}")]
        ) from exc
    return parse_config(text, str(path))
