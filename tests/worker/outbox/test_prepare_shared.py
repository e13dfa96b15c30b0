"""What delivery's prepare works out once per email or per batch gives what the
per-call helpers give: one unsubscribe token for the links and the mailto, and each
sender's Message-ID domain (an unusable sender address refused on every send)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.factories import make_settings
from triggers.addresses import InvalidAddress
from worker.email.email_context import (
    links_for,
    links_with,
    mailto_for,
    mailto_uri_body,
    unsubscribe_token,
)
from worker.outbox.delivery import Senders

KEYS = {"k1": b"first-secret", "k0": b"older-secret"}


def test_one_token_gives_the_same_links_and_mailto_as_signing_each(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    token = unsubscribe_token(KEYS, "C-1")
    assert links_with(settings, token) == links_for(settings, KEYS, "C-1")
    assert mailto_uri_body(settings.unsubscribe_mailto, token) == mailto_for(settings, KEYS, "C-1")


def test_the_message_id_domain_is_the_senders_in_a_label_form(tmp_path: Path) -> None:
    senders = Senders(make_settings(tmp_path, message_id_domain=None))
    assert senders.message_id_domain("shop@bücher.example") == "xn--bcher-kva.example"
    assert senders.message_id_domain("shop@bücher.example") == "xn--bcher-kva.example"


def test_a_configured_message_id_domain_wins(tmp_path: Path) -> None:
    senders = Senders(make_settings(tmp_path, message_id_domain="mid.example"))
    assert senders.message_id_domain("not an address") == "mid.example"


def test_an_unusable_sender_address_is_refused_every_time(tmp_path: Path) -> None:
    senders = Senders(make_settings(tmp_path, message_id_domain=None))
    for _ in range(2):
        with pytest.raises(InvalidAddress):
            senders.message_id_domain("no-at-sign")
