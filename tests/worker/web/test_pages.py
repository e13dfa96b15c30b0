"""The unsubscribe, confirmation and preference pages speak the customer's language.

The English sentences a RO or IT page must not contain are read from the English page
itself (its text nodes), so a sentence added later to the English template is covered.
"""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tests.support.factories import customer_block, make_settings, purchase
from triggers.events import validate_event
from worker.core.db import transaction
from worker.email.tokens import sign
from worker.intake.ingest import ingest_event
from worker.process.runtime import Runtime
from worker.web.web import create_app

LOCALES = {"en": "en-GB", "ro": "ro-RO", "it": "it-IT"}


class _Page(HTMLParser):
    """The ``lang`` of ``<html>`` and the visible text nodes (title, headings, labels…)."""

    def __init__(self, document: str) -> None:
        super().__init__()
        self.lang: str | None = None
        self.texts: list[str] = []
        self.feed(document)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "html":
            self.lang = dict(attrs).get("lang")

    def handle_data(self, data: str) -> None:
        if data.strip():
            self.texts.append(" ".join(data.split()))


@pytest.fixture
def site(tmp_path: Path, database_url: str) -> Iterator[tuple[TestClient, Runtime]]:
    runtime = Runtime(make_settings(tmp_path, database_url=database_url, shop_name="Magazin"))
    customers = {**{f"C-{lang}": locale for lang, locale in LOCALES.items()}}
    customers |= {"C-fr": "fr-FR", "C-posix": "ro_RO", "C-none": None}
    with transaction(database_url) as session:
        for customer_id, locale in customers.items():
            event = validate_event(purchase(customer=customer_block(customer_id, locale=locale)))
            ingest_event(session, event, runtime.rules.current(), runtime.policy, event.occurred_at)
    with TestClient(create_app(runtime)) as client:
        yield client, runtime
    runtime.close()


def _pages(client: TestClient, runtime: Runtime, customer_id: str) -> dict[str, str]:
    """Every page a customer can see, in the order they see them; the last one
    unsubscribes (so each customer is used once per test)."""
    token = sign(runtime.unsubscribe_keys, customer_id, "all")
    return {
        "confirmation": client.get(f"/u/{token}").text,
        "preferences": client.get(f"/preferences/{token}").text,
        "preferences saved": client.post(f"/preferences/{token}", data={"kinds": ["loyalty"]}).text,
        "unsubscribed": client.post(f"/u/{token}", data={"confirmed": "1"}).text,
    }


def test_each_page_is_in_the_customers_language(site: tuple[TestClient, Runtime]) -> None:
    client, runtime = site
    english = {name: _Page(doc) for name, doc in _pages(client, runtime, "C-en").items()}
    for name, page in english.items():
        assert page.lang == "en", name
    for lang in ("ro", "it"):
        for name, document in _pages(client, runtime, f"C-{lang}").items():
            page = _Page(document)
            assert page.lang == lang, (lang, name)
            # No sentence of the English page (shop name aside) shows on this one.
            leaked = [
                text
                for text in english[name].texts
                if len(text) > 3 and text != "Magazin" and text in " ".join(page.texts)
            ]
            assert leaked == [], (lang, name, leaked)
            assert "Magazin" in document, (lang, name)  # the shop is still named


@pytest.mark.parametrize(
    ("customer_id", "lang"),
    [("C-fr", "en"), ("C-posix", "ro"), ("C-none", "en"), ("C-unknown", "en")],
)
def test_locales_without_pages_fall_back_to_the_default(
    site: tuple[TestClient, Runtime], customer_id: str, lang: str
) -> None:
    client, runtime = site
    token = sign(runtime.unsubscribe_keys, customer_id, "all")
    page = _Page(client.get(f"/u/{token}").text)
    assert page.lang == lang


def test_the_default_locale_is_used_when_the_customer_has_none(
    tmp_path: Path, database_url: str
) -> None:
    runtime = Runtime(make_settings(tmp_path, database_url=database_url, default_locale="it-IT"))
    with transaction(database_url) as session:
        for customer_id, locale in (("C-x", None), ("C-fr", "fr-FR"), ("C-ro", "ro-RO")):
            event = validate_event(purchase(customer=customer_block(customer_id, locale=locale)))
            ingest_event(session, event, runtime.rules.current(), runtime.policy, event.occurred_at)
    try:
        with TestClient(create_app(runtime)) as client:
            for customer_id, lang in (("C-x", "it"), ("C-fr", "it"), ("C-ro", "ro")):
                token = sign(runtime.unsubscribe_keys, customer_id, "all")
                assert _Page(client.get(f"/preferences/{token}").text).lang == lang
            invalid = client.get("/u/not-a-token")
            assert invalid.status_code == 400 and _Page(invalid.text).lang == "it"
    finally:
        runtime.close()


def test_the_shop_name_is_escaped(tmp_path: Path, database_url: str) -> None:
    runtime = Runtime(
        make_settings(tmp_path, database_url=database_url, shop_name="<b>Ștefan & Co</b>")
    )
    try:
        with TestClient(create_app(runtime)) as client:
            token = sign(runtime.unsubscribe_keys, "C-nobody", "all")
            document = client.get(f"/u/{token}").text
    finally:
        runtime.close()
    assert "<b>" not in document and "&lt;b&gt;Ștefan &amp; Co&lt;/b&gt;" in document
