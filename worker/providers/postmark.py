"""Postmark: ``POST /email`` with the server token (postmarkapp.com/developer/api/email-api).

The request is JSON: ``From``, ``To``, ``ReplyTo`` (``Name <address>``, a non-ASCII name
RFC 2047-encoded as in our MIME), ``Subject``, ``HtmlBody``, ``TextBody``, ``Headers``
(a list of ``{"Name", "Value"}``: our Message-ID, List-Unsubscribe, List-Unsubscribe-Post
and X- headers) and ``MessageStream``; the token goes in ``X-Postmark-Server-Token``.

Addresses: an IDN domain goes as its A-labels (``ana@xn--exmple-cua.ro``). Postmark does
not accept a UTF-8 local part (it answers ErrorCode 300 "Illegal email mailbox"; its
support has said Unicode recipient addresses are not supported), so such a send is
refused before the request with ``UnsupportedAddress``.

An accepted message is answered ``200 {"ErrorCode": 0, "MessageID": "<uuid>", …}``.
Postmark may put its own Message-ID on the message it sends, and its webhooks name the
message only by that ``MessageID`` (``worker.webhooks.postmark``), so that is what we
store as the provider id.

Refusals are ``422 {"ErrorCode": n, "Message": …}`` (postmarkapp.com/developer/api/
overview#error-codes). We read:

======================  ===============================================================
406 inactive recipient  Postmark suppressed the address after a hard bounce or a spam
                        complaint: a hard bounce for us too
300 invalid request     permanent; a hard bounce when it is the ``To`` address that is
                        invalid (it can never be delivered)
400, 401, 405, 412, 413 sender signature missing or unconfirmed, account out of credits,
                        pending or not allowed to send: ``policy`` (operator alert)
10 bad token            our credentials: transient with an ERROR log (see http.py)
100 maintenance, 429    transient
======================  ===============================================================

A batch (``send_many``) goes to ``POST /email/batch``: a JSON array of the same message
objects, at most 500 messages and 50 MB a request (postmarkapp.com/developer/user-guide/
send-email-with-api/batch-emails); each message is encoded once, so that a batch is split
by size before anything is handed over. Postmark answers ``200`` even when some messages
are refused, with one ``{"ErrorCode", "Message", "MessageID", …}`` per message in the
request's order; a refused message's entry is classified as the ``422`` that
``POST /email`` would have given it (the table above, ``code`` 422). A ``401``, a
``422`` (a malformed request), ``429`` or ``5xx`` answers for the whole request and is
every message's entry.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import httpx2
from pydantic import SecretStr

from worker.providers.base import (
    ConfigurationError,
    DeliveryError,
    OutgoingEmail,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from worker.providers.http import (
    BaseURL,
    BatchEndpoint,
    CredentialsRefused,
    HTTPSettings,
    json_body,
    require_content,
)
from worker.providers.registry import ProviderSpec
from worker.webhooks.events import json_text
from worker.webhooks.postmark import WEBHOOK

DEFAULT_BASE_URL = "https://api.postmarkapp.com"
INACTIVE_RECIPIENT = 406
INVALID_REQUEST = 300
BAD_TOKEN = 10
TRANSIENT_CODES = frozenset({100, 429})
ACCOUNT_CODES = frozenset({400, 401, 405, 412, 413})
BATCH_LIMIT = 500  # messages per POST /email/batch (Postmark's batch-emails guide)
BATCH_BYTES_LIMIT = 50_000_000  # "up to 50 MB payload size" (the same guide), decimal MB
REFUSED = 422  # the status POST /email answers a refused message with


class PostmarkSettings(HTTPSettings):
    """The server token (required), the message stream and the API base URL."""

    postmark_server_token: SecretStr
    postmark_message_stream: str = "outbound"
    postmark_base_url: BaseURL = DEFAULT_BASE_URL


class PostmarkProvider(BatchEndpoint):
    name = "postmark"
    credential_setting = "CROSSSELL_POSTMARK_SERVER_TOKEN"
    batch_limit = BATCH_LIMIT
    batch_bytes_limit = BATCH_BYTES_LIMIT

    def __init__(
        self,
        server_token: str,
        message_stream: str = "outbound",
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        transport: httpx2.BaseTransport | None = None,
    ) -> None:
        if not server_token:
            variable = "CROSSSELL_POSTMARK_SERVER_TOKEN"
            raise ConfigurationError(f"{variable} is not set", (variable,))
        super().__init__(base_url, timeout, connect_timeout, transport)
        self.server_token = server_token
        self.message_stream = message_stream

    @classmethod
    def from_settings(cls, settings: PostmarkSettings) -> PostmarkProvider:
        return cls(
            settings.postmark_server_token.get_secret_value(),
            settings.postmark_message_stream,
            settings.postmark_base_url,
            timeout=settings.http_timeout,
            connect_timeout=settings.http_connect_timeout,
        )

    def build_request(self, email: OutgoingEmail) -> httpx2.Request:
        return self._post("/email", self._message(email))

    def _message(self, email: OutgoingEmail) -> dict[str, object]:
        """The message object ``POST /email`` takes, and each element of a batch."""
        content = require_content(email)
        payload: dict[str, object] = {
            "From": content.sender.formatted(),
            "To": content.recipient.formatted(),
            "Subject": content.subject,
            "HtmlBody": content.html,
            "TextBody": content.text,
            "Headers": [{"Name": name, "Value": value} for name, value in content.headers],
            "MessageStream": self.message_stream,
        }
        if content.reply_to is not None:
            payload["ReplyTo"] = content.reply_to.formatted()
        return payload

    def build_batch_item(self, email: OutgoingEmail) -> bytes:
        return json.dumps(self._message(email), ensure_ascii=False, separators=(",", ":")).encode()

    def build_batch_request(self, items: Sequence[bytes]) -> httpx2.Request:
        return self._post(
            "/email/batch",
            content=b"[" + b",".join(items) + b"]",
            content_type="application/json",
        )

    def _post(
        self,
        path: str,
        payload: object = None,
        content: bytes | None = None,
        content_type: str | None = None,
    ) -> httpx2.Request:
        headers = {"Accept": "application/json", "X-Postmark-Server-Token": self.server_token}
        if content_type is not None:
            headers["Content-Type"] = content_type
        return self.client.build_request(
            "POST", f"{self.base_url}{path}", json=payload, content=content, headers=headers
        )

    def parse_batch_result(
        self, emails: Sequence[OutgoingEmail], response: httpx2.Response
    ) -> list[str | DeliveryError | None] | None:
        body = json_body(response)
        if not isinstance(body, list) or not all(isinstance(item, dict) for item in body):
            return None
        outcomes: list[str | DeliveryError | None] = []
        for item in body:
            code = item.get("ErrorCode", 0)
            if code == 0:
                outcomes.append(json_text(item, "MessageID"))
                continue
            if not isinstance(code, int) or isinstance(code, bool):
                return None
            error = PermanentDeliveryError(f"postmark: ErrorCode {code}", code=REFUSED)
            outcomes.append(self._refined(code, str(item.get("Message") or ""), REFUSED, error))
        return outcomes

    def parse_result(self, email: OutgoingEmail, response: httpx2.Response) -> str | None:
        body = json_body(response)
        if not isinstance(body, dict) or body.get("ErrorCode", 0) != 0:
            return None
        return json_text(body, "MessageID")

    def refine(self, response: httpx2.Response, error: DeliveryError) -> DeliveryError:
        body = json_body(response)
        code = body.get("ErrorCode") if isinstance(body, dict) else None
        if not isinstance(code, int) or isinstance(code, bool):
            return error
        if code == BAD_TOKEN:
            return self.credentials_error(response)
        message = str(body.get("Message") or "") if isinstance(body, dict) else ""
        return self._refined(code, message, response.status_code, error)

    def _refined(self, code: int, message: str, status: int, error: DeliveryError) -> DeliveryError:
        """``error`` sharpened by Postmark's ErrorCode (the table in the module docstring)."""
        text = f"postmark: ErrorCode {code}: {message}"[:500]
        if code == BAD_TOKEN:
            return CredentialsRefused(f"postmark: credentials refused: {text}", code=status)
        if code in TRANSIENT_CODES:
            retry_after = getattr(error, "retry_after", None)
            return TransientDeliveryError(text, code=status, retry_after=retry_after)
        if isinstance(error, TransientDeliveryError):
            return error  # a 5xx keeps its meaning whatever the body says
        if code == INACTIVE_RECIPIENT:
            return PermanentDeliveryError(text, code=status, hard_bounce=True)
        if code == INVALID_REQUEST:
            return PermanentDeliveryError(text, code=status, hard_bounce="'To'" in message)
        if code in ACCOUNT_CODES:
            return PermanentDeliveryError(text, code=status, policy=True)
        return PermanentDeliveryError(text, code=status)


PROVIDER = ProviderSpec(
    name="postmark",
    settings=PostmarkSettings,
    sender=PostmarkProvider.from_settings,
    summary="Postmark's Email API (JSON fields, our headers; batches via /email/batch)",
    webhook=WEBHOOK,
)
