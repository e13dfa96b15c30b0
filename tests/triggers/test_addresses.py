"""triggers.addresses: one mailbox or a refusal; the canonical and suppression forms."""

from __future__ import annotations

import unicodedata

import idna
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.triggers.builders import campaign_document
from triggers.addresses import (
    InvalidAddress,
    canonical_address,
    canonical_mailbox,
    parse_address,
    parse_mailbox,
    suppression_key,
)
from triggers.campaigns import Campaign
from triggers.events import InvalidEvent, validate_event

HOSTILE = [
    "victim@example.com>",
    "<victim@example.com",
    "<victim@example.com>",
    "a@example.com>,<evil@example.net",
    "a@example.com,evil@example.net",
    "a@example.com evil@example.net",
    "a@example.com;evil@example.net",
    "Victim <victim@example.com>",
    "victim@example.com\r\nBcc: evil@example.net",
    "victim@example.com\nBcc: evil@example.net",
    "victim@example.com\x00",
    "victim@@example.com",
    "victim@example.com@evil.net",
    "victim",
    "@example.com",
    "victim@",
    "victim@localhost",
    "victim@[127.0.0.1]",
    '"victim"@example.com',
    "victim(comment)@example.com",
    "victim@example.com (comment)",
    "vic tim@example.com",
    ".victim@example.com",
    "vic..tim@example.com",
    "victim@exa_mple.com",
    "victim@-example.com",
    "victim@example..com",
    "victim@example.invalid",
    "x" * 65 + "@example.com",
    "victim@" + "a" * 64 + ".com",
    "",
    " ",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_anything_but_one_mailbox_is_refused(text: str) -> None:
    with pytest.raises(InvalidAddress):
        parse_address(text)


@pytest.mark.parametrize("text", HOSTILE)
def test_the_event_schema_refuses_it_naming_the_field(text: str) -> None:
    document = {
        "id": "e-1",
        "type": "anniversary",
        "occurred_at": "2026-11-17T10:00:00Z",
        "customer": {"id": "C-1", "email": text},
        "data": {"kind": "signup", "years": 1},
    }
    with pytest.raises(InvalidEvent) as refused:
        validate_event(document)
    assert "customer.email" in refused.value.reason
    assert text.strip() == "" or text.strip() not in refused.value.reason  # no PII in logs


@pytest.mark.parametrize(
    ("typed", "canonical", "key"),
    [
        ("ana@exämple.ro", "ana@exämple.ro", "ana@exämple.ro"),
        ("Ana@EXÄMPLE.RO", "Ana@exämple.ro", "ana@exämple.ro"),
        ("Ana@xn--exmple-cua.ro", "Ana@exämple.ro", "ana@exämple.ro"),
        ("  ana@Example.COM\t", "ana@example.com", "ana@example.com"),
        ("josé@example.com", "josé@example.com", "josé@example.com"),
        ("jose\u0301@example.com", "josé@example.com", "josé@example.com"),  # NFC
        ("Victim+tag@Example.com", "Victim+tag@example.com", "victim+tag@example.com"),
    ],
)
def test_ugly_but_valid_addresses_are_normalised(typed: str, canonical: str, key: str) -> None:
    assert canonical_address(typed) == canonical
    assert suppression_key(typed) == key


LOCAL = st.characters(categories=["Ll", "Lu", "Lo", "Nd"], include_characters="!#$%&'*+-/=?^_`{|}~")
LABEL = st.text(st.characters(categories=["Ll", "Lo", "Nd"]), min_size=1, max_size=12)


@st.composite
def typed_addresses(draw: st.DrawFn) -> tuple[str, str, str]:
    """(address with random case and IDNA form, the local part, the domain's A-labels),
    the last two derived with unicodedata and the idna package."""
    local = draw(st.text(LOCAL, min_size=1, max_size=20))
    labels = draw(st.lists(LABEL, min_size=1, max_size=3))
    try:
        ascii_domain = idna.encode(".".join([*labels, "ro"]), uts46=True).decode()
    except idna.IDNAError:
        assume(False)
    shown = draw(st.sampled_from(["a-labels", "unicode", "upper"]))
    unicode_domain = idna.decode(ascii_domain)
    domain = {"a-labels": ascii_domain, "unicode": unicode_domain, "upper": ascii_domain.upper()}
    typed = f"{local}@{domain[shown]}"
    try:
        parse_address(typed)
    except InvalidAddress:
        assume(False)
    return typed, unicodedata.normalize("NFC", local), ascii_domain


@settings(max_examples=200, deadline=None)
@given(typed=typed_addresses())
def test_every_spelling_of_an_address_has_one_canonical_form(
    typed: tuple[str, str, str],
) -> None:
    text, local, ascii_domain = typed
    parsed = parse_address(text)
    assert parsed.wire == f"{local}@{ascii_domain}"
    assert parsed.needs_smtputf8 == (not local.isascii())
    # The canonical form is a fixed point, and every spelling meets at one key.
    assert canonical_address(parsed.normalized) == parsed.normalized
    assert suppression_key(parsed.wire) == suppression_key(text)
    assert suppression_key(f"{local.upper()}@{ascii_domain.upper()}") in (
        suppression_key(text),
        # upper() of some letters is not undone by lower() (e.g. U+0130): a distinct key
        f"{local.upper().lower()}@{parsed.domain}",
    )


@pytest.mark.parametrize(
    ("text", "name", "address"),
    [
        ("Ajutor <help@shop.example>", "Ajutor", "help@shop.example"),
        ('"Doe, J." <A@EXÄMPLE.ro>', "Doe, J.", "A@exämple.ro"),
        ('"Ștefan" <ș@x.ro>', "Ștefan", "ș@x.ro"),
        ("help@shop.example", "", "help@shop.example"),
    ],
)
def test_a_mailbox_setting_keeps_its_name(text: str, name: str, address: str) -> None:
    found_name, found = parse_mailbox(text)
    assert (found_name, found.normalized) == (name, address)
    assert parse_mailbox(canonical_mailbox(text)) == (found_name, found)


@pytest.mark.parametrize(
    "text", ["a <b@c.ro>, <d@e.ro>", "a <b@c.ro>>", "a <b@c.ro\r\n>", "<b@c.ro> x"]
)
def test_a_mailbox_setting_is_one_mailbox(text: str) -> None:
    with pytest.raises(InvalidAddress):
        parse_mailbox(text)


@pytest.mark.parametrize("field", ["address", "reply_to"])
@pytest.mark.parametrize("text", ["offers@shop.example>", "a@shop.example>,<evil@x.ro", "a@b"])
def test_a_campaign_sender_is_one_mailbox(field: str, text: str) -> None:
    document = campaign_document("c-1")
    document["sender"] = {field: text}
    with pytest.raises(ValidationError) as refused:
        Campaign.model_validate(document)
    assert f"sender.{field}" in str(refused.value).replace("\n", ".")


def test_a_campaign_sender_is_stored_canonical() -> None:
    document = campaign_document("c-1")
    document["sender"] = {"name": "Magazin", "address": "Oferte@MAGAZIN-ȚARĂ.ro"}
    sender = Campaign.model_validate(document).sender
    assert sender is not None and sender.address == "Oferte@magazin-țară.ro"


# Local parts near the fast path's edges: ASCII specials, dots anywhere, role names in any
# case, quotes and brackets, a few non-ASCII letters, lengths around the 64-octet limit.
LOCAL_EDGE = st.one_of(
    st.text(st.sampled_from("aZ9.!#$%&'*+-/=?^_`{|}~\"()<>[]\\,;: @\tä"), max_size=70),
    st.sampled_from(["Postmaster", "ABUSE", "hostmaster", "a" * 64, "a" * 65, "a.b", ".a", "a."]),
)


@settings(max_examples=500, deadline=None)
@given(local=LOCAL_EDGE)
def test_the_plain_local_part_path_answers_as_email_validator_does(local: str) -> None:
    """``_local_part`` skips email-validator for plain ASCII dot-atoms: for any local part
    it returns what the library returns for ``local@example.com`` (called with the
    product's own options, ``_validate``), or refuses it too."""
    from triggers.addresses import _local_part, _plain_local_part, _validate

    try:
        expected: str | None = _validate(f"{local}@example.com", "local part").local_part
    except InvalidAddress:
        expected = None
    if _plain_local_part(local) is not None:
        assert _plain_local_part(local) == expected
    try:
        found: str | None = _local_part(local)
    except InvalidAddress:
        found = None
    assert found == expected
