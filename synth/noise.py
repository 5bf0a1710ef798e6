"""Noise controls: which judged findings a run keeps, and what reviewers are told about it.

Applied to a loop after dedupe and ranking, in this order, each dropping with its
own reason: path include/exclude (`path-excluded`), minimum severity
(`below-min-severity`), the per-role cap and then the per-loop cap, both keeping
the best-ranked findings (`over-role-cap`, `over-loop-cap`). Working on ranked
survivors means a cap counts distinct findings, never their merged duplicates.

A dropped finding is reported (findings.dropped.jsonl) but, like a role-isolated
one, neither closes an earlier finding nor can be closed later; duplicates merged
into it are dropped with it, under its reason. One exception keeps the closure
ledger right: a group that closes an earlier finding is never dropped for its
severity (a "fixed now" Note must not leave a High open). Caps are hard limits
and have no exception.

`role_instructions` is the prompt side: the per-path instructions that concern a
role, and the limits above, so reviewers do not spend output on discarded findings.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache

from orchestrator.config import NoiseControls, ReviewConfig, Role, match_glob
from synth.schema import SEVERITIES, SEVERITY_RANK, Finding

PATH_EXCLUDED = "path-excluded"
BELOW_MIN_SEVERITY = "below-min-severity"
OVER_ROLE_CAP = "over-role-cap"
OVER_LOOP_CAP = "over-loop-cap"
NOISE_REASONS: tuple[str, ...] = (PATH_EXCLUDED, BELOW_MIN_SEVERITY, OVER_ROLE_CAP, OVER_LOOP_CAP)

DUPLICATE_PREFIX = "duplicate-of:"


def path_kept(noise: NoiseControls, path: str) -> bool:
    """True if `path` matches an include glob and no exclude glob."""
    return any(match_glob(g, path) for g in noise.include) and not any(
        match_glob(g, path) for g in noise.exclude
    )


def apply_noise(
    ranked: Sequence[Finding],
    duplicates: Sequence[tuple[Finding, str]],
    noise: NoiseControls,
) -> tuple[list[Finding], list[tuple[Finding, str]], list[tuple[Finding, str]]]:
    """Filter ranked survivors; return (kept, dropped by noise, remaining duplicates).

    `ranked` must be in rank order (best first) and `duplicates` hold
    (merged finding, "duplicate-of:<survivor id>"). Duplicates of a dropped survivor
    move to the dropped list with the survivor's reason, right after it.
    """
    if noise == NoiseControls():  # the default keeps everything
        return list(ranked), [], list(duplicates)
    path_ok: dict[str, bool] = {}  # many findings share a file
    members: dict[str, list[Finding]] = {}
    for d, reason in duplicates:
        members.setdefault(reason.removeprefix(DUPLICATE_PREFIX), []).append(d)
    min_rank = SEVERITY_RANK[noise.min_severity]
    per_role: dict[str, int] = {}
    kept: list[Finding] = []
    reasons: list[tuple[Finding, str]] = []
    for f in ranked:
        group = [f, *members.get(f.id, ())]
        ok = path_ok.get(f.file_path)
        if ok is None:
            ok = path_ok[f.file_path] = path_kept(noise, f.file_path)
        if not ok:
            reasons.append((f, PATH_EXCLUDED))
        elif SEVERITY_RANK[f.severity] > min_rank and not any(m.closes for m in group):
            reasons.append((f, BELOW_MIN_SEVERITY))
        elif noise.max_findings_per_role and per_role.get(f.role, 0) >= noise.max_findings_per_role:
            reasons.append((f, OVER_ROLE_CAP))
        else:
            per_role[f.role] = per_role.get(f.role, 0) + 1
            kept.append(f)
    if noise.max_findings_per_loop and len(kept) > noise.max_findings_per_loop:
        reasons.extend((f, OVER_LOOP_CAP) for f in kept[noise.max_findings_per_loop :])
        kept = kept[: noise.max_findings_per_loop]
    dropped: list[tuple[Finding, str]] = []
    gone: set[str] = set()
    for f, reason in reasons:
        dropped.append((f, reason))
        gone.add(f.id)
        dropped.extend((d, reason) for d in sorted(members.get(f.id, ()), key=lambda d: d.id))
    remaining = [(d, r) for d, r in duplicates if r.removeprefix(DUPLICATE_PREFIX) not in gone]
    return kept, dropped, remaining


# --- glob overlap -------------------------------------------------------------------
# Whether some path matches both of two globs decides if a per-path instruction
# concerns a role's scope. The glob dialect is `orchestrator.config.match_glob`'s:
# `**/` (any leading directories, or none), `**` (anything), `*` and `?` (within a
# segment), `{a,b}` (literal alternatives). Each glob becomes a small NFA over three
# kinds of label (one character, any character but '/', any character); two globs
# overlap iff the product automaton reaches a pair of accepting states. A label pair
# can always be satisfied when both admit some common character, and steps are
# independent, so the product search is exact.

_ANY = "ANY"
_NON_SLASH = "NS"
Label = tuple[str, str]  # ("c", char) | (_NON_SLASH, "") | (_ANY, "")
State = tuple[int, int]  # (token index, sub-state: 1 inside the `.*` of `**/`)


def _expand(pattern: str) -> list[list[tuple[str, str]]]:
    """Token lists for every brace alternative; brace contents are literal text."""
    seqs: list[list[tuple[str, str]]] = [[]]
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            tok: list[list[tuple[str, str]]] = [[("**/", "")]]
            i += 3
        elif pattern.startswith("**", i):
            tok = [[("**", "")]]
            i += 2
        elif pattern[i] in "*?":
            tok = [[(pattern[i], "")]]
            i += 1
        elif pattern[i] == "{" and pattern.find("}", i) != -1:
            end = pattern.find("}", i)
            tok = [[("c", ch) for ch in alt] for alt in pattern[i + 1 : end].split(",")]
            i = end + 1
        else:
            tok = [[("c", pattern[i])]]
            i += 1
        seqs = [s + t for s in seqs for t in tok]
    return seqs


def _eps(tokens: list[tuple[str, str]], states: Iterable[State]) -> frozenset[State]:
    out: set[State] = set()
    todo = list(states)
    while todo:
        st = todo.pop()
        if st in out:
            continue
        out.add(st)
        i, sub = st
        if sub == 0 and i < len(tokens) and tokens[i][0] in ("*", "**", "**/"):
            todo.append((i + 1, 0))
    return frozenset(out)


def _moves(tokens: list[tuple[str, str]], st: State) -> list[tuple[Label, State]]:
    i = st[0]  # both sub-states move alike; only sub-state 0 may skip the token
    if i >= len(tokens):
        return []
    kind, ch = tokens[i]
    if kind == "c":
        return [(("c", ch), (i + 1, 0))]
    if kind == "?":
        return [((_NON_SLASH, ""), (i + 1, 0))]
    if kind == "*":
        return [((_NON_SLASH, ""), (i, 0))]
    if kind == "**":
        return [((_ANY, ""), (i, 0))]
    # `**/`: `(?:.*/)?` - sub-state 1 is inside the `.*`, a '/' may end it.
    return [((_ANY, ""), (i, 1)), (("c", "/"), (i + 1, 0))]


def _meet(a: Label, b: Label) -> bool:
    if a[0] == "c" and b[0] == "c":
        return a[1] == b[1]
    if a[0] == "c":
        return b[0] == _ANY or a[1] != "/"
    if b[0] == "c":
        return a[0] == _ANY or b[1] != "/"
    return True


def _seq_overlap(a: list[tuple[str, str]], b: list[tuple[str, str]]) -> bool:
    start = (_eps(a, [(0, 0)]), _eps(b, [(0, 0)]))
    seen = {start}
    todo = [start]
    while todo:
        sa, sb = todo.pop()
        if (len(a), 0) in sa and (len(b), 0) in sb:
            return True
        ma = [m for st in sa for m in _moves(a, st)]
        mb = [m for st in sb for m in _moves(b, st)]
        # Group successor sets by the label pairs that can meet.
        nxt: dict[tuple[Label, Label], tuple[set[State], set[State]]] = {}
        for la, ta in ma:
            for lb, tb in mb:
                if _meet(la, lb):
                    pa, pb = nxt.setdefault((la, lb), (set(), set()))
                    pa.add(ta)
                    pb.add(tb)
        for pa, pb in nxt.values():
            pair = (_eps(a, pa), _eps(b, pb))
            if pair not in seen:
                seen.add(pair)
                todo.append(pair)
    return False


@lru_cache(maxsize=4096)
def globs_overlap(a: str, b: str) -> bool:
    """True if at least one path matches both globs `a` and `b`."""
    return any(_seq_overlap(x, y) for x in _expand(a) for y in _expand(b))


# --- the prompt side -----------------------------------------------------------------


def instructions_concern(
    entry_paths: Sequence[str], entry_roles: Sequence[str], role: Role
) -> bool:
    """True if a per-path instruction applies to `role`: named (or none named) and reachable."""
    if entry_roles and role.prefix not in entry_roles:
        return False
    if role.exempt_from_scope:
        return True
    return any(globs_overlap(p, s) for p in entry_paths for s in role.scope)


def _globs(globs: Sequence[str]) -> str:
    return ", ".join(f"`{g}`" for g in globs)


def role_instructions(config: ReviewConfig, role: Role) -> str:
    """Extra directive text for `role` from the config's noise controls ("" if none).

    Pure and deterministic (config order), so it can sit in a cached prompt block;
    it is appended to the role's directive by `workers.prompts.task_text`.
    """
    noise = config.noise
    lines: list[str] = []
    entries = [e for e in noise.path_instructions if instructions_concern(e.paths, e.roles, role)]
    if entries:
        lines += ["## Instructions for specific paths", ""]
        for e in entries:
            text = e.instruction.strip().replace("\n", "\n  ")
            lines.append(f"- For paths matching {_globs(e.paths)}: {text}")
        lines.append("")
    limits: list[str] = []
    if noise.min_severity != SEVERITIES[-1]:
        allowed = ", ".join(SEVERITIES[: SEVERITY_RANK[noise.min_severity] + 1])
        limits.append(
            f"- Only findings of severity {allowed} are kept; less severe ones are discarded "
            "unless they close an earlier finding."
        )
    if tuple(noise.include) != ("**",):
        limits.append(f"- Only findings on paths matching {_globs(noise.include)} are kept.")
    if noise.exclude:
        limits.append(f"- Findings on paths matching {_globs(noise.exclude)} are discarded.")
    caps = []
    if noise.max_findings_per_role:
        caps.append(f"{noise.max_findings_per_role} per role")
    if noise.max_findings_per_loop:
        caps.append(f"{noise.max_findings_per_loop} per loop")
    if caps:
        limits.append(
            f"- At most {' and '.join(caps)} are kept, most severe first: lead with your "
            "most important findings."
        )
    if limits:
        lines += ["## What this run keeps", "", *limits, ""]
    return "\n".join(lines).rstrip("\n")
