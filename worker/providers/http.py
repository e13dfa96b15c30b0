"""What the HTTP email APIs share: one flow, one classification, one pooled client.

:class:`HTTPProvider` owns the send (the django-anymail shape): ``build_request`` →
POST with timeouts → classify the answer → ``parse_result``. A provider module overrides
only those steps, and ``refine`` to read its own error codes. A provider whose API has
an endpoint for several different messages in one request is a :class:`BatchEndpoint`:
``batch_limit`` and the three batch steps; ``send_many`` then sends through it
(Postmark's ``/email/batch``).

How an answer or a failure maps onto the error tree of :mod:`worker.providers.base`:

=============================================  =========================================
nothing reached the provider: connect error,   ``TransientDeliveryError``: retried with
connect/pool timeout, write failed mid-body    backoff
HTTP 429, HTTP 5xx                             ``TransientDeliveryError``, ``retry_after``
                                               from ``Retry-After`` (seconds or a date)
HTTP 401, 403 (our credentials, our settings)  ``TransientDeliveryError`` + an ERROR log
                                               naming the setting: the send waits for the
                                               operator instead of failing for good
other HTTP 4xx                                 ``PermanentDeliveryError``; the provider
                                               says which are invalid/inactive recipients
                                               (``hard_bounce``) or account refusals
                                               (``policy``)
body sent, no answer: read timeout, connection ``AmbiguousDeliveryError``: the provider
reset or closed mid-response                   may have the message, never retried
=============================================  =========================================

Why credentials are transient rather than ``policy``: a wrong or rotated key is fixed
in minutes by the operator, and the customer did nothing wrong; failing every send in
that window for good would lose them, while retrying costs nothing (nothing was
accepted) and ``max_attempts`` still bounds it. That is what the SMTP provider does
with an authentication failure. The provider's own decisions about our account
(suspended, paused, unverified sender) are ``policy`` refusals: an operator alert.
"""

from __future__ import annotations

import logging
import threading
from abc import abstractmethod
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Annotated, Any

import httpx2
from pydantic import AfterValidator, Field

from worker.core.redaction import redact
from worker.providers.base import (
    AmbiguousDeliveryError,
    BatchHandOver,
    DeliveryError,
    DeliveryResult,
    HandOver,
    MessageContent,
    OutgoingEmail,
    PermanentDeliveryError,
    Provider,
    TransientDeliveryError,
    UnsupportedAddress,
    no_hand_over,
)
from worker.providers.registry import ProviderSettings

log = logging.getLogger(__name__)
MAX_RETRY_AFTER = 24 * 3600.0  # a provider asking for more than a day is not believed
MAX_DETAIL = 500


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP-date."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def summary(response: httpx2.Response) -> str:
    """Status and the start of the body, for logs and the send's ``detail``."""
    body = response.text.strip().replace("\r", " ").replace("\n", " ")
    return f"HTTP {response.status_code}: {body}"[:MAX_DETAIL]


def json_body(response: httpx2.Response) -> Any:
    """The decoded JSON body, or None when the provider (or a proxy) sent something else."""
    try:
        return response.json()
    except ValueError:
        return None


def require_content(email: OutgoingEmail) -> MessageContent:
    """JSON APIs need the message as fields; an email without them is a programming error."""
    if email.content is None:
        raise ValueError(f"send {email.send_id}: this provider needs OutgoingEmail.content")
    return email.content


def _http_base_url(value: str) -> str:
    if not value.startswith(("https://", "http://")):
        raise ValueError("base URL must be http(s)://…")
    return value


#: a provider's API base URL setting: ``https://…`` (``http://`` for a local test server)
BaseURL = Annotated[str, AfterValidator(_http_base_url)]


class HTTPSettings(ProviderSettings):
    """The timeouts every HTTP API provider shares, in seconds."""

    http_timeout: float = Field(30.0, gt=0)
    http_connect_timeout: float = Field(10.0, gt=0)


class CredentialsRefused(TransientDeliveryError):
    """The provider refused our key or settings: retried, and logged for the operator."""


