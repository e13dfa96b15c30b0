"""The shipped templates speak Romanian and Italian: copy, footer, escaping and plurals."""

from __future__ import annotations

import copy
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.support.factories import make_settings
from triggers.campaigns import Campaign
from worker.core.settings import Settings
from worker.decide.rule_files import load_rule_set, template_names
from worker.email.email_context import sample_context
from worker.email.rendering import RenderedEmail, Renderer

REPO = Path(__file__).resolve().parents[3]
TEMPLATES_DIR = REPO / "templates"
SHIPPED = sorted(template_names(TEMPLATES_DIR))  # email templates (not layouts or pages)
LOCALE_FILES = [
    f"{part}.{lang}.{suffix}"
    for lang in ("ro", "it")
    for part, suffix in (("subject", "txt"), ("body", "html"), ("body", "txt"))
]

# No shipped campaign uses the upgrade template; this is the example from docs/campaigns.md.
UPGRADE_CAMPAIGN = """\
id: laptop-upgrade
name: The next tier of the laptop you bought
kind: upsell
priority: 40
trigger:
  event: purchase
  where: {field: event.categories, op: contains, value: laptops}
offer:
  type: upgrade
  max_price_ratio: 2
  max_items: 1
schedule: {delay: 30d, expire_after: 10d, window: {days: [sat, sun], from: "10:00", to: "18:00"}}
frequency: {once_per_customer: true}
experiment:
  holdout_percent: 20
  variants:
    - {id: A, template: upgrade}
"""

FOOTERS = {
    "ro": ("Primiți acest e-mail", "Preferințe e-mail", "Dezabonare"),
    "it": ("Riceve questa email", "Preferenze email", "Annulla l'iscrizione"),
    "en": ("You receive this email", "Email preferences", "Unsubscribe"),
}

# (words in the subject, words in both bodies) per template and language.
COPY: dict[str, dict[str, tuple[str, str]]] = {
    "accessories": {
        "ro": ("se potrivesc perfect", "Vă mulțumim pentru comanda O-SAMPLE"),
        "it": ("abbinamenti perfetti", "Grazie per il suo ordine O-SAMPLE"),
        "en": ("go well with", "Thank you for your order O-SAMPLE"),
    },
    "anniversary": {
        "ro": ("2 ani împreună", "La mulți ani împreună, Ana!"),
        "it": ("2 anni insieme", "Buon anniversario, Ana!"),
        "en": ("2 years together", "Happy anniversary, Ana!"),
    },
    "journey_accessories": {
        "ro": ("accesoriile potrivite", "Vă mulțumim pentru comanda O-SAMPLE"),
        "it": ("gli accessori giusti", "Grazie per il suo ordine O-SAMPLE"),
        "en": ("the right accessories", "Thank you for your order O-SAMPLE"),
    },
    "journey_bundle": {
        "ro": ("un cupon", "Prețul pachetului"),
        "it": ("un coupon", "Prezzo del pacchetto"),
        "en": ("a coupon", "Bundle price"),
    },
    "journey_loyalty": {
        "ro": ("300 de puncte de fidelitate", "o lună alături de noi"),
        "it": ("300 punti fedeltà", "questo mese insieme"),
        "en": ("300 loyalty points", "a month with us"),
    },
    "upgrade": {
        "ro": ("este momentul pentru un upgrade", "următorul nivel"),
        "it": ("è il momento di un upgrade", "passo avanti"),
        "en": ("ready for an upgrade", "next step up"),
    },
    "usage_bundle": {
        # CLDR ro writes "15\u00a0%"; a subject is one line of plain spaces.
        "ro": ("reducere de 15 %", "Prețul pachetului"),
        "it": ("15% di sconto", "Prezzo del pacchetto"),
        "en": ("15% off", "Bundle price"),
    },
}

