"""The HTTP email providers against a real local server speaking each provider's API.

The server (tests/support/email_api.py) checks credentials and bodies the way the real
APIs do and answers with their error shapes; faults are planned per recipient. A mock
transport is used only for what a real server cannot produce on demand here: a connect
timeout, a failed write, and a 2xx answer without an id.

This module holds what every HTTP provider shares (the flow, the classification table,
settings); the fixtures are in ``conftest.py``, the sample message in ``helpers.py``, and
what only one provider does in ``tests/worker/providers/test_<provider>.py``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

import httpx2
import pytest

from tests.support.email_api import EmailApiServer, Fault, closed_port
from tests.support.factories import make_settings
from tests.worker.providers.helpers import (
    PROVIDERS,
    sample_email,
    unchecked_recipient,
)
from worker.providers import make_provider
from worker.providers.base import (
    AmbiguousDeliveryError,
    DeliveryResult,
    OutgoingEmail,
    PermanentDeliveryError,
    TransientDeliveryError,
    UnsupportedAddress,
)
from worker.providers.http import (
    BatchEndpoint,
    CredentialsRefused,
    HTTPProvider,
    parse_retry_after,
)
from worker.providers.mailgun import MailgunProvider
from worker.providers.postmark import PostmarkProvider
from worker.providers.sendgrid import SendGridProvider
from worker.providers.ses import SESProvider
from worker.webhooks.events import json_text


def _parsed(data: bytes) -> EmailMessage:
    return message_from_bytes(data, policy=policy.default)


# --- the structured message ----------------------------------------------------------


def test_message_content_says_what_the_mime_says() -> None:
    email = sample_email()
    assert email.content is not None
    content, mime = email.content, _parsed(email.data)
    assert (content.sender.name, content.sender.address) == (
        mime["From"].addresses[0].display_name,
        mime["From"].addresses[0].addr_spec,
    )
    assert (content.recipient.name, content.recipient.address) == (
        mime["To"].addresses[0].display_name,
        mime["To"].addresses[0].addr_spec,
    )
    assert content.reply_to is not None
    assert (content.reply_to.name, content.reply_to.address) == (
        mime["Reply-To"].addresses[0].display_name,
        mime["Reply-To"].addresses[0].addr_spec,
    )
    assert content.subject == mime["Subject"]
    for name, value in content.headers:
        assert " ".join(str(mime[name]).split()) == value, name
    assert [name.lower() for name, _ in content.headers] == [
        "message-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "feedback-id",
    ]
    text, html = mime.get_body(("plain",)), mime.get_body(("html",))
    assert text is not None and html is not None
    assert text.get_content().strip() == content.text
    assert html.get_content().strip() == content.html
    # The formatted mailbox is what the MIME From line carries, byte for byte.
    from_line = next(
        line for line in email.data.decode("ascii").split("\r\n") if line.startswith("From: ")
    )
    assert from_line == f"From: {content.sender.formatted()}"


# --- accepted messages: request shape and the id we keep --------------------------------


@pytest.mark.parametrize("kind", PROVIDERS)
def test_accepted_message_is_recorded_once_with_the_provider_id(
    kind: str, api: EmailApiServer, opened: Callable[..., HTTPProvider]
) -> None:
    email = sample_email()
    result = opened(kind, api).send(email)
    [accepted] = api.by_message_id()[email.message_id]
    assert result.provider == kind
    assert accepted.recipient == "ioana@example.ro"
    expected = accepted.provider_message_id
    if kind == "mailgun":
        assert expected == email.message_id  # Mailgun keeps the Message-ID of our MIME
    assert result.provider_message_id == expected


@pytest.mark.parametrize("kind", ["mailgun", "ses"])
def test_raw_mime_providers_send_our_bytes_unchanged(
    kind: str, api: EmailApiServer, opened: Callable[..., HTTPProvider]
) -> None:
    email = sample_email()
    opened(kind, api).send(email)
    assert api.accepted[0].mime == email.data


@pytest.mark.parametrize("kind", PROVIDERS)
def test_one_pooled_connection_carries_many_messages(
    kind: str, api: EmailApiServer, opened: Callable[..., HTTPProvider]
) -> None:
    provider = opened(kind, api)
    for n in range(1, 5):
        provider.send(sample_email(n))
    assert len(api.accepted) == 4
    assert len({attempt.peer for attempt in api.attempts}) == 1


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"MessageID": "b7bc2f4a-e38e"}, "b7bc2f4a-e38e"),
        ({"MessageID": ""}, None),
        ({"MessageID": 42}, None),
        ({"MessageID": None}, None),
        ({"Message": "OK"}, None),
        (["b7bc2f4a-e38e"], None),
        (None, None),  # the answer was not JSON
    ],
)
def test_a_message_id_is_read_only_as_a_non_empty_string(
    body: object, expected: str | None
) -> None:
    """The one reading of an id in a JSON answer or event that providers and webhooks share."""
    assert json_text(body, "MessageID") == expected


@pytest.mark.parametrize("kind", PROVIDERS)
def test_only_a_provider_with_a_batch_endpoint_has_the_batch_steps(
    kind: str, api: EmailApiServer, opened: Callable[..., HTTPProvider]
) -> None:
    """Only Postmark's API takes different messages in one request (docs/delivery.md's
    table); the others have no batch steps to call, and their answers come one by one."""
    provider = opened(kind, api)
    batches = kind == "postmark"
    assert isinstance(provider, BatchEndpoint) == batches
    assert provider.answers_together == batches
    for step in ("build_batch_item", "build_batch_request", "parse_batch_result"):
        assert hasattr(provider, step) == batches, step


@pytest.mark.parametrize("kind", ["sendgrid", "mailgun", "ses"])
def test_without_a_batch_endpoint_a_batch_is_one_request_a_message_on_one_connection(
    kind: str, api: EmailApiServer, opened: Callable[..., HTTPProvider]
) -> None:
    """SendGrid, Mailgun and SES have no endpoint for different messages in one request
    (docs/delivery.md): each message is its own request, handed over just before it."""
    claim_lost = ConnectionError("database gone")
    seen: list[tuple[int, int]] = []

    def hand_over(index: int) -> None:
        seen.append((index, len(api.accepted)))
        if index == 1:
            raise claim_lost

    emails = [sample_email(n, f"r{n}@example.ro") for n in range(1, 5)]
    results = opened(kind, api).send_many(emails, hand_over)
    assert results[1] is claim_lost
    assert all(isinstance(results[i], DeliveryResult) for i in (0, 2, 3))
    assert seen == [(0, 0), (1, 1), (2, 1), (3, 2)], "one request after each hand-over"
    assert [a.recipient for a in api.accepted] == [f"r{n}@example.ro" for n in (1, 3, 4)]
    assert len({attempt.peer for attempt in api.attempts}) == 1


def test_a_closed_provider_opens_a_new_client_when_used_again(
    api: EmailApiServer, opened: Callable[..., HTTPProvider]
) -> None:
    provider = opened("postmark", api)
    provider.send(sample_email(1))
    first = provider.client
    provider.close()
    provider.send(sample_email(2))
    assert provider.client is not first
    assert len(api.accepted) == 2


# --- webhooks find what we stored ------------------------------------------------------


# --- classification ---------------------------------------------------------------------

HARD, POLICY, PLAIN = "hard", "policy", "plain"

PERMANENT_CASES = [
    ("postmark", Fault(422, 406, "You tried to send to recipient(s) marked as inactive."), HARD),
    ("postmark", Fault(422, 300, "Invalid 'To' address: 'ioana@example'."), HARD),
    ("postmark", Fault(422, 300, "Provide either email TextBody or HtmlBody or both."), PLAIN),
    ("postmark", Fault(422, 401, "Sender signature not confirmed."), POLICY),
    ("postmark", Fault(422, 412, "Account is pending approval."), POLICY),
    ("postmark", Fault(422, 1235, "The 'MessageStream' provided does not exist."), PLAIN),
    (
        "sendgrid",
        Fault(400, "personalizations.0.to.0.email", "Does not contain a valid address."),
        HARD,
    ),
    ("sendgrid", Fault(400, "content", "If present, text/plain must be first."), PLAIN),
    (
        "sendgrid",
        Fault(403, None, "The from address does not match a verified Sender Identity."),
        POLICY,
    ),
    ("sendgrid", Fault(413, None, "Payload too large"), PLAIN),
    ("mailgun", Fault(400, None, "'to' parameter is not a valid address."), HARD),
    ("mailgun", Fault(400, None, "Message size exceeds the limit"), PLAIN),
    (
        "mailgun",
        Fault(
            403,
            None,
            "Domain mg.shop.example is not allowed to send: Free accounts are "
            "for test purposes only.",
        ),
        POLICY,
    ),
    ("ses", Fault(400, "AccountSuspendedException", "Account suspended."), POLICY),
    ("ses", Fault(400, "SendingPausedException", "Sending paused for this account."), POLICY),
    ("ses", Fault(400, "MailFromDomainNotVerifiedException", "MAIL FROM not verified."), POLICY),
    (
        "ses",
        Fault(
            400,
            "MessageRejected",
            "Email address is not verified. The following "
            "identities failed the check in region EU-WEST-1: ioana@example.ro",
        ),
        POLICY,
    ),
    ("ses", Fault(400, "MessageRejected", "Message contains a virus."), PLAIN),
    ("ses", Fault(400, "BadRequestException", "Invalid input."), PLAIN),
]


@pytest.mark.parametrize(
    ("kind", "fault", "expected"),
    PERMANENT_CASES,
    ids=[f"{k}-{f.error or f.status}-{e}" for k, f, e in PERMANENT_CASES],
)
def test_provider_refusals_are_permanent_and_told_apart(
    kind: str,
    fault: Fault,
    expected: str,
    api: EmailApiServer,
    opened: Callable[..., HTTPProvider],
) -> None:
    api.plan("ioana@example.ro", fault)
    provider = opened(kind, api)
    with pytest.raises(PermanentDeliveryError) as refused:
        provider.send(sample_email())
    assert (refused.value.hard_bounce, refused.value.policy) == (
        expected == HARD,
        expected == POLICY,
    )
    assert refused.value.code == fault.status
    assert api.accepted == []
    provider.send(sample_email())  # the refusal was about that request only
    assert len(api.accepted) == 1


TRANSIENT_CASES = [
    ("postmark", Fault(429, 429, "Rate limit exceeded.", {"Retry-After": "2"}), 2.0),
    ("postmark", Fault(503), None),
    ("postmark", Fault(500, 100, "Maintenance"), None),
    ("sendgrid", Fault(429, None, "too many requests", {"Retry-After": "1"}), 1.0),
    ("sendgrid", Fault(502, None, "Bad gateway"), None),
    ("mailgun", Fault(429, None, "Too many requests", {"Retry-After": "3"}), 3.0),
    ("mailgun", Fault(500, None, "Internal error"), None),
    ("ses", Fault(429, "TooManyRequestsException", "Too many requests."), None),
    ("ses", Fault(400, "LimitExceededException", "Maximum sending rate exceeded."), None),
    ("ses", Fault(503, "ServiceUnavailable", "Service unavailable.", {"Retry-After": "4"}), 4.0),
]


@pytest.mark.parametrize(
    ("kind", "fault", "retry_after"),
    TRANSIENT_CASES,
    ids=[f"{k}-{f.error or f.status}" for k, f, _ in TRANSIENT_CASES],
)
def test_throttling_and_server_errors_are_transient_with_retry_after(
    kind: str,
    fault: Fault,
    retry_after: float | None,
    api: EmailApiServer,
    opened: Callable[..., HTTPProvider],
) -> None:
    api.plan("ioana@example.ro", fault)
    provider = opened(kind, api)
    with pytest.raises(TransientDeliveryError) as busy:
        provider.send(sample_email())
    assert not isinstance(busy.value, CredentialsRefused)
    assert busy.value.retry_after == retry_after
    provider.send(sample_email())
    assert len(api.by_message_id()[sample_email().message_id]) == 1


def test_retry_after_as_an_http_date(
    api: EmailApiServer, opened: Callable[..., HTTPProvider]
) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    api.plan("ioana@example.ro", Fault(503, None, "", {"Retry-After": when}))
    with pytest.raises(TransientDeliveryError) as busy:
        opened("postmark", api).send(sample_email())
    assert busy.value.retry_after is not None and 85 <= busy.value.retry_after <= 90


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("Wed, 18 Nov 2026 10:30:10 GMT", 10.0),
        ("Wed, 18 Nov 2026 10:29:00 GMT", 0.0),
        ("99999999", 86400.0),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    now = datetime(2026, 11, 18, 10, 30, tzinfo=UTC)
    assert parse_retry_after(value, now) == expected


@pytest.mark.parametrize(
    ("kind", "overrides", "setting"),
    [
        ("postmark", {"token": "wrong-token"}, "CROSSSELL_POSTMARK_SERVER_TOKEN"),
        ("sendgrid", {"key": "SG.revoked"}, "CROSSSELL_SENDGRID_API_KEY"),
        ("mailgun", {"key": "key-wrong"}, "CROSSSELL_MAILGUN_API_KEY"),
        ("mailgun", {"domain": "mg.other.example"}, "CROSSSELL_MAILGUN_DOMAIN"),
        ("ses", {"secret": "not-the-secret"}, "CROSSSELL_SES_SECRET_ACCESS_KEY"),
    ],
)
def test_refused_credentials_are_retried_and_logged_for_the_operator(
    kind: str,
    overrides: dict[str, str],
    setting: str,
    api: EmailApiServer,
    opened: Callable[..., HTTPProvider],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with (
        caplog.at_level(logging.ERROR, logger="worker.providers.http"),
        pytest.raises(CredentialsRefused) as refused,
    ):
        opened(kind, api, **overrides).send(sample_email())
    assert isinstance(refused.value, TransientDeliveryError)
    assert refused.value.code in (401, 403, 404)
    assert any(setting in record.getMessage() for record in caplog.records)
    assert api.accepted == []


def test_the_server_refuses_what_the_real_api_refuses(
    api: EmailApiServer, opened: Callable[..., HTTPProvider]
) -> None:
    """An invalid recipient is refused by the server's own validation, not a plan."""
    for kind in ("postmark", "sendgrid", "mailgun"):
        with pytest.raises(PermanentDeliveryError) as refused:
            opened(kind, api).send(unchecked_recipient(sample_email(), "not-an-address"))
        assert refused.value.hard_bounce, kind
    api.inactive.add("gone@example.ro")
    with pytest.raises(PermanentDeliveryError) as inactive:
        opened("postmark", api).send(sample_email(recipient="gone@example.ro"))
    assert inactive.value.hard_bounce
    assert api.accepted == []


