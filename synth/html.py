"""A self-contained HTML report of a run (`report.html`).

One file with inline CSS and JavaScript and no network assets (a Content Security
Policy forbids any fetch), so it can be attached to a ticket or opened offline.
Order of the page: summary counts, open escalation candidates, the findings table
(sortable and filterable by severity, role, file, loop and status, with evidence
and proposed changes as code blocks), the closure ledger, reviewers without output.

Filters and sort order live in the URL fragment (`#severity=High&sort=file`), so a
filtered view can be shared as a link and the page opens already filtered.
Output is deterministic: the same run renders byte-identical HTML.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from orchestrator.config import ReviewConfig
from synth.ledger import ClosureLedger
from synth.noise import NOISE_REASONS
from synth.render import Add, location
from synth.schema import SEVERITIES, SEVERITY_RANK, Finding

FILTERS: tuple[str, ...] = ("severity", "role", "file", "loop", "status")
"""Filter controls: `<select id="filter-<name>">`, matched against `data-<name>` of a row."""

SORT_KEYS: tuple[str, ...] = ("order", "id", "severity", "loop", "role", "file", "status")


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def default_order(findings: Sequence[Finding]) -> list[Finding]:
    """Escalation candidates first, then by severity, loop and id."""
    return sorted(
        findings,
        key=lambda f: (
            0 if f.requires_section9_escalation else 1,
            SEVERITY_RANK[f.severity],
            f.loop,
            f.id,
        ),
    )


_CSS = """
:root { --fg: #1d2330; --muted: #5b6474; --line: #d8dce3; --bg: #ffffff; --soft: #f4f6f9; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg);
  background: var(--bg); margin: 0 auto; padding: 1.5rem; max-width: 1400px; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; }
h2 { font-size: 1.15rem; margin: 2rem 0 .6rem; border-bottom: 1px solid var(--line); }
code, pre { font: 12.5px/1.4 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }
pre { background: var(--soft); border: 1px solid var(--line); border-radius: 4px;
  padding: .5rem .65rem; overflow-x: auto; white-space: pre-wrap; margin: .35rem 0; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid var(--line); padding: .4rem .5rem; text-align: left;
  vertical-align: top; }
