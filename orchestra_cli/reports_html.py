"""The daily report as one self-contained HTML page with inline SVG charts.

No script, no external file: the charts are SVG drawn here, the styles are
inline and print well (A4, charts kept whole). Every chart is a ``figure``
with ``data-chart`` naming it, so a browser test can find and check each one.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Callable, Sequence
from typing import Any

from orchestra_cli.report_tables import Column, Table, daily_tables, fmt, seconds

COLOURS = {
    "succeeded": "#2e7d32",
    "failed": "#c62828",
    "cancelled": "#9e9e9e",
    "open": "#1565c0",
}
BAR = "#3f6fb5"
FAIL = COLOURS["failed"]
W, H = 640, 220  # a chart's drawing size (viewBox units)
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 28
BAD_TABLES = frozenset({"Top errors", "Failures", "Dead letters"})

STYLE = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--bad:#c62828;--ok:#2e7d32}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
margin:0 auto;padding:24px;max-width:1180px;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px}
.sub{color:var(--muted);margin:0 0 16px}
.kpis{display:grid;grid-template-columns:repeat(auto-fit,minmax(118px,1fr));gap:10px;margin:12px 0}
.kpi{border:1px solid var(--line);border-radius:6px;padding:10px 12px}
.kpi b{display:block;font-size:20px;font-variant-numeric:tabular-nums}
.kpi span{color:var(--muted);font-size:12px}.kpi.bad b{color:var(--bad)}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:16px}
figure{margin:0;border:1px solid var(--line);border-radius:6px;padding:10px;break-inside:avoid}
figcaption{font-weight:600;margin-bottom:6px}figcaption small{font-weight:400;color:var(--muted)}
svg{width:100%;height:auto;display:block}svg text{font:11px system-ui,sans-serif;fill:#444}
.legend{display:flex;gap:14px;font-size:12px;color:var(--muted);margin-top:4px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}
table{border-collapse:collapse;min-width:60%;margin:0 0 8px;font-variant-numeric:tabular-nums}
th,td{padding:5px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{font-size:12px;color:var(--muted);font-weight:600;border-bottom:2px solid var(--line)}
td.num,th.num{text-align:right;white-space:nowrap}td.id{font-family:ui-monospace,monospace}
table.bad td{color:var(--bad)}tr.bad td{color:var(--bad);font-weight:600}
.none{color:var(--muted);font-style:italic}
.note{color:var(--muted);font-size:12px;margin:-4px 0 6px}
@media print{body{padding:0;max-width:none}.charts{grid-template-columns:1fr 1fr}
h2{break-after:avoid}table{break-inside:auto}tr{break-inside:avoid}}
@page{size:A4;margin:14mm}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _svg(body: list[str], *, empty: bool = False, height: float = H) -> str:
    cls = " class='empty'" if empty else ""
    return (
        f"<svg viewBox='0 0 {W} {height:.0f}' role='img'{cls} xmlns='http://www.w3.org/2000/svg'>"
        + "".join(body)
        + "</svg>"
    )


def _no_data(text: str = "no data for this day") -> str:
    return _svg(
        [f"<text x='{W / 2}' y='{H / 2}' text-anchor='middle'>{_e(text)}</text>"], empty=True
    )


def _nice_max(value: float) -> float:
    """The axis top: 1, 2 or 5 times a power of ten, at least ``value``."""
    if value <= 0:
        return 1.0
    step = 10 ** len(str(int(value))) / 100 if value >= 1 else 0.01
    for mult in (1, 2, 5, 10, 20, 50, 100):
        if step * mult >= value:
            return step * mult
    return value


def _y_axis(top: float, fmt_tick: Callable[[float], str]) -> list[str]:
    out = []
    plot_h = H - TOP - BOTTOM
    for i in range(5):
        v = top * i / 4
        y = H - BOTTOM - plot_h * i / 4
        out.append(
            f"<line x1='{LEFT}' x2='{W - RIGHT}' y1='{y:.1f}' y2='{y:.1f}' stroke='#e5e8eb'/>"
            f"<text x='{LEFT - 6}' y='{y + 4:.1f}' text-anchor='end'>{_e(fmt_tick(v))}</text>"
        )
    return out


def _count_top(value: int) -> float:
    """An axis top for counts: its four ticks are whole numbers."""
    return float(math.ceil(_nice_max(value) / 4) * 4)


def _count_tick(v: float) -> str:
    return f"{v:,.0f}" if v >= 10 or v == int(v) else f"{v:.1f}"


def hours_chart(hours: list[dict[str, Any]]) -> str:
    """Tasks per hour (UTC), stacked by outcome."""
    totals = [sum(int(h[k]) for k in COLOURS) for h in hours]
    if not any(totals):
        return _no_data()
    top = _count_top(max(totals))
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    slot = plot_w / 24
    body = _y_axis(top, _count_tick)
    for h, row in enumerate(hours):
        y = float(H - BOTTOM)
        x = LEFT + h * slot + 2
        for outcome, colour in COLOURS.items():
            n = int(row[outcome])
            if not n:
                continue
            bar = plot_h * n / top
            y -= bar
            body.append(
                f"<rect x='{x:.1f}' y='{y:.1f}' width='{slot - 4:.1f}' height='{bar:.1f}' "
                f"fill='{colour}'><title>{h:02d}:00 {outcome}: {n}</title></rect>"
            )
        if h % 3 == 0:
            body.append(
                f"<text x='{x + (slot - 4) / 2:.1f}' y='{H - BOTTOM + 16}' "
                f"text-anchor='middle'>{h:02d}</text>"
            )
    return _svg(body)


def duration_chart(bins: list[dict[str, Any]], p50: float | None, p95: float | None) -> str:
    """The leaf tasks' durations in equal bins, p50 and p95 marked."""
    if not bins:
        return _no_data("no finished task this day")
    top = _count_top(max(int(b["count"]) for b in bins))
    span = float(bins[-1]["to_s"]) or 1.0
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    slot = plot_w / len(bins)
    body = _y_axis(top, _count_tick)
    for i, b in enumerate(bins):
        bar = plot_h * int(b["count"]) / top
        x = LEFT + i * slot + 1
        body.append(
            f"<rect x='{x:.1f}' y='{H - BOTTOM - bar:.1f}' width='{slot - 2:.1f}' "
            f"height='{bar:.1f}' fill='{BAR}'><title>{seconds(b['from_s'])}–"
            f"{seconds(b['to_s'])}: {b['count']}</title></rect>"
        )
    for i in range(0, len(bins) + 1, 3):
        x = LEFT + i * slot
        anchor = "end" if i == len(bins) else "middle"
        body.append(
            f"<text x='{x:.1f}' y='{H - BOTTOM + 16}' text-anchor='{anchor}'>"
            f"{seconds(span * i / len(bins))}</text>"
        )
    for label, value, colour in (("p50", p50, "#f57c00"), ("p95", p95, FAIL)):
        if value is None:
            continue
        x = LEFT + plot_w * min(1.0, value / span)
        right = x > LEFT + plot_w * 0.7  # the label goes left of a line near the right edge
        tx, anchor = (x - 4, "end") if right else (x + 4, "start")
        y = TOP + (10 if label == "p50" else 24)
        body.append(
            f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{TOP}' y2='{H - BOTTOM}' stroke='{colour}' "
            f"stroke-width='2' stroke-dasharray='5 3'/><text x='{tx:.1f}' y='{y}' "
            f"text-anchor='{anchor}' style='fill:{colour}'>{label} {seconds(value)}</text>"
        )
    return _svg(body)


