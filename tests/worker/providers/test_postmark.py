"""Postmark (worker/providers/postmark.py) against the local server speaking its API:
the request it builds and the id its webhooks name. The shared HTTP flow and the
classification of every provider's refusals are in tests/worker/test_http_providers.py."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

from tests.support.email_api import EmailApiServer, decoded_name
from tests.worker.test_http_providers import SENDER, _email
from tests.worker.webhooks.signed import POSTMARK_HARD_BOUNCE
from worker.providers.http import HTTPProvider
from worker.webhooks import postmark


def test_postmark_request_carries_every_field(
    api: EmailApiServer, opened: Callable[..., HTTPProvider]
) -> None:
    email = _email()
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
    result = opened("postmark", api).send(_email())
    record = {**POSTMARK_HARD_BOUNCE, "MessageID": api.accepted[0].provider_message_id}
    token = base64.b64encode(b"hooks:s3cret").decode()
    [event] = postmark.parse(
        {"Authorization": f"Basic {token}"},
        json.dumps(record).encode(),
        username="hooks",
        password="s3cret",
    )
    assert event.provider_message_id == result.provider_message_id
