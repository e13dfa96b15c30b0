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

Tokens are HMAC-signed with a key id (``CROSSSELL_UNSUBSCRIBE_KEYS``), so keys rotate
without breaking links already in inboxes while the old key stays configured.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from triggers.addresses import lookup_key
from worker.db import transaction
from worker.models import Customer, Suppression
from worker.runtime import Runtime
from worker.tokens import verify
from worker.webhooks import mailgun, postmark, sendgrid, ses
from worker.webhooks.apply import apply_events
from worker.webhooks.events import TrackingEvent, WebhookPayloadError, WebhookRejected

KINDS = {
    "cross_sell": "Products that go with what you bought",
    "upsell": "Better versions of products you own",
    "loyalty": "Loyalty bonuses and anniversaries",
    "reengagement": "Offers when you have not visited for a while",
}


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    document = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title></head>"
        '<body style="font-family: sans-serif; max-width: 36em; margin: 2em auto;">'
        f"<h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(document, status_code=status)


def _invalid() -> HTMLResponse:
    return _page(
        "This link is not valid",
        "<p>The link is damaged or no longer valid. Nothing was changed.</p>",
        400,
    )


def unsubscribe_customer(runtime: Runtime, customer_id: str, source: str) -> bool:
    """Suppress the customer's address and withdraw consent; idempotent. False if unknown."""
    now = datetime.now(UTC)
    with transaction(runtime.settings.resolved_database_url) as session:
        customer = session.get(Customer, customer_id)
        if customer is None:
            return False
        customer.email_marketing = False
        customer.updated_at = now
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


def create_app(runtime: Runtime) -> Starlette:
    keys = runtime.unsubscribe_keys
    url = runtime.settings.resolved_database_url

    def customer_of(request: Request) -> str | None:
        found = verify(keys, request.path_params["token"])
        return found[0] if found else None

    async def unsubscribe_page(request: Request) -> Response:
        if customer_of(request) is None:
            return _invalid()
        action = html.escape(str(request.url.path))
        return _page(
            "Unsubscribe",
            (
                f"<p>Stop all marketing email from {html.escape(runtime.settings.shop_name)}?</p>"
                f'<form method="post" action="{action}">'
                '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
                '<button type="submit">Unsubscribe</button></form>'
                '<p>Or <a href="../preferences/'
                + html.escape(request.path_params["token"])
                + '">choose which emails you get</a>.</p>'
            ),
        )

    async def unsubscribe(request: Request) -> Response:
        customer_id = customer_of(request)
        if customer_id is None:
            return _invalid()
        if not unsubscribe_customer(runtime, customer_id, "one-click"):
            return _page("Unsubscribed", "<p>You will not get marketing email from us.</p>")
        return _page(
            "Unsubscribed",
            "<p>Done: you will not get marketing email from us "
            "any more. It can take a few minutes to apply.</p>",
        )

    async def preferences(request: Request) -> Response:
        customer_id = customer_of(request)
        if customer_id is None:
            return _invalid()
        form = await request.form() if request.method == "POST" else None
        if form is not None and form.get("all") == "unsubscribe":
            unsubscribe_customer(runtime, customer_id, "preferences")
            return _page("Unsubscribed", "<p>You will not get marketing email from us.</p>")
        with transaction(url) as session:
            customer = session.get(Customer, customer_id)
            if customer is None:
                return _invalid()
            if form is not None:
                wanted = {str(kind) for kind in form.getlist("kinds")}
                customer.opted_out_kinds = sorted(set(KINDS) - wanted)
                customer.updated_at = datetime.now(UTC)
            opted_out = set(customer.opted_out_kinds or ())
        saved = "<p><strong>Saved.</strong></p>" if form is not None else ""
        boxes = "".join(
            f'<p><label><input type="checkbox" name="kinds" value="{kind}"'
            f"{'' if kind in opted_out else ' checked'}> {html.escape(label)}</label></p>"
            for kind, label in KINDS.items()
        )
        return _page(
            "Email preferences",
            (
                f'{saved}<form method="post">{boxes}<button type="submit">Save</button></form>'
                '<form method="post"><input type="hidden" name="all" value="unsubscribe">'
                '<p><button type="submit">Unsubscribe from all marketing email</button></p>'
                "</form>"
            ),
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