# --- no answer after the request was sent ------------------------------------------------


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("action", ["hang", "close"])
def test_no_answer_after_sending_is_ambiguous(
    kind: str, action: str, api: EmailApiServer, opened: Callable[..., HTTPProvider]
) -> None:
    fault = Fault(action=action, hang_seconds=1.5)  # type: ignore[arg-type]
    api.plan("ioana@example.ro", fault)
    provider = opened(kind, api, timeout=0.5)
    with pytest.raises(AmbiguousDeliveryError):
        provider.send(sample_email())
    [attempt] = api.attempts
    assert attempt.status is None and attempt.message_id == sample_email().message_id
    provider.send(sample_email(2))  # a fresh connection works
    assert len(api.accepted) == 1


@pytest.mark.parametrize("kind", PROVIDERS)
def test_refused_connection_is_transient(
    kind: str, api: EmailApiServer, opened: Callable[..., HTTPProvider]
) -> None:
    provider = opened(kind, api, base_url=f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(TransientDeliveryError):
        provider.send(sample_email())
    assert api.attempts == []


@pytest.mark.parametrize(
    "failure",
    [httpx2.ConnectTimeout("connect timed out"), httpx2.WriteError("broken pipe")],
    ids=["connect-timeout", "write-error"],
)
def test_failures_before_the_request_got_through_are_transient(failure: Exception) -> None:
    # A real server cannot make the client's connect time out on loopback, nor make a
    # write fail on demand: a mock transport raises what httpx2 would raise.
    def fail(request: httpx2.Request) -> httpx2.Response:
        raise failure

    provider = PostmarkProvider(
        "token", base_url="https://api.example.invalid", transport=httpx2.MockTransport(fail)
    )
    with pytest.raises(TransientDeliveryError):
        provider.send(sample_email())
    provider.close()


def test_accepted_without_a_readable_id_is_still_sent(caplog: pytest.LogCaptureFixture) -> None:
    # The local server always answers with an id; a mock stands in for a provider (or a
    # proxy) that does not, to show the message is not re-sent for it.
    def accept(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, text="OK")

    provider = PostmarkProvider(
        "token", base_url="https://api.example.invalid", transport=httpx2.MockTransport(accept)
    )
    email = sample_email()
    with caplog.at_level(logging.ERROR, logger="worker.providers.http"):
        result = provider.send(email)
    provider.close()
    assert result.provider_message_id == email.message_id
    assert "without an id" in caplog.text


def test_json_providers_need_the_structured_message(
    api: EmailApiServer, opened: Callable[..., HTTPProvider]
) -> None:
    email = sample_email()
    bare = OutgoingEmail(email.send_id, email.message_id, email.sender, email.recipient, email.data)
    for kind in ("postmark", "sendgrid"):
        with pytest.raises(ValueError, match="content"):
            opened(kind, api).send(bare)
    opened("mailgun", api).send(bare)  # raw MIME is enough for Mailgun and SES
    opened("ses", api).send(bare)
    assert len(api.accepted) == 2


# --- settings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "given", "missing"),
    [
        ("postmark", {}, "CROSSSELL_POSTMARK_SERVER_TOKEN"),
        ("sendgrid", {}, "CROSSSELL_SENDGRID_API_KEY"),
        ("mailgun", {"mailgun_domain": "mg.shop.example"}, "CROSSSELL_MAILGUN_API_KEY"),
        ("mailgun", {"mailgun_api_key": "key-1"}, "CROSSSELL_MAILGUN_DOMAIN"),
        (
            "ses",
            {"ses_access_key_id": "AKID", "ses_secret_access_key": "s"},
            "CROSSSELL_SES_REGION",
        ),
        (
            "ses",
            {"ses_region": "eu-west-1", "ses_secret_access_key": "s"},
            "CROSSSELL_SES_ACCESS_KEY_ID",
        ),
        (
            "ses",
            {"ses_region": "eu-west-1", "ses_access_key_id": "AKID"},
            "CROSSSELL_SES_SECRET_ACCESS_KEY",
        ),
    ],
)
def test_missing_credentials_fail_at_startup_naming_the_variable(
    tmp_path: Any, provider: str, given: dict[str, str], missing: str
) -> None:
    settings = make_settings(tmp_path, email_provider=provider, **given)
    with pytest.raises(ValueError, match=missing):
        make_provider(settings)


