"""Amazon SES (API v2): ``POST /v2/email/outbound-emails`` signed with AWS Signature V4
(docs.aws.amazon.com/ses/latest/APIReference-V2/API_SendEmail.html).

The body is JSON: ``FromEmailAddress`` and ``Destination.ToAddresses`` (the envelope),
``Content.Raw.Data`` (our RFC 5322 bytes, base64) so the Message-ID and List-Unsubscribe
headers are exactly ours, and ``ConfigurationSetName`` when one is set (that is where
SES event publishing to SNS, and so ``worker.webhooks.ses``, is configured). The
endpoint is ``https://email.<region>.amazonaws.com``.

Addresses: SES does not support SMTPUTF8 (API reference, ``Destination``): an address must
be 7-bit ASCII, an IDN domain as Punycode (we send A-labels). A UTF-8 local part is
refused before the request with ``UnsupportedAddress``.

Signing uses botocore's ``SigV4Auth`` on an ``AWSRequest``, then copies the signed
headers onto the httpx2 request. botocore is AWS's own implementation, maintained with
every SDK release and independent of any HTTP client, so it signs a request we send
with httpx2 as well as one it sends itself; hand-written SigV4 is a classic source of
subtle canonicalisation bugs, and the small SigV4 packages for httpx target httpx, not
httpx2. Credentials come from our settings only (no AWS credential chain), so the
worker never probes instance metadata or files it was not told about.

An accepted message is answered ``200 {"MessageId": "…"}``; SES notifications name the
message by that id (``mail.messageId``), so it is the provider id.

Errors carry their type in ``x-amzn-ErrorType`` (``Name:…``) or the body's ``__type``
(``…#Name``), and a ``message``:

==========================================  ==========================================
TooManyRequestsException, LimitExceeded…,   transient (sending rate or quota)
Throttling…, HTTP 429, 5xx
AccountSuspendedException,                  ``policy``: SES stopped our account or
SendingPausedException,                     does not accept the sender; the operator
MailFromDomainNotVerifiedException,         must act, the customer is not suppressed
MessageRejected "… not verified" (sandbox)
MessageRejected, BadRequestException        permanent
signature/credential errors (HTTP 403),     our settings: transient with an ERROR log
NotFoundException (configuration set)
==========================================  ==========================================
"""

from __future__ import annotations

import base64
import json

import httpx2
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from pydantic import Field, SecretStr

from worker.providers.base import (
    ConfigurationError,
    DeliveryError,
    OutgoingEmail,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from worker.providers.http import BaseURL, HTTPProvider, HTTPSettings, json_body
from worker.providers.registry import ProviderSpec
from worker.webhooks.events import json_text
from worker.webhooks.ses import WEBHOOK

SIGNING_NAME = "ses"
TRANSIENT_TYPES = frozenset(
    {"TooManyRequestsException", "LimitExceededException", "ThrottlingException"}
)
POLICY_TYPES = frozenset(
    {"AccountSuspendedException", "SendingPausedException", "MailFromDomainNotVerifiedException"}
)
SETTINGS_TYPES = frozenset({"NotFoundException"})


class SESSettings(HTTPSettings):
    """Region and access key (required), optional session token, configuration set and
    endpoint (default ``https://email.<region>.amazonaws.com``)."""

    ses_region: str = Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d+$")
    ses_access_key_id: str
    ses_secret_access_key: SecretStr
    ses_session_token: SecretStr | None = None
    ses_configuration_set: str | None = None
    ses_base_url: BaseURL | None = None


def default_base_url(region: str) -> str:
    return f"https://email.{region}.amazonaws.com"


def error_type(response: httpx2.Response) -> str:
    """The AWS error name, from the header or the body, without namespace or suffix."""
    name = response.headers.get("x-amzn-ErrorType", "").split(":", 1)[0]
    body = json_body(response)
    if not name and isinstance(body, dict):
        name = str(body.get("__type") or body.get("code") or "")
    return name.rsplit("#", 1)[-1].strip()


def error_message(response: httpx2.Response) -> str:
    body = json_body(response)
    if isinstance(body, dict):
        return str(body.get("message") or body.get("Message") or "")
    return response.text.strip()


class SESProvider(HTTPProvider):
    name = "ses"
    credential_setting = "CROSSSELL_SES_ACCESS_KEY_ID, CROSSSELL_SES_SECRET_ACCESS_KEY"

    def __init__(
        self,
        region: str,
        access_key_id: str,
        secret_access_key: str,
        session_token: str | None = None,
        configuration_set: str | None = None,
        base_url: str | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        transport: httpx2.BaseTransport | None = None,
    ) -> None:
        for value, setting in (
            (region, "CROSSSELL_SES_REGION"),
            (access_key_id, "CROSSSELL_SES_ACCESS_KEY_ID"),
            (secret_access_key, "CROSSSELL_SES_SECRET_ACCESS_KEY"),
        ):
            if not value:
                raise ConfigurationError(f"{setting} is not set", (setting,))
        super().__init__(base_url or default_base_url(region), timeout, connect_timeout, transport)
        self.signer = SigV4Auth(
            Credentials(access_key_id, secret_access_key, session_token or None),
            SIGNING_NAME,
            region,
        )
        self.configuration_set = configuration_set

    @classmethod
    def from_settings(cls, settings: SESSettings) -> SESProvider:
        token = settings.ses_session_token
        return cls(
            settings.ses_region,
            settings.ses_access_key_id,
            settings.ses_secret_access_key.get_secret_value(),
            token.get_secret_value() or None if token is not None else None,
            settings.ses_configuration_set,
            settings.ses_base_url,
            timeout=settings.http_timeout,
            connect_timeout=settings.http_connect_timeout,
        )

    def build_request(self, email: OutgoingEmail) -> httpx2.Request:
        payload: dict[str, object] = {
            "FromEmailAddress": email.sender,
            "Destination": {"ToAddresses": [email.recipient]},
            "Content": {"Raw": {"Data": base64.b64encode(email.data).decode("ascii")}},
        }
        if self.configuration_set:
            payload["ConfigurationSetName"] = self.configuration_set
        body = json.dumps(payload).encode("utf-8")
        url = f"{self.base_url}/v2/email/outbound-emails"
        signed = AWSRequest(
            method="POST", url=url, data=body, headers={"Content-Type": "application/json"}
        )
        self.signer.add_auth(signed)
        return self.client.build_request(
            "POST", url, content=body, headers=dict(signed.headers.items())
        )

    def parse_result(self, email: OutgoingEmail, response: httpx2.Response) -> str | None:
        return json_text(json_body(response), "MessageId")

    def refine(self, response: httpx2.Response, error: DeliveryError) -> DeliveryError:
        kind = error_type(response)
        message = error_message(response)
        text = f"ses: {kind or response.status_code}: {message}"[:500]
        status = response.status_code
        if kind in TRANSIENT_TYPES:
            retry_after = getattr(error, "retry_after", None)
            return TransientDeliveryError(text, code=status, retry_after=retry_after)
        if isinstance(error, TransientDeliveryError):
            return error
        if kind in SETTINGS_TYPES:
            return self.credentials_error(response)
        if kind in POLICY_TYPES or (kind == "MessageRejected" and "not verified" in message):
            return PermanentDeliveryError(text, code=status, policy=True)
        return PermanentDeliveryError(text, code=status)


PROVIDER = ProviderSpec(
    name="ses",
    settings=SESSettings,
    sender=SESProvider.from_settings,
    summary="Amazon SES v2 SendEmail, raw content (our MIME bytes), SigV4-signed",
    webhook=WEBHOOK,
)