GREETINGS = {"ro": "Bună ziua,", "it": "Salve,", "en": "Hello,"}
LOCALES = {"ro": "ro-RO", "it": "it-IT", "en": "en"}


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(
        tmp_path_factory.mktemp("locale-templates"),
        templates_dir=TEMPLATES_DIR,
        campaigns_dir=REPO / "config" / "campaigns",
    )


@pytest.fixture(scope="module")
def campaigns(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Campaign]:
    """The campaign whose trigger and offer each shipped template is written for."""
    extra = tmp_path_factory.mktemp("campaigns") / "laptop-upgrade.yaml"
    extra.write_text(UPGRADE_CAMPAIGN, encoding="utf-8")
    rules = load_rule_set([settings.campaigns_dir, extra], template_names=SHIPPED)
    by_template: dict[str, Campaign] = {}
    for compiled in rules.campaigns:
        for variant in compiled.campaign.experiment.variants:
            by_template.setdefault(variant.template, compiled.campaign)
        # A sequence step's template is written for the step's own offer.
        for step in compiled.campaign.steps or ():
            if step.template is not None:
                offer = step.offer or compiled.campaign.offer
                by_template[step.template] = compiled.campaign.model_copy(update={"offer": offer})
    return by_template


Render = Callable[..., RenderedEmail]


@pytest.fixture(scope="module")
def render(settings: Settings, campaigns: dict[str, Campaign]) -> Render:
    renderer = Renderer(settings)

    def render_one(
        template: str, lang: str, change: Callable[[dict[str, Any]], None] | None = None
    ) -> RenderedEmail:
        locale = LOCALES[lang]
        # A deep copy: the sample event data is shared module state of email_context.
        context = copy.deepcopy(sample_context(campaigns[template], settings, locale))
        if change is not None:
            change(context)
        return renderer.render(template, context, locale)

    return render_one


def test_every_shipped_template_is_covered(campaigns: dict[str, Campaign]) -> None:
    assert sorted(COPY) == SHIPPED
    assert set(SHIPPED) <= set(campaigns)
    for template in SHIPPED:
        missing = [f for f in LOCALE_FILES if not (TEMPLATES_DIR / template / f).is_file()]
        assert not missing, f"{template} lacks {missing}"


@pytest.mark.parametrize("lang", ["ro", "it", "en"])
@pytest.mark.parametrize("template", SHIPPED)
def test_copy_and_footer_are_in_the_customers_language(
    render: Render, template: str, lang: str
) -> None:
    email = render(template, lang)
    subject_words, body_words = COPY[template][lang]

    assert email.subject.startswith("Ana, ")
    assert subject_words in email.subject
    assert body_words in email.html
    assert body_words in email.text
    assert f'<html lang="{lang}">' in email.html
    for part in (email.html, email.text):
        for phrase in FOOTERS[lang]:
            assert phrase in part
        for other in FOOTERS.keys() - {lang}:
            for phrase in FOOTERS[other]:
                assert phrase not in part
        for other in COPY[template].keys() - {lang}:
            assert COPY[template][other][1] not in part
    assert "https://shop.example/u/sample" in email.text
    assert 'href="https://shop.example/u/sample"' in email.html


@pytest.mark.parametrize("lang", ["ro", "it", "en"])
@pytest.mark.parametrize("template", SHIPPED)
def test_greeting_without_a_first_name(render: Render, template: str, lang: str) -> None:
    def no_name(context: dict[str, Any]) -> None:
        context["customer"]["first_name"] = ""

    email = render(template, lang, no_name)
    assert email.subject.startswith(GREETINGS[lang])
    assert ", ," not in email.html + email.text


