"""Templates render safely in the sandbox; messages are well-formed and unforgeable."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jinja2 import UndefinedError
from jinja2.exceptions import SecurityError

from tests.support.factories import make_settings
from worker.email.mime import Envelope, HeaderInjection, build_message, message_id_for
from worker.email.rendering import RenderedEmail, Renderer


def _renderer(tmp_path: Path, files: dict[str, str]) -> Renderer:
    root = tmp_path / "templates"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return Renderer(make_settings(tmp_path, templates_dir=root))


BASIC = {
    "t/subject.txt": "Hi {{ customer.first_name }}",
    "t/body.html": "<p>Hi {{ customer.first_name }}, {{ money(price, 'EUR') }}</p>",
    "t/body.txt": "Hi {{ customer.first_name }}, {{ money(price, 'EUR') }}",
}


def test_html_is_autoescaped_and_text_is_not(tmp_path: Path) -> None:
    renderer = _renderer(tmp_path, BASIC)
    name = "<script>alert(1)</script>"
    email = renderer.render("t", {"customer": {"first_name": name}, "price": "5"}, "en")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in email.html
    assert "<script>" not in email.html
    assert name in email.text


def test_undefined_variables_are_errors(tmp_path: Path) -> None:
    renderer = _renderer(tmp_path, BASIC)
    with pytest.raises(UndefinedError):
        renderer.render("t", {"customer": {}, "price": "5"}, "en")


@pytest.mark.parametrize(
    "payload",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ ''|attr('__class__') }}",
        "{{ '{0.__class__}'.format(customer) }}",
    ],
)
def test_sandbox_keeps_templates_away_from_python_internals(tmp_path: Path, payload: str) -> None:
    renderer = _renderer(tmp_path, {**BASIC, "t/subject.txt": payload})
    with pytest.raises((SecurityError, UndefinedError)):
        renderer.render("t", {"customer": {"first_name": "A"}, "price": "5"}, "en")


def test_money_is_formatted_in_the_customers_locale(tmp_path: Path) -> None:
    renderer = _renderer(tmp_path, BASIC)
    context = {"customer": {"first_name": "Ana"}, "price": "1299.5"}
    # CLDR writes the euro as "EUR" in Romanian; the number uses Romanian separators.
    assert "1.299,50\xa0EUR" in renderer.render("t", context, "ro-RO").text
    assert "1.299,50\xa0€" in renderer.render("t", context, "it-IT").text
    assert "€1,299.50" in renderer.render("t", context, "en-GB").text


def test_locale_variant_is_preferred_with_fallback(tmp_path: Path) -> None:
    renderer = _renderer(tmp_path, {**BASIC, "t/body.ro.txt": "Salut {{ customer.first_name }}"})
    context = {"customer": {"first_name": "Ana"}, "price": "1"}
    assert renderer.render("t", context, "ro-RO").text.startswith("Salut Ana")
    assert renderer.render("t", context, "it-IT").text.startswith("Hi Ana")


def _envelope(**overrides: object) -> Envelope:
    values: dict[str, object] = {
        "send_id": 42,
        "sender_name": "Magazinul Ștefăniță",
        "sender_address": "shop@example.ro",
        "recipient_name": "Ioana Țurcanu",
        "recipient_address": "ioana@example.ro",
        "reply_to": None,
        "date": datetime(2026, 11, 17, 10, 30, tzinfo=UTC),
        "message_id": message_id_for(42, "example.ro", b"k" * 32),
        "unsubscribe_url": "https://shop.example/u/tok",
        "unsubscribe_mailto": "u@example.ro",
        "feedback_id": "a1b2c3d4e5:cross-sell:crosssell",
    }
    values.update(overrides)
    return Envelope(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("subject", "sender"),
    [
        ("Ioana, ți-am pregătit: șnur, țintă, ăla, îți, câștig", "Magazinul Ștefăniță"),
        ("Nicolò, più città: à è ì ò ù", "Negozio Forlì"),
    ],
)
def test_non_ascii_headers_round_trip(subject: str, sender: str) -> None:
    email = RenderedEmail(subject=subject, html="<p>ș à</p>", text="ș à\n")
    raw = build_message(_envelope(sender_name=sender), email)
    assert raw.isascii()  # encoded for transport (RFC 2047 / quoted-printable)
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed["Subject"] == subject
    assert parsed["From"].addresses[0].display_name == sender
    body = parsed.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert body.replace("\r\n", "\n") == "ș à\n"
    assert parsed["Message-ID"] == message_id_for(42, "example.ro", b"k" * 32)
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))


@pytest.mark.parametrize(
    "field", ["recipient_name", "sender_name", "unsubscribe_url", "recipient_address"]
)
def test_line_breaks_cannot_add_headers(field: str) -> None:
    email = RenderedEmail(subject="ok", html="<p>x</p>", text="x\n")
    with pytest.raises(HeaderInjection):
        build_message(_envelope(**{field: "x\r\nBcc: victim@example.com"}), email)


def test_line_breaks_in_subject_cannot_add_headers() -> None:
    email = RenderedEmail(subject="ok\nBcc: victim@example.com", html="<p>x</p>", text="x\n")
    with pytest.raises(HeaderInjection):
        build_message(_envelope(), email)


def test_message_id_is_stable_per_send() -> None:
    assert message_id_for(7, "d.example", b"k" * 32) == message_id_for(7, "d.example", b"k" * 32)
    assert message_id_for(7, "d.example", b"k" * 32) != message_id_for(8, "d.example", b"k" * 32)


def test_a_template_without_a_text_part_gets_one_from_its_html(tmp_path: Path) -> None:
    renderer = _renderer(
        tmp_path,
        {
            "t/subject.txt": "Hi",
            "t/body.html": "<h1>Hi {{ customer.first_name }}</h1><p>See <a href='https://s.example/p'>"
            "the bag</a></p><ul><li>one</li><li>two</li></ul>",
        },
    )
    email = renderer.render("t", {"customer": {"first_name": "Ana"}}, "en")
    assert "Hi Ana" in email.text
    assert "https://s.example/p" in email.text
    assert "* one" in email.text and "<" not in email.text


@given(st.integers(min_value=100_000, max_value=10**12))
def test_message_id_does_not_show_the_send_id(send_id: int) -> None:
    """The Message-ID is unique per send but carries no readable sequence: the local
    part is base32 of an HMAC, so the decimal id does not appear, and a neighbour or
    another key gives an unrelated value. Ids of six digits or more: base32 holds the
    digits 2-7, so a shorter id such as 3 turns up in a random local part by chance
    (one in 32 per position), while six given digits do about once in 50 million."""
    key = b"k" * 32
    value = message_id_for(send_id, "shop.example", key)
    local, _, domain = value.strip("<>").partition("@")
    assert domain == "shop.example"
    assert str(send_id) not in local
    assert len(local) == 26 and set(local) <= set("abcdefghijklmnopqrstuvwxyz234567")
    assert value != message_id_for(send_id + 1, "shop.example", key)
    assert value != message_id_for(send_id, "shop.example", b"j" * 32)
