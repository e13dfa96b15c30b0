"""Every shipped template, in every language it speaks, is an email a customer can act on.

Rendered for English, Romanian and Italian customers, with and without the optional
profile fields, with and without a coupon: the text is in the customer's language (no
sentence of the English templates leaks into a Romanian or Italian email), the coupon is
shown whenever the offer has one, the one call to action carries the offered SKUs and the
UTM tags, and the footer names the sender and its postal address. With SpamAssassin and
Chromium installed, each email scores under 1.0 and draws at 800 and 375 px.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from jinja2 import Environment, nodes

from tests.support.factories import make_settings
from triggers.campaigns import Campaign, Experiment, Variant
from triggers.offers import Product, ResolvedOffer, bundle_offer
from worker.core.settings import Settings
from worker.decide.rule_files import load_rule_set, template_names
from worker.email.email_context import Coupon, Links, email_context
from worker.email.mime import Envelope, build_message, feedback_id_for, message_id_for
from worker.email.rendering import RenderedEmail, Renderer

REPO = Path(__file__).resolve().parents[3]
TEMPLATES = REPO / "templates"
SHIPPED = sorted(
    p.name
    for p in TEMPLATES.iterdir()
    if p.is_dir() and not p.name.startswith("_") and (p / "body.html").exists()
)
LANGUAGES = ("en", "ro", "it")
POSTAL = "Strada Testului 7, 400001 Cluj-Napoca, Romania"
ORGANIZATION = "Test Shop S.R.L."

# The shipped campaigns, plus one for a template no shipped campaign uses.
UPGRADE_CAMPAIGN: dict[str, Any] = {
    "id": "laptop-upgrade",
    "name": "The next tier",
    "kind": "upsell",
    "trigger": {"event": "purchase"},
    "offer": {"type": "upgrade"},
    "experiment": {"variants": [{"id": "A", "template": "upgrade"}]},
}


def _campaigns() -> dict[str, Campaign]:
    rules = load_rule_set([REPO / "config" / "campaigns"], template_names(TEMPLATES))
    found = {c.campaign.experiment.variants[0].template: c.campaign for c in rules.campaigns}
    for compiled in rules.campaigns:
        campaign = compiled.campaign
        for step in campaign.steps or ():
            # A sequence step renders as its own one-variant campaign (as lint checks it).
            template = step.template or campaign.experiment.variants[0].template
            found.setdefault(
                template,
                campaign.model_copy(
                    update={
                        "offer": step.offer or campaign.offer,
                        "experiment": Experiment(
                            variants=[Variant(id="A", template=template, subject=step.subject)]
                        ),
                        "steps": None,
                    }
                ),
            )
    found.setdefault("upgrade", Campaign.model_validate(UPGRADE_CAMPAIGN))
    return found


CAMPAIGNS = _campaigns()

PRODUCTS = (
    Product(
        "DOCK-USB-C", "USB-C dock", "docks", Decimal("89.90"), "EUR",
        url="https://shop.example/p/dock", image_url="https://shop.example/img/dock.jpg",
    ),
    Product(
        "SLV&14#B", "Sleeve 14", "sleeves", Decimal("24.50"), "EUR",
        url="https://shop.example/p/sleeve", image_url="https://shop.example/img/sleeve.jpg",
    ),
)  # fmt: skip


def _offer(campaign: Campaign) -> ResolvedOffer:
    offer = campaign.offer
    if offer.type == "bundle":
        return bundle_offer(PRODUCTS, offer.discount_percent)
    if offer.type == "loyalty_bonus":
        return ResolvedOffer(
            "loyalty_bonus", PRODUCTS, "EUR", points=offer.points, new_categories=("docks",)
        )
    return ResolvedOffer(offer.type, PRODUCTS, "EUR")


EVENT_DATA: dict[str, dict[str, Any]] = {
    "purchase": {"order_id": "O-4242", "currency": "EUR", "total": "1299.00", "items": []},
    "anniversary": {"kind": "membership", "years": 3},
    "usage_change": {"metric": "logins_per_week", "previous": 12, "current": 3},
}


@dataclass(frozen=True)
class Case:
    template: str
    lang: str
    named: bool
    coupon: Coupon | None
    variant: str = "A"

    def __str__(self) -> str:
        who = "named" if self.named else "anonymous"
        offer = "coupon" if self.coupon else "plain"
        return f"{self.template}-{self.variant}-{self.lang}-{who}-{offer}"


def _settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, postal_address=POSTAL, sender_organization=ORGANIZATION)


def render(case: Case, settings: Settings) -> tuple[RenderedEmail, dict[str, Any]]:
    campaign = CAMPAIGNS[case.template]
    variant = next(v for v in campaign.experiment.variants if v.id == case.variant)
    customer = {
        "id": "C-7",
        "first_name": "Ioana" if case.named else None,
        "last_name": "Mureșan" if case.named else None,
        "email": "c7@example.ro",
        "locale": {"en": "en-GB", "ro": "ro-RO", "it": "it-IT"}[case.lang],
        "timezone": "Europe/Bucharest",
    }
    event = {
        "id": "evt-7",
        "type": campaign.trigger.event,
        "occurred_at": "2026-11-17T10:30:00+00:00",
        "customer": {"id": "C-7"},
        "data": EVENT_DATA[campaign.trigger.event],
    }
    context = email_context(
        settings=settings,
        customer=customer,
        event=event,
        campaign=campaign,
        variant=variant.id,
        offer=_offer(campaign),
        links=Links("https://shop.example/u/T", "https://shop.example/preferences/T"),
        coupon=case.coupon,
    )
    rendered = Renderer(settings).render(
        case.template, context, customer["locale"], variant.subject
    )
    return rendered, context


COUPON = Coupon("BUNDLE-7Q4ZK2", datetime(2026, 12, 1, 22, 30, tzinfo=UTC), Decimal(15))

# Every variant of the campaign using the template: a variant's own subject is part of it.
CASES = [
    Case(template, lang, named, coupon, variant.id)
    for template in SHIPPED
    for variant in CAMPAIGNS[template].experiment.variants
    for lang in LANGUAGES
    for named in (True, False)
    for coupon in (COUPON, None)
]


class _Visible(HTMLParser):
    """Visible text (no <style>, <title>) and every link (href, class) of an HTML part."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.links: list[tuple[str, str]] = []
        self.images: list[dict[str, str | None]] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag in ("style", "title"):
            self._hidden += 1
        elif tag == "a":
            self.links.append((values.get("href") or "", values.get("class") or ""))
        elif tag == "img":
            self.images.append(values)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "title"):
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.text.append(data)


