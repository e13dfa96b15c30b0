"""``crosssell web``: unsubscribe and preference pages, health and metrics (ASGI).

* ``GET /u/{token}`` only shows a confirmation page: mail scanners and link previews
  follow links, so a GET never unsubscribes anyone.
* ``POST /u/{token}`` unsubscribes at once — the RFC 8058 one-click request
  (``List-Unsubscribe=One-Click``) that mailbox providers send, or the page's button. No
  cookie, no login, no redirect; repeating it changes nothing.
* ``GET``/``POST /preferences/{token}``: opt out of some campaign kinds, or of all email.
* ``POST /webhooks/{provider}``: provider events for every provider of the registry
  that declares a webhook (postmark, sendgrid, mailgun, ses), each provider's
  authentication checked first (401 when it fails); bounces and complaints suppress.
* ``/healthz`` (``{"status": "healthy"}`` with 200 when the database answers,
  ``{"status": "unhealthy"}`` with 503 when not: no host, port, role or error text) and
  ``/metrics`` (Prometheus).

Request bodies are capped per route *before* they are read (:class:`BodyLimit`):
:data:`WEBHOOK_BODY_LIMIT` for webhooks, :data:`FORM_BODY_LIMIT` for the pages' forms
and anything else; a larger body gets 413. Bodies that are not what the route expects
(invalid UTF-8, JSON nested 100,000 deep, wrong types) get a 4xx, never a 500.

The pages are Jinja templates under ``templates/pages/<language>/`` (en, ro, it ship),
shown in the customer's stored locale (``ro-RO`` -> ``ro``), else in the default locale.

Tokens are HMAC-signed with a key id (``CROSSSELL_UNSUBSCRIBE_KEYS``), so keys rotate
without breaking links already in inboxes while the old key stays configured.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from triggers.addresses import lookup_key
from worker.core.db import transaction
from worker.core.models import Customer, Suppression
from worker.core.settings import PROJECT_ROOT
from worker.email.tokens import verify
from worker.offers.catalog import lookup_tags
from worker.process.runtime import Runtime
from worker.providers.registry import webhook_for
from worker.records.customers import set_kind_preferences, withdraw_consent
from worker.webhooks import ses
from worker.webhooks.apply import apply_events
from worker.webhooks.events import TrackingEvent, WebhookPayloadError, WebhookRejected

log = logging.getLogger(__name__)

# Provider webhooks: an SNS message is at most 256 KiB, Mailgun and Postmark send one
# event per request. SendGrid batches events and documents no maximum batch size, so a
# 413 on /webhooks/sendgrid (counted by the HTTP server's access log) means raise this.
WEBHOOK_BODY_LIMIT = 1024 * 1024
# The unsubscribe and preference forms send a few short fields (under 200 bytes).
FORM_BODY_LIMIT = 16 * 1024


def body_limit_for(path: str) -> int:
    """The largest request body, in bytes, that the route at ``path`` reads."""
    return WEBHOOK_BODY_LIMIT if path.startswith("/webhooks/") else FORM_BODY_LIMIT


class BodyLimit:
    """ASGI middleware that refuses bodies over the route's limit without reading them.

    A ``Content-Length`` over the limit is answered 413 before a byte of the body is
    received; a body sent without one (``Transfer-Encoding: chunked``) or longer than it
    claimed is counted as it streams, and the read that crosses the limit raises a 413
    ``HTTPException`` inside the route, so at most ``limit`` bytes plus one chunk are
    ever held. A ``Content-Length`` that is not one decimal number is a 400 (RFC 9110
    §8.6; several different values are how request smuggling starts).
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int] = body_limit_for) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = {value for name, value in scope["headers"] if name == b"content-length"}
        if declared:
            value = declared.pop().strip()
            if declared or not value.isdigit():
                await PlainTextResponse("invalid Content-Length", 400)(scope, receive, send)
                return
            if int(value) > limit:
                await _too_large(limit)(scope, receive, send)
                return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(
                        413, f"request body is larger than {limit} bytes", headers=_CLOSE
                    )
            return message

        await self.app(scope, counted, send)


# After a 413 the rest of the body is not wanted: closing the connection stops the
# server from reading (and the client from sending) what is left of it.
_CLOSE = {"Connection": "close"}


def _too_large(limit: int) -> Response:
    return PlainTextResponse(f"request body is larger than {limit} bytes", 413, headers=_CLOSE)


