"""SendGrid: ``POST /v3/mail/send`` with a Bearer API key (twilio.com/docs/sendgrid/
api-reference/mail-send/mail-send).

The request is JSON: one ``personalizations`` entry with the recipient, ``from`` and
``reply_to`` as ``{"email", "name"}``, ``subject``, ``content`` (``text/plain`` first, as
SendGrid requires, then ``text/html``) and ``headers`` (our Message-ID, List-Unsubscribe,
List-Unsubscribe-Post and X- headers; none is on SendGrid's reserved list, so it keeps
them, and its webhooks report our Message-ID as ``smtp-id``).

Addresses: an IDN domain goes as its A-labels. SendGrid does not support a UTF-8 local
part (it accepts the request and then drops the message as invalid, per its maintainers),
so such a send is refused before the request with ``UnsupportedAddress``.

An accepted message is answered ``202 Accepted`` with an empty body and the id in the
``X-Message-Id`` header. The event webhook's ``sg_message_id`` is that id followed by
``.filter…``, and ``worker.webhooks.sendgrid`` keeps the part before the first dot: so
we store ``X-Message-Id`` as it is.

Refusals: ``400 {"errors": [{"message", "field", "help"}]}`` — a hard bounce when the
field is a recipient address (``personalizations.N.to.N.email``), else permanent; 401 and
403 are our key (transient, ERROR log), except a 403 about an unverified Sender Identity,
which is an account refusal (``policy``); 429 is transient, and when there is no
``Retry-After`` the wait comes from ``X-RateLimit-Reset`` (epoch seconds).
"""

from __future__ import annotations

import re
import time

import httpx2
from pydantic import SecretStr

from worker.providers.base import (
    ConfigurationError,
    DeliveryError,
    Mailbox,
    OutgoingEmail,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from worker.providers.http import (
    MAX_RETRY_AFTER,
    BaseURL,
    HTTPProvider,
    HTTPSettings,
    json_body,
    require_content,
)
from worker.providers.registry import ProviderSpec
from worker.webhooks.sendgrid import WEBHOOK

DEFAULT_BASE_URL = "https://api.sendgrid.com"
_RECIPIENT_FIELD = re.compile(r"^personalizations\.\d+\.(to|cc|bcc)\.\d+\.email$")


class SendGridSettings(HTTPSettings):
    """The API key (required) and the API base URL (EU subusers: api.eu.sendgrid.com)."""

    sendgrid_api_key: SecretStr
    sendgrid_base_url: BaseURL = DEFAULT_BASE_URL


def _address(mailbox: Mailbox) -> dict[str, str]:
    return (
        {"email": mailbox.address, "name": mailbox.name}
        if mailbox.name
        else {"email": mailbox.address}
    )


def _errors(response: httpx2.Response) -> list[dict[str, object]]:
    body = json_body(response)
    found = body.get("errors") if isinstance(body, dict) else None
    return [item for item in found if isinstance(item, dict)] if isinstance(found, list) else []


class SendGridProvider(HTTPProvider):
    name = "sendgrid"
    credential_setting = "CROSSSELL_SENDGRID_API_KEY"

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        transport: httpx2.BaseTransport | None = None,
    ) -> None:
        if not api_key:
            variable = "CROSSSELL_SENDGRID_API_KEY"
            raise ConfigurationError(f"{variable} is not set", (variable,))
        super().__init__(base_url, timeout, connect_timeout, transport)
        self.api_key = api_key

    @classmethod
    def from_settings(cls, settings: SendGridSettings) -> SendGridProvider:
        return cls(
            settings.sendgrid_api_key.get_secret_value(),
            settings.sendgrid_base_url,
            timeout=settings.http_timeout,
            connect_timeout=settings.http_connect_timeout,
        )

    def build_request(self, email: OutgoingEmail) -> httpx2.Request:
        content = require_content(email)
        payload: dict[str, object] = {
            "personalizations": [{"to": [_address(content.recipient)]}],
            "from": _address(content.sender),
            "subject": content.subject,
            "content": [
                {"type": "text/plain", "value": content.text},
                {"type": "text/html", "value": content.html},
            ],
            "headers": dict(content.headers),
        }
        if content.reply_to is not None:
            payload["reply_to"] = _address(content.reply_to)
        return self.client.build_request(
            "POST",
            f"{self.base_url}/v3/mail/send",
            json=payload,
            headers={"Authorization": f"Bearer {self.api_key}"},
        )

    def parse_result(self, email: OutgoingEmail, response: httpx2.Response) -> str | None:
        return response.headers.get("X-Message-Id") or None

    def refine(self, response: httpx2.Response, error: DeliveryError) -> DeliveryError:
        errors = _errors(response)
        messages = "; ".join(str(item.get("message") or "") for item in errors)
        status = response.status_code
        if isinstance(error, TransientDeliveryError):
            if status == 429 and error.retry_after is None:
                error.retry_after = self._rate_limit_reset(response)
            if status == 403 and "sender identity" in messages.lower():
                return PermanentDeliveryError(f"sendgrid: {messages}"[:500], code=403, policy=True)
            return error
        if not errors:
            return error
        hard = any(_RECIPIENT_FIELD.match(str(item.get("field") or "")) for item in errors)
        return PermanentDeliveryError(f"sendgrid: {messages}"[:500], code=status, hard_bounce=hard)

    @staticmethod
    def _rate_limit_reset(response: httpx2.Response) -> float | None:
        try:
            reset = float(response.headers.get("X-RateLimit-Reset", ""))
        except ValueError:
            return None
        return min(max(reset - time.time(), 0.0), MAX_RETRY_AFTER)


PROVIDER = ProviderSpec(
    name="sendgrid",
    settings=SendGridSettings,
    sender=SendGridProvider.from_settings,
    summary="SendGrid's v3 Mail Send API (JSON fields, our headers)",
    webhook=WEBHOOK,
)