def _visible(html: str) -> _Visible:
    parser = _Visible()
    parser.feed(html)
    return parser


def _normal(text: str) -> str:
    return " ".join(text.split())


def _english_phrases() -> set[str]:
    """Every phrase of two or more words written in the English template files: their
    literal text and string constants (the labels), cut at markup, expressions and
    punctuation. Taken from the files, so a sentence added later is checked too."""
    env = Environment()
    files = [TEMPLATES / "_base" / name for name in ("body.html", "body.txt", "coupon.txt")]
    for template in SHIPPED:
        files += [TEMPLATES / template / n for n in ("subject.txt", "body.txt", "body.html")]
    phrases: set[str] = set()
    for path in files:
        tree = env.parse(path.read_text(encoding="utf-8"))
        pieces = [data.data for data in tree.find_all(nodes.TemplateData)]
        pieces += [c.value for c in tree.find_all(nodes.Const) if isinstance(c.value, str)]
        for piece in pieces:
            if "{" in piece and "}" in piece:  # the style sheet
                piece = re.sub(r"<style>.*?</style>", " ", piece, flags=re.S)
            piece = re.sub(r"<[^>]*>", "\n", piece)
            for phrase in re.split(r"[.,:;!?()\n·]", piece):
                words = re.findall(r"[A-Za-z']+", phrase)
                if len(words) >= 2 and not re.search(r"[{}%=#/]", phrase):
                    phrases.add(_normal(phrase))
    return phrases


ENGLISH = _english_phrases()


def test_the_english_phrases_are_found() -> None:
    """The leak check below checks something: the known sentences are among the phrases."""
    assert "Thank you for your order" in ENGLISH
    assert "The button below puts them in your cart" in ENGLISH
    assert "You receive this email because you are a customer of" in ENGLISH
    assert "Your discount code" in ENGLISH
    assert len(ENGLISH) > 40