# The campaign kinds a customer can opt out of, in the order the preferences page lists
# them; each page template labels them in its language.
KINDS = ("cross_sell", "upsell", "loyalty", "reengagement")
# The confirmation page's form field that tells its POST from an RFC 8058 one-click POST.
CONFIRMATION_FIELD = "confirmed"
PAGES = ("invalid", "unsubscribe", "unsubscribed", "preferences")


class Pages:
    """The customer-facing pages, one directory of templates per language tag
    (``templates/pages/ro/unsubscribe.html``), all extending ``layout.html``."""

    def __init__(self, directory: Path, default_locale: str) -> None:
        self.languages = sorted(
            path.name
            for path in directory.iterdir()
            if path.is_dir() and all((path / f"{page}.html").is_file() for page in PAGES)
        )
        if not self.languages:
            raise FileNotFoundError(f"no page templates in {directory}")
        self.default_locale = default_locale
        self.env = Environment(
            loader=FileSystemLoader(str(directory)),
            autoescape=select_autoescape(default=True),
            undefined=StrictUndefined,
            auto_reload=False,
        )

    def language(self, locale: str | None) -> str:
        """The page language for a customer's locale: the RFC 4647 lookup over the
        shipped languages, then the default locale, then English (or the first one)."""
        for tag in (*lookup_tags(locale), *lookup_tags(self.default_locale), "en"):
            if tag in self.languages:
                return tag
        return self.languages[0]

    def render(
        self, page: str, locale: str | None, status: int = 200, **values: Any
    ) -> HTMLResponse:
        lang = self.language(locale)
        template = self.env.get_template(f"{lang}/{page}.html")
        document = template.render(lang=lang, page=page, **values)
        return HTMLResponse(document, status_code=status)


async def _from_confirmation_page(request: Request) -> bool:
    """Whether an unsubscribe POST came from our confirmation page's form (which says so
    in a hidden field) rather than from a mailbox provider's RFC 8058 one-click request
    (``List-Unsubscribe=One-Click``, urlencoded or multipart). A body that cannot be
    parsed is not ours: it still unsubscribes, as one-click."""
    try:
        form = await request.form()
    except (HTTPException, MultiPartException):
        return False
    return bool(form.get(CONFIRMATION_FIELD))


def unsubscribe_customer(runtime: Runtime, customer_id: str, source: str) -> bool:
    """Withdraw the customer's marketing consent (recorded in the consent history with
    ``source``) and suppress their current address; idempotent. False if unknown."""
    now = datetime.now(UTC)
    with transaction(runtime.settings.resolved_database_url) as session:
        customer = session.get(Customer, customer_id, with_for_update=True)
        if customer is None:
            return False
        withdraw_consent(session, customer, source, now)
        key = lookup_key(customer.email) if customer.email else None
        if key and session.get(Suppression, key) is None:
            session.add(
                Suppression(
                    email=key,
                    reason="unsubscribe",
                    source=source,
                    created_at=now,
                )
            )
    return True


def parse_webhook(
    runtime: Runtime, provider: str, headers: dict[str, str], body: bytes
) -> list[TrackingEvent] | ses.SubscriptionConfirmation:
    """Authenticate and read one provider webhook, routed by the provider registry;
    LookupError if no provider has a webhook by that name or its secrets are not set.

    Signature ages and certificates are checked against the real clock, never a shifted
    one: they come from the outside world.
    """
    result = webhook_for(provider).receive(runtime.settings, headers, body, datetime.now(UTC))
    if result is None:
        raise LookupError(provider)
    return result


def customer_locale(runtime: Runtime, customer_id: str) -> str | None:
    """The customer's stored locale (None for an unknown customer or none stored)."""
    with transaction(runtime.settings.resolved_database_url) as session:
        customer = session.get(Customer, customer_id)
        return customer.locale if customer is not None else None


