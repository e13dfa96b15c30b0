"""Prometheus metrics of the worker (served by ``--metrics-port`` and ``crosssell web``).

Metric objects are plain in-process counters; defining them here does no I/O.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

EVENTS = Counter("crosssell_events_total", "CRM events handled by the consumer", ["result"])
SENDS = Counter(
    "crosssell_sends_total", "Sends that reached an end state or were moved", ["status", "reason"]
)
RULE_RELOADS = Counter("crosssell_rule_reloads_total", "Campaign rule set (re)loads", ["result"])
RULES_STALE = Gauge(
    "crosssell_rules_reload_failing",
    "1 while the files on disk fail validation and the previous rules keep running",
)
CAMPAIGNS_ACTIVE = Gauge("crosssell_campaigns_active", "Active campaigns in the rule set")
OFFERS_UNAVAILABLE = Counter(
    "crosssell_offers_unavailable_total",
    "Offers that found nothing to show at send time (the send is skipped with this reason)",
    ["reason"],
)
