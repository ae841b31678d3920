"""The status page the supervisor serves next to /metrics: one server-rendered HTML page, no external assets.

`render(model)` is pure: the supervisor gathers the model (`Supervisor.page_model`), this module turns
it into HTML. Everything in the model that a person or Litestream wrote (database names, error texts,
alert summaries, the host name) is escaped; nothing from the environment is ever put in the model.
"""

from __future__ import annotations

import dataclasses
import html
import math
import sqlite3
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from edgehost.engine.litestream import epoch
from edgehost.errors import EdgehostError

PER_PAGE = 100
DRILLS_CHARTED = 20
DRILL_CACHE_SECONDS = 30.0
REFRESH_SECONDS = 15


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


# --- numbers as people read them -------------------------------------------------------------------


def span(seconds: float | None) -> str:
    """A duration: "3 s", "4 min 12 s", "2 h 5 min", "3 d 4 h" ("—" when unknown)."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "—"
    seconds = max(0.0, float(seconds))
    if seconds < 10:
        return f"{seconds:.1f} s".replace(".0 s", " s")
    s = int(round(seconds))
    for size, unit, small, small_unit in ((86400, "d", 3600, "h"), (3600, "h", 60, "min"), (60, "min", 1, "s")):
        if s >= size:
            rest = (s % size) // small
            return f"{s // size} {unit}" + (f" {rest} {small_unit}" if rest else "")
    return f"{s} s"


def tick(seconds: float) -> str:
    """A short axis label: "8.4 s", "97 s", "4.5 min", "2.0 h"."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def ago(when: float | None, now: float) -> str:
    """"3 s ago" from an epoch time; "—" when unknown."""
    if when is None:
        return "—"
    delta = now - when
    if delta < 0:
        return f"in {span(-delta)}"
    return f"{span(delta if delta >= 10 else float(int(delta)))} ago"


def size(n: int | float | None) -> str:
    if n is None:
        return "—"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def short_txid(txid: int | None) -> str:
    """A txid without its leading zeros, as `edgehost status` prints it (the title holds all 16 digits)."""
    return "—" if txid is None else (f"{txid:x}" or "0")


def _utc(ts: float | None, fmt: str = "%Y-%m-%d %H:%M:%S UTC") -> str:
    return "—" if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime(fmt)


# --- databases: worst first, one page at a time ----------------------------------------------------


def _badness(db: dict[str, Any]) -> tuple:
    """Errors first, then databases litestream does not replicate, then the largest lag."""
    lag = db.get("lag_seconds") or 0.0
    return (0 if db.get("error") or db.get("state") == "error" else 1,
            0 if db.get("state") not in ("replicating", "error") else 1, -lag, str(db.get("name", "")))


def db_summary(dbs: list[dict[str, Any]], lag_alert: float) -> dict[str, Any]:
    """Counts by state, how many are behind the alert threshold, and the worst lag (and whose)."""
    states: dict[str, int] = {}
    behind, worst, worst_name = 0, None, None
    for db in dbs:
        state = "error" if db.get("error") else str(db.get("state") or "?")
        states[state] = states.get(state, 0) + 1
        lag = db.get("lag_seconds")
        if lag is not None:
            if lag > lag_alert:
                behind += 1
            if worst is None or lag > worst:
                worst, worst_name = lag, db.get("name")
    return {"total": len(dbs), "states": dict(sorted(states.items(), key=lambda kv: (-kv[1], kv[0]))),
            "behind": behind, "worst_lag": worst, "worst_name": worst_name}


def paginate(items: list, page: int, per_page: int = PER_PAGE) -> tuple[list, int, int]:
    """The page's items, the page actually shown (clamped to 1..pages) and the number of pages."""
    pages = max(1, math.ceil(len(items) / per_page))
    page = min(max(1, page), pages)
    return items[(page - 1) * per_page: page * per_page], page, pages


# --- the charts --------------------------------------------------------------------------------------