def create_app(runtime: Runtime) -> Starlette:
    keys = runtime.unsubscribe_keys
    url = runtime.settings.resolved_database_url
    # A templates directory of one's own may leave the pages out: the shipped ones serve.
    directory = runtime.settings.templates_dir / "pages"
    if not directory.is_dir():
        directory = PROJECT_ROOT / "templates" / "pages"
    pages = Pages(directory, runtime.settings.default_locale)
    shop_name = runtime.settings.shop_name

    def invalid() -> HTMLResponse:
        return pages.render("invalid", None, 400, shop_name=shop_name)

    def customer_of(request: Request) -> str | None:
        found = verify(keys, request.path_params["token"])
        return found[0] if found else None

    async def unsubscribe_page(request: Request) -> Response:
        customer_id = customer_of(request)
        if customer_id is None:
            return invalid()
        locale = await run_in_threadpool(customer_locale, runtime, customer_id)
        return pages.render(
            "unsubscribe",
            locale,
            shop_name=shop_name,
            action=str(request.url.path),
            confirmation_field=CONFIRMATION_FIELD,
            preferences_url="../preferences/" + request.path_params["token"],
        )

    async def unsubscribe(request: Request) -> Response:
        # The RFC 8058 body ("List-Unsubscribe=One-Click") carries nothing we need, but
        # reading it puts it under the route's body cap: over it is a 413 on every route.
        await request.body()
        customer_id = customer_of(request)
        if customer_id is None:
            return invalid()
        source = "confirmation-page" if await _from_confirmation_page(request) else "one-click"
        await run_in_threadpool(unsubscribe_customer, runtime, customer_id, source)
        locale = await run_in_threadpool(customer_locale, runtime, customer_id)
        return pages.render("unsubscribed", locale, shop_name=shop_name)

    async def preferences(request: Request) -> Response:
        if request.method == "POST":
            await request.body()  # under the body cap whatever its content type
        customer_id = customer_of(request)
        if customer_id is None:
            return invalid()
        form = await request.form() if request.method == "POST" else None
        if form is not None and form.get("all") == "unsubscribe":
            await run_in_threadpool(unsubscribe_customer, runtime, customer_id, "preference-page")
            locale = await run_in_threadpool(customer_locale, runtime, customer_id)
            return pages.render("unsubscribed", locale, shop_name=shop_name)
        with transaction(url) as session:
            customer = session.get(Customer, customer_id)
            if customer is None:
                return invalid()
            if form is not None:
                wanted = {str(kind) for kind in form.getlist("kinds")}
                set_kind_preferences(
                    session, customer, set(KINDS) - wanted, "preference-page", datetime.now(UTC)
                )
            opted_out = set(customer.opted_out_kinds or ())
            locale = customer.locale
            # Unsubscribed from everything: the kinds below send nothing until the person
            # subscribes again, and the page says so rather than show them all ticked.
            unsubscribed_all = customer.email_marketing is False
        return pages.render(
            "preferences",
            locale,
            shop_name=shop_name,
            saved=form is not None,
            kinds=KINDS,
            opted_out=opted_out,
            unsubscribed_all=unsubscribed_all,
        )

    async def webhook(request: Request) -> Response:
        provider = request.path_params["provider"]
        body = await request.body()
        headers = dict(request.headers)
        try:
            result = await run_in_threadpool(parse_webhook, runtime, provider, headers, body)
        except LookupError:
            return JSONResponse({"error": f"unknown or unconfigured provider {provider!r}"}, 404)
        except WebhookRejected as rejected:
            return JSONResponse({"error": f"rejected: {rejected}"}, 401)
        except WebhookPayloadError as bad:
            log.warning("%s webhook: payload not understood: %s", provider, bad)
            return JSONResponse({"error": f"bad payload: {bad}"}, 400)
        except OSError as unavailable:  # the SNS signing certificate could not be fetched
            log.warning("%s webhook: answered 503: %s", provider, unavailable)
            return JSONResponse({"error": "try again later"}, 503)
        if isinstance(result, ses.SubscriptionConfirmation):
            await run_in_threadpool(ses.confirm_subscription, result)
            return JSONResponse({"status": "subscription confirmed"})

        def apply() -> int:
            with transaction(url) as session:
                return apply_events(session, result, datetime.now(UTC)).applied

        applied = await run_in_threadpool(apply)
        return JSONResponse({"status": "ok", "events": len(result), "applied": applied})

    def database_answers() -> bool:
        try:
            with transaction(url) as session:
                session.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            # The reason is for the operator's log, never for whoever asks /healthz.
            log.warning("health check: the database did not answer: %s", exc.__class__.__name__)
            return False
        return True

    async def healthz(_: Request) -> Response:
        if await run_in_threadpool(database_answers):
            return JSONResponse({"status": "healthy"})
        return JSONResponse({"status": "unhealthy"}, 503)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(
        routes=[
            Route("/u/{token}", unsubscribe_page, methods=["GET"]),
            Route("/u/{token}", unsubscribe, methods=["POST"]),
            Route("/preferences/{token}", preferences, methods=["GET", "POST"]),
            Route("/webhooks/{provider}", webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        middleware=[Middleware(BodyLimit)],
    )
    # No redirect for a trailing slash: RFC 8058's one-click POST must be answered where
    # it lands, and Starlette would build the redirect from the request's Host header.
    app.router.redirect_slashes = False
    return app