@pytest.mark.parametrize("case", CASES, ids=str)
def test_every_shipped_email_is_one_a_customer_can_act_on(tmp_path: Path, case: Case) -> None:
    settings = _settings(tmp_path)
    email, context = render(case, settings)
    html = _visible(email.html)
    visible = _normal(" ".join(html.text))
    text = _normal(email.text)

    # In the customer's language: no English sentence in a Romanian or Italian email.
    assert f'<html lang="{case.lang}">' in email.html
    if case.lang != "en":
        for where, content in (("subject", email.subject), ("html", visible), ("text", text)):
            leaked = sorted(p for p in ENGLISH if p in content)
            assert leaked == [], f"English in the {case.lang} {where}: {leaked}"

    # A customer without a first name reads no dangling comma.
    assert not re.match(r"^\W", email.subject), email.subject
    assert " ," not in email.subject and ", ," not in email.subject
    if not case.named:
        assert not re.search(r"(^|\n)\s*,", email.text)

    # The coupon appears whenever the offer has one: code, discount and expiry, in the
    # customer's time zone (22:30 UTC on 1 December is 00:30 on 2 December in Bucharest).
    if case.coupon is not None:
        for content in (visible, text):
            assert case.coupon.code in content
            assert "15" in content and "%" in content
            assert "2026" in content and "00:30" in content
            assert {"en": "December", "ro": "decembrie", "it": "dicembre"}[case.lang] in content
    else:
        assert "BUNDLE-" not in email.html and "coupon=" not in email.html

    # One clear call to action, carrying the SKUs, the coupon and the UTM tags.
    buttons = [href for href, css in html.links if "button" in css.split()]
    assert len(buttons) == 1, html.links
    query = parse_qs(urlsplit(buttons[0]).query)
    assert query["sku"] == [",".join(p.sku for p in PRODUCTS)]
    assert query["utm_source"] == ["crosssell"] and query["utm_medium"] == ["email"]
    assert query["utm_campaign"] == [CAMPAIGNS[case.template].id]
    assert query["utm_content"] == [context["variant"]]
    assert query.get("coupon") == ([case.coupon.code] if case.coupon else None)
    assert buttons[0] in email.text

    # Images that work when blocked: alt text that says more than the linked name, a size.
    link_texts = {_normal(t) for t in html.text}
    for image in html.images:
        alt = image.get("alt") or ""
        assert alt and alt not in link_texts, image
        assert image.get("width") and image.get("height"), image

    # The footer names the sender and its postal address, in both parts.
    for content in (visible, text):
        assert POSTAL in content and ORGANIZATION in content


def _style(html: str, marker: str) -> str:
    """The inlined ``style`` of the first element whose opening tag is followed by
    ``marker`` (a piece of its text)."""
    found = re.search(r'<p style="([^"]*)">[^<]*' + re.escape(marker), html)
    assert found, marker
    return found.group(1)


@pytest.mark.parametrize("template", SHIPPED)
def test_the_footer_keeps_its_smaller_type_after_inlining(tmp_path: Path, template: str) -> None:
    email, _ = render(Case(template, "en", True, None), _settings(tmp_path))
    footer = _style(email.html, "You receive this email")
    body_size = re.search(r"font-size:\s*(\d+)px", _style(email.html, "")).group(1)  # type: ignore[union-attr]
    footer_size = re.search(r"font-size:\s*(\d+)px", footer).group(1)  # type: ignore[union-attr]
    assert int(footer_size) < int(body_size)


def _envelope(settings: Settings, campaign: str) -> Envelope:
    return Envelope(
        send_id=7,
        sender_name=settings.sender_name,
        sender_address=settings.sender_address,
        recipient_name="Ioana Mureșan",
        recipient_address="c7@example.ro",
        reply_to=None,
        date=datetime(2026, 11, 17, 10, 30, tzinfo=UTC),
        message_id=message_id_for(7, "shop.example", b"k" * 32),
        unsubscribe_url="https://shop.example/u/T",
        unsubscribe_mailto="unsubscribe@shop.example?subject=unsubscribe%20T",
        feedback_id=feedback_id_for(campaign, "cross_sell", settings.feedback_sender_id),
    )


