"""Mailgun (worker/providers/mailgun.py) against the local server speaking its API: the
id its webhooks name and the UTF-8 local part it documents. The shared HTTP flow and the
classification of every provider's refusals are in tests/worker/providers/test_http.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from email import message_from_string, policy

import httpx2
from hypothesis import given
from hypothesis import strategies as st

from tests.support.email_api import EmailApiServer
from tests.worker.providers.helpers import provider_for, sample_email
from tests.worker.webhooks.signed import MAILGUN_KEY, MAILGUN_PERMANENT_FAILURE, NOW, mailgun_body
from worker.providers.http import HTTPProvider
from worker.providers.mailgun import MailgunProvider
from worker.webhooks import mailgun
from worker.webhooks.events import normalize_message_id


def test_mailgun_webhook_names_the_id_we_stored(
    api: EmailApiServer, opened: Callable[..., HTTPProvider]
) -> None:
    email = sample_email()
    result = opened("mailgun", api).send(email)
    data = json.loads(json.dumps(MAILGUN_PERMANENT_FAILURE))
    # Mailgun's events carry the header without its angle brackets.
    data["message"]["headers"]["message-id"] = email.message_id.strip("<>")
    [event] = mailgun.parse({}, mailgun_body(data), signing_key=MAILGUN_KEY, now=NOW)
    assert event.provider_message_id == result.provider_message_id


def test_mailgun_takes_a_utf8_local_part_as_it_documents() -> None:
    with EmailApiServer() as api:
        provider = provider_for("mailgun", api)
        try:
            provider.send(sample_email(recipient="josé@example.com"))
        finally:
            provider.close()
    (accepted,) = api.accepted
    assert accepted.recipient == "josé@example.com"
    assert accepted.mime is not None
    parsed = message_from_string(accepted.mime.decode("utf-8"), policy=policy.default)
    assert parsed["To"].addresses[0].addr_spec == "josé@example.com"


@given(st.one_of(st.text(alphabet=" <>@abc.-"), st.none(), st.integers()))
def test_the_id_of_an_answer_is_read_as_the_webhooks_read_a_message_id(value: object) -> None:
    """Mailgun answers ``{"id": "<…@domain>"}``; its events name the message by the same
    Message-ID, with or without brackets: both sides read it one way."""
    provider = MailgunProvider("key", "mg.example.ro", "https://api.mailgun.example")
    answer = httpx2.Response(200, json={"id": value, "message": "Queued. Thank you."})
    assert provider.parse_result(sample_email(), answer) == normalize_message_id(value)