@pytest.mark.parametrize(
    ("provider", "given", "kind", "base_url"),
    [
        (
            "postmark",
            {"postmark_server_token": "t"},
            PostmarkProvider,
            "https://api.postmarkapp.com",
        ),
        (
            "sendgrid",
            {"sendgrid_api_key": "k", "sendgrid_base_url": "https://api.eu.sendgrid.com/"},
            SendGridProvider,
            "https://api.eu.sendgrid.com",
        ),
        (
            "mailgun",
            {"mailgun_api_key": "k", "mailgun_domain": "mg.shop.example"},
            MailgunProvider,
            "https://api.mailgun.net",
        ),
        (
            "ses",
            {"ses_region": "eu-central-1", "ses_access_key_id": "A", "ses_secret_access_key": "s"},
            SESProvider,
            "https://email.eu-central-1.amazonaws.com",
        ),
    ],
)
def test_settings_choose_and_configure_the_provider(
    tmp_path: Any, provider: str, given: dict[str, str], kind: type, base_url: str
) -> None:
    made = make_provider(make_settings(tmp_path, email_provider=provider, **given))
    assert isinstance(made, kind) and isinstance(made, HTTPProvider)
    assert made.base_url == base_url
    assert made._client is None  # no client until the first send
    made.close()


def test_base_url_must_be_http(tmp_path: Any) -> None:
    settings = make_settings(
        tmp_path, email_provider="postmark", postmark_server_token="t", postmark_base_url="ftp://x"
    )
    with pytest.raises(ValueError, match="base URL"):
        make_provider(settings)