def _needed(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is not installed (.ci/run installs it)")
        pytest.skip(f"{tool} is not installed")
    return found


SCORE = re.compile(r"\((-?\d+\.\d+) points, ")


def spam_score(spamassassin: str, message: bytes) -> tuple[float, str]:
    """SpamAssassin's score with local rules only (no DNS or network tests)."""
    result = subprocess.run(
        [spamassassin, "-L", "-t"], input=message, capture_output=True, timeout=120, check=True
    )
    return _score_of(result.stdout.decode("utf-8", "replace"))


def _score_of(report: str) -> tuple[float, str]:
    found = SCORE.search(report)
    assert found, report[-2000:]
    return float(found.group(1)), report[report.find("Content analysis") :]


MBOX_SEPARATOR = b"From crosssell-test Mon Nov 30 10:00:00 2026\n"
MESSAGE_ID = re.compile(r"^Message-ID:\s*(<[^>]+>)", re.IGNORECASE | re.MULTILINE)


def spam_scores(spamassassin: str, messages: dict[str, bytes]) -> dict[str, tuple[float, str]]:
    """:func:`spam_score` of each message, by its Message-ID, from one SpamAssassin run
    over an mbox (``--mbox``): loading the rules is most of a run's 2-3 s, paid once
    instead of once a message. It answers in its own order, hence the Message-IDs. A
    message with a line an mbox would have to escape (``From ``) is scored alone."""
    scores: dict[str, tuple[float, str]] = {}
    together: list[bytes] = []
    for message_id, message in messages.items():
        if re.search(rb"^From ", message, re.MULTILINE):
            scores[message_id] = spam_score(spamassassin, message)
        else:
            together.append(MBOX_SEPARATOR + message.replace(b"\r\n", b"\n") + b"\n")
    if together:
        result = subprocess.run(
            [spamassassin, "-L", "-t", "--mbox"],
            input=b"".join(together),
            capture_output=True,
            timeout=300,
            check=True,
        )
        output = result.stdout.decode("utf-8", "replace")
        for chunk in re.split(r"^From crosssell-test [^\n]*\n", output, flags=re.MULTILINE)[1:]:
            found = MESSAGE_ID.search(chunk)
            assert found, chunk[:2000]
            scores[found.group(1)] = _score_of(chunk)
    assert set(scores) == set(messages), sorted(set(messages) - set(scores))
    return scores


@pytest.fixture(scope="module")
def shipped_spam_scores(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[tuple[str, str], tuple[float, str]]:
    """The score of every shipped template in every language, each with its own send id."""
    spamassassin = _needed("spamassassin")
    settings = _settings(tmp_path_factory.mktemp("spam"))
    messages: dict[str, bytes] = {}
    cases: dict[tuple[str, str], str] = {}
    for number, (template, lang) in enumerate(
        (template, lang) for template in SHIPPED for lang in LANGUAGES
    ):
        coupon = COUPON if CAMPAIGNS[template].offer.coupon else None
        email, _ = render(Case(template, lang, True, coupon), settings)
        envelope = replace(_envelope(settings, template), send_id=100 + number)
        message = build_message(envelope, email)
        found = MESSAGE_ID.search(message.decode("utf-8", "replace"))
        assert found
        messages[found.group(1)] = message
        cases[(template, lang)] = found.group(1)
    scores = spam_scores(spamassassin, messages)
    return {case: scores[message_id] for case, message_id in cases.items()}


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("template", SHIPPED)
def test_spamassassin_scores_every_shipped_email_under_one(
    shipped_spam_scores: dict[tuple[str, str], tuple[float, str]], template: str, lang: str
) -> None:
    score, report = shipped_spam_scores[(template, lang)]
    assert score < 1.0, report


def test_one_run_over_an_mbox_scores_as_one_run_a_message(tmp_path: Path) -> None:
    """The batched scoring above answers what a run per message answers."""
    spamassassin = _needed("spamassassin")
    settings = _settings(tmp_path)
    messages = {}
    for number, template in enumerate(SHIPPED[:2]):
        email, _ = render(Case(template, "ro", True, None), settings)
        message = build_message(replace(_envelope(settings, template), send_id=number), email)
        found = MESSAGE_ID.search(message.decode("utf-8", "replace"))
        assert found
        messages[found.group(1)] = message
    together = spam_scores(spamassassin, messages)
    alone = {message_id: spam_score(spamassassin, m) for message_id, m in messages.items()}
    assert {k: v[0] for k, v in together.items()} == {k: v[0] for k, v in alone.items()}


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk (PNG spec, section 11.2.2)."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_preview_screenshot_draws_the_email_at_desktop_and_phone_width(tmp_path: Path) -> None:
    from worker.commands.preview import preview
    from worker.process.runtime import Runtime

    _needed("chromium")
    runtime = Runtime(_settings(tmp_path))
    (result,) = preview(runtime, "usage-drop-bundle", None, "ro", tmp_path / "out", True)
    assert _png_size(result.directory / "screenshot-800.png")[0] == 800
    assert _png_size(result.directory / "screenshot-375.png")[0] == 375
    # Drawn from the email written beside it.
    assert "Profitați de pachet" in (result.directory / "body.html").read_text(encoding="utf-8")


def test_a_coupon_expiry_is_read_in_the_customers_zone() -> None:
    """The same instant is a different day in Bucharest and New York."""
    from zoneinfo import ZoneInfo

    from babel import Locale

    from worker.email.email_context import local_date_time

    moment = datetime(2026, 12, 1, 23, 30, tzinfo=UTC)
    assert "2 decembrie 2026" in local_date_time(moment, ZoneInfo("Europe/Bucharest"), Locale("ro"))
    assert "December 1, 2026" in local_date_time(
        moment, ZoneInfo("America/New_York"), Locale.parse("en_US")
    )
    assert "01:30" in local_date_time(moment, ZoneInfo("Europe/Bucharest"), Locale("ro"))