def bars_chart(items: Sequence[tuple[str, float]], unit: Callable[[float], str]) -> str:
    """Horizontal bars, largest first (at most 8)."""
    items = sorted(((k, v) for k, v in items if v), key=lambda kv: -kv[1])[:8]
    if not items:
        return _no_data()
    top = max(v for _, v in items)
    label_w, row = 170, 30.0
    body = []
    for i, (name, value) in enumerate(items):
        y = 4 + i * row
        width = (W - label_w - 90) * value / top
        short = name if len(name) <= 26 else name[:25] + "…"
        body.append(
            f"<text x='{label_w - 8}' y='{y + row / 2 + 4:.1f}' text-anchor='end'>"
            f"{_e(short)}</text>"
            f"<rect x='{label_w}' y='{y + 3:.1f}' width='{max(width, 1):.1f}' "
            f"height='{row - 6:.1f}' fill='{BAR}'><title>{_e(name)}: {_e(unit(value))}</title>"
            f"</rect><text x='{label_w + width + 6:.1f}' y='{y + row / 2 + 4:.1f}'>"
            f"{_e(unit(value))}</text>"
        )
    return _svg(body, height=8 + row * len(items))


def timeline_chart(failures: list[dict[str, Any]], day: str) -> str:
    """The day's failures on a 24-hour axis, one lane per capability."""
    if not failures:
        return _no_data("no failure this day")
    start = dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC).timestamp()
    lanes = sorted({str(f.get("capability") or "-") for f in failures})[:8]
    label_w = 110
    plot_w = W - label_w - RIGHT
    lane_h = (H - BOTTOM - TOP) / len(lanes)
    body = []
    for i, lane in enumerate(lanes):
        y = TOP + lane_h * (i + 0.5)
        body.append(
            f"<text x='{label_w - 8}' y='{y + 4:.1f}' text-anchor='end'>{_e(lane)}</text>"
            f"<line x1='{label_w}' x2='{W - RIGHT}' y1='{y:.1f}' y2='{y:.1f}' stroke='#e5e8eb'/>"
        )
    for h in range(0, 25, 3):
        x = label_w + plot_w * h / 24
        anchor = "end" if h == 24 else "middle"
        body.append(
            f"<text x='{x:.1f}' y='{H - BOTTOM + 16}' text-anchor='{anchor}'>{h:02d}:00</text>"
        )
    for f in failures:
        lane = str(f.get("capability") or "-")
        if lane not in lanes or not f.get("time"):
            continue
        at = dt.datetime.fromisoformat(str(f["time"])).timestamp() - start
        x = label_w + plot_w * min(1.0, max(0.0, at / 86400))
        y = TOP + lane_h * (lanes.index(lane) + 0.5)
        tip = f"{str(f['time'])[11:19]} {f['task_id']}: {f['error']}"
        body.append(
            f"<circle cx='{x:.1f}' cy='{y:.1f}' r='6' fill='{FAIL}' stroke='#fff'>"
            f"<title>{_e(tip)}</title></circle>"
        )
    return _svg(body)


