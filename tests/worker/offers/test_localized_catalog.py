"""Per-language product names and descriptions: import, lookup, and the emails that use them.

Expected texts come from the catalog file read with the stdlib ``csv`` module, or from
a brute-force RFC 4647 lookup, never from the code under test.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from sqlalchemy import select

from tests.support.factories import TUESDAY_MORNING, customer_block, make_settings, purchase
from tests.support.smtp_sink import SmtpSink
from triggers.events import validate_event
from triggers.offers import Product as OfferProduct
from triggers.offers import ResolvedOffer
from worker.commands.demo import seed_catalog
from worker.commands.demo_data import DEMO_CATALOG
from worker.core.clock import ShiftedClock
from worker.core.db import transaction
from worker.core.models import Product, Send
from worker.email.email_context import offer_context
from worker.intake.ingest import ingest_event
from worker.offers.catalog import localized, lookup_tags
from worker.offers.catalog_import import CatalogError, language_list, parse_catalog, upsert_products
from worker.offers.offer_resolution import localize_offer
from worker.outbox.delivery import deliver_send
from worker.outbox.dispatcher import dispatch_once
from worker.process.runtime import Runtime

NOW = TUESDAY_MORNING


def _demo_rows() -> list[dict[str, str]]:
    with DEMO_CATALOG.open(encoding="utf-8", newline="") as stream:
        return list(csv.DictReader(stream))


# --- the lookup chain (RFC 4647 section 3.4) -------------------------------------------


@pytest.mark.parametrize(
    ("locale", "chain"),
    [
        ("ro-RO", ["ro-ro", "ro"]),
        ("ro_RO", ["ro-ro", "ro"]),
        ("it_IT.UTF-8", ["it-it", "it"]),
        ("RO", ["ro"]),
        ("zh-Hant-TW", ["zh-hant-tw", "zh-hant", "zh"]),
        # RFC 4647 section 3.4's own example: the singleton "x" goes with its subtag.
        (
            "zh-Hant-CN-x-private1-private2",
            [
                "zh-hant-cn-x-private1-private2",
                "zh-hant-cn-x-private1",
                "zh-hant-cn",
                "zh-hant",
                "zh",
            ],
        ),
        ("", []),
        (None, []),
    ],
)
def test_lookup_chain(locale: str | None, chain: list[str]) -> None:
    assert lookup_tags(locale) == chain


subtag = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    min_size=1,
    max_size=8,
)
tags = st.builds(
    lambda language, rest: "-".join([language, *rest]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=3),
    st.lists(subtag, max_size=5),
)


def _reference_lookup(texts: dict[str, str], default: str, locale: str) -> str:
    """Brute force: the whole tag, then every shorter prefix, longest first, skipping
    those that end in a single-character subtag, is tried against the (lower-case) keys."""
    parts = locale.lower().split("-")
    for length in range(len(parts), 0, -1):
        if length < len(parts) and len(parts[length - 1]) == 1:
            continue
        found = texts.get("-".join(parts[:length]))
        if found:
            return found
    return default


@given(
    locale=tags,
    available=st.lists(tags, max_size=6),
    data=st.data(),
)
def test_localized_text_matches_a_brute_force_lookup(
    locale: str, available: list[str], data: st.DataObject
) -> None:
    # Include some prefixes of the customer's own tag, so matches are not only by luck.
    parts = locale.split("-")
    prefixes = ["-".join(parts[: n + 1]) for n in range(len(parts))]
    chosen = data.draw(st.lists(st.sampled_from(prefixes), max_size=len(prefixes)))
    texts = {tag.lower(): f"text for {tag.lower()}" for tag in [*available, *chosen]}
    assert localized(texts, "default", locale) == _reference_lookup(texts, "default", locale)


def test_no_translation_falls_back_to_the_default_name() -> None:
    assert localized({"ro": "Husă"}, "Sleeve", "fr-FR") == "Sleeve"
    assert localized({}, "Sleeve", "ro-RO") == "Sleeve"
    assert localized({"ro": "Husă"}, "Sleeve", None) == "Sleeve"
    assert localized({"pt-br": "Capa"}, "Sleeve", "pt-PT") == "Sleeve"  # no plain "pt"


# --- import ------------------------------------------------------------------------------

CSV_HEADER = (
    "sku,name,name.ro,name.IT,name.pt_BR,description,description.ro,category,price,currency"
)


@pytest.mark.parametrize(
    ("tags", "sentence"),
    [
        (["ro"], "Romanian (ro)"),
        # "it" reads as a pronoun on its own ("names also in it, ro"): name each language.
        (["ro", "it"], "Italian (it) and Romanian (ro)"),
        (["pt-br", "de", "ro"], "German (de), Portuguese (pt-br), and Romanian (ro)"),
        (["qaa", "it"], "Italian (it) and qaa"),  # a private-use tag CLDR cannot name
    ],
)
def test_imported_languages_are_named(tags: list[str], sentence: str) -> None:
    assert language_list(tags) == sentence


def test_csv_columns_per_language_are_imported(tmp_path: Path, database_url: str) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text(
        f"{CSV_HEADER}\n"
        "S-1,Laptop Sleeve,Husă de laptop,Custodia,Capa,Padded.,Căptușită.,bags,29.00,EUR\n"
        "S-2,Mouse,,,,,,mice,9.00,EUR\n",
        encoding="utf-8",
    )
    rows = parse_catalog(path)
    with transaction(database_url) as session:
        upsert_products(session, rows, NOW)
    with transaction(database_url) as session:
        first, second = session.get(Product, "S-1"), session.get(Product, "S-2")
        assert first is not None and second is not None
        assert first.name == "Laptop Sleeve"
        assert first.name_i18n == {"ro": "Husă de laptop", "it": "Custodia", "pt-br": "Capa"}
        assert (first.description, first.description_i18n) == ("Padded.", {"ro": "Căptușită."})
        # Empty cells are no translation at all: the default name is used.
        assert (second.name_i18n, second.description, second.description_i18n) == ({}, None, {})


def test_reimport_replaces_the_translations(tmp_path: Path, database_url: str) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text("sku,name,name.ro,category,price,currency\nS-1,A,Ă,c,1,EUR\n")
    with transaction(database_url) as session:
        upsert_products(session, parse_catalog(path), NOW)
    path.write_text("sku,name,name.it,category,price,currency\nS-1,A,À,c,1,EUR\n")
    with transaction(database_url) as session:
        upsert_products(session, parse_catalog(path), NOW)
    with transaction(database_url) as session:
        product = session.get(Product, "S-1")
        assert product is not None and product.name_i18n == {"it": "À"}


def test_jsonl_translations_as_objects_or_dotted_keys(tmp_path: Path) -> None:
    path = tmp_path / "catalog.jsonl"
    lines = [
        {
            "sku": "J-1",
            "name": "Tripod",
            "name_i18n": {"ro": "Trepied", "IT": "Treppiede"},
            "description_i18n": {"ro": "Ușor."},
            "category": "t",
            "price": "1",
            "currency": "EUR",
        },
        {
            "sku": "J-2",
            "name": "Bag",
            "name.ro": "Geantă",
            "category": "t",
            "price": "1",
            "currency": "EUR",
        },
    ]
    path.write_text("\n".join(json.dumps(line, ensure_ascii=False) for line in lines))
    first, second = parse_catalog(path)
    assert first.name_i18n == {"ro": "Trepied", "it": "Treppiede"}
    assert first.description_i18n == {"ro": "Ușor."}
    assert second.name_i18n == {"ro": "Geantă"}


language_tags = st.builds(
    lambda language, region: language + (f"-{region}" if region else ""),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=3),
    st.one_of(st.none(), st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=2, max_size=2)),
)
# Any text a product may hold: no control, no line separator, no bidirectional control
# (triggers.text_rules).
product_text = st.text(
    alphabet=st.characters(
        codec="utf-8",
        exclude_categories=("Cs", "Cc", "Zl", "Zp"),
        exclude_characters="\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069",
    ),
    min_size=1,
    max_size=40,
).filter(lambda text: text.strip() == text and text != "")


@given(
    names=st.dictionaries(language_tags, product_text, max_size=5),
    descriptions=st.dictionaries(language_tags, product_text, max_size=5),
)
def test_any_translations_written_by_the_csv_module_come_back(
    tmp_path_factory: pytest.TempPathFactory,
    names: dict[str, str],
    descriptions: dict[str, str],
) -> None:
    """Whatever languages and texts (quotes, commas, diacritics, newlines aside) a
    spreadsheet exports through the stdlib csv writer are read back, keyed by the
    lower-case tag."""
    # Tags differing only in case are one language (RFC 5646 2.1.1): not two columns.
    assume(len({tag.lower() for tag in names}) == len(names))
    assume(len({tag.lower() for tag in descriptions}) == len(descriptions))
    header = ["sku", "name", "category", "price", "currency"]
    header += [f"name.{tag}" for tag in names] + [f"description.{tag}" for tag in descriptions]
    row = ["S-1", "Default", "c", "1.00", "EUR", *names.values(), *descriptions.values()]
    path = tmp_path_factory.mktemp("csv") / "catalog.csv"
    with path.open("w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerow(row)
    (parsed,) = parse_catalog(path)
    assert parsed.name_i18n == {tag.lower(): text for tag, text in names.items()}
    assert parsed.description_i18n == {tag.lower(): text for tag, text in descriptions.items()}


@pytest.mark.parametrize(
    ("header", "row", "expected"),
    [
        ("name.r0man!a", "x", "unknown column 'name.r0man!a'"),
        ("price.ro", "1", "unknown column 'price.ro'"),  # only names and descriptions
        ("name.ro,name.RO", "a,b", "name.ro (twice)"),
        ("name.1x", "x", "unknown column 'name.1x'"),
    ],
)
def test_bad_language_columns_are_reported(
    tmp_path: Path, header: str, row: str, expected: str
) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text(f"sku,name,category,price,currency,{header}\nS-1,A,c,1,EUR,{row}\n")
    with pytest.raises(CatalogError) as caught:
        parse_catalog(path)
    assert any(expected in error.message for error in caught.value.errors), caught.value


@pytest.mark.parametrize(
    "document",
    [
        {"name_i18n": {"not a tag": "x"}},
        {"name_i18n": {"ro": ""}},
        {"name_i18n": ["ro", "x"]},
        {"name_i18n": {"ro": "a", "RO": "b"}},
        {"name_i18n": {"ro": "a"}, "name.it": "b"},
        {"name_i18n": {"ro": "x" * 301}},
    ],
)
def test_bad_jsonl_translations_are_rejected(tmp_path: Path, document: dict[str, object]) -> None:
    path = tmp_path / "catalog.jsonl"
    base = {"sku": "J-1", "name": "A", "category": "c", "price": "1", "currency": "EUR"}
    path.write_text(json.dumps({**base, **document}))
    with pytest.raises(CatalogError):
        parse_catalog(path)


# --- the offer and the email --------------------------------------------------------------


def test_offer_items_get_the_customers_language(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(tmp_path, database_url=database_url)
    seed_catalog(settings, NOW)
    by_sku = {row["sku"]: row for row in _demo_rows()}
    skus = ("BAG-SLEEVE-14", "MOU-ERGO", "LAP-14-PRO")
    offer = ResolvedOffer(
        "complementary",
        tuple(
            OfferProduct(sku, by_sku[sku]["name"], "c", Decimal(by_sku[sku]["price"]), "EUR")
            for sku in skus
        ),
        "EUR",
    )
    for locale, language in [("ro-RO", "ro"), ("it_IT", "it"), ("en-GB", None), ("de", None)]:
        with transaction(database_url) as session:
            items = offer_context(localize_offer(session, offer, locale), locale, "en")["items"]
        for sku, item in zip(skus, items, strict=True):
            row = by_sku[sku]
            name = row[f"name.{language}"] if language else row["name"]
            description = row[f"description.{language}"] if language else row["description"]
            assert item["name"] == name, (locale, sku)
            assert item["description"] == (description or None), (locale, sku)


_opened: list[Runtime] = []


@pytest.fixture(autouse=True)
def _close_runtimes() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


def _deliver_for(runtime: Runtime, customer_id: str, locale: str) -> int:
    """Plan a laptop-accessories email for a new customer in ``locale`` (outside the
    holdout) and deliver it; returns the send id."""
    for suffix in range(50):
        event = purchase(customer=customer_block(f"{customer_id}-{suffix}", locale=locale))
        with transaction(runtime.settings.resolved_database_url) as session:
            ingest_event(
                session,
                validate_event(event),
                runtime.rules.current(),
                runtime.policy,
                runtime.clock.now(),
            )
            send = session.scalars(select(Send).where(Send.event_id == event["id"])).one()
        if send.status == "planned":
            break
    else:
        raise AssertionError("no customer outside the holdout in 50 tries")
    clock = runtime.clock
    runtime.clock = ShiftedClock(NOW + timedelta(hours=3))
    queued: list[int] = []

    def collect(ids: Sequence[int]) -> None:
        queued.extend(ids)

    dispatch_once(runtime, collect)
    runtime.clock = clock
    assert send.id in queued
    assert deliver_send(runtime, send.id) == "sent"
    return send.id


@pytest.mark.parametrize(
    ("locale", "language"),
    [("ro-RO", "ro"), ("it-IT", "it"), ("en-GB", None), ("fr-FR", None)],
)
def test_emails_name_products_in_the_customers_language(
    tmp_path: Path, database_url: str, smtp_sink: SmtpSink, locale: str, language: str | None
) -> None:
    settings = make_settings(
        tmp_path, database_url=database_url, email_provider="smtp", smtp_port=smtp_sink.port
    )
    seed_catalog(settings, NOW)
    runtime = Runtime(settings, clock=ShiftedClock(NOW))
    _opened.append(runtime)
    _deliver_for(runtime, "C-lang", locale)
    (message,) = smtp_sink.handler.parsed()
    text = message.get_body(("plain",))
    assert text is not None
    body = text.get_content()
    rows = _demo_rows()
    wanted = [row[f"name.{language}"] if language else row["name"] for row in rows]
    assert any(name in body for name in wanted), body
    # Each product shown has its description in the same language, where it has one.
    suffix = f".{language}" if language else ""
    shown = [row for row in rows if (row[f"name{suffix}"]) in body]
    for row in shown:
        assert row[f"description{suffix}"] in body, (row["sku"], body)
    if language is not None:
        # No English default name shows, unless it is part of a name in the language.
        foreign = [
            row["name"]
            for row in rows
            if row["name"] != row[f"name.{language}"]
            and not any(row["name"] in other for other in wanted)
        ]
        shown = [name for name in foreign if name in body]
        assert shown == [], body


def test_the_documented_examples_import(tmp_path: Path) -> None:
    """docs/offers.md's CSV and JSON Lines examples of translations are valid files."""
    import re

    from worker.core.settings import PROJECT_ROOT

    guide = (PROJECT_ROOT / "docs" / "offers.md").read_text(encoding="utf-8")
    section = guide.split("### Names and descriptions per language", 1)[1]
    csv_example = re.search(r"```csv\n(.*?)```", section, flags=re.DOTALL)
    json_example = re.search(r"```json\n(.*?)```", section, flags=re.DOTALL)
    assert csv_example is not None and json_example is not None
    (tmp_path / "example.csv").write_text(csv_example.group(1), encoding="utf-8")
    (tmp_path / "example.jsonl").write_text(json_example.group(1), encoding="utf-8")
    (from_csv,) = parse_catalog(tmp_path / "example.csv")
    (from_jsonl,) = parse_catalog(tmp_path / "example.jsonl")
    assert set(from_csv.name_i18n) == {"ro", "it"} and from_csv.description_i18n
    assert set(from_jsonl.name_i18n) == {"ro", "it"} and from_jsonl.description_i18n
