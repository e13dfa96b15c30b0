"""``crosssell web``: unsubscribe and preference pages, health and metrics (ASGI).

* ``GET /u/{token}`` only shows a confirmation page: mail scanners and link previews
  follow links, so a GET never unsubscribes anyone.
* ``POST /u/{token}`` unsubscribes at once — the RFC 8058 one-click request
  (``List-Unsubscribe=One-Click``) that mailbox providers send, or the page's button. No
  cookie, no login, no redirect; repeating it changes nothing.
* ``GET``/``POST /preferences/{token}``: opt out of some campaign kinds, or of all email.
* ``POST /webhooks/{postmark,sendgrid,mailgun,ses}``: provider events, each provider's
  authentication checked first (401 when it fails); bounces and complaints suppress.
* ``/healthz`` (database reachable) and ``/metrics`` (Prometheus).

The pages are Jinja templates under ``templates/pages/<language>/`` (en, ro, it ship),
shown in the customer's stored locale (``ro-RO`` -> ``ro``), else in the default locale.

Tokens are HMAC-signed with a key id (``CROSSSELL_UNSUBSCRIBE_KEYS``), so keys rotate
without breaking links already in inboxes while the old key stays configured.
"""

from __future__ import annotations

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
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from worker.catalog import lookup_tags
from worker.customers import set_kind_preferences, withdraw_consent
from worker.db import transaction
from worker.models import Customer, Suppression
from worker.runtime import Runtime
from worker.settings import PROJECT_ROOT
from worker.tokens import verify
from worker.webhooks import mailgun, postmark, sendgrid, ses
from worker.webhooks.apply import apply_events
from worker.webhooks.events import TrackingEvent, WebhookPayloadError, WebhookRejected

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
        if customer.email and session.get(Suppression, customer.email.lower()) is None:
            session.add(
                Suppression(
                    email=customer.email.lower(),
                    reason="unsubscribe",
                    source=source,
                    created_at=now,
                )
            )
    return True


def parse_webhook(
    runtime: Runtime, provider: str, headers: dict[str, str], body: bytes
) -> list[TrackingEvent] | ses.SubscriptionConfirmation:
    """Authenticate and read one provider webhook; LookupError if it is not configured.

    Signature ages and certificates are checked against the real clock, never a shifted
    one: they come from the outside world.
    """
    settings = runtime.settings
    now = datetime.now(UTC)
    if provider == "postmark" and settings.postmark_webhook_username:
        password = settings.postmark_webhook_password
        return postmark.parse(
            headers,
            body,
            username=settings.postmark_webhook_username,
            password=password.get_secret_value() if password else "",
        )
    if provider == "sendgrid" and settings.sendgrid_webhook_verification_key:
        return sendgrid.parse(headers, body, public_key=settings.sendgrid_webhook_verification_key)
    if provider == "mailgun" and settings.mailgun_webhook_signing_key:
        return mailgun.parse(
            headers,
            body,
            signing_key=settings.mailgun_webhook_signing_key.get_secret_value(),
            now=now,
        )
    if provider == "ses" and settings.ses_sns_topic_arns:
        topics = [arn.strip() for arn in settings.ses_sns_topic_arns.split(",") if arn.strip()]
        return ses.parse(headers, body, allowed_topic_arns=topics, now=now)
    raise LookupError(provider)


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
        customer_id = customer_of(request)
        if customer_id is None:
            return invalid()
        source = "confirmation-page" if await _from_confirmation_page(request) else "one-click"
        await run_in_threadpool(unsubscribe_customer, runtime, customer_id, source)
        locale = await run_in_threadpool(customer_locale, runtime, customer_id)
        return pages.render("unsubscribed", locale, shop_name=shop_name)

    async def preferences(request: Request) -> Response:
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
        return pages.render(
            "preferences",
            locale,
            shop_name=shop_name,
            saved=form is not None,
            kinds=KINDS,
            opted_out=opted_out,
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
            return JSONResponse({"error": f"bad payload: {bad}"}, 400)
        except OSError as unavailable:  # the SNS signing certificate could not be fetched
            return JSONResponse({"error": f"try again: {unavailable}"}, 503)
        if isinstance(result, ses.SubscriptionConfirmation):
            await run_in_threadpool(ses.confirm_subscription, result)
            return JSONResponse({"status": "subscription confirmed"})

        def apply() -> int:
            with transaction(url) as session:
                return apply_events(session, result, datetime.now(UTC)).applied

        applied = await run_in_threadpool(apply)
        return JSONResponse({"status": "ok", "events": len(result), "applied": applied})

    async def healthz(_: Request) -> Response:
        try:
            with transaction(url) as session:
                session.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            return JSONResponse({"status": "unavailable", "database": str(exc)[:200]}, 503)
        return JSONResponse({"status": "ok"})

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/u/{token}", unsubscribe_page, methods=["GET"]),
            Route("/u/{token}", unsubscribe, methods=["POST"]),
            Route("/preferences/{token}", preferences, methods=["GET", "POST"]),
            Route("/webhooks/{provider}", webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ]
    )