def _figure(name: str, caption: str, svg: str, note: str = "", legend: str = "") -> str:
    small = f" <small>{_e(note)}</small>" if note else ""
    return (
        f"<figure class='chart' data-chart='{name}'><figcaption>{_e(caption)}{small}"
        f"</figcaption>{svg}{legend}</figure>"
    )


def _legend() -> str:
    keys = "".join(f"<span><i style='background:{c}'></i>{k}</span>" for k, c in COLOURS.items())
    return f"<div class='legend'>{keys}</div>"


def charts(r: dict[str, Any]) -> list[str]:
    """Every chart of the daily report, as figures."""
    agents = r["by_agent"]
    models = r["llm"]["by_model"]

    def tokens(u: dict[str, Any]) -> float:
        return float(u.get("input_tokens", 0) + u.get("output_tokens", 0))

    return [
        _figure(
            "hours", "Tasks per hour", hours_chart(r["per_hour"]), "UTC, by outcome", _legend()
        ),
        _figure(
            "durations",
            "Task durations",
            duration_chart(r["duration_histogram"], r["duration_s"]["p50"], r["duration_s"]["p95"]),
            "leaf tasks, started → finished",
        ),
        _figure(
            "cost-by-agent",
            "Cost by agent",
            bars_chart([(k, float(v["usage"]["cost_usd"])) for k, v in agents.items()], _usd),
        ),
        _figure(
            "tokens-by-agent",
            "Tokens by agent",
            bars_chart([(k, tokens(v["usage"])) for k, v in agents.items()], _int),
        ),
        _figure(
            "cost-by-model",
            "Cost by model",
            bars_chart([(k, float(v["cost_usd"])) for k, v in models.items()], _usd),
        ),
        _figure(
            "tokens-by-model",
            "Tokens by model",
            bars_chart([(k, tokens(v)) for k, v in models.items()], _int),
        ),
        _figure(
            "failures",
            "Failures through the day",
            timeline_chart(r.get("failures") or [], r["date"]),
            "hover a dot for the task and its error",
        ),
    ]


