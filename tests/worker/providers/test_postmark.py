"""Postmark (worker/providers/postmark.py) against the local server speaking its API:
the request it builds, the id its webhooks name, and batches through ``/email/batch``.
The shared HTTP flow and the classification of every provider's refusals are in
tests/worker/providers/test_http.py."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable

import httpx2
import pytest

from tests.support.email_api import EmailApiServer, Fault, decoded_name
from tests.worker.providers.helpers import SENDER, sample_email, unchecked_recipient
from tests.worker.providers.test_http import HARD, PERMANENT_CASES, POLICY
from tests.worker.webhooks.signed import POSTMARK_HARD_BOUNCE
from worker.providers.base import (
    AmbiguousDeliveryError,
    DeliveryResult,
    OutgoingEmail,
    PermanentDeliveryError,
    TransientDeliveryError,
    UnsupportedAddress,
)
from worker.providers.http import CredentialsRefused, HTTPProvider
from worker.providers.postmark import PostmarkProvider
from worker.webhooks import postmark


def test_postmark_request_carries_every_field(
    api: EmailApiServer, opened: Callable[..., HTTPProvider]
) -> None:
    email = sample_email()
    opened("postmark", api, message_stream="broadcast").send(email)
    [accepted] = api.accepted
    payload = accepted.payload
    assert payload is not None
    assert decoded_name(payload["From"]) == SENDER[0]
    assert decoded_name(payload["To"]) == "Ioana Țurcanu"
    assert decoded_name(payload["ReplyTo"]) == "Ajutor"
    assert payload["Subject"] == "Ioana, ți-am pregătit: șnur, țintă, câștig"
    assert payload["TextBody"] == "Bună, Ioana: à è ì ò ù"
    assert payload["HtmlBody"] == "<p>Bună, <b>Ioana</b>: à è ì ò ù</p>"
    assert payload["MessageStream"] == "broadcast"
    headers = {h["Name"]: h["Value"] for h in payload["Headers"]}
    assert headers["List-Unsubscribe"] == (
        "<https://shop.example/u/token-1>, <mailto:unsubscribe@shop.example>"
    )
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert headers["Feedback-ID"] == "a1b2c3d4e5:cross-sell:crosssell"


def test_postmark_webhook_names_the_id_we_stored(
    api: EmailApiServer, opened: Callable[..., HTTPProvider]
) -> None:
    result = opened("postmark", api).send(sample_email())
    record = {**POSTMARK_HARD_BOUNCE, "MessageID": api.accepted[0].provider_message_id}
    token = base64.b64encode(b"hooks:s3cret").decode()
    [event] = postmark.parse(
        {"Authorization": f"Basic {token}"},
        json.dumps(record).encode(),
        username="hooks",
        password="s3cret",
    )
    assert event.provider_message_id == result.provider_message_id


# --- POST /email/batch ------------------------------------------------------------------


def _batch(size: int, first: int = 1) -> list[OutgoingEmail]:
    return [sample_email(n, f"r{n}@example.ro") for n in range(first, first + size)]


def _requests(api: EmailApiServer) -> set[tuple[float, int]]:
    """The distinct requests the server answered (a batch's messages share one)."""
    with api.lock:
        return {(a.arrived, a.peer) for a in api.attempts}


def test_a_batch_is_one_request_every_message_handed_over_just_before_it(
    api: EmailApiServer, opened: Callable[..., HTTPProvider]
) -> None:
    emails = _batch(5)
    seen: list[tuple[int, int]] = []
    results = opened("postmark", api).send_many(
        emails, lambda i: seen.append((i, len(api.attempts)))
    )
    assert seen == [(i, 0) for i in range(5)], "each once, all before the one request"
    assert len(_requests(api)) == 1
    accepted = {a.message_id: a.provider_message_id for a in api.accepted}
    assert [r.provider_message_id for r in results if isinstance(r, DeliveryResult)] == [
        accepted[e.message_id] for e in emails
    ]


def test_batches_are_split_at_the_limit(
    api: EmailApiServer, opened: Callable[..., HTTPProvider]
) -> None:
    provider = opened("postmark", api)
    assert provider.batch_limit == 500  # Postmark's documented maximum
    provider.batch_limit = 2
    results = provider.send_many(_batch(5), lambda i: None)
    assert all(isinstance(r, DeliveryResult) for r in results)
    assert len(_requests(api)) == 3 and len(api.accepted) == 5


def test_batches_are_split_by_size_before_anything_is_handed_over(
    api: EmailApiServer, opened: Callable[..., HTTPProvider]
) -> None:
    provider = opened("postmark", api)
    assert provider.batch_bytes_limit == 50_000_000  # "up to 50 MB payload size"
    emails = _batch(5)
    size = len(provider.build_batch_item(emails[0]))
    provider.batch_bytes_limit = 2 * size + 10  # two messages and the brackets fit, not three
    seen: list[tuple[int, int]] = []
    results = provider.send_many(emails, lambda i: seen.append((i, len(api.accepted))))
    assert all(isinstance(r, DeliveryResult) for r in results)
    assert len(_requests(api)) == 3 and len(api.accepted) == 5
    assert seen == [(0, 0), (1, 0), (2, 2), (3, 2), (4, 4)], "each request's just before it"


POSTMARK_REFUSALS = [case for case in PERMANENT_CASES if case[0] == "postmark"]


@pytest.mark.parametrize(
    ("fault", "expected"),
    [(f, e) for _, f, e in POSTMARK_REFUSALS],
    ids=[f"{f.error}-{e}" for _, f, e in POSTMARK_REFUSALS],
)
def test_a_refused_message_in_a_batch_is_classified_as_its_single_send_would_be(
    api: EmailApiServer, opened: Callable[..., HTTPProvider], fault: Fault, expected: str
) -> None:
    provider = opened("postmark", api)
    refused_alone = sample_email(9, "r9@example.ro")
    api.plan("r9@example.ro", fault)
    with pytest.raises(PermanentDeliveryError) as single:
        provider.send(refused_alone)
    api.plan("r2@example.ro", fault)
    results = provider.send_many(_batch(3), lambda i: None)
    entry = results[1]
    assert isinstance(entry, PermanentDeliveryError)
    assert type(entry) is type(single.value)
    assert (entry.code, entry.hard_bounce, entry.policy) == (
        single.value.code,
        single.value.hard_bounce,
        single.value.policy,
    )
    assert (entry.hard_bounce, entry.policy) == (expected == HARD, expected == POLICY)
    assert isinstance(results[0], DeliveryResult) and isinstance(results[2], DeliveryResult)
    assert sorted(a.recipient for a in api.accepted) == ["r1@example.ro", "r3@example.ro"]


def test_messages_the_server_itself_refuses_get_their_own_entries(
    api: EmailApiServer, opened: Callable[..., HTTPProvider]
) -> None:
    api.inactive.add("r2@example.ro")
    emails = _batch(3)
    emails[2] = unchecked_recipient(emails[2], "r3@example")
    results = opened("postmark", api).send_many(emails, lambda i: None)
    inactive, invalid = results[1], results[2]
    assert isinstance(inactive, PermanentDeliveryError) and inactive.hard_bounce
    assert "ErrorCode 406" in str(inactive)
    assert isinstance(invalid, PermanentDeliveryError) and invalid.hard_bounce
    assert "ErrorCode 300" in str(invalid)
    assert isinstance(results[0], DeliveryResult)


def test_a_transient_error_code_in_a_batch_entry_is_transient(
    api: EmailApiServer, opened: Callable[..., HTTPProvider]
) -> None:
    api.plan("r1@example.ro", Fault(422, 100, "Maintenance"))
    results = opened("postmark", api).send_many(_batch(2), lambda i: None)
    assert isinstance(results[0], TransientDeliveryError)
    assert isinstance(results[1], DeliveryResult)


@pytest.mark.parametrize(
    ("fault", "retry_after"),
    [
        (Fault(429, 429, "Rate limit exceeded.", {"Retry-After": "2"}), 2.0),
        (Fault(503), None),
        (Fault(500, 100, "Maintenance"), None),
    ],
    ids=["429", "503", "500-maintenance"],
)
def test_throttling_or_a_server_error_on_the_request_is_transient_for_every_message(
    api: EmailApiServer,
    opened: Callable[..., HTTPProvider],
    fault: Fault,
    retry_after: float | None,
) -> None:
    api.plan("r2@example.ro", fault)
    results = opened("postmark", api).send_many(_batch(3), lambda i: None)
    for entry in results:
        assert isinstance(entry, TransientDeliveryError)
        assert not isinstance(entry, CredentialsRefused)
        assert entry.retry_after == retry_after
    assert api.accepted == []


def test_a_refused_token_fails_the_batch_for_a_retry_and_tells_the_operator(
    api: EmailApiServer, opened: Callable[..., HTTPProvider], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="worker.providers.http"):
        results = opened("postmark", api, token="wrong").send_many(_batch(2), lambda i: None)
    assert all(isinstance(r, CredentialsRefused) for r in results)
    assert "CROSSSELL_POSTMARK_SERVER_TOKEN" in caplog.text


@pytest.mark.parametrize("action", ["hang", "close"])
def test_no_answer_to_a_batch_is_ambiguous_for_every_message_in_it(
    api: EmailApiServer, opened: Callable[..., HTTPProvider], action: str
) -> None:
    api.plan("r1@example.ro", Fault(action=action, hang_seconds=3))  # type: ignore[arg-type]
    results = opened("postmark", api, timeout=1.0).send_many(_batch(3), lambda i: None)
    assert all(isinstance(r, AmbiguousDeliveryError) for r in results)


def test_a_failing_hand_over_leaves_that_message_out_of_the_request(
    api: EmailApiServer, opened: Callable[..., HTTPProvider]
) -> None:
    claim_lost = ConnectionError("database gone")

    def hand_over(index: int) -> None:
        if index == 1:
            raise claim_lost

    results = opened("postmark", api).send_many(_batch(3), hand_over)
    assert results[1] is claim_lost
    assert isinstance(results[0], DeliveryResult) and isinstance(results[2], DeliveryResult)
    assert sorted(a.recipient for a in api.accepted) == ["r1@example.ro", "r3@example.ro"]
    assert "r2@example.ro" not in {a.recipient for a in api.attempts}
    assert len(_requests(api)) == 1


def test_no_request_when_every_hand_over_fails(
    api: EmailApiServer, opened: Callable[..., HTTPProvider]
) -> None:
    def database_gone(index: int) -> None:
        raise ConnectionError("database gone")

    results = opened("postmark", api).send_many(_batch(2), database_gone)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert api.attempts == []


def test_a_utf8_local_part_is_refused_alone_before_its_hand_over(
    api: EmailApiServer, opened: Callable[..., HTTPProvider]
) -> None:
    emails = [sample_email(1, "r1@example.ro"), sample_email(2, "josé@example.ro")]
    handed: list[int] = []
    results = opened("postmark", api).send_many(emails, handed.append)
    assert isinstance(results[1], UnsupportedAddress)
    assert isinstance(results[0], DeliveryResult)
    assert handed == [0]


def test_an_accepted_batch_with_an_unreadable_answer_is_ambiguous(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Postmark answered 200, so it may have any of them; which, the body does not say."""

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json={"ErrorCode": 0, "Message": "OK"})

    provider = PostmarkProvider(
        "token", base_url="https://api.example.invalid", transport=httpx2.MockTransport(answer)
    )
    try:
        results = provider.send_many(_batch(2), lambda i: None)
    finally:
        provider.close()
    assert all(isinstance(r, AmbiguousDeliveryError) for r in results)


def test_the_server_answers_a_batch_as_postmark_documents(api: EmailApiServer) -> None:
    """200 with one result per message, in order, even when one is refused; 422 for a
    request that is not an array or has more than 500 messages."""
    headers = {"X-Postmark-Server-Token": api.postmark_token, "Accept": "application/json"}
    message = {"From": "shop@shop.example", "To": "a@example.ro", "TextBody": "hi"}
    with httpx2.Client(base_url=api.url, headers=headers) as client:
        mixed = client.post("/email/batch", json=[message, {**message, "To": "nobody"}])
        assert mixed.status_code == 200
        ok, refused = mixed.json()
        assert ok["ErrorCode"] == 0 and ok["To"] == "a@example.ro" and ok["MessageID"]
        assert refused["ErrorCode"] == 300 and "'To'" in refused["Message"]
        not_an_array = client.post("/email/batch", json=message)
        assert not_an_array.status_code == 422 and not_an_array.json()["ErrorCode"] == 402
        too_many = client.post("/email/batch", json=[message] * 501)
        assert too_many.status_code == 422 and too_many.json()["ErrorCode"] == 410
        no_token = client.post(
            "/email/batch", json=[message], headers={"X-Postmark-Server-Token": "x"}
        )
        assert no_token.status_code == 401 and no_token.json()["ErrorCode"] == 10
    assert [a.recipient for a in api.accepted] == ["a@example.ro"]
