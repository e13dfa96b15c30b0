"""The report as one self-contained HTML file: tables and three plotly charts.

plotly.js is inlined (``include_plotlyjs=True`` embeds the copy shipped inside the
plotly package), so the file opens offline, from a mail attachment or an artifact store,
without fetching anything. Charts:

* conversion rate of each variant and of its holdout, with the 95 % Wilson interval of
  each rate as error bars;
* emails sent and conversions per day (all campaigns, by the day of the email and of
  the purchase);
* the top (trigger category -> offered product) pairs by direct conversions.
"""

from __future__ import annotations

from html import escape

import plotly.graph_objects as go

from triggers.lift import wilson_arrays, z_value
from worker.commands.report import (
    Comparison,
    Report,
    duration_text,
    heading,
    interval_text,
    percent,
    revenue_text,
)

TOP_PAIRS = 15
_CONFIG = {"displaylogo": False, "responsive": True}
_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem;color:#1d2433}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.9rem}
th,td{border:1px solid #d5d9e0;padding:.3rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f3f5f8}
.verdict{margin:.2rem 0 1.2rem;font-weight:600}.note{color:#5a6275;font-size:.85rem}
.chart{max-width:1100px}
"""


def _rate_chart(comparisons: list[Comparison]) -> go.Figure:
    labels: list[str] = []
    rates: list[float] = []
    below: list[float] = []
    above: list[float] = []
    colours: list[str] = []
    z = z_value(0.95)
    drawn: set[str] = set()
    for comparison in comparisons:
        for group, colour in ((comparison.variant, "#2f6fdf"), (comparison.holdout, "#9aa3b2")):
            key = f"{comparison.campaign_id}\0{group.label}"
            if not group.sent or key in drawn:
                continue  # a campaign's holdout is shared by its variants: one bar
            drawn.add(key)
            lower, upper = wilson_arrays(group.converted, group.sent, z)
            rate = group.converted / group.sent
            name = "holdout" if group is comparison.holdout else f"variant {group.label}"
            labels.append(f"{comparison.campaign_id}<br>{name}")
            rates.append(rate * 100)
            below.append((rate - float(lower)) * 100)
            above.append((float(upper) - rate) * 100)
            colours.append(colour)
    figure = go.Figure(
        go.Bar(
            x=labels,
            y=rates,
            marker_color=colours,
            error_y={"type": "data", "symmetric": False, "array": above, "arrayminus": below},
            hovertemplate="%{x}: %{y:.2f} %<extra></extra>",
        )
    )
    figure.update_layout(
        title="Conversion rate per variant vs holdout (95 % Wilson interval)",
        yaxis_title="conversion rate (%)",
        height=420,
        margin={"t": 60, "b": 80},
    )
    return figure


def _daily_chart(report: Report) -> go.Figure:
    sent: dict[str, int] = {}
    conversions: dict[str, int] = {}
    for row in report.days:
        key = row.day.isoformat()
        sent[key] = sent.get(key, 0) + row.sent
        conversions[key] = conversions.get(key, 0) + row.conversions
    days = sorted(sent)
    figure = go.Figure(
        [
            go.Bar(x=days, y=[sent[d] for d in days], name="emails sent", marker_color="#2f6fdf"),
            go.Scatter(
                x=days,
                y=[conversions[d] for d in days],
                name="conversions",
                mode="lines+markers",
                marker_color="#e8793a",
                yaxis="y2",
            ),
        ]
    )
    figure.update_layout(
        title="Emails sent and conversions per day (UTC)",
        yaxis={"title": "emails"},
        yaxis2={"title": "conversions", "overlaying": "y", "side": "right", "rangemode": "tozero"},
        height=380,
        legend={"orientation": "h", "y": -0.2},
    )
    return figure


def _pairs_chart(report: Report) -> go.Figure:
    top = report.pairs[:TOP_PAIRS][::-1]
    figure = go.Figure(
        [
            go.Bar(
                y=[row.key for row in top],
                x=[row.shown for row in top],
                name="offers shown",
                orientation="h",
                marker_color="#c9d3e6",
            ),
            go.Bar(
                y=[row.key for row in top],
                x=[row.direct for row in top],
                name="direct conversions",
                orientation="h",
                marker_color="#2f6fdf",
            ),
        ]
    )
    figure.update_layout(
        title=f"Top {TOP_PAIRS} trigger category -> offered product pairs",
        barmode="overlay",
        height=max(300, 40 + 28 * len(top)),
        margin={"l": 260},
        legend={"orientation": "h", "y": -0.15},
    )
    return figure


def _comparison_table(comparisons: list[Comparison]) -> str:
    head = (
        "<tr><th>campaign / group</th><th>eligible</th><th>sent</th><th>delivered</th>"
        "<th>bounced</th><th>complained</th><th>unsubscribed</th><th>direct</th>"
        "<th>influenced</th><th>rate</th></tr>"
    )
    parts: list[str] = []
    for c in comparisons:
        rows = [head]
        for name, group in ((f"variant {c.variant.label}", c.variant), ("holdout", c.holdout)):
            emailed = group is c.variant
            rows.append(
                "<tr>"
                f"<td>{escape(name)}</td><td>{group.eligible}</td><td>{group.sent}</td>"
                f"<td>{group.delivered if emailed else '-'}</td>"
                f"<td>{group.bounced if emailed else '-'}</td>"
                f"<td>{group.complained}</td><td>{group.unsubscribed}</td>"
                f"<td>{group.direct}</td><td>{group.influenced}</td>"
                f"<td>{escape(percent(group.rate))}</td></tr>"
            )
        method = c.absolute_lift.method if c.absolute_lift else ""
        relative = c.relative_lift.method if c.relative_lift else ""
        revenue = c.incremental_revenue[0].method if c.incremental_revenue else ""
        parts.append(
            f"<h3>{escape(c.campaign_id)} — variant {escape(c.variant.label)} vs holdout "
            f"<span class=note>(window {escape(duration_text(c.window))})</span></h3>"
            f"<table>{''.join(rows)}</table>"
            f"<p>Absolute lift: {escape(interval_text(c.absolute_lift))} "
            f"<span class=note>95 % CI, {escape(method)}</span><br>"
            f"Relative lift: {escape(interval_text(c.relative_lift, unit=' %'))} "
            f"<span class=note>95 % CI, {escape(relative)}</span><br>"
            f"Incremental revenue: {escape(revenue_text(c.incremental_revenue))} "
            f"<span class=note>{escape(revenue)}</span></p>"
            f"<p class=verdict>{escape(c.verdict.text)}</p>"
        )
    return "".join(parts) or "<p>No emails or holdout decisions in this range.</p>"


def _offer_table(title: str, key: str, rows: list[tuple[str, int, int, str]]) -> str:
    body = "".join(
        f"<tr><td>{escape(key)}</td><td>{shown}</td><td>{direct}</td><td>{escape(rate)}</td></tr>"
        for key, shown, direct, rate in rows
    )
    return (
        f"<h2>{escape(title)}</h2><table><tr><th>{escape(key)}</th><th>offers shown</th>"
        f"<th>direct conversions</th><th>rate</th></tr>{body}</table>"
    )


def render_html(report: Report) -> str:
    """The whole page; plotly.js is inlined once, in the first chart."""
    charts = [_rate_chart(report.comparisons), _daily_chart(report), _pairs_chart(report)]
    divs = [
        figure.to_html(
            full_html=False,
            include_plotlyjs=index == 0,
            config=_CONFIG,
            div_id=f"chart-{index}",
        )
        for index, figure in enumerate(charts)
    ]
    credited = ", ".join(f"{k} {v}" for k, v in report.credited_revenue.items()) or "none"
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>crosssell report</title><style>{_STYLE}</style></head><body>"
        f"<h1>{escape(heading(report))}</h1>"
        f"<div class=chart>{divs[0]}</div>"
        f"{_comparison_table(report.comparisons)}"
        f"<div class=chart>{divs[1]}</div>"
        f"<div class=chart>{divs[2]}</div>"
        + _offer_table(
            "By offer type",
            "offer type",
            [(r.key, r.shown, r.direct, percent(r.rate)) for r in report.offer_types],
        )
        + _offer_table(
            "Trigger category -> offered product",
            "trigger category -> product",
            [(r.key, r.shown, r.direct, percent(r.rate)) for r in report.pairs],
        )
        + f"<p>Revenue after emails, last touch, all campaigns: {escape(credited)} "
        "<span class=note>(each purchase once, to its latest email; never summed across "
        "currencies)</span></p>"
        f"<p class=note>generated {escape(report.generated_at.isoformat())}</p>"
        "</body></html>\n"
    )
