"""Lint warnings for emails that send but read badly, per-locale variant subjects, the
call-to-action link and the postal address a production provider needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from click.testing import CliRunner
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.support.factories import make_settings
from triggers.campaigns import Campaign
from triggers.lint_issues import LintIssue, RuleSetError
from worker.core.settings import Settings
from worker.decide.rules import load_rules
from worker.email.email_context import cart_link, sample_context
from worker.email.rendering import Renderer

HEADER = """\
id: words
name: Words under test
kind: cross_sell
trigger: {event: purchase}
offer: {type: complementary%s}
experiment:
  variants:
"""
LOCALIZED = {
    "t/subject.txt": "Hello",
    "t/subject.ro.txt": "Bună ziua",
    "t/subject.it.txt": "Salve",
    "t/body.html": "<p>Hi</p>",
    "t/body.ro.html": "<p>Bună</p>",
    "t/body.it.html": "<p>Ciao</p>",
}


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")


def _setup(
    tmp_path: Path, files: dict[str, str], variant: str, coupon: bool = False
) -> tuple[Settings, Path]:
    templates = tmp_path / "templates"
    _write(templates, files)
    campaign = tmp_path / "words.yaml"
    extra = ", coupon: {discount_percent: 10}" if coupon else ""
    campaign.write_text(HEADER % extra + variant, encoding="utf-8")
    return make_settings(tmp_path, templates_dir=templates), campaign


def _issues(
    tmp_path: Path, files: dict[str, str], variant: str, coupon: bool = False
) -> list[LintIssue]:
    settings, campaign = _setup(tmp_path, files, variant, coupon)
    try:
        return list(load_rules(settings, Renderer(settings), [campaign]).warnings)
    except RuleSetError as exc:
        return list(exc.issues)


SINGLE = '    - {id: B, template: t, subject: "{{ customer.first_name }}, complete your setup"}\n'


def test_the_old_shipped_variant_subject_warns_twice_and_strict_fails(tmp_path: Path) -> None:
    """The laptop-accessories variant B that sent English subjects over Romanian bodies."""
    settings, campaign = _setup(tmp_path, LOCALIZED, SINGLE)
    found = [(i.level, i.code, i.path, i.line) for i in _issues(tmp_path, LOCALIZED, SINGLE)]
    assert sorted(found) == [
        ("warning", "optional-field-without-fallback", "experiment.variants[0].subject", 8),
        ("warning", "single-language-subject", "experiment.variants[0].subject", 8),
    ]
    from worker.commands.cli import main

    env = {"CROSSSELL_TEMPLATES_DIR": str(settings.templates_dir)}
    from worker.core.settings import get_settings

    get_settings.cache_clear()
    try:
        plain = CliRunner(env=env).invoke(main, ["lint", str(campaign)])
        strict = CliRunner(env=env).invoke(main, ["lint", "--strict", str(campaign)])
        github = CliRunner(env=env).invoke(main, ["lint", "--format", "github", str(campaign)])
    finally:
        get_settings.cache_clear()
    assert plain.exit_code == 0, plain.output
    assert strict.exit_code == 1, strict.output
    assert "campaign(s) OK" in plain.stdout and "campaign(s) OK" not in strict.output
    assert "2 warning(s), failing with --strict" in strict.output
    line = f"{campaign}:8:"
    warned = [row for row in plain.stdout.splitlines() if row.startswith(line)]
    assert len(warned) == 2 and all(": warning[" in row for row in warned), plain.stdout
    annotations = [row for row in github.stdout.splitlines() if row.startswith("::")]
    assert github.exit_code == 0 and len(annotations) == 2
    assert all(row.startswith(f"::warning file={campaign},line=8,") for row in annotations)


def test_a_per_locale_subject_does_not_warn(tmp_path: Path) -> None:
    variant = (
        "    - id: B\n      template: t\n      subject:\n"
        "        en: \"{{ customer.first_name or 'Hello' }}, all set\"\n"
        "        ro: \"{{ customer.first_name or 'Bună ziua' }}, gata\"\n"
    )
    assert _issues(tmp_path, LOCALIZED, variant) == []


def test_a_single_subject_over_a_template_without_localized_subjects_does_not_warn(
    tmp_path: Path,
) -> None:
    files = {"t/subject.txt": "Hello", "t/body.html": "<p>Hi</p>"}
    assert _issues(tmp_path, files, '    - {id: B, template: t, subject: "All set"}\n') == []


# (expression in a body, whether a customer without the field reads it badly). Written by
# hand from Jinja's semantics: a use is safe when it only prints under a test of the
# field, or has a fallback after it.
FALLBACK_CASES = [
    ("{{ customer.first_name }}", True),
    ("{{ customer['last_name'] }}", True),
    ("{{ customer.first_name|upper }}", True),
    ("{{ 'Dear ' ~ customer.first_name }}", True),
    ("{% if customer.id %}{{ customer.first_name }}{% endif %}", True),
    ("{% if not customer.first_name %}{{ customer.first_name }}{% endif %}", True),
    ("{% if customer.first_name %}x{% else %}{{ customer.first_name }}{% endif %}", True),
    ("{% if customer.first_name or customer.id %}{{ customer.first_name }}{% endif %}", True),
    ("{{ customer.first_name or 'there' }}", False),
    ("{{ customer.first_name|default('there', true) }}", False),
    ("{{ customer.first_name|d('there', true) }}", False),
    ("{% if customer.first_name %}{{ customer.first_name }}, hi{% endif %}", False),
    ("{% if customer.first_name and customer.last_name %}"
     "{{ customer.last_name }}{% endif %}", False),
    ("{% if not customer.first_name %}Hi{% else %}{{ customer.first_name }}{% endif %}", False),
    ("{{ customer.first_name ~ ', hi' if customer.first_name else 'Hi' }}", False),
    ("{{ customer.email }} {{ customer.id }}", False),
    ("{{ shop.first_name if shop.first_name is defined else '' }}", False),
]  # fmt: skip


@pytest.mark.parametrize(("expression", "warns"), FALLBACK_CASES)
def test_optional_fields_need_a_fallback(tmp_path: Path, expression: str, warns: bool) -> None:
    files = {"t/subject.txt": "Hello", "t/body.html": f"<p>Hi</p>\n<p>{expression}</p>"}
    found = [
        (i.code, Path(i.file).name, i.line, i.level)
        for i in _issues(tmp_path, files, "    - {id: A, template: t}\n")
    ]
    want = [("optional-field-without-fallback", "body.html", 2, "warning")] if warns else []
    assert found == want


@given(
    field=st.sampled_from(["first_name", "last_name"]),
    guard=st.sampled_from(["bare", "or", "default", "if", "else-of-not"]),
    space=st.sampled_from(["", " "]),
)
def test_a_warning_exactly_when_the_use_is_bare(field: str, guard: str, space: str) -> None:
    """Each guard around each optional field: only the bare use warns, at its column."""
    from worker.email.template_lint import fallback_problems

    use = f"customer.{field}"
    body = {
        "bare": f"{{{{{space}{use}{space}}}}}",
        "or": f"{{{{ {use} or 'x' }}}}",
        "default": f"{{{{ {use}|default('x', true) }}}}",
        "if": f"{{% if {use} %}}{{{{ {use} }}}}{{% endif %}}",
        "else-of-not": f"{{% if not {use} %}}x{{% else %}}{{{{ {use} }}}}{{% endif %}}",
    }[guard]
    source = f"<p>\n{body}</p>"
    renderer = Renderer(Settings())
    found = fallback_problems(source, renderer, "t/body.html", "the body")
    if guard == "bare":
        assert [(p.line, p.col) for p in found] == [(2, source.splitlines()[1].index(use) + 1)]
    else:
        assert found == []


def test_a_coupon_the_template_never_shows_warns(tmp_path: Path) -> None:
    files = {"t/subject.txt": "Hello", "t/body.html": "<p>Hi</p>", "t/body.txt": "Hi"}
    found = _issues(tmp_path / "a", files, "    - {id: A, template: t}\n", coupon=True)
    assert [(i.level, i.code) for i in found] == [("warning", "coupon-not-shown")]
    assert "default" in found[0].message

    shown = {
        "t/subject.txt": "Hello",
        "t/body.html": "<p>Hi</p>{% if coupon %}<p>{{ coupon.code }}</p>{% endif %}",
        "t/body.txt": "Hi {% if coupon %}{{ coupon.code }}{% endif %}",
    }
    assert _issues(tmp_path / "b", shown, "    - {id: A, template: t}\n", coupon=True) == []
    # The text part counts too: a code only in the HTML still warns.
    html_only = {**shown, "t/body.txt": "Hi"}
    found = _issues(tmp_path / "c", html_only, "    - {id: A, template: t}\n", coupon=True)
    assert [i.code for i in found] == ["coupon-not-shown"]


def test_shipped_campaigns_lint_without_warnings() -> None:
    settings = Settings()
    rules = load_rules(settings, Renderer(settings))
    assert [str(w) for w in rules.warnings] == []


# --- per-locale subjects ---------------------------------------------------------------

PER_LOCALE: dict[str, Any] = {
    "id": "per-locale",
    "name": "Per-locale subjects",
    "kind": "cross_sell",
    "trigger": {"event": "purchase"},
    "offer": {"type": "complementary"},
    "experiment": {
        "variants": [
            {"id": "B", "template": "t", "subject": {"en": "Your setup", "ro-RO": "Echipamentul"}}
        ]
    },
}


@pytest.mark.parametrize(
    ("locale", "subject"),
    [
        ("en", "Your setup"),
        ("en-GB", "Your setup"),
        ("ro-RO", "Echipamentul"),  # the region-specific key
        ("ro-MD", "Bună ziua"),  # no ro key: the template's Romanian file, never English
        ("it-IT", "Salve"),  # not given: the template's Italian subject file
        ("de-DE", "Hello"),  # no German anywhere: the template's default file
    ],
)
def test_a_variant_subject_is_chosen_per_locale(tmp_path: Path, locale: str, subject: str) -> None:
    _write(tmp_path / "templates", LOCALIZED)
    settings = make_settings(tmp_path, templates_dir=tmp_path / "templates")
    campaign = Campaign.model_validate(PER_LOCALE)
    variant = campaign.experiment.variants[0]
    assert variant.subject == {"en": "Your setup", "ro_RO": "Echipamentul"}
    context = sample_context(campaign, settings, locale)
    rendered = Renderer(settings).render("t", context, locale, variant.subject)
    assert rendered.subject == subject


@pytest.mark.parametrize(
    "subject",
    [{}, {"english": "x"}, {"ro": ""}, {"ro_RO": "a", "ro-RO": "b"}, {"RO": "x"}],
)
def test_a_per_locale_subject_is_validated(subject: dict[str, str]) -> None:
    data = {
        **PER_LOCALE,
        "experiment": {"variants": [{"id": "B", "template": "t", "subject": subject}]},
    }
    with pytest.raises(ValidationError):
        Campaign.model_validate(data)


# --- the call-to-action link -----------------------------------------------------------

SKU = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"), exclude_characters=","),
    min_size=1,
    max_size=20,
)


@given(
    skus=st.lists(SKU, min_size=1, max_size=4),
    coupon=st.none()
    | st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20),
    variant=st.from_regex(r"[A-Za-z0-9_\-]{1,10}", fullmatch=True),
)
@example(skus=["A&utm_source=evil", "B#frag"], coupon="X&sku=Z", variant="B")
def test_the_cart_link_carries_exactly_the_skus_coupon_and_utm_tags(
    skus: list[str], coupon: str | None, variant: str
) -> None:
    """Whatever a SKU or code contains, parsing the link (RFC 3986, the standard library's
    parser) gives back the SKUs, the code and the four UTM tags, and nothing else."""
    settings = Settings()
    url = cart_link(settings, skus, coupon, "camp-1", variant)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path, parts.fragment) == (
        "https", "shop.example", "/cart/add", "",
    )  # fmt: skip
    query = parse_qs(parts.query, keep_blank_values=True)
    want = {
        "sku": [",".join(skus)],
        "utm_source": ["crosssell"],
        "utm_medium": ["email"],
        "utm_campaign": ["camp-1"],
        "utm_content": [variant],
    }
    if coupon:
        want["coupon"] = [coupon]
    assert query == want


def test_the_cart_link_template_is_configurable_and_checked(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, cart_link_template="https://m.shop.example/c?items={skus}&utm_source=old"
    )
    query = parse_qs(urlsplit(cart_link(settings, ["A", "B"], None, "c", "A")).query)
    assert query["items"] == ["A,B"] and query["utm_source"] == ["crosssell"]
    for bad in ("{public_url}/cart", "{public_url}/c?s={skus}&x={sku_list}", "ftp://x/{skus}"):
        with pytest.raises(ValidationError):
            make_settings(tmp_path, cart_link_template=bad)


def test_an_offer_without_items_links_to_the_shop(tmp_path: Path) -> None:
    url = cart_link(make_settings(tmp_path), [], None, "anniversary", "A")
    parts = urlsplit(url)
    assert (parts.netloc, parts.path) == ("shop.example", "/")
    assert parse_qs(parts.query)["utm_campaign"] == ["anniversary"]


# --- the postal address ----------------------------------------------------------------

PROVIDERS: dict[str, dict[str, str]] = {
    "smtp": {},
    "postmark": {"postmark_server_token": "t"},
    "sendgrid": {"sendgrid_api_key": "k"},
    "mailgun": {"mailgun_api_key": "k", "mailgun_domain": "mg.shop.example"},
    "ses": {"ses_region": "eu-west-1", "ses_access_key_id": "A", "ses_secret_access_key": "s"},
}


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_a_production_provider_without_a_postal_address_does_not_start(
    tmp_path: Path, provider: str
) -> None:
    from worker.providers import check_provider

    given = PROVIDERS[provider]
    for blank in ({}, {"postal_address": "  "}):
        settings = make_settings(tmp_path, email_provider=provider, **given, **blank)
        with pytest.raises(ValueError, match="CROSSSELL_POSTAL_ADDRESS"):
            check_provider(settings)
    settings = make_settings(tmp_path, email_provider=provider, postal_address="1 Main St", **given)
    check_provider(settings)
    assert settings.footer_postal_address == "1 Main St"


def test_the_file_provider_starts_with_a_demo_address(tmp_path: Path) -> None:
    from worker.providers import check_provider

    settings = make_settings(tmp_path)
    check_provider(settings)
    assert settings.footer_postal_address


@pytest.mark.parametrize(
    ("subject", "valid"),
    [
        ("One text", True),
        ({"en": "Hello", "ro": "Bună ziua"}, True),
        ({"pt-BR": "Olá"}, True),
        ({}, False),
        ({"english": "x"}, False),
        ({"ro": ""}, False),
        ({"RO": "x"}, False),
        ({"ro": "x" * 301}, False),
    ],
)
def test_the_schema_and_the_model_agree_on_variant_subjects(subject: object, valid: bool) -> None:
    """An editor underlines exactly the subjects that lint refuses."""
    import json

    import jsonschema

    from worker.core.settings import PROJECT_ROOT

    schema = json.loads((PROJECT_ROOT / "schema" / "campaign.schema.json").read_text("utf-8"))
    data = {
        **PER_LOCALE,
        "experiment": {"variants": [{"id": "B", "template": "t", "subject": subject}]},
    }
    assert jsonschema.Draft202012Validator(schema).is_valid(data) == valid
    try:
        Campaign.model_validate(data)
    except ValidationError:
        assert not valid
    else:
        assert valid