def test_a_celery_worker_without_provider_settings_does_not_start(tmp_path: Any) -> None:
    from worker.outbox.app import ProviderCheck
    from worker.process.runtime import Runtime, set_runtime

    set_runtime(Runtime(make_settings(tmp_path, email_provider="sendgrid")))
    try:
        # One line naming the variable, as the process's exit message (no traceback).
        with pytest.raises(SystemExit, match=r"^crosssell: CROSSSELL_SENDGRID_API_KEY"):
            ProviderCheck(None)
    finally:
        set_runtime(None)


def test_a_provider_without_settings_leaves_the_send_queued(tmp_path: Any, sqlite_url: str) -> None:
    from sqlalchemy import select

    from tests.support.factories import TUESDAY_MORNING, customer_block, purchase
    from triggers.events import validate_event
    from worker.commands.demo import seed_catalog
    from worker.core.clock import ShiftedClock
    from worker.core.db import transaction
    from worker.core.models import Send
    from worker.intake.ingest import ingest_event
    from worker.outbox.delivery import deliver_send
    from worker.outbox.dispatcher import dispatch_once
    from worker.process.runtime import Runtime

    settings = make_settings(tmp_path, database_url=sqlite_url, email_provider="mailgun")
    runtime = Runtime(settings, clock=ShiftedClock(TUESDAY_MORNING))
    seed_catalog(settings, TUESDAY_MORNING)
    for n in range(5):  # one or two may fall in the campaign's holdout
        with transaction(sqlite_url) as session:
            event = validate_event(purchase(customer=customer_block(f"C-cfg-{n}")))
            ingest_event(
                session, event, runtime.rules.current(), runtime.policy, runtime.clock.now()
            )
    runtime.clock = ShiftedClock(TUESDAY_MORNING + timedelta(hours=3))
    queued: list[int] = []
    dispatch_once(runtime, queued.extend)
    assert queued
    with pytest.raises(ValueError, match="CROSSSELL_MAILGUN_API_KEY"):
        deliver_send(runtime, queued[0])
    with transaction(sqlite_url) as session:
        send = session.scalars(select(Send).where(Send.id == queued[0])).one()
    assert (send.status, send.attempts) == ("queued", 0)  # the sweeper will hand it out again