def drill_chart(drills: list[dict[str, Any]], key: str, title: str, now: float) -> str:
    """One inline SVG: `key` (rpo_seconds or rto_seconds) of each drill over time, failed drills in red."""
    points = [(epoch(d.get("started_at")), d.get(key), d) for d in drills]
    points = [(t, float(v), d) for t, v, d in points if t is not None and isinstance(v, (int, float))]
    points.sort(key=lambda p: p[0])
    head = f'<figure class="chart"><figcaption>{_e(title)}</figcaption>'
    if not points:
        return head + f'<p class="empty">No drill with a {_e(title.split()[0])} yet.</p></figure>'
    w, h, left, right, top, bottom = 320, 140, 50, 10, 10, 26
    t0, t1 = points[0][0], points[-1][0]
    vmax = max(v for _, v, _ in points) or 1.0
    vmax *= 1.15

    def x(t: float) -> float:
        return left + (w - left - right) * ((t - t0) / (t1 - t0) if t1 > t0 else 0.5)

    def y(v: float) -> float:
        return top + (h - top - bottom) * (1 - v / vmax)

    parts = [f'<svg viewBox="0 0 {w} {h}" role="img" aria-label="{_e(title)}" preserveAspectRatio="xMidYMid meet">',
             f'<line class="axis" x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}"/>',
             f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}"/>',
             f'<text class="tick" x="{left - 4}" y="{top + 8}" text-anchor="end">{_e(tick(vmax / 1.15))}</text>',
             f'<line class="grid" x1="{left}" y1="{y(vmax / 1.15):.1f}" x2="{w - right}" y2="{y(vmax / 1.15):.1f}"/>',
             f'<text class="tick" x="{left - 4}" y="{h - bottom}" text-anchor="end">0</text>',
             f'<text class="tick" x="{left}" y="{h - 8}">{_e(_utc(t0, "%d %b"))}</text>']
    if t1 > t0:
        parts.append(f'<text class="tick" x="{w - right}" y="{h - 8}" text-anchor="end">{_e(_utc(t1, "%d %b"))}</text>')
    if len(points) > 1:
        line = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v, _ in points)
        parts.append(f'<polyline class="line" points="{line}"/>')
    for t, v, d in points:
        failed = d.get("status") not in ("pass", None)
        label = f"{_utc(t, '%Y-%m-%d %H:%M')} {d.get('scenario') or 'drill'}: {span(v)} ({d.get('status')})"
        parts.append(f'<circle class="{"bad" if failed else "dot"}" cx="{x(t):.1f}" cy="{y(v):.1f}" r="3.5">'
                     f'<title>{_e(label)}</title></circle>')
    parts.append("</svg>")
    latest = points[-1]
    return head + "".join(parts) + f'<p class="note">latest {_e(span(latest[1]))}, ' \
                                   f'{_e(ago(latest[0], now))}</p></figure>'


# --- the page ----------------------------------------------------------------------------------------

CSS = """
:root{color-scheme:light dark;--bg:#fff;--fg:#1b1f24;--mute:#5c6670;--line:#d8dde3;--card:#f6f8fa;
--ok:#1a7f37;--warn:#9a6700;--bad:#cf222e;--accent:#0969da}
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--fg:#e6edf3;--mute:#8d96a0;--line:#30363d;--card:#161b22;
--ok:#3fb950;--warn:#d29922;--bad:#f85149;--accent:#4493f8}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI",
Roboto,Helvetica,Arial,sans-serif}
main{max-width:1100px;margin:0 auto;padding:12px}
h1{font-size:1.3em;margin:.2em 0}h2{font-size:1.05em;margin:1.4em 0 .4em;border-bottom:1px solid var(--line);
padding-bottom:.2em}
.meta,.note,.empty,.summary{color:var(--mute);margin:.3em 0}
.summary{color:var(--fg)}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-weight:600;color:var(--mute);font-size:.9em}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}td.num{white-space:nowrap}
.charts+table{margin-top:10px}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.92em}
.name{overflow-wrap:anywhere}.err{color:var(--bad);overflow-wrap:anywhere;font-size:.9em}
.ok{color:var(--ok)}.warn{color:var(--warn)}.bad{color:var(--bad);font-weight:600}
.pill{display:inline-block;padding:0 6px;border-radius:9px;border:1px solid currentColor;font-size:.85em}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:12px}
figure.chart{margin:0;background:var(--card);border:1px solid var(--line);border-radius:6px;padding:8px}
figcaption{font-weight:600}
svg{width:100%;height:auto;display:block}
svg .axis{stroke:var(--mute);stroke-width:1}svg .grid{stroke:var(--line);stroke-dasharray:3 3}
svg .line{fill:none;stroke:var(--accent);stroke-width:2}svg .dot{fill:var(--accent)}svg .bad{fill:var(--bad)}
svg .tick{fill:var(--mute);font-size:10px}
nav.pages{margin:.6em 0;display:flex;gap:12px;flex-wrap:wrap;align-items:center}
nav.pages a{color:var(--accent)}
dl.cost{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:0}dl.cost dt{color:var(--mute)}
dl.cost dd{margin:0}
@media (max-width:700px){
 main{padding:8px}
 table.stack thead{display:none}
 table.stack,table.stack tbody,table.stack tr,table.stack td{display:block;width:100%}
 table.stack tr{border:1px solid var(--line);border-radius:6px;margin:0 0 8px;padding:4px 8px;background:var(--card)}
 table.stack td{border:0;padding:2px 0;display:flex;justify-content:space-between;gap:12px;text-align:right}
 table.stack td::before{content:attr(data-label);color:var(--mute);text-align:left;flex:none}
 table.stack td.name{font-weight:600;text-align:left}table.stack td.name::before{content:none}
 table.stack td.err{display:block;text-align:left}table.stack td.err::before{content:none}
 table.stack td:empty{display:none}
}
"""


