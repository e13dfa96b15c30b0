"""Jinja rendering in the sandbox: subject, HTML (CSS inlined) and text of one email.

Templates live in ``templates/<name>/{subject.txt,body.html,body.txt}`` and extend
``templates/_base/``. A locale variant ``body.ro.html`` is preferred for a Romanian
customer when it exists. Undefined variables are errors, HTML is autoescaped, and the
sandbox keeps a template from reaching Python internals.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

import css_inline
from babel import Locale, UnknownLocaleError
from babel.dates import format_date
from babel.numbers import NumberPattern, format_currency, format_decimal
from inscriptis import get_text
from inscriptis.css_profiles import CSS_PROFILES
from inscriptis.model.config import ParserConfig
from jinja2 import FileSystemLoader, StrictUndefined, TemplateNotFound, select_autoescape
from jinja2.sandbox import ImmutableSandboxedEnvironment

from triggers.money import minor_unit, round_money
from worker.settings import Settings


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    subject: str
    html: str
    text: str


@lru_cache(maxsize=256)
def babel_locale(tag: str | None, default: str = "en") -> Locale:
    for candidate in (tag, default, "en"):
        if not candidate:
            continue
        try:
            return Locale.parse(candidate.replace("-", "_"))
        except (ValueError, UnknownLocaleError):
            continue
    return Locale("en")


def _money(amount: Decimal | str | int, currency: str, locale: Locale) -> str:
    """``amount`` in ``currency`` as the customer's locale writes it: ``￥4,433`` (ja, JPY).

    The amount is rounded once, half-up, to the currency's ISO 4217 minor unit
    (:func:`triggers.money.round_money`) and shown with exactly that many decimals, so the
    text is the computed amount: Babel's own rounding (half-even, to CLDR's digits, which
    differ from ISO 4217 for some currencies) never gets a say.
    """
    value = round_money(Decimal(str(amount)), currency)
    digits = minor_unit(currency)
    pattern = _currency_pattern(locale, digits)
    return format_currency(value, currency, pattern, locale=locale, currency_digits=False)


@lru_cache(maxsize=512)
def _currency_pattern(locale: Locale, digits: int) -> NumberPattern:
    """The locale's standard currency pattern with exactly ``digits`` decimals."""
    base = locale.currency_formats["standard"]
    return NumberPattern(
        base.pattern,
        base.prefix,
        base.suffix,
        base.grouping,
        base.int_prec,
        (digits, digits),
        base.exp_prec,
        base.exp_plus,
        base.number_pattern,
    )


def _number(value: Decimal | int, locale: Locale) -> str:
    return format_decimal(value, locale=locale)


def _date(value: date | datetime, locale: Locale) -> str:
    return format_date(value, format="long", locale=locale)


_TEXT_CONFIG = ParserConfig(css=CSS_PROFILES["strict"], display_links=True)


def text_from_html(html: str) -> str:
    """A readable plain-text part from the HTML: paragraphs, lists, links as [text](url)."""
    return str(get_text(html, _TEXT_CONFIG))


class Renderer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.env = ImmutableSandboxedEnvironment(
            loader=FileSystemLoader(str(settings.templates_dir)),
            autoescape=select_autoescape(enabled_extensions=("html",), default=False),
            undefined=StrictUndefined,
            auto_reload=False,  # a snapshot's templates never change under it
            cache_size=400,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
        )
        self._inliner = css_inline.CSSInliner(keep_style_tags=True)

    def _pick(self, template: str, part: str, suffix: str, locale: Locale) -> str:
        """``<template>/<part>.<lang>.<suffix>`` if it exists, else the default part."""
        names = [f"{template}/{part}.{locale.language}_{locale.territory}.{suffix}"]
        names.append(f"{template}/{part}.{locale.language}.{suffix}")
        names.append(f"{template}/{part}.{suffix}")
        for name in names:
            try:
                self.env.get_template(name)
            except TemplateNotFound:
                continue
            return name
        raise TemplateNotFound(f"{template}/{part}.{suffix}")

    def render(
        self,
        template: str,
        context: Mapping[str, Any],
        locale_tag: str | None,
        subject_override: str | None = None,
    ) -> RenderedEmail:
        locale = babel_locale(locale_tag, self.settings.default_locale)
        values = dict(context)
        values.update(
            locale=str(locale),
            lang=locale.language,
            money=lambda amount, currency: _money(amount, currency, locale),
            number=lambda value: _number(value, locale),
            long_date=lambda value: _date(value, locale),
        )
        if subject_override is not None:
            subject = self.env.from_string(subject_override).render(values)
        else:
            subject = self.env.get_template(self._pick(template, "subject", "txt", locale)).render(
                values
            )
        subject = " ".join(subject.split())
        html = self.env.get_template(self._pick(template, "body", "html", locale)).render(values)
        html = self._inliner.inline(html)
        try:
            text_name = self._pick(template, "body", "txt", locale)
        except TemplateNotFound:
            text = text_from_html(html)  # a template may ship HTML only
        else:
            text = self.env.get_template(text_name).render(values)
        return RenderedEmail(subject=subject, html=html, text=text.strip() + "\n")