class _Tags(HTMLParser):
    """Every start tag of a document with its attributes, as a browser would parse them."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, attrs))


@pytest.mark.parametrize("lang", ["ro", "it"])
@pytest.mark.parametrize("template", SHIPPED)
def test_html_is_escaped(render: Render, template: str, lang: str) -> None:
    name = '<b onclick="x()">Ana & Co</b>'

    def hostile(context: dict[str, Any]) -> None:
        context["customer"]["first_name"] = name
        context["event"]["data"]["order_id"] = "<i>O-1</i>"
        for item in context["offer"]["items"]:
            item["name"] = "<script>alert(1)</script>"

    email = render(template, lang, hostile)
    tags = _Tags()
    tags.feed(email.html)
    # No element the data wrote: no <b>, <i> or <script>, no event handler attribute (a
    # "<" inside a quoted attribute value, such as an image's alt, is only text).
    assert not {"b", "i", "script"} & {tag for tag, _ in tags.found}
    assert not [name for _, attrs in tags.found for name, _ in attrs if name.startswith("on")]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in email.html
    assert "&lt;b onclick=" in email.html
    assert "Ana &amp; Co" in email.html
    # Plain text and the subject are not HTML: they keep the name as written.
    assert name in email.text
    assert email.subject.startswith(name)


@pytest.mark.parametrize(
    ("lang", "years", "in_subject", "in_body"),
    [
        ("ro", 1, "Ana, 1 an împreună", "alături de Crosssell Shop de 1 an."),
        ("ro", 2, "Ana, 2 ani împreună", "alături de Crosssell Shop de 2 ani."),
        ("ro", 19, "Ana, 19 ani împreună", "de 19 ani."),
        ("ro", 20, "Ana, 20 de ani împreună", "de 20 de ani."),
        ("ro", 21, "Ana, 21 de ani împreună", "alături de Crosssell Shop de 21 de ani."),
        ("ro", 101, "Ana, 101 ani împreună", "de 101 ani."),
        ("ro", 120, "Ana, 120 de ani împreună", "de 120 de ani."),
        ("it", 1, "Ana, 1 anno insieme", "cliente di Crosssell Shop da 1 anno."),
        ("it", 2, "Ana, 2 anni insieme", "cliente di Crosssell Shop da 2 anni."),
        ("it", 21, "Ana, 21 anni insieme", "cliente di Crosssell Shop da 21 anni."),
        ("en", 1, "Ana, 1 year together", "It has been 1 year since"),
        ("en", 21, "Ana, 21 years together", "It has been 21 years since"),
    ],
)
def test_anniversary_years_plural(
    render: Render, lang: str, years: int, in_subject: str, in_body: str
) -> None:
    def with_years(context: dict[str, Any]) -> None:
        context["event"]["data"]["years"] = years

    email = render("anniversary", lang, with_years)
    assert email.subject.startswith(in_subject)
    assert in_body in email.text
    assert in_body in email.html


@pytest.mark.parametrize(
    ("lang", "points", "in_subject", "in_body"),
    [
        ("ro", 1, "1 punct bonus", "1 punct de fidelitate"),
        ("ro", 10, "10 puncte bonus", "10 puncte de fidelitate"),
        ("ro", 500, "500 de puncte bonus", "500 de puncte de fidelitate"),
        ("ro", 1000, "1.000 de puncte bonus", "1.000 de puncte de fidelitate"),
        ("it", 1, "1 punto bonus", "1 punto fedeltà"),
        ("it", 1000, "1.000 punti bonus", "1.000 punti fedeltà"),
    ],
)
def test_anniversary_points_plural_and_number_format(
    render: Render, lang: str, points: int, in_subject: str, in_body: str
) -> None:
    def with_points(context: dict[str, Any]) -> None:
        context["offer"]["points"] = points

    email = render("anniversary", lang, with_points)
    assert in_subject in email.subject
    assert in_body in email.text
    assert in_body in email.html


def test_sample_data_is_left_alone(render: Render) -> None:
    def with_years(context: dict[str, Any]) -> None:
        context["event"]["data"]["years"] = 7

    render("anniversary", "ro", with_years)
    assert "2 ani împreună" in render("anniversary", "ro").subject