def _state_class(state: str) -> str:
    return {"running": "ok", "replicating": "ok", "pass": "ok", "caught up": "ok", "recovery": "ok",
            "starting": "warn", "backoff": "warn", "held": "warn", "stopped": "warn", "not replicated": "warn",
            "warning": "warn", "info": "ok"}.get(state, "bad")


def _td(label: str, content: str, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f'<td data-label="{_e(label)}"{attr}>{content}</td>'


def _services(model: dict[str, Any]) -> str:
    services = model.get("services") or []
    if not services:
        return '<p class="empty">No service started yet.</p>'
    rows = []
    for s in services:
        state = str(s.get("state") or "?")
        reason = s.get("reason") or ""
        if not reason and s.get("last_exit") not in (None, 0) and state != "running":
            reason = f"last exit code {s.get('last_exit')}"
        rows.append("<tr>" + _td("service", _e(s.get("name")), "name")
                    + _td("state", f'<span class="{_state_class(state)}">{_e(state)}</span>')
                    + _td("restarts", _e(s.get("restarts", 0)), "num")
                    + _td("uptime", _e(span(s.get("uptime_seconds")) if state == "running" else "—"), "num")
                    + _td("pid", _e(s.get("pid") or "—"), "num")
                    + _td("why", _e(reason), "err" if reason else "") + "</tr>")
    return ('<table class="stack"><thead><tr><th>service</th><th>state</th><th class="num">restarts</th>'
            '<th class="num">uptime</th><th class="num">pid</th><th></th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table>")


def _db_rows(dbs: Iterable[dict[str, Any]], now: float, lag_alert: float) -> str:
    rows = []
    for d in dbs:
        error = d.get("error") or ""
        state = "error" if error else str(d.get("state") or "?")
        lag = d.get("lag_seconds")
        lag_cls = "bad" if lag is not None and lag > lag_alert else ("ok" if lag == 0 else "")
        local, repl = d.get("local_txid"), d.get("replicated_txid")
        txid_cls = "ok" if local is not None and local == repl else ""
        pitr = d.get("pitr_seconds")
        rows.append(
            "<tr>" + _td("database", _e(d.get("name")), "name")
            + _td("state", f'<span class="{_state_class(state)}">{_e(state)}</span>')
            + _td("local txid", f'<span class="mono" title="{_e(_hex(local))}">{_e(short_txid(local))}</span>', "num")
            + _td("replicated txid", f'<span class="mono {txid_cls}" title="{_e(_hex(repl))}">'
                                     f'{_e(short_txid(repl))}</span>', "num")
            + _td("last sync", f'<span title="{_e(_utc(epoch(d.get("last_sync_at"))))}">'
                               f'{_e(ago(epoch(d.get("last_sync_at")), now))}</span>', "num")
            + _td("lag", f'<span class="{lag_cls}">{_e(span(lag))}</span>', "num")
            + _td("WAL", _e(size(d.get("wal_bytes"))), "num")
            + _td("PITR window", _e(span(pitr) if pitr is not None else "—"), "num")
            + _td("error", _e(error), "err" if error else "") + "</tr>")
    return "".join(rows)


def _hex(txid: int | None) -> str:
    return "" if txid is None else f"{txid:016x}"


def _databases(model: dict[str, Any], page: int, per_page: int, now: float) -> str:
    dbs = sorted(model.get("databases") or [], key=_badness)
    lag_alert = float(model.get("lag_alert_seconds") or 60.0)
    summary = db_summary(dbs, lag_alert)
    if not dbs:
        return '<p class="empty">No database on disk yet.</p>'
    shown, page, pages = paginate(dbs, page, per_page)
    states = ", ".join(f'<span class="{_state_class(k)}">{v} {_e(k)}</span>' for k, v in summary["states"].items())
    worst = ""
    if summary["worst_lag"] is not None:
        worst = f'; worst lag <span class="{"bad" if summary["worst_lag"] > lag_alert else ""}">' \
                f'{_e(span(summary["worst_lag"]))}</span> ({_e(summary["worst_name"])})'
    behind = f'; <span class="bad">{summary["behind"]} behind the {_e(span(lag_alert))} alert threshold</span>' \
        if summary["behind"] else ""
    head = (f'<p class="summary" id="db-summary"><b>{summary["total"]} database{"s" if summary["total"] != 1 else ""}'
            f'</b>: {states}{behind}{worst}.</p>')
    nav = ""
    if pages > 1:
        first, last = (page - 1) * per_page + 1, min(page * per_page, len(dbs))
        prev = f'<a href="?page={page - 1}" rel="prev">&larr; worse</a>' if page > 1 else ""
        nxt = f'<a href="?page={page + 1}" rel="next">better &rarr;</a>' if page < pages else ""
        nav = (f'<nav class="pages">{prev}<span>page {page} of {pages} (databases {first}&ndash;{last}, '
               f'worst first)</span>{nxt}</nav>')
    table = ('<table class="stack" id="dbs"><thead><tr><th>database</th><th>state</th><th class="num">local txid</th>'
             '<th class="num">replicated txid</th><th class="num">last sync</th><th class="num">lag</th>'
             '<th class="num">WAL</th><th class="num">PITR window</th><th>error</th></tr></thead><tbody>'
             + _db_rows(shown, now, lag_alert) + "</tbody></table>")
    return head + nav + table + nav


def _drills(model: dict[str, Any], now: float) -> str:
    drills = [d for d in (model.get("drills") or []) if isinstance(d, dict)]
    if not drills:
        return ('<p class="empty">No drill yet on this machine: run <code>edgehost drill</code> '
                '(RPO and RTO are charted here once drills exist).</p>')
    charted = drills[:DRILLS_CHARTED]
    charts = ('<div class="charts">' + drill_chart(charted, "rpo_seconds", "RPO (data at risk)", now)
              + drill_chart(charted, "rto_seconds", "RTO (time to restore)", now) + "</div>")
    rows = []
    for d in drills[:5]:
        status = str(d.get("status") or "?")
        rows.append("<tr>" + _td("started", _e(_utc(epoch(d.get("started_at")), "%Y-%m-%d %H:%M UTC")), "name")
                    + _td("scenario", _e(d.get("scenario") or "—"))
                    + _td("result", f'<span class="{_state_class(status)}">{_e(status)}</span>')
                    + _td("RPO", _e(span(d.get("rpo_seconds"))), "num")
                    + _td("RTO", _e(span(d.get("rto_seconds"))), "num")
                    + _td("databases", _e(f"{d.get('databases', '—')} ({d.get('failed') or 0} failed)"), "num")
                    + "</tr>")
    table = ('<table class="stack"><thead><tr><th>started</th><th>scenario</th><th>result</th><th class="num">RPO</th>'
             '<th class="num">RTO</th><th class="num">databases</th></tr></thead><tbody>' + "".join(rows)
             + "</tbody></table>")
    return charts + table


def _alerts(model: dict[str, Any], now: float) -> str:
    alerts = [a for a in (model.get("alerts") or []) if isinstance(a, dict)]
    active = model.get("alerting") or []
    out = ""
    if active:
        out += (f'<p class="bad">Alerting now: {len(active)} database{"s" if len(active) != 1 else ""} '
                f'({_e(", ".join(str(a) for a in active[:10]))}{", …" if len(active) > 10 else ""})</p>')
    if not alerts:
        return out + '<p class="empty">No alert sent recently.</p>'
    rows = []
    for a in alerts[:20]:
        kind, severity = str(a.get("kind") or "alert"), str(a.get("severity") or "info")
        label = "recovered" if kind == "recovery" else severity
        rows.append("<tr>" + _td("when", f'<span title="{_e(_utc(epoch(a.get("time"))))}">'
                                         f'{_e(ago(epoch(a.get("time")), now))}</span>', "name")
                    + _td("severity", f'<span class="pill {_state_class("recovery" if kind == "recovery" else severity)}">'
                                      f'{_e(label)}</span>')
                    + _td("database", _e(a.get("database") or "—"))
                    + _td("what", _e(a.get("summary") or a.get("event") or ""), "err" if kind != "recovery" else "")
                    + "</tr>")
    return out + ('<table class="stack" id="alert-list"><thead><tr><th>when</th><th>severity</th><th>database</th><th>what</th></tr>'
                  '</thead><tbody>' + "".join(rows) + "</tbody></table>")


def _durable(model: dict[str, Any]) -> str:
    rows = [r for r in (model.get("durable") or []) if isinstance(r, dict)]
    if not rows:
        return '<p class="empty">No durable writes yet (docs/durable.md).</p>'
    rows.sort(key=lambda r: (-(r.get("timeouts") or 0), -(r.get("p99_ms") or 0)))
    shown = rows[:PER_PAGE]

    def ms(v: Any) -> str:
        return f"{v:,.0f} ms" if isinstance(v, (int, float)) and not isinstance(v, bool) else "—"

    body = "".join(
        "<tr>" + _td("database", _e(r.get("db")), "name") + _td("acknowledged", _e(f"{r.get('acked') or 0:,}"))
        + _td("timeouts (503)", _e(f"{r.get('timeouts') or 0:,}"), "err" if r.get("timeouts") else "")
        + _td("p50", _e(ms(r.get("p50_ms")))) + _td("p99", _e(ms(r.get("p99_ms")))) + "</tr>" for r in shown)
    more = f'<p class="meta">{len(rows) - len(shown)} more not shown.</p>' if len(rows) > len(shown) else ""
    return ('<table class="stack" id="durable-list"><thead><tr><th>database</th><th>acknowledged</th>'
            '<th>timeouts (503)</th><th>p50</th><th>p99</th></tr></thead><tbody>' + body + "</tbody></table>" + more)


COST_LABELS = (("bill_after_free_tier", "estimated this month (after R2's free tier)", lambda v: f"${v:,.2f}"),
               ("bill_before_free_tier", "before the free tier", lambda v: f"${v:,.2f}"),
               ("storage_gb", "storage", lambda v: f"{v:,.2f} GB"),
               ("class_a_per_month", "class A operations / month", lambda v: f"{v:,.0f}"),
               ("class_b_per_month", "class B operations / month", lambda v: f"{v:,.0f}"))


def _cost(model: dict[str, Any]) -> str:
    cost = model.get("cost")
    if not isinstance(cost, dict) or not cost:
        return '<p class="empty">No estimate yet (the supervisor asks litestream\'s metrics every 5 minutes).</p>'
    items = []
    shown = set()
    for key, label, fmt in COST_LABELS:
        value = cost.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            items.append(f"<dt>{_e(label)}</dt><dd>{_e(fmt(value))}</dd>")
            shown.add(key)
    for key, value in cost.items():  # whatever else `edgehost cost` reports, as plain key/value
        if key in shown or isinstance(value, (dict, list)) or value is None:
            continue
        text = f"{value:,.4g}" if isinstance(value, float) else str(value)
        items.append(f"<dt>{_e(str(key).replace('_', ' '))}</dt><dd>{_e(text)}</dd>")
    return '<dl class="cost">' + "".join(items) + "</dl>" if items else '<p class="empty">No estimate yet.</p>'


def render(model: dict[str, Any], page: int = 1, per_page: int = PER_PAGE) -> str:
    """The whole status page as HTML: services, databases (worst first, `per_page` a page), drills, alerts, cost."""
    now = float(model.get("now") or time.time())
    host = model.get("host") or "edgehost"
    phase = model.get("phase") or "?"
    lease = model.get("lease") or {}
    lease_text = ""
    if lease.get("fenced"):
        lease_text = ' &middot; <span class="bad">fenced: another machine holds the writer lease</span>'
    elif "held" in lease:
        lease_text = (' &middot; writer lease <span class="ok">held</span>' if lease.get("held")
                      else ' &middot; writer lease <span class="warn">not held</span>')
    return "".join([
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        '<meta name="robots" content="noindex">',
        f"<title>{_e(host)} · edgehost status</title><style>{CSS}</style></head><body><main>",
        f"<h1>edgehost on {_e(host)}</h1>",
        f'<p class="meta">supervisor <span class="{_state_class("running" if phase == "running" else phase)}">'
        f'{_e(phase)}</span> for {_e(span(model.get("uptime_seconds")))}{lease_text} &middot; as of '
        f'<time>{_e(_utc(now))}</time> (refreshes every {REFRESH_SECONDS} s)</p>',
        '<h2 id="services">Services</h2>', _services(model),
        '<h2 id="databases">Databases</h2>', _databases(model, page, per_page, now),
        '<h2 id="drills">Drills</h2>', _drills(model, now),
        '<h2 id="alerts">Recent alerts</h2>', _alerts(model, now),
        '<h2 id="durable">Durable acknowledgements</h2>', _durable(model),
        '<h2 id="cost">Estimated monthly cost</h2>', _cost(model),
        "</main></body></html>\n",
    ])


def build_model(described: dict[str, Any], databases: Iterable[Any], drills: list[dict[str, Any]],
                alerts: list[dict[str, Any]], cost: dict[str, Any] | None, host: str, now: float) -> dict[str, Any]:
    """The page's model from what the supervisor knows; `databases` are ops.status.DatabaseStatus (or dicts).

    Each database gets a `pitr_seconds` key, None today: how far back a restore can go needs a
    listing of the replica, too dear for every page load; whatever learns it cheaply fills it in.
    """
    dbs = []
    for db in databases:
        # a shallow copy (its fields are plain values): asdict's deep copy was most of a page's cost
        row = dict(vars(db)) if dataclasses.is_dataclass(db) else dict(db)
        row.setdefault("pitr_seconds", None)
        dbs.append(row)
    return {
        "host": host,
        "now": now,
        "phase": described.get("phase"),
        "uptime_seconds": described.get("uptime_seconds"),
        "services": described.get("services") or [],
        "lease": described.get("lease") or {},
        "lag_alert_seconds": described.get("lag_alert_seconds"),
        "alerting": described.get("alerts") or [],
        "databases": dbs,
        "drills": drills,
        "alerts": alerts,
        "cost": cost,
    }


def page_number(query: str) -> int:
    """`page` from a query string: 1 when absent or not a positive number."""
    from urllib.parse import parse_qs

    try:
        return max(1, int(parse_qs(query).get("page", ["1"])[0]))
    except ValueError:
        return 1


class CachedDrills:
    """This machine's drill history, read at most every `ttl` seconds (a page load costs no query)."""

    def __init__(self, read: Callable[[], list[dict[str, Any]]], ttl: float = DRILL_CACHE_SECONDS):
        self._read, self.ttl = read, ttl
        self._lock = threading.Lock()
        self._value: list[dict[str, Any]] = []
        self._at: float | None = None

    def get(self) -> list[dict[str, Any]]:
        with self._lock:
            now = time.monotonic()
            if self._at is None or now - self._at >= self.ttl:
                try:
                    self._value = self._read()
                except (EdgehostError, OSError, sqlite3.Error):  # a broken state DB must not take the page down
                    self._value = []
                self._at = now
            return self._value