def _usd(v: float) -> str:
    return fmt(v, "usd")


def _int(v: float) -> str:
    return fmt(v, "int")


def table_html(table: Table) -> str:
    parts = [f"<h2>{_e(table.title)}</h2>"]
    if table.note:
        parts.append(f"<p class='note'>{_e(table.note)}</p>")
    if not table.rows:
        return "".join([*parts, "<p class='none'>none</p>"])
    cls = " class='bad'" if table.title in BAD_TABLES else ""
    head = "".join(
        f"<th class='num'>{_e(c.header)}</th>" if c.numeric else f"<th>{_e(c.header)}</th>"
        for c in table.columns
    )
    parts.append(f"<table{cls}><thead><tr>{head}</tr></thead><tbody>")
    for row, cells in zip(table.rows, table.cells(), strict=True):
        bad = " class='bad'" if row.get("status") == "failed" and not cls else ""
        tds = "".join(
            _td(c, cell, row.get(c.key)) for c, cell in zip(table.columns, cells, strict=True)
        )
        parts.append(f"<tr{bad}>{tds}</tr>")
    parts.append("</tbody></table>")
    return "".join(parts)


def _td(column: Column, cell: str, raw: Any) -> str:
    if column.kind == "id" or isinstance(raw, list):
        full = ", ".join(raw) if isinstance(raw, list) else str(raw or "")
        return f"<td class='id' title='{_e(full)}'>{_e(cell)}</td>"
    if column.numeric:
        return f"<td class='num'>{_e(cell)}</td>"
    return f"<td>{_e(cell)}</td>"


def _kpis(r: dict[str, Any]) -> str:
    failed = int(r["tasks"]["by_status"].get("failed", 0))
    dead = (r.get("dead_letters") or {}).get("count")
    cards = [
        ("Tasks", fmt(r["tasks"]["total"], "int"), False),
        ("Success rate", fmt(r["success_rate"], "pct"), False),
        ("Failed", fmt(failed, "int"), failed > 0),
        ("Duration p50", fmt(r["duration_s"]["p50"], "seconds"), False),
        ("Duration p95", fmt(r["duration_s"]["p95"], "seconds"), False),
        ("Retried", fmt(r["retried_tasks"], "int"), False),
        ("Dead letters", fmt(dead, "int"), bool(dead)),
        ("Cost", fmt(r["usage"]["cost_usd"], "usd"), False),
    ]
    return (
        "<div class='kpis'>"
        + "".join(
            f"<div class='kpi{' bad' if bad else ''}'><b>{_e(v)}</b><span>{_e(k)}</span></div>"
            for k, v, bad in cards
        )
        + "</div>"
    )


def _head(title: str) -> list[str]:
    return [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width,initial-scale=1'>",
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
    ]


def tables_html(title: str, tables: list[Table]) -> str:
    """A page of tables only (the metrics summary)."""
    return "\n".join([*_head(title), *(table_html(t) for t in tables), "</body></html>"])


def daily_html(title: str, r: dict[str, Any]) -> str:
    """The whole daily page: headline figures, charts, then the tables."""
    tables = [t for t in daily_tables(r) if t.title != "Summary"]
    return "\n".join(
        [
            *_head(title),
            f"<p class='sub'>tasks created on {_e(r['date'])} (UTC) · generated "
            f"{_e(str(r['generated_at'])[:19].replace('T', ' '))} UTC</p>",
            _kpis(r),
            "<div class='charts'>",
            *charts(r),
            "</div>",
            *(table_html(t) for t in tables),
            "</body></html>",
        ]
    )
