"""The one line each long-running process logs when it starts.

It says what the process connected to (URLs with passwords masked), how many campaigns
are active and which email provider sends, so an operator reading the logs of a quiet
installation can tell a misconfiguration (wrong database, no campaigns, the ``file``
provider in production) from a quiet day. It never holds a secret: URLs go through
kombu's ``sanitize_url`` (the password replaced by ``**``, the query string dropped,
since it may carry credentials too), and provider credentials are never named.
"""

from __future__ import annotations

import logging
from typing import Literal, get_args

from kombu.utils.url import sanitize_url

from worker.core.settings import Settings
from worker.process.runtime import Runtime

Process = Literal["consume", "dispatch", "celery worker", "run", "web"]
"""The long-running processes that announce themselves."""

# What each process connects to: (label, settings property) pairs; one entry per Process
# (checked at import: a process without one would fail only when it starts).
CONNECTIONS: dict[Process, tuple[tuple[str, str], ...]] = {
    "consume": (("events", "resolved_events_url"), ("database", "resolved_database_url")),
    "dispatch": (("database", "resolved_database_url"), ("broker", "resolved_broker_url")),
    "celery worker": (("broker", "resolved_broker_url"), ("database", "resolved_database_url")),
    "run": (
        ("events", "resolved_events_url"),
        ("database", "resolved_database_url"),
        ("broker", "resolved_broker_url"),
    ),
    "web": (("database", "resolved_database_url"),),
}
if set(CONNECTIONS) != set(get_args(Process)):
    raise RuntimeError("every Process needs its CONNECTIONS entry")


log = logging.getLogger(__name__)
# Set by ``crosssell run``: its consumer, dispatcher and Celery worker share one process,
# which logs one line for all three instead of one per part.
_combined = False


def announce(runtime: Runtime, process: Process) -> None:
    """Log ``process``'s startup line at INFO, unless it is part of ``crosssell run``."""
    if not _combined:
        log.info("%s", startup_line(runtime, process))


def announce_combined(runtime: Runtime) -> None:
    """Log the startup line of ``crosssell run`` and silence those of its parts."""
    global _combined
    _combined = True
    log.info("%s", startup_line(runtime, "run"))


def masked(url: str) -> str:
    """``url`` safe for a log: ``amqp://user:**@rabbit:5672//``."""
    return str(sanitize_url(url))


def provider_description(settings: Settings) -> str:
    """The email provider and where it delivers, without credentials."""
    name = settings.email_provider
    if name == "file":
        return f"file ({settings.resolved_outbox_dir})"
    if name == "smtp":
        return f"smtp ({settings.smtp_host}:{settings.smtp_port}, {settings.smtp_security})"
    if name == "ses":
        return f"ses ({settings.ses_base_url or settings.ses_region or 'no region'})"
    base_url = {
        "postmark": settings.postmark_base_url,
        "sendgrid": settings.sendgrid_base_url,
        "mailgun": settings.mailgun_base_url,
    }.get(name)
    # A provider added through the registry is named; its settings are its own.
    return f"{name} ({masked(base_url)})" if base_url else name


def startup_line(runtime: Runtime, process: Process) -> str:
    """``consume: events amqp://u:**@rabbit//, database postgresql+psycopg://…; 3 active
    campaign(s) of 4; provider smtp (smtp.example.com:587, starttls)``."""
    settings = runtime.settings
    connected = ", ".join(
        f"{label} {masked(str(getattr(settings, attribute)))}"
        for label, attribute in CONNECTIONS[process]
    )
    campaigns = runtime.rules.current().campaigns
    active = sum(c.campaign.status == "active" for c in campaigns)
    return (
        f"{process}: {connected}; {active} active campaign(s) of {len(campaigns)}; "
        f"provider {provider_description(settings)}"
    )
