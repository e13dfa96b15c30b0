"""Mailgun: ``POST /v3/{domain}/messages.mime`` with HTTP Basic ``api:<key>``
(documentation.mailgun.com, Messages → "Send an email in MIME format").

The body is ``multipart/form-data`` with ``to`` (the envelope recipient) and ``message``
(our RFC 5322 bytes as a file), so the Message-ID, List-Unsubscribe and every other
header reach the recipient exactly as we built them. Accounts in the EU region use
``https://api.eu.mailgun.net`` as the base URL.

Addresses: Mailgun documents SMTPUTF8 support for outgoing messages through its HTTP API
(documentation.mailgun.com, "Internationalization"), so a UTF-8 local part is sent (the
receiving server must offer SMTPUTF8 too, or Mailgun reports a bounce); IDN domains go as
A-labels.

An accepted message is answered ``200 {"id": "<…@domain>", "message": "Queued. Thank
you."}``. Mailgun's webhooks carry the message's Message-ID header in angle brackets,
and ``worker.webhooks.mailgun`` uses it as the provider id too, so we store ``id`` the
same way, in brackets.

Refusals (documentation.mailgun.com, API Response Codes): ``400 {"message": …}`` is
permanent, a hard bounce when the message says the ``to`` address is not valid; 401
(and a 403 other than the one below) is our key, and 404 is a domain Mailgun does not
know — both our settings, so transient with an ERROR log; a 403 saying the domain is
"not allowed to send" (sandbox or disabled account) is an account refusal, ``policy``;
429 and 5xx are transient.
"""

from __future__ import annotations

import base64
from urllib.parse import quote

import httpx2
from pydantic import SecretStr

from worker.providers.base import (
    ConfigurationError,
    DeliveryError,
    OutgoingEmail,
    PermanentDeliveryError,
)
from worker.providers.http import BaseURL, HTTPProvider, HTTPSettings, json_body, summary
from worker.providers.registry import ProviderSpec
from worker.webhooks.events import json_text, normalize_message_id
from worker.webhooks.mailgun import WEBHOOK

DEFAULT_BASE_URL = "https://api.mailgun.net"


class MailgunSettings(HTTPSettings):
    """The API key and sending domain (both required) and the region's base URL."""

    mailgun_api_key: SecretStr
    mailgun_domain: str
    mailgun_base_url: BaseURL = DEFAULT_BASE_URL


def _message(response: httpx2.Response) -> str:
    body = json_body(response)
    text = body.get("message") if isinstance(body, dict) else None
    return str(text) if text else response.text.strip()


class MailgunProvider(HTTPProvider):
    name = "mailgun"
    accepts_utf8_addresses = True
    credential_setting = "CROSSSELL_MAILGUN_API_KEY and CROSSSELL_MAILGUN_DOMAIN"

    def __init__(
        self,
        api_key: str,
        domain: str,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        transport: httpx2.BaseTransport | None = None,
    ) -> None:
        for value, variable in (
            (api_key, "CROSSSELL_MAILGUN_API_KEY"),
            (domain, "CROSSSELL_MAILGUN_DOMAIN"),
        ):
            if not value:
                raise ConfigurationError(f"{variable} is not set", (variable,))
        super().__init__(base_url, timeout, connect_timeout, transport)
        token = base64.b64encode(f"api:{api_key}".encode()).decode("ascii")
        self.authorization = f"Basic {token}"
        self.domain = domain

    @classmethod
    def from_settings(cls, settings: MailgunSettings) -> MailgunProvider:
        return cls(
            settings.mailgun_api_key.get_secret_value(),
            settings.mailgun_domain,
            settings.mailgun_base_url,
            timeout=settings.http_timeout,
            connect_timeout=settings.http_connect_timeout,
        )

    def build_request(self, email: OutgoingEmail) -> httpx2.Request:
        return self.client.build_request(
            "POST",
            f"{self.base_url}/v3/{quote(self.domain, safe='')}/messages.mime",
            data={"to": email.recipient},
            files={"message": ("message.eml", email.data, "message/rfc822")},
            headers={"Authorization": self.authorization},
        )

    def parse_result(self, email: OutgoingEmail, response: httpx2.Response) -> str | None:
        # The webhooks' reading of a Message-ID, so that both name a message alike.
        return normalize_message_id(json_text(json_body(response), "id"))

    def refine(self, response: httpx2.Response, error: DeliveryError) -> DeliveryError:
        status = response.status_code
        message = _message(response)
        if status == 404:
            return self.credentials_error(response)
        if status == 403 and "not allowed to send" in message.lower():
            return PermanentDeliveryError(f"mailgun: {message}"[:500], code=403, policy=True)
        if status == 400:
            lowered = message.lower()
            hard = "'to'" in lowered or "to parameter" in lowered
            hard = hard and "not a valid address" in lowered
            return PermanentDeliveryError(
                f"mailgun: {message or summary(response)}"[:500], code=400, hard_bounce=hard
            )
        return error


PROVIDER = ProviderSpec(
    name="mailgun",
    settings=MailgunSettings,
    sender=MailgunProvider.from_settings,
    summary="Mailgun's messages.mime API (our MIME bytes as they are)",
    webhook=WEBHOOK,
)
