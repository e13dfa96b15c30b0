"""SendGrid (worker/providers/sendgrid.py) against the local server speaking its API:
the request, the id its webhooks name, and its rate-limit headers. The shared HTTP flow
and the classification of every provider's refusals are in
tests/worker/providers/test_http.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from tests.support.email_api import EmailApiServer, Fault
from tests.worker.providers.helpers import SENDER, sample_email
from tests.worker.webhooks.signed import SendGridSigner
from worker.providers.base import TransientDeliveryError
from worker.providers.http import HTTPProvider
from worker.webhooks import sendgrid


def test_sendgrid_request_carries_every_field(
    api: EmailApiServer, opened: Callable[..., HTTPProvider]
) -> None:
    email = sample_email()
    opened("sendgrid", api).send(email)
    payload = api.accepted[0].payload
    assert payload is not None
    assert payload["personalizations"] == [
        {"to": [{"email": "ioana@example.ro", "name": "Ioana Țurcanu"}]}
    ]
    assert payload["from"] == {"email": SENDER[1], "name": SENDER[0]}
    assert payload["reply_to"] == {"email": "help@shop.example", "name": "Ajutor"}
    assert [c["type"] for c in payload["content"]] == ["text/plain", "text/html"]
    assert payload["headers"]["Message-ID"] == email.message_id
    assert payload["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_sendgrid_webhook_names_the_id_we_stored(
    api: EmailApiServer, opened: Callable[..., HTTPProvider]
) -> None:
    email = sample_email()
    result = opened("sendgrid", api).send(email)
    x_message_id = api.accepted[0].provider_message_id
    batch = [
        {
            "email": "ioana@example.ro",
            "timestamp": 1795516140,
            "smtp-id": email.message_id,
            "event": "bounce",
            "type": "bounce",
            "status": "5.1.1",
            "reason": "550 5.1.1 no such user",
            "sg_event_id": "sg-bounce-1",
            "sg_message_id": f"{x_message_id}.filterdrecv-5645d9c87f-6r2ch-1-5D6D-1.0",
        }
    ]
    body = json.dumps(batch).encode()
    signer = SendGridSigner()
    [event] = sendgrid.parse(signer.headers(body), body, public_key=signer.verification_key)
    assert event.provider_message_id == result.provider_message_id
    assert event.message_id == email.message_id


def test_sendgrid_rate_limit_reset_stands_in_for_retry_after(
    api: EmailApiServer, opened: Callable[..., HTTPProvider]
) -> None:
    reset = int(datetime.now(UTC).timestamp()) + 30
    api.plan("ioana@example.ro", Fault(429, None, "limit", {"X-RateLimit-Reset": str(reset)}))
    with pytest.raises(TransientDeliveryError) as busy:
        opened("sendgrid", api).send(sample_email())
    assert busy.value.retry_after is not None and 25 <= busy.value.retry_after <= 30