th { background: var(--soft); }
td.num, th.num { text-align: right; }
#findings td:last-child { width: 45%; }
.muted { color: var(--muted); }
.cards { display: flex; flex-wrap: wrap; gap: .6rem; margin: .8rem 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: .5rem .8rem; min-width: 8rem; }
.card b { display: block; font-size: 1.4rem; }
.sev { display: inline-block; padding: 0 .45rem; border-radius: 3px; font-weight: 600;
  font-size: 12px; color: #fff; }
.sev-Critical { background: #8b0000; } .sev-High { background: #c0392b; }
.sev-Medium { background: #b9770e; } .sev-Low { background: #2e7d6b; }
.sev-Note { background: #5b6474; }
.flag { display: inline-block; margin-left: .3rem; padding: 0 .35rem; border-radius: 3px;
  font-size: 11px; border: 1px solid #8b0000; color: #8b0000; }
tr.finding[data-status="closed"] { opacity: .65; }
.controls { display: flex; flex-wrap: wrap; gap: .75rem; align-items: end;
  background: var(--soft); padding: .6rem .8rem; border-radius: 6px; margin-bottom: .6rem; }
.controls label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); }
.controls select, .controls input { font: inherit; padding: .2rem .3rem; min-width: 9rem; }
th button { font: inherit; font-weight: 600; background: none; border: 0; cursor: pointer;
  padding: 0; color: inherit; }
th button[aria-sort="ascending"]::after { content: " \\25B2"; }
th button[aria-sort="descending"]::after { content: " \\25BC"; }
details summary { cursor: pointer; color: var(--muted); }
"""

_JS = r"""
"use strict";
const Report = (() => {
  const FILTERS = ["severity", "role", "file", "loop", "status"];
  const NUMERIC = { order: true, severity: true, loop: true };
  function matches(d, f) {
    for (const k of FILTERS) {
      if (f[k] && d[k] !== f[k]) return false;
    }
    if (f.escalation && d.escalation !== "true") return false;
    if (f.text && !d.text.includes(f.text.toLowerCase())) return false;
    return true;
  }
  function sortValue(d, key) {
    if (key === "severity") return Number(d.rank);
    if (NUMERIC[key]) return Number(d[key]);
    if (key === "file") return d.file + "\u0000" + String(d.line).padStart(9, "0");
    return String(d[key]);
  }
  function compare(a, b, key, dir) {
    const x = sortValue(a, key), y = sortValue(b, key);
    let c = x < y ? -1 : x > y ? 1 : 0;
    if (dir === "desc") c = -c;
    return c || Number(a.order) - Number(b.order);
  }
  function parseHash(hash) {
    const state = {};
    const text = (hash || "").replace(/^#/, "");
    if (!text) return state;
    for (const part of text.split("&")) {
      const i = part.indexOf("=");
      if (i < 1) continue;
      state[decodeURIComponent(part.slice(0, i))] = decodeURIComponent(part.slice(i + 1));
    }
    return state;
  }
  function formatHash(state) {
    return Object.keys(state).filter((k) => state[k]).sort()
      .map((k) => encodeURIComponent(k) + "=" + encodeURIComponent(state[k])).join("&");
  }
  return { FILTERS, matches, compare, parseHash, formatHash };
})();

function rowData(row) {
  const d = Object.assign({}, row.dataset);
  d.text = row.textContent.toLowerCase();
  return d;
}

function readControls() {
  const f = {};
  for (const k of Report.FILTERS) f[k] = document.getElementById("filter-" + k).value;
  f.text = document.getElementById("filter-text").value;
  f.escalation = document.getElementById("filter-escalation").checked ? "1" : "";
  return f;
}

function writeControls(state) {
  for (const k of Report.FILTERS) {
    const el = document.getElementById("filter-" + k);
    if (state[k] !== undefined && [...el.options].some((o) => o.value === state[k])) {
      el.value = state[k];
    }
  }
  if (state.text !== undefined) document.getElementById("filter-text").value = state.text;
  document.getElementById("filter-escalation").checked = state.escalation === "1";
}

let sortKey = "order", sortDir = "asc";

function apply() {
  const body = document.getElementById("findings-body");
  const rows = [...body.querySelectorAll("tr.finding")];
  const f = readControls();
  let shown = 0;
  for (const row of rows) {
    const ok = Report.matches(rowData(row), f);
    row.hidden = !ok;
    if (ok) shown++;
  }
  rows.sort((a, b) => Report.compare(a.dataset, b.dataset, sortKey, sortDir));
  for (const row of rows) body.appendChild(row);
  document.getElementById("shown-count").textContent = String(shown);
  for (const btn of document.querySelectorAll("th button[data-sort]")) {
    const on = btn.dataset.sort === sortKey;
    btn.setAttribute("aria-sort", on ? (sortDir === "asc" ? "ascending" : "descending") : "none");
  }
  const state = Object.assign({}, f, { sort: sortKey === "order" ? "" : sortKey,
    dir: sortDir === "asc" ? "" : sortDir });
  const hash = Report.formatHash(state);
  if (hash !== location.hash.replace(/^#/, "")) {
    history.replaceState(null, "", hash ? "#" + hash : location.pathname + location.search);
  }
  document.body.dataset.ready = "true";
}

function init() {
  const state = Report.parseHash(location.hash);
  writeControls(state);
  if (state.sort) sortKey = state.sort;
  if (state.dir === "desc") sortDir = "desc";
  for (const k of Report.FILTERS) {
    document.getElementById("filter-" + k).addEventListener("change", apply);
  }
  document.getElementById("filter-text").addEventListener("input", apply);
  document.getElementById("filter-escalation").addEventListener("change", apply);
  document.getElementById("filter-reset").addEventListener("click", () => {
    writeControls({ severity: "", role: "", file: "", loop: "", status: "", text: "" });
    sortKey = "order"; sortDir = "asc";
    apply();
  });
  for (const btn of document.querySelectorAll("th button[data-sort]")) {
    btn.addEventListener("click", () => {
      if (sortKey === btn.dataset.sort) sortDir = sortDir === "asc" ? "desc" : "asc";
      else { sortKey = btn.dataset.sort; sortDir = "asc"; }
      apply();
    });
  }
  apply();
}

if (typeof document !== "undefined") {
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
}
if (typeof module !== "undefined") module.exports = Report;
"""

_CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"


def _select(name: str, label: str, options: Sequence[tuple[str, str]]) -> str:
    opts = "".join(f'<option value="{esc(v)}">{esc(t)}</option>' for v, t in options)
    return (
        f'<label for="filter-{name}">{esc(label)}'
        f'<select id="filter-{name}" data-filter="{name}"><option value="">all</option>{opts}'
        "</select></label>"
    )


def _summary(
    add: Add,
    loops: Sequence[dict[str, Any]],
    findings: Sequence[Finding],
    closed: dict[str, Any],
) -> None:
    open_n = sum(1 for f in findings if f.id not in closed)
    esc_open = sum(1 for f in findings if f.requires_section9_escalation and f.id not in closed)
    totals = {k: sum(r["counts"][k] for r in loops) for k in ("raw", "invalid", "kept")}
    dropped = sum(sum(r["counts"]["dropped"].values()) for r in loops)
    add('<section id="summary"><h2>Summary</h2><div class="cards">')
    for key, label, value in (
        ("kept", "kept findings", len(findings)),
        ("open", "open", open_n),
        ("closed", "closed by a later finding", len(findings) - open_n),
        ("escalations", "open escalation candidates", esc_open),
        ("raw", "raw items", totals["raw"]),
        ("invalid", "invalid", totals["invalid"]),
        ("dropped", "dropped", dropped),
    ):
        add(f'<div class="card" data-count="{key}"><b>{value}</b>{esc(label)}</div>')
    add("</div>")
    add('<div class="cards">')
    for sev in SEVERITIES:
        n = sum(1 for f in findings if f.severity == sev)
        add(
            f'<div class="card" data-count="severity-{sev}"><b>{n}</b>'
            f'<span class="sev sev-{sev}">{sev}</span></div>'
        )
    add("</div>")
    sev_heads = "".join(f'<th class="num">{s}</th>' for s in SEVERITIES)
    add(
        '<table id="loops"><thead><tr><th class="num">loop</th><th>theme</th>'
        '<th class="num">raw</th><th class="num">invalid</th><th class="num">role-isolation</th>'
        '<th class="num">duplicate</th><th class="num">noise</th><th class="num">kept</th>'
        f'{sev_heads}<th class="num">escalations</th><th class="num">reviewers failed</th>'
        "</tr></thead><tbody>"
    )
    for r in loops:
        c = r["counts"]
        noise = sum(c["dropped"].get(k, 0) for k in NOISE_REASONS)
        sevs = "".join(f'<td class="num">{c["severity"][s]}</td>' for s in SEVERITIES)
        add(
            f'<tr data-loop="{r["loop"]}"><td class="num">{r["loop"]}</td>'
            f"<td>{esc(r['title'])} <code>{esc(r['theme'])}</code></td>"
            f'<td class="num">{c["raw"]}</td><td class="num">{c["invalid"]}</td>'
            f'<td class="num">{c["dropped"].get("role-isolation", 0)}</td>'
            f'<td class="num">{c["dropped"].get("duplicate", 0)}</td>'
            f'<td class="num">{noise}</td><td class="num">{c["kept"]}</td>{sevs}'
            f'<td class="num">{c["escalation_candidates"]}</td>'
            f'<td class="num">{c["reviewers_failed"] + c["extraction_failures"]}</td></tr>'
        )
    add("</tbody></table></section>")


def _escalations(add: Add, findings: Sequence[Finding], closed: dict[str, Any]) -> None:
    esc_open = [
        f for f in default_order(findings) if f.requires_section9_escalation and f.id not in closed
    ]
    add('<section id="escalations"><h2>Escalation candidates (open)</h2>')
    if not esc_open:
        add("<p>None.</p>")
    else:
        add("<ul>")
        for f in esc_open:
            locked = (
                ' <span class="flag">conflicts with a locked decision</span>'
                if f.conflicts_with_locked_decision
                else ""
            )
            claim = esc(" ".join(f.claim.split()))
            add(
                f'<li data-id="{esc(f.id)}"><a href="#finding-{esc(f.id)}"><code>{esc(f.id)}</code>'
                f'</a> <span class="sev sev-{f.severity}">{f.severity}</span>{locked} '
                f"loop {f.loop} · <code>{esc(location(f))}</code>: {claim}</li>"
            )
        add("</ul>")
    add("</section>")


def _findings(
    add: Add,
    findings: Sequence[Finding],
    closed: dict[str, list[str]],
    config: ReviewConfig | None,
) -> None:
    ordered = default_order(findings)
    role_order = config.role_order if config is not None else {}
    roles = sorted({f.role for f in findings}, key=lambda r: (role_order.get(r, 99), r))
    files = sorted({f.file_path for f in findings})
    loop_nums = sorted({f.loop for f in findings})
    add('<section id="findings-section"><h2>Findings</h2>')
    add('<form class="controls" id="controls" onsubmit="return false">')
    add(_select("severity", "severity", [(s, s) for s in SEVERITIES]))
    add(_select("role", "role", [(r, r) for r in roles]))
    add(_select("file", "file", [(p, p) for p in files]))
    add(_select("loop", "loop", [(str(n), f"loop {n}") for n in loop_nums]))
    add(_select("status", "status", [("open", "open"), ("closed", "closed")]))
    add(
        '<label for="filter-text">text<input id="filter-text" type="search" '
        'placeholder="claim, id, evidence"></label>'
    )
    add(
        '<label for="filter-escalation">escalation only'
        '<input id="filter-escalation" type="checkbox"></label>'
    )
    add('<button type="button" id="filter-reset">reset</button>')
    add(
        f'<span class="muted"><span id="shown-count">{len(findings)}</span> of '
        f'<span id="total-count">{len(findings)}</span> findings shown</span>'
    )
    add("</form>")
    heads = [
        ("id", "id"),
        ("severity", "severity"),
        ("loop", "loop"),
        ("role", "role"),
        ("file", "location"),
        ("status", "status"),
    ]
    cells = "".join(
        f'<th><button type="button" data-sort="{k}" aria-sort="none">{t}</button></th>'
        for k, t in heads
    )
    add(f'<table id="findings"><thead><tr>{cells}<th>finding</th></tr></thead>')
    add('<tbody id="findings-body">')
    for n, f in enumerate(ordered):
        closers = closed.get(f.id, [])
        status = "closed" if closers else "open"
        attrs = {
            "id": f"finding-{f.id}",
            "class": "finding",
            "data-id": f.id,
            "data-order": str(n),
            "data-severity": f.severity,
            "data-rank": str(SEVERITY_RANK[f.severity]),
            "data-loop": str(f.loop),
            "data-role": f.role,
            "data-theme": f.theme,
            "data-file": f.file_path,
            "data-line": str(f.line_range[0]),
            "data-status": status,
            "data-escalation": "true" if f.requires_section9_escalation else "false",
        }
        attr_text = " ".join(f'{k}="{esc(v)}"' for k, v in attrs.items())
        flags = ""
        if f.requires_section9_escalation:
            flags += '<span class="flag">escalation</span>'
        if f.conflicts_with_locked_decision:
            flags += '<span class="flag">locked decision</span>'
        status_cell = (
            "closed by " + ", ".join(f"<code>{esc(c)}</code>" for c in closers)
            if closers
            else "open"
        )
        body = [
            f'<p class="claim"><b>{esc(" ".join(f.claim.split()))}</b>{flags}</p>',
            f'<p class="risk"><span class="muted">Risk:</span> {esc(" ".join(f.risk.split()))}</p>',
            '<div class="muted">Evidence</div>',
            f'<pre class="evidence"><code>{esc(f.evidence_quote)}</code></pre>',
        ]
        if f.proposed_change.strip():
            body += [
                '<div class="muted">Proposed change</div>',
                f'<pre class="proposed-change"><code>{esc(f.proposed_change)}</code></pre>',
            ]
        extra = []
        if f.closes:
            extra.append(f"<li>closes <code>{esc(f.closes)}</code></li>")
        extra += [f'<li class="reference">{esc(r)}</li>' for r in f.references]
        extra.append(f"<li>theme <code>{esc(f.theme)}</code></li>")
        extra.append(f"<li>constitution <code>{esc(f.constitution_hash)}</code></li>")
        body.append(f"<details><summary>details</summary><ul>{''.join(extra)}</ul></details>")
        add(
            f"<tr {attr_text}><td><code>{esc(f.id)}</code></td>"
            f'<td><span class="sev sev-{f.severity}">{f.severity}</span></td>'
            f'<td class="num">{f.loop}</td><td>{esc(f.role)}</td>'
            f"<td><code>{esc(location(f))}</code></td><td>{status_cell}</td>"
            f"<td>{''.join(body)}</td></tr>"
        )
    add("</tbody></table></section>")


def _ledger(add: Add, ledger: ClosureLedger) -> None:
    entries = sorted(ledger.entries, key=lambda e: (e.loop, e.closer, e.closed))
    add('<section id="ledger"><h2>Closure ledger</h2>')
    if not entries:
        add("<p>No closures recorded.</p></section>")
        return
    add(
        '<table id="closure-ledger"><thead><tr><th class="num">loop</th><th>closer</th>'
        "<th>closes</th><th>status</th><th>closed finding</th></tr></thead><tbody>"
    )
    for e in entries:
        target = f'<a href="#finding-{esc(e.target)}"><code>{esc(e.target)}</code></a>'
        add(
            f'<tr class="closure" data-closer="{esc(e.closer)}" data-closed="{esc(e.closed)}" '
            f'data-status="{esc(e.status)}"><td class="num">{e.loop}</td>'
            f"<td><code>{esc(e.closer)}</code></td><td><code>{esc(e.closed)}</code></td>"
            f"<td>{esc(e.status)}</td><td>{target if e.target else '-'}</td></tr>"
        )
    add("</tbody></table></section>")


def _failures(add: Add, failures: Sequence[dict[str, Any]]) -> None:
    add('<section id="failures"><h2>Reviewers without usable output</h2>')
    if not failures:
        add("<p>None.</p></section>")
        return
    add(
        '<table id="failed-reviewers"><thead><tr><th class="num">loop</th><th>role</th>'
        '<th>state</th><th class="num">attempts</th><th>reason</th></tr></thead><tbody>'
    )
    for fl in failures:
        reason = fl.get("error") or fl.get("extraction_error") or "not recorded"
        add(
            f'<tr><td class="num">{fl["loop"]}</td><td>{esc(fl["role"])}</td>'
            f"<td>{esc(fl.get('state', fl.get('status')))}</td>"
            f'<td class="num">{fl.get("attempts", 0)}</td><td>{esc(reason)}</td></tr>'
        )
    add("</tbody></table></section>")


def render_html(
    *,
    loops: Sequence[dict[str, Any]],
    findings: Sequence[Finding],
    ledger: ClosureLedger,
    constitution_hash: str,
    failures: Sequence[dict[str, Any]] = (),
    config: ReviewConfig | None = None,
) -> str:
    """The report page for a run's loop records, kept findings, ledger and failures."""
    closed = {t: sorted({e.closer for e in es}) for t, es in ledger.closed_targets().items()}
    out: list[str] = []
    add = out.append
    add("<!DOCTYPE html>")
    add('<html lang="en"><head><meta charset="utf-8">')
    add(f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">')
    add('<meta name="viewport" content="width=device-width, initial-scale=1">')
    add("<title>Review report</title>")
    add(f"<style>{_CSS}</style></head>")
    add(f'<body data-constitution-hash="{esc(constitution_hash)}">')
    add("<header><h1>Review report</h1>")
    loops_text = ", ".join(str(r["loop"]) for r in loops) or "none"
    add(
        f'<p class="muted">Constitution hash <code id="constitution-hash">'
        f"{esc(constitution_hash)}</code> · loops written: {esc(loops_text)}</p>"
    )
    stale = sorted(f.id for f in findings if f.constitution_hash != constitution_hash)
    if stale:
        add(
            f'<p class="warning"><b>Warning:</b> {len(stale)} finding(s) carry another '
            f"constitution hash: {esc(', '.join(stale))}</p>"
        )
    add("</header><main>")
    _summary(add, loops, findings, closed)
    _escalations(add, findings, closed)
    _findings(add, findings, closed, config)
    _ledger(add, ledger)
    _failures(add, failures)
    add("</main>")
    add(f"<script>{_JS}</script>")
    add("</body></html>")
    return "\n".join(out) + "\n"