def test_hand_over_comes_before_the_request_and_can_stop_it() -> None:
    """The delivery commits its claim in ``hand_over``; if that fails, nothing is sent."""
    steps: list[str] = []

    def accept(request: httpx2.Request) -> httpx2.Response:
        steps.append("request")
        return httpx2.Response(200, json={"MessageID": "pm-1", "ErrorCode": 0})

    provider = PostmarkProvider(
        "token", base_url="https://api.example.invalid", transport=httpx2.MockTransport(accept)
    )
    try:
        provider.send(sample_email(), lambda: steps.append("hand_over"))
        assert steps == ["hand_over", "request"]

        def database_gone() -> None:
            raise RuntimeError("claim could not be committed")

        with pytest.raises(RuntimeError):
            provider.send(sample_email(), database_gone)
        assert steps == ["hand_over", "request"], "no request without a committed claim"
    finally:
        provider.close()


# --- international addresses: what each API documents it accepts --------------------------


@pytest.mark.parametrize("kind", PROVIDERS)
def test_an_idn_recipient_reaches_every_api_as_a_labels(
    kind: str, api: EmailApiServer, opened: Callable[..., HTTPProvider]
) -> None:
    email = sample_email(recipient="ana@exämple.ro")
    opened(kind, api).send(email)
    (accepted,) = api.accepted
    assert accepted.recipient == "ana@xn--exmple-cua.ro"
    if accepted.payload is not None and kind in ("postmark", "sendgrid"):
        assert "ana@xn--exmple-cua.ro" in json.dumps(accepted.payload)
        assert "exämple" not in json.dumps(accepted.payload, ensure_ascii=False)


@pytest.mark.parametrize("kind", ["postmark", "sendgrid", "ses"])
def test_a_utf8_local_part_is_refused_before_an_api_that_cannot_carry_it(
    kind: str, api: EmailApiServer, opened: Callable[..., HTTPProvider]
) -> None:
    hand_overs: list[None] = []
    with pytest.raises(UnsupportedAddress) as refused:
        opened(kind, api).send(
            sample_email(recipient="josé@example.com"), lambda: hand_overs.append(None)
        )
    assert not refused.value.hard_bounce and not refused.value.policy
    assert hand_overs == [] and api.attempts == [] and api.accepted == []