class HTTPProvider(Provider):
    """Base of the HTTP API providers; subclasses set ``name`` and the three steps."""

    #: the environment variable holding the secret, named in the credentials log line
    credential_setting: str = ""
    #: whether the provider documents accepting a UTF-8 local part (SMTPUTF8, RFC 6531);
    #: IDN domains are always sent as A-labels, which every provider takes
    accepts_utf8_addresses: bool = False

    def __init__(
        self,
        base_url: str,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        transport: httpx2.BaseTransport | None = None,
    ) -> None:
        if not base_url.startswith(("https://", "http://")):
            raise ValueError(f"{self.name}: base URL must be http(s)://…, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = httpx2.Timeout(timeout, connect=connect_timeout)
        self._transport = transport
        self._client: httpx2.Client | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> httpx2.Client:
        """One pooled client per provider, made on first use (never at import)."""
        with self._lock:
            if self._client is None:
                self._client = httpx2.Client(
                    timeout=self.timeout,
                    transport=self._transport,
                    follow_redirects=False,
                    headers={"User-Agent": "crosssell"},
                )
            return self._client

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # --- the steps a provider overrides ------------------------------------------------

    @abstractmethod
    def build_request(self, email: OutgoingEmail) -> httpx2.Request:
        """The provider's request for one message (URL, auth headers, body)."""

    @abstractmethod
    def parse_result(self, email: OutgoingEmail, response: httpx2.Response) -> str | None:
        """The provider's id for an accepted message, as its webhooks will name it."""

    def refine(self, response: httpx2.Response, error: DeliveryError) -> DeliveryError:
        """Sharpen the generic classification with the provider's own error codes."""
        return error

    # --- the flow ------------------------------------------------------------------------

    def send(self, email: OutgoingEmail, hand_over: HandOver = no_hand_over) -> DeliveryResult:
        self._check_address(email)
        client = self.client
        request = self.build_request(email)
        hand_over()  # the request is the step that cannot be taken back
        response = self._exchange(client, request)
        if response.is_success:
            return DeliveryResult(
                self.name, self._provider_id(email, self.parse_result(email, response), response)
            )
        raise self._refusal(response)

    def _check_address(self, email: OutgoingEmail) -> None:
        if email.needs_smtputf8 and not self.accepts_utf8_addresses:
            raise UnsupportedAddress(
                f"{self.name}: the API does not accept a UTF-8 local part (no SMTPUTF8)"
            )

    def _exchange(self, client: httpx2.Client, request: httpx2.Request) -> httpx2.Response:
        """Send the request; a transport failure becomes the error the table above says."""
        try:
            return client.send(request)
        except (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout) as exc:
            raise TransientDeliveryError(f"{self.name}: cannot connect: {exc!r}") from exc
        except (httpx2.WriteError, httpx2.WriteTimeout) as exc:
            # The body did not get through, so the provider cannot have accepted it.
            raise TransientDeliveryError(f"{self.name}: request not sent: {exc!r}") from exc
        except (httpx2.ReadTimeout, httpx2.ReadError, httpx2.RemoteProtocolError) as exc:
            raise AmbiguousDeliveryError(
                f"{self.name}: no answer after the request was sent: {exc!r}"
            ) from exc
        except httpx2.TransportError as exc:
            raise TransientDeliveryError(f"{self.name}: request failed: {exc!r}") from exc

    def _provider_id(
        self, email: OutgoingEmail, provider_id: str | None, response: httpx2.Response
    ) -> str:
        if provider_id:
            return provider_id
        # Accepted all the same; only webhook matching by provider id suffers.
        log.error(
            "%s accepted send %s without an id we could read (%s); webhooks will "
            "be matched by Message-ID only",
            self.name,
            email.send_id,
            redact(summary(response)),
        )
        return email.message_id

    def _refusal(self, response: httpx2.Response) -> DeliveryError:
        """The error for a non-2xx answer, logged for the operator when it is our key."""
        error = self.refine(response, self.classify(response))
        if isinstance(error, CredentialsRefused):
            log.error(
                "%s refused our credentials or settings (HTTP %s); check %s: %s",
                self.name,
                response.status_code,
                self.credential_setting or "the provider settings",
                redact(summary(response)),
            )
        return error

    def classify(self, response: httpx2.Response) -> DeliveryError:
        """The generic reading of an HTTP error status (see the module docstring)."""
        status = response.status_code
        text = summary(response)
        if status == 429 or status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return TransientDeliveryError(
                f"{self.name}: {text}", code=status, retry_after=retry_after
            )
        if status in (401, 403):
            return self.credentials_error(response)
        if 400 <= status < 500:
            return PermanentDeliveryError(f"{self.name}: {text}", code=status)
        # 1xx/3xx: a redirect or a proxy in the way; nothing was accepted.
        return TransientDeliveryError(f"{self.name}: unexpected {text}", code=status)

    def credentials_error(self, response: httpx2.Response) -> CredentialsRefused:
        """Our credentials or settings were refused: keep the send, tell the operator."""
        return CredentialsRefused(
            f"{self.name}: credentials refused: {summary(response)}", code=response.status_code
        )


class BatchEndpoint(HTTPProvider):
    """An HTTP provider whose API has an endpoint for several *different* messages in one
    request (Postmark's ``/email/batch``): ``send_many`` sends through it. The other HTTP
    providers have none (docs/delivery.md says why for each) and send one request a
    message, so ``isinstance(provider, BatchEndpoint)`` is what says a provider batches."""

    #: the most messages one request to the batch endpoint may carry (the API's maximum)
    batch_limit: int
    #: the largest body, in bytes, that endpoint takes, 0 for no limit (a message alone
    #: may exceed it: the provider then refuses that request, and only that message meets
    #: the refusal)
    batch_bytes_limit: int = 0

    @property
    def answers_together(self) -> bool:
        return self.batch_limit > 1

    @abstractmethod
    def build_batch_item(self, email: OutgoingEmail) -> bytes:
        """One message as an element of the batch request body, encoded once, so that
        its size is known before the request."""

    @abstractmethod
    def build_batch_request(self, items: Sequence[bytes]) -> httpx2.Request:
        """The one request carrying ``items``, in order."""

    @abstractmethod
    def parse_batch_result(
        self, emails: Sequence[OutgoingEmail], response: httpx2.Response
    ) -> list[str | DeliveryError | None] | None:
        """Per message of an accepted batch request: its provider id (None when it cannot
        be read) or the error the provider gave it; None when the answer cannot be read
        message by message."""

    def send_many(
        self, emails: Sequence[OutgoingEmail], hand_over: BatchHandOver
    ) -> list[DeliveryResult | Exception]:
        """Through the batch endpoint, as few requests as ``batch_limit`` and
        ``batch_bytes_limit`` allow.

        Every message of a request is handed over immediately before that request; one
        whose hand-over raises is left out of it, its entry that exception. A failure of
        the whole request (transport, 429/5xx, credentials, a malformed request) is every
        included message's entry; a 2xx answer whose per-message results cannot be read
        makes them all ambiguous, since the provider may have accepted any of them.
        A single message goes to the single-message endpoint: its answer is the one the
        API documents for one message (``Retry-After``, the error body), not an entry of
        a batch.
        """
        if len(emails) == 1:
            return super().send_many(emails, hand_over)
        results: list[DeliveryResult | Exception | None] = [None] * len(emails)
        items: dict[int, bytes] = {}
        for index, email in enumerate(emails):
            try:
                self._check_address(email)
                items[index] = self.build_batch_item(email)
            except Exception as exc:  # refused before anything is handed over
                results[index] = exc
        for chunk in self._requests(items):
            self._send_batch(emails, chunk, items, hand_over, results)
        return [self._filled(entry) for entry in results]

    def _requests(self, items: dict[int, bytes]) -> list[list[int]]:
        """The messages of each request, in order, within both limits."""
        requests: list[list[int]] = []
        size = 0
        for index, item in items.items():
            added = len(item) + 1  # and a separator
            fits = not self.batch_bytes_limit or size + added <= self.batch_bytes_limit
            if requests and len(requests[-1]) < self.batch_limit and fits:
                requests[-1].append(index)
                size += added
            else:
                requests.append([index])
                size = 2 + added  # the brackets of the array
        return requests

    @staticmethod
    def _filled(entry: DeliveryResult | Exception | None) -> DeliveryResult | Exception:
        if entry is None:
            raise AssertionError("a message of the batch got no entry")
        return entry

    def _send_batch(
        self,
        emails: Sequence[OutgoingEmail],
        indexes: list[int],
        items: dict[int, bytes],
        hand_over: BatchHandOver,
        results: list[DeliveryResult | Exception | None],
    ) -> None:
        client = self.client
        included: list[int] = []
        for index in indexes:
            try:
                hand_over(index)
            except Exception as exc:  # the claim failed: this message must not leave
                results[index] = exc
            else:
                included.append(index)
        if not included:
            return
        try:
            request = self.build_batch_request([items[index] for index in included])
            response = self._exchange(client, request)
            if not response.is_success:
                raise self._refusal(response)
            outcomes = self.parse_batch_result([emails[index] for index in included], response)
        except Exception as exc:  # the whole request: every message in it met it
            for index in included:
                results[index] = exc
            return
        if outcomes is None or len(outcomes) != len(included):
            log.error(
                "%s accepted a batch of %d with an answer we cannot read per message (%s)",
                self.name,
                len(included),
                redact(summary(response)),
            )
            for index in included:
                results[index] = AmbiguousDeliveryError(
                    f"{self.name}: batch accepted, per-message results unreadable: "
                    f"{summary(response)}"
                )
            return
        for index, outcome in zip(included, outcomes, strict=True):
            if isinstance(outcome, DeliveryError):
                results[index] = outcome
            else:
                provider_id = self._provider_id(emails[index], outcome, response)
                results[index] = DeliveryResult(self.name, provider_id)
