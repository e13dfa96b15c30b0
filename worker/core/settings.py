"""One typed settings object, read from ``CROSSSELL_*`` environment variables.

The defaults are the embedded ones: SQLite and a SQLite-backed broker under ``var/``, the
``file`` provider writing ``.eml`` files. Production swaps in PostgreSQL, RabbitMQ or
Redis and SMTP by setting environment variables; secrets come only from the environment.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Iterable, Mapping
from datetime import time, timedelta
from functools import lru_cache
from pathlib import Path
from string import Formatter
from typing import Literal
from urllib.parse import urlsplit

from pydantic import (
    AnyHttpUrl,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from triggers.addresses import InvalidAddress, canonical_address, canonical_mailbox
from triggers.decide import Policy
from triggers.durations import parse_duration, parse_time_of_day

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Shown in the footers of the demo's emails (file provider) when no address is set.
DEMO_POSTAL_ADDRESS = "Strada Exemplului 1, 010101 București, Romania"
CART_LINK_PLACEHOLDERS = frozenset({"public_url", "skus", "coupon"})


LEGACY_EMBEDDED_PREFIX = "sqla+sqlite:///"

# The URL schemes each URL setting is served by today (README "Settings"): the database
# through SQLAlchemy with psycopg 3 or sqlite3; the broker and events through kombu's
# py-amqp and redis transports, the embedded broker (``sqlite``, earlier ``sqla+sqlite``)
# and kombu's in-process ``memory`` transport (tests); the shared rate through redis-py.
URL_SCHEMES: dict[str, frozenset[str]] = {
    "database_url": frozenset({"sqlite", "sqlite+pysqlite", "postgresql", "postgresql+psycopg"}),
    "broker_url": frozenset(
        {"amqp", "amqps", "pyamqp", "redis", "rediss", "sqlite", "sqla+sqlite", "memory"}
    ),
    "events_url": frozenset(
        {"amqp", "amqps", "pyamqp", "redis", "rediss", "sqlite", "sqla+sqlite", "memory"}
    ),
    "rate_limit_url": frozenset({"redis", "rediss", "unix"}),
}
# Providers whose one call is bounded by CROSSSELL_HTTP_CONNECT_TIMEOUT + CROSSSELL_HTTP_TIMEOUT.
HTTP_PROVIDERS = frozenset({"postmark", "sendgrid", "mailgun", "ses"})
# The SQLite schemes of the URL settings: after ``://`` comes a path (``/relative.db`` or
# ``//abs/path.db``), never a host; SQLAlchemy and the embedded broker take a host-like
# ``sqlite://relative.db`` as something else and fail later, or open a file elsewhere.
SQLITE_SCHEMES = frozenset({"sqlite", "sqlite+pysqlite", "sqla+sqlite"})
# The longest wait, timeout or interval a seconds setting may ask for: an hour. Longer
# ones stall the process (a send waiting an hour for one answer), and huge ones overflow
# the clocks they are added to (``OverflowError: timestamp out of range``).
MAX_SECONDS = 3600.0


_HTTP_URL: TypeAdapter[AnyHttpUrl] = TypeAdapter(AnyHttpUrl)


def _embedded_scheme(url: str) -> str:
    """``sqla+sqlite:///f`` (kombu's SQLAlchemy transport, the embedded broker of earlier
    releases) read as ``sqlite:///f``: the same file, served by worker.core.embedded_broker,
    which upgrades it in place. Other URLs unchanged."""
    if url.startswith(LEGACY_EMBEDDED_PREFIX):
        return "sqlite:///" + url[len(LEGACY_EMBEDDED_PREFIX) :]
    return url


class Settings(BaseSettings):
    # allow_inf_nan=False: no float setting means anything as inf or nan (each is a count
    # of seconds or a rate); they would pass gt/ge bounds and break a loop later.
    model_config = SettingsConfigDict(env_prefix="CROSSSELL_", extra="ignore", allow_inf_nan=False)

    var_dir: Path = Field(PROJECT_ROOT / "var", description="Embedded data: DB, broker, outbox")
    database_url: str = Field("", description="SQLAlchemy URL; default: SQLite in var_dir")
    broker_url: str = Field(
        "", description="Celery broker; default: the embedded broker's SQLite file in var_dir"
    )
    events_url: str = Field("", description="Where CRM events arrive; default: broker_url")
    events_exchange: str = Field("crm.events", min_length=1)
    events_queue: str = Field("crosssell.events", min_length=1)
    dead_letter_queue: str = Field("crosssell.events.dead", min_length=1)
    deliver_queue: str = Field(
        "crosssell.deliver", min_length=1, description="Celery queue of deliver tasks"
    )
    campaigns_dir: Path = PROJECT_ROOT / "config" / "campaigns"
    complements_file: Path = PROJECT_ROOT / "config" / "complements.yaml"
    segments_file: Path = PROJECT_ROOT / "config" / "segments.yaml"
    attributes_file: Path = PROJECT_ROOT / "config" / "attributes.yaml"
    templates_dir: Path = PROJECT_ROOT / "templates"

    # The built-in providers' variables (worker/providers/<name>.py). Declared here too so
    # that Settings(...) takes them and the README's settings table lists them; each
    # provider's own model validates them when it is built, and a test keeps the two in
    # step. A provider added later reads its variables itself, with no field here.
    email_provider: str = Field(
        "file", description="a provider of worker.providers.registry (README provider table)"
    )
    outbox_dir: Path | None = Field(None, description="file provider; default var_dir/outbox")
    smtp_host: str = Field("127.0.0.1", min_length=1)
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_security: Literal["none", "starttls", "ssl"] = "none"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_timeout: float = Field(30.0, gt=0, le=MAX_SECONDS)
    smtp_pool_size: int = Field(
        4, ge=1, description="SMTP connections per worker process (one per sending thread)"
    )
    smtp_ca_file: Path | None = Field(None, description="extra CA bundle to trust for TLS")
    dkim_domain: str | None = Field(None, description="sign SMTP mail with DKIM for this d=")
    dkim_selector: str | None = None
    dkim_private_key: SecretStr | None = Field(None, description="PEM private key (secret)")
    http_timeout: float = Field(
        30.0, gt=0, le=MAX_SECONDS, description="HTTP email APIs: seconds per answer"
    )
    http_connect_timeout: float = Field(
        10.0, gt=0, le=MAX_SECONDS, description="HTTP email APIs: to connect"
    )
    postmark_server_token: SecretStr | None = None
    postmark_message_stream: str = "outbound"
    postmark_base_url: str = "https://api.postmarkapp.com"
    sendgrid_api_key: SecretStr | None = None
    sendgrid_base_url: str = Field(
        "https://api.sendgrid.com", description="EU subusers: https://api.eu.sendgrid.com"
    )
    mailgun_api_key: SecretStr | None = None
    mailgun_domain: str | None = Field(None, description="the sending domain, e.g. mg.shop.example")
    mailgun_base_url: str = Field(
        "https://api.mailgun.net", description="EU region: https://api.eu.mailgun.net"
    )
    ses_region: str | None = Field(None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d+$")
    ses_access_key_id: str | None = None
    ses_secret_access_key: SecretStr | None = None
    ses_session_token: SecretStr | None = Field(None, description="for temporary credentials")
    ses_configuration_set: str | None = None
    ses_base_url: str | None = Field(
        None, description="default https://email.<region>.amazonaws.com"
    )

    sender_name: str = "Crosssell Shop"
    sender_address: str = "offers@shop.example"
    reply_to: str | None = None
    message_id_domain: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$",
        description="right side of Message-ID; default: the sender address's domain",
    )
    feedback_sender_id: str = Field(
        "crosssell",
        pattern=r"^[A-Za-z0-9-]{5,15}$",
        description="SenderId of the Feedback-ID header (Gmail: 5-15 characters)",
    )
    public_url: str = "https://shop.example"
    unsubscribe_mailto: str = "unsubscribe@shop.example"
    unsubscribe_keys: SecretStr | None = Field(
        None, description="kid:secret[,kid:secret…]; the first signs; default: var/ key file"
    )
    shop_name: str = "Crosssell Shop"
    sender_organization: str = Field(
        "Crosssell Shop S.R.L.",
        min_length=1,
        description="legal name of the sender, shown in every email's footer",
    )
    postal_address: str | None = Field(
        None,
        description="the sender's physical postal address, shown in every email's footer; "
        "required by CAN-SPAM and by mailbox providers' bulk sender rules",
    )
    cart_link_template: str = Field(
        "{public_url}/cart/add?sku={skus}&coupon={coupon}",
        description="the call to action's link: {public_url}, {skus} (comma-separated) and "
        "{coupon} (empty without one); UTM parameters are added",
    )

    default_timezone: str = Field("UTC", description="IANA zone for customers without one")
    default_locale: str = "en"
    max_emails_per_customer: int = Field(3, ge=1)
    cap_window: str = "7d"
    max_campaigns_per_event: int = Field(1, ge=1)
    over_cap_policy: Literal["drop", "defer"] = Field(
        "drop", description="over the global cap: drop the email, or defer it until it fits"
    )
    quiet_hours: str | None = Field("21:00-08:00", description="local quiet hours, HH:MM-HH:MM")
    min_gap: str = Field(
        "20h", description="least time between two marketing emails to one customer; 0: off"
    )

    recommendations_min_support: int = Field(
        3, ge=1, description="co-buyers a pair needs before it is recommended"
    )
    recommendations_top_k: int = Field(20, ge=1, le=200, description="partners kept per product")
    recommendations_rebuild_every: str = Field(
        "1d", description="how often the Celery beat schedule rebuilds recommendations"
    )
    postmark_webhook_username: str | None = None
    postmark_webhook_password: SecretStr | None = None
    sendgrid_webhook_verification_key: str | None = Field(
        None, description="base64 public key of SendGrid's signed event webhook"
    )
    mailgun_webhook_signing_key: SecretStr | None = None
    ses_sns_topic_arns: str | None = Field(
        None, description="comma-separated SNS topic ARNs allowed to post SES events"
    )
    metrics_port: int = Field(0, ge=0, le=65535, description="serve /metrics here; 0: off")
    metrics_host: str = Field("127.0.0.1", description="address the metrics server binds")
    log_format: Literal["text", "json"] = Field(
        "text", description="text, or json: one object per line (docs/operations.md)"
    )
    worker_metrics_port: int = Field(
        0, ge=0, le=65535, description="the Celery worker serves /metrics here; 0: off"
    )
    activity_publish: bool = Field(
        False, description="publish email_sent, email_bounced, … to the activity exchange"
    )
    activity_exchange: str = Field(
        "crosssell.activity", description="durable topic exchange of the activity events"
    )
    activity_retention: str = Field(
        "7d", description="activity outbox rows are deleted after this (published or not)"
    )
    forget_key: SecretStr | None = Field(
        None, description="HMAC key for forgotten addresses; default: a key file in var_dir"
    )
    ingest_batch: int = Field(
        500,
        ge=1,
        le=10000,
        description="events the consumer stores per transaction (its prefetch is twice this)",
    )
    ingest_linger: float = Field(
        0.05, gt=0, le=10, description="seconds a batch waits for more events after its first"
    )
    dispatch_interval: float = Field(
        1.0,
        gt=0,
        le=MAX_SECONDS,
        description="seconds between dispatcher polls (sequence steps, expiry, the sweep, "
        "sends that became due later)",
    )
    dispatch_wakeup: bool = Field(
        True,
        description="ingest wakes the dispatcher when it commits a send due now "
        "(PostgreSQL LISTEN/NOTIFY, or in-process in `crosssell run`); off: poll only",
    )
    dispatch_batch: int = Field(500, ge=1)
    dispatch_max_queued: int = Field(
        2000, ge=1, description="most sends waiting in the broker at once (back-pressure)"
    )
    requeue_after: str = Field("60s", description="re-enqueue a queued send not started by then")
    sending_timeout: str = Field(
        "10m",
        description="a send claimed without a lease (by a worker of an earlier version) "
        "still `sending` after this is reported ambiguous",
    )
    delivery_batch: int = Field(50, ge=1, description="sends per deliver task")
    delivery_spread: int = Field(
        1,
        ge=1,
        description="a dispatch pass of fewer sends than this many full batches is split "
        "into this many tasks, so that idle worker threads share it; 1: tasks of "
        "delivery_batch only (each extra task costs the worker a claim, lease and commit)",
    )
    delivery_lease: str = Field(
        "60s",
        description="a worker's claim on its batch lasts this long, renewed every third of "
        "it while it works; an expired one is recovered by the dispatcher",
    )
    rate_limit_per_second: float = Field(
        0,
        ge=0,
        le=1_000_000,
        description="provider sends per second, shared by all workers; 0: no limit",
    )
    rate_limit_burst: int = Field(5, ge=1, description="sends allowed at once above the rate")
    rate_limit_url: str = Field(
        "", description="where the shared rate lives: a redis:// URL, or empty: the database"
    )
    rate_limit_max_wait: float = Field(
        10.0,
        gt=0,
        le=MAX_SECONDS,
        description="longer waits give the send back to the outbox instead",
    )
    attribution_window: str = Field(
        "7d", description="a purchase this long after an email or holdout is its conversion"
    )
    max_attempts: int = Field(8, ge=1)
    max_claims: int = Field(
        5,
        ge=1,
        description="claims that expired without a hand-over (the worker died) before a "
        "send is failed as claims_exhausted",
    )
    retry_base_seconds: float = Field(
        30.0, gt=0, le=MAX_SECONDS, description="first retry delay; doubles each attempt"
    )

    @field_validator(
        "cap_window",
        "requeue_after",
        "sending_timeout",
        "delivery_lease",
        "recommendations_rebuild_every",
        "min_gap",
        "activity_retention",
        "attribution_window",
    )
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("database_url", "broker_url", "events_url", "rate_limit_url")
    @classmethod
    def _url_scheme(cls, value: str, info: ValidationInfo) -> str:
        """A scheme the product has a driver for (:data:`URL_SCHEMES`): anything else
        would start and fail later inside SQLAlchemy, kombu or redis with a traceback."""
        name = info.field_name or ""
        if value == "" or (name == "rate_limit_url" and value == "database"):
            return value
        scheme, separator, _ = value.partition("://")
        allowed = URL_SCHEMES[name]
        if not separator or scheme.lower() not in allowed:
            shown = scheme if separator else value
            raise ValueError(
                f"unsupported URL scheme {shown!r}: use one of {', '.join(sorted(allowed))}"
            )
        return value

    @field_validator("database_url", "broker_url", "events_url", "rate_limit_url")
    @classmethod
    def _url_host_and_port(cls, value: str, info: ValidationInfo) -> str:
        """A host the URL's own parser can read and a port from 0 to 65535: ``[::1`` or
        ``host:99999`` would pass the scheme check and end in a ``ValueError`` traceback
        inside SQLAlchemy, kombu or redis at the first connection. The database URL is
        read as SQLAlchemy reads it (a password may hold ``/``, ``?`` or ``#``); the
        others as kombu and redis do (``urllib``), each fail-over URL of a broker list
        joined by ``;``. The reason names neither the URL nor the parser's words: both
        may quote a piece of the password."""
        database = info.field_name == "database_url"
        urls = [value] if database else value.split(";")
        for url in urls if "://" in value else ():
            scheme = url.partition("://")[0].strip().lower()
            if scheme in SQLITE_SCHEMES or scheme == "unix" or "://" not in url:
                continue
            try:
                if database:
                    parsed = make_url(url.strip())
                    port, host = parsed.port, parsed.host or ""
                else:
                    split = urlsplit(url.strip())
                    port, host = split.port, split.hostname or ""
                # Port 0 is read as "no port" (the default one); an "@" left in the host
                # is a password's "@" not written %40, which splits the URL elsewhere
                # than the driver does.
                readable = (port is None or 1 <= port <= 65535) and "@" not in host
            except (ValueError, ArgumentError):
                readable = False
            if not readable:
                raise ValueError(
                    f"{scheme} URL whose host or port cannot be read: a port is a number from"
                    " 1 to 65535, an IPv6 address is written in brackets ([::1]:5432), and"
                    " an @ in a password is written %40"
                )
        return value

    @field_validator("database_url", "broker_url", "events_url")
    @classmethod
    def _sqlite_path(cls, value: str) -> str:
        """``sqlite:///relative.db`` or ``sqlite:////abs/path.db``: with two slashes only,
        the file name is read as a host, and the process fails later (or uses another
        file); with no file name at all it is a database in memory, which no other
        process (nor the next run) sees."""
        scheme, separator, rest = value.partition("://")
        path = rest.split("?", 1)[0]
        if separator and scheme.lower() in SQLITE_SCHEMES and path[:1] not in ("", "/"):
            raise ValueError(
                f"{value!r} names a host, not a file: use {scheme}:///relative/path.db "
                f"or {scheme}:////abs/path.db"
            )
        if separator and scheme.lower() in SQLITE_SCHEMES and not path.lstrip("/"):
            # SQLAlchemy reads this as a database in memory: each connection its own,
            # gone when the process ends; no service can share or keep it.
            raise ValueError(
                f"{value!r} names no file: use {scheme}:///relative/path.db "
                f"or {scheme}:////abs/path.db"
            )
        return value

    @field_validator("broker_url", "events_url")
    @classmethod
    def _embedded_broker_options(cls, value: str) -> str:
        """The embedded broker's URL takes one option, ``?lease=``: a misspelled key or a
        bad duration is refused at start, not met later as a traceback. (That it names a
        file is :meth:`_sqlite_path`'s rule, for every SQLite URL.)"""
        if not value.startswith(("sqlite://", "sqla+sqlite://")) or "?" not in value:
            return value
        from urllib.parse import parse_qs

        from worker.core.embedded_broker import lease_seconds

        unknown = sorted(set(parse_qs(value.split("?", 1)[1], keep_blank_values=True)) - {"lease"})
        if unknown:
            raise ValueError(f"the embedded broker takes only ?lease=, not {', '.join(unknown)}")
        lease_seconds(value)
        return value

    @field_validator("unsubscribe_keys")
    @classmethod
    def _unsubscribe_keys(cls, value: SecretStr | None) -> SecretStr | None:
        """``kid:secret[,kid:secret…]`` with secrets of at least 16 bytes, checked at start
        of every command instead of failing every send as ``internal_error``."""
        from worker.core.key_specs import parse_keys

        if value is not None and value.get_secret_value():
            parse_keys(value.get_secret_value())
        return value

    @field_validator("delivery_lease")
    @classmethod
    def _lease_outlasts_provider(cls, value: str, info: ValidationInfo) -> str:
        """A lease shorter than one provider call expires while the call still runs, and
        the dispatcher recovers a batch that is being sent. Compared with the timeout of
        the configured provider: ``smtp_timeout``, or connect + read for HTTP APIs."""
        provider = info.data.get("email_provider")
        if provider == "smtp" and "smtp_timeout" in info.data:
            timeout, source = info.data["smtp_timeout"], "CROSSSELL_SMTP_TIMEOUT"
        elif provider in HTTP_PROVIDERS and {"http_timeout", "http_connect_timeout"} <= set(
            info.data
        ):
            timeout = info.data["http_timeout"] + info.data["http_connect_timeout"]
            source = "CROSSSELL_HTTP_CONNECT_TIMEOUT + CROSSSELL_HTTP_TIMEOUT"
        else:
            return value
        if parse_duration(value).total_seconds() <= timeout:
            raise ValueError(
                f"{value} does not exceed the provider timeout ({source} = {timeout:g} s)"
            )
        return value

    @field_validator("email_provider")
    @classmethod
    def _provider(cls, value: str) -> str:
        """A name the provider registry knows; its own settings are checked when it is
        built (``check_provider`` at start), so a process that never sends (the CLI's
        reports) does not need them."""
        from worker.providers.registry import lookup

        return lookup(value).name

    @field_validator("sender_address", "reply_to", "unsubscribe_mailto")
    @classmethod
    def _address(cls, value: str | None, info: ValidationInfo) -> str | None:
        """One mailbox each, canonical (triggers.addresses); a bad one stops the process
        at start, naming the variable, instead of failing every send later."""
        if value is None or (value == "" and info.field_name == "reply_to"):
            return None
        try:
            if info.field_name == "reply_to":
                return canonical_mailbox(value)  # may be "Name <address>"
            if info.field_name == "unsubscribe_mailto":  # may carry ?hfields (RFC 6068)
                address, mark, query = value.partition("?")
                return canonical_address(address) + mark + query
            return canonical_address(value)
        except InvalidAddress as exc:
            setting = f"CROSSSELL_{(info.field_name or '').upper()}"
            raise ValueError(f"{setting} is not a single email address: {exc}") from None

    @field_validator(
        "var_dir",
        "campaigns_dir",
        "templates_dir",
        "complements_file",
        "segments_file",
        "attributes_file",
        mode="before",
    )
    @classmethod
    def _not_empty_path(cls, value: object) -> object:
        """An empty path would be read as the current directory, silently: a variable
        left empty (``CROSSSELL_CAMPAIGNS_DIR=``) loads whatever lies there."""
        if isinstance(value, str) and not value.strip():
            raise ValueError("is empty: give a path, or unset the variable for the default")
        return value

    @field_validator("campaigns_dir", "templates_dir")
    @classmethod
    def _existing_directory(cls, value: Path) -> Path:
        """A directory given explicitly must exist: a mistyped one would otherwise load
        no campaigns or find no template, and say only that. (Defaults are not checked:
        a project may have no ``config/`` of its own until it writes one.)"""
        if not value.is_dir():
            raise ValueError(f"no such directory: {value}")
        return value

    @field_validator("complements_file", "segments_file", "attributes_file")
    @classmethod
    def _existing_file(cls, value: Path) -> Path:
        """A definitions file given explicitly must exist: the defaults are optional (a
        missing one defines nothing), but a mistyped path would be ignored silently."""
        if not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @field_validator("default_timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        """An IANA key ``ZoneInfo`` loads, by the rule events' ``customer.timezone`` meets
        (triggers.events): an unknown one would fail every customer without a zone."""
        from triggers.events import is_known_timezone

        if not is_known_timezone(value):
            raise ValueError(
                f"unknown IANA time zone {value!r}: use a name such as UTC or Europe/Bucharest"
            )
        return value

    @field_validator("default_locale")
    @classmethod
    def _locale(cls, value: str) -> str:
        """A CLDR locale Babel knows, by the rule events' ``customer.locale`` meets
        (triggers.events): emails are rendered with it for customers without one."""
        from triggers.events import is_known_locale

        if not is_known_locale(value):
            raise ValueError(f"unknown locale {value!r}: use a locale such as en or ro-RO")
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        """An absolute http(s) URL with a host: the base of every link in every email
        (kept as given; users of it strip a trailing ``/``)."""
        try:
            url = _HTTP_URL.validate_python(value)
        except ValidationError:
            url = None
        from urllib.parse import urlsplit

        if (
            url is None
            or url.query is not None
            or url.fragment is not None
            # The text itself goes into every link and the List-Unsubscribe header: it
            # must be what was validated, an ASCII URI (an IDN host in its xn-- form).
            or not value.isascii()
            or any(ch.isspace() or ch in '<>"' for ch in value)
            or not urlsplit(value).hostname
        ):
            raise ValueError(
                f"{value!r} is not an absolute http(s) URL without query or fragment, "
                "in ASCII (an international domain in its xn-- form), such as "
                "https://shop.example"
            )
        return value

    @field_validator("sender_name")
    @classmethod
    def _display_name(cls, value: str) -> str:
        if any(ch in value for ch in "\r\n\x00"):
            raise ValueError("CROSSSELL_SENDER_NAME must be one line (no CR, LF or NUL)")
        return value

    @field_validator("quiet_hours")
    @classmethod
    def _quiet(cls, value: str | None) -> str | None:
        if value is None or value.strip().lower() in ("", "off"):
            return None
        start, _, end = value.partition("-")
        if parse_time_of_day(start) == parse_time_of_day(end):
            raise ValueError(
                "quiet hours that start and end at the same time are no hours or all of them:"
                " write 'off', or two different times such as 21:00-08:00"
            )
        return value

    @field_validator(
        "cap_window",
        "requeue_after",
        "delivery_lease",
        "sending_timeout",
        "recommendations_rebuild_every",
        "attribution_window",
        "activity_retention",
    )
    @classmethod
    def _longer_than_zero(cls, value: str) -> str:
        """A cap counted over no time caps nothing; a lease, a requeue delay or a sending
        timeout of 0 would take back every claim and every queued send at once; a rebuild
        every 0 s floods the broker with rebuilds; an attribution window of 0 counts no
        conversion; a retention of 0 deletes activity before it is published. (Only
        ``CROSSSELL_MIN_GAP`` may be 0: no spacing.)"""
        if parse_duration(value) <= timedelta(0):
            raise ValueError("must be longer than 0")
        return value

    @field_validator("cart_link_template")
    @classmethod
    def _cart_link(cls, value: str) -> str:
        """Only the known placeholders, ``{skus}`` among them, and an http(s) URL."""
        names = {name for _, name, _, _ in Formatter().parse(value) if name is not None}
        unknown = names - CART_LINK_PLACEHOLDERS
        if unknown:
            known = ", ".join(f"{{{name}}}" for name in sorted(CART_LINK_PLACEHOLDERS))
            raise ValueError(f"unknown placeholder {{{sorted(unknown)[0]}}}: use {known}")
        if "skus" not in names:
            raise ValueError("the cart link needs the {skus} placeholder")
        if not value.startswith(("https://", "http://", "{public_url}")):
            raise ValueError("the cart link must be an http(s) URL or start with {public_url}")
        return value

    @property
    def footer_postal_address(self) -> str:
        """The postal address for footers: the setting, or a demo one for a provider whose
        mail never leaves the machine (``file``); others refuse to start without it."""
        if self.postal_address:
            return self.postal_address
        from worker.providers.registry import lookup

        return "" if lookup(self.email_provider).reaches_inboxes else DEMO_POSTAL_ADDRESS

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.var_dir / 'crosssell.db'}"

    @property
    def resolved_broker_url(self) -> str:
        """The Celery broker; default: the embedded broker's file in ``var_dir``."""
        return _embedded_scheme(self.broker_url) or f"sqlite:///{self.var_dir / 'broker.db'}"

    @property
    def resolved_events_url(self) -> str:
        return _embedded_scheme(self.events_url) or self.resolved_broker_url

    @property
    def resolved_outbox_dir(self) -> Path:
        return self.outbox_dir or self.var_dir / "outbox"

    @property
    def quiet_bounds(self) -> tuple[time, time] | None:
        if not self.quiet_hours:
            return None
        start, _, end = self.quiet_hours.partition("-")
        return parse_time_of_day(start), parse_time_of_day(end)

    def policy(self) -> Policy:
        quiet = self.quiet_bounds
        return Policy(
            max_emails_per_customer=self.max_emails_per_customer,
            cap_window=parse_duration(self.cap_window),
            max_campaigns_per_event=self.max_campaigns_per_event,
            quiet_from=quiet[0] if quiet else None,
            quiet_to=quiet[1] if quiet else None,
            default_timezone=self.default_timezone,
            over_cap=self.over_cap_policy,
            min_gap=parse_duration(self.min_gap),
        )


def settings_error_lines(error: ValidationError) -> list[str]:
    """``  CROSSSELL_NAME: why`` for each problem of a :class:`Settings` ValidationError:
    what the ``crosssell`` commands and the Celery entry points print before exit 2."""
    return [
        f"  CROSSSELL_{'_'.join(str(part) for part in problem['loc']).upper()}: "
        f"{problem['msg'].removeprefix('Value error, ')}"
        for problem in error.errors()
    ]


# CROSSSELL_* variables read outside Settings: Alembic's migrations/env.py (README
# "Running on the production stack"), and the developer knobs of tests/ and bench/
# (README "Services the tests use", docs/testing.md) by prefix.
OTHER_VARIABLES = frozenset(
    {"MIGRATION_LOCK_WAIT", "MIGRATION_LOCK_TIMEOUT", "MIGRATION_STATEMENT_TIMEOUT"}
)
DEVELOPER_PREFIXES = ("TEST_", "BENCH_", "FAULT_", "SEQUENCE_")


def unknown_variables(environ: Mapping[str, str], also_known: Iterable[str] = ()) -> list[str]:
    """One warning text per ``CROSSSELL_*`` name in ``environ`` that nothing reads (a typo
    such as ``CROSSSELL_MAX_CLAIM``), with the closest known name if any; ``also_known``
    are further full names (a plug-in provider's own variables)."""
    known = [name.upper() for name in Settings.model_fields] + sorted(OTHER_VARIABLES)
    known += [name.upper().removeprefix("CROSSSELL_") for name in also_known]
    texts = []
    for name in sorted(environ):
        prefix, suffix = name[:10].upper(), name[10:].upper()
        if prefix != "CROSSSELL_" or suffix in known or suffix.startswith(DEVELOPER_PREFIXES):
            continue
        # Compared without the shared prefix, which would make every name look close.
        close = difflib.get_close_matches(suffix, known, n=1)
        hint = f"; did you mean CROSSSELL_{close[0]}?" if close else ""
        texts.append(f"{name} is not a crosssell setting and is ignored{hint}")
    return texts


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment on first use; unknown
    ``CROSSSELL_*`` names are logged as warnings, not refused (deployments share env)."""
    from worker.providers.registry import lookup

    settings = Settings()
    provider_variables = lookup(settings.email_provider).settings.variables()
    for text in unknown_variables(os.environ, provider_variables):
        logging.getLogger(__name__).warning("%s", text)
    return settings
