"""Jinja rendering in the sandbox: subject, HTML (CSS inlined) and text of one email.

Templates live in ``templates/<name>/{subject.txt,body.html,body.txt}`` and extend
``templates/_base/``. A locale variant ``body.ro.html`` is preferred for a Romanian
customer when it exists. Undefined variables are errors, and the sandbox keeps a
template from reaching Python internals, from running long or building huge values, and
from reading files outside the templates directory (``worker/email/template_sandbox.py``).

A variant may replace the subject: with one text for every locale, or per locale
(``{"en": …, "ro": …}``); a locale the mapping leaves out gets the template's own
subject file for that locale, never another locale's text.

Escaping follows the destination: only ``.html`` templates are HTML-autoescaped. The
subject (``subject.txt`` or a variant's inline ``subject:``), ``body.txt`` and the text
part derived from the HTML are plain text, so ``D'Arcy & Sons`` stays ``D'Arcy & Sons``.
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
from jinja2 import StrictUndefined, Template, TemplateNotFound

from triggers.money import minor_unit, round_money
from worker.core.settings import Settings
from worker.email.compiled_cache import SharedBytecodeCache
from worker.email.template_sandbox import (
    BudgetedSandbox,
    RenderLimitError,
    RenderLimits,
    SafeFileSystemLoader,
    UnsafeTemplatePath,
    budget,
    check_html_nesting,
)

__all__ = [
    "RenderLimitError",
    "RenderLimits",
    "RenderedEmail",
    "Renderer",
    "UnsafeTemplatePath",
    "babel_locale",
    "subject_for",
    "text_from_html",
]


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


def format_money(amount: Decimal | str | int, currency: str, locale: Locale) -> str:
    """``amount`` in ``currency`` as the customer's locale writes it: ``￥4,433`` (ja, JPY).

    The amount is rounded once, half-up, to the currency's ISO 4217 minor unit
    (:func:`triggers.money.round_money`) and shown with exactly that many decimals, so the
    text is the computed amount: Babel's own rounding (half-even, to CLDR's digits, which
    differ from ISO 4217 for some currencies) never gets a say.
    """
    return _money_text(str(amount), currency, locale)


@lru_cache(maxsize=4096)
def _money_text(amount: str, currency: str, locale: Locale) -> str:
    """:func:`format_money` of the amount's text: prices repeat from email to email, and
    Babel takes some 30 µs to format one (measured, docs/performance.md)."""
    value = round_money(Decimal(amount), currency)
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
    """``value`` as the locale writes it: ``1.250`` (ro). Numbers of the types templates
    get (points, years, counts) are remembered by type and text, which identify the
    value exactly (``Decimal("1.0")`` and ``1`` stay apart): Babel takes 3.6 µs, the
    cache 0.25 µs (timeit). Huge integers, floats and the rest go to Babel each time."""
    kind = type(value)
    if kind is Decimal or (kind is int and -(10**15) < value < 10**15):
        return _number_text(str(value), kind is Decimal, locale)
    return format_decimal(value, locale=locale)


@lru_cache(maxsize=4096)
def _number_text(text: str, decimal: bool, locale: Locale) -> str:
    return format_decimal(Decimal(text) if decimal else int(text), locale=locale)


def _date(value: date | datetime, locale: Locale) -> str:
    return format_date(value, format="long", locale=locale)


_TEXT_CONFIG = ParserConfig(css=CSS_PROFILES["strict"], display_links=True)


def text_from_html(html: str) -> str:
    """A readable plain-text part from the HTML: paragraphs, lists, links as [text](url).

    Character references must come out as the characters they stand for, exactly once.
    inscriptis decodes them twice: lxml decodes the document, then inscriptis runs
    ``html.unescape`` over the decoded text (inscriptis 2.7, ``model/canvas/block.py``), so a
    customer named ``&lt;b&gt;`` (HTML ``&amp;lt;b&amp;gt;``) became ``<b>``. Every ``&``
    of the serialised HTML starts a reference (css-inline's serialiser writes a literal
    ampersand as ``&amp;``), so escaping each ``&`` once more makes the two decodings one.
    The property test of hostile names (tests/hostile) fails if an inscriptis release
    stops decoding twice.
    """
    return str(get_text(html.replace("&", "&amp;"), _TEXT_CONFIG))


def subject_key(subject: str | Mapping[str, str] | None, locale: Locale) -> str | None:
    """The key of a per-locale variant subject that applies to ``locale``: ``ro_RO`` if
    given, else ``ro``; ``None`` for a plain text (or none) and for a mapping with
    neither."""
    if not isinstance(subject, Mapping):
        return None
    for key in (f"{locale.language}_{locale.territory}", locale.language):
        if key in subject:
            return key
    return None


def subject_for(subject: str | Mapping[str, str] | None, locale: Locale) -> str | None:
    """The variant subject for ``locale``: the text given for ``ro_RO``, else for ``ro``
    (:func:`subject_key`); ``None`` (use the template's subject file for the locale) when
    the mapping has neither. A plain text applies to every locale."""
    if subject is None or isinstance(subject, str):
        return subject
    key = subject_key(subject, locale)
    return subject[key] if key is not None else None


def html_autoescape(name: str | None) -> bool:
    """Autoescape ``*.html`` templates only; inline templates (a variant's subject) and
    ``*.txt`` files render to plain text and must not get HTML entities."""
    return name is not None and name.endswith((".html", ".htm"))


COMPILED = SharedBytecodeCache()
"""Compiled templates of every :class:`Renderer` of the process, by file and checked
against its source: a new renderer (each rule-set load builds one) compiles only
templates that are new or changed."""

MAX_PICKED = 4096
"""Picked templates a renderer remembers (templates, parts and locales in use); beyond it,
picks are looked up as before (a bound on memory, never on correctness)."""


class Renderer:
    """Renders one email; every render runs under ``limits`` (steps, time, sizes)."""

    def __init__(self, settings: Settings, limits: RenderLimits | None = None) -> None:
        self.settings = settings
        self.limits = limits or RenderLimits()
        self.env = BudgetedSandbox(
            loader=SafeFileSystemLoader(settings.templates_dir, self.limits.max_template_bytes),
            autoescape=html_autoescape,
            limits=self.limits,
            undefined=StrictUndefined,
            auto_reload=False,  # a snapshot's templates never change under it
            cache_size=400,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
            bytecode_cache=COMPILED,  # safe to share: every Renderer has these options
        )
        self._inliner = css_inline.CSSInliner(keep_style_tags=True)
        # A snapshot's files never change under it: remember which locale variants are
        # missing and the compiled inline subjects (compiling is most of a render's cost).
        self._missing: set[str] = set()
        self._inline: dict[str, Template] = {}
        # The template picked for (template, part, suffix, language, territory): six
        # lookups in Jinja's locked LRU cache per email otherwise.
        self._picked: dict[tuple[str, str, str, str, str | None], Template] = {}

    def _compiled(self, template: str, part: str, suffix: str, locale: Locale) -> Template:
        """The compiled template :meth:`_pick` names (same errors), remembered for the
        first ``MAX_PICKED`` keys."""
        key = (template, part, suffix, locale.language, locale.territory)
        compiled = self._picked.get(key)
        if compiled is None:
            compiled = self.env.get_template(self._pick(template, part, suffix, locale))
            if len(self._picked) < MAX_PICKED:
                self._picked[key] = compiled
        return compiled

    def _pick(self, template: str, part: str, suffix: str, locale: Locale) -> str:
        """``<template>/<part>.<lang>.<suffix>`` if it exists, else the default part."""
        names = [f"{template}/{part}.{locale.language}_{locale.territory}.{suffix}"]
        names.append(f"{template}/{part}.{locale.language}.{suffix}")
        names.append(f"{template}/{part}.{suffix}")
        for name in names:
            if name in self._missing:
                continue
            try:
                # Compiled once and cached: a snapshot keeps the templates it was checked
                # with. A symlinked variant raises UnsafeTemplatePath: refused, not skipped.
                self.env.get_template(name)
            except TemplateNotFound:
                self._missing.add(name)
                continue
            return name
        raise TemplateNotFound(f"{template}/{part}.{suffix}")

    def render(
        self,
        template: str,
        context: Mapping[str, Any],
        locale_tag: str | None,
        subject_override: str | Mapping[str, str] | None = None,
        time_limit: float | None = None,
    ) -> RenderedEmail:
        """Subject, HTML and text of one email.

        ``subject_override`` is a variant's ``subject:``: one text, or texts by locale
        (``ro``, ``pt_BR``), picked as the template files are (see :func:`subject_for`).

        Raises a ``jinja2.TemplateError`` for template faults: ``UndefinedError``,
        ``SecurityError`` (including ``UnsafeTemplatePath``), ``RenderLimitError`` when the
        render exceeds ``time_limit`` seconds (default ``limits.time_limit``, for the whole
        email) or another limit; any other exception a template expression raises
        (``ZeroDivisionError``, ``TypeError`` …) propagates as is.
        """
        with budget(self.limits, time_limit):
            return self._render(template, context, locale_tag, subject_override)

    def _render(
        self,
        template: str,
        context: Mapping[str, Any],
        locale_tag: str | None,
        subject_override: str | Mapping[str, str] | None,
    ) -> RenderedEmail:
        locale = babel_locale(locale_tag, self.settings.default_locale)
        subject_override = subject_for(subject_override, locale)
        values = dict(context)
        values.update(
            locale=str(locale),
            lang=locale.language,
            money=lambda amount, currency: format_money(amount, currency, locale),
            number=lambda value: _number(value, locale),
            long_date=lambda value: _date(value, locale),
        )
        if subject_override is not None:
            compiled = self._inline.get(subject_override)
            if compiled is None:
                compiled = self.env.from_string(subject_override)
                if len(self._inline) < 1024:
                    self._inline[subject_override] = compiled
            subject = self._output(compiled, values)
        else:
            subject = self._output(self._compiled(template, "subject", "txt", locale), values)
        subject = " ".join(subject.split())
        html = self._output(self._compiled(template, "body", "html", locale), values)
        check_html_nesting(html, self.limits.max_html_depth)  # before css-inline recurses
        html = self._inliner.inline(html)
        try:
            text_template = self._compiled(template, "body", "txt", locale)
        except TemplateNotFound:
            text = text_from_html(html)  # a template may ship HTML only
        else:
            text = self._output(text_template, values)
        return RenderedEmail(subject=subject, html=html, text=text.strip() + "\n")

    def _output(self, template: Template, values: dict[str, Any]) -> str:
        """The template's output, collected piece by piece up to ``limits.max_output``.

        What ``template.generate(values)`` yields, without its generator in between (each
        of some 130 pieces an email went through one more ``yield from``) or its copy of
        ``values`` (the new context copies them already); an exception gets the same
        template traceback from ``handle_exception``."""
        pieces: list[str] = []
        size = 0
        limit = self.limits.max_output
        try:
            for piece in template.root_render_func(template.new_context(values)):
                size += len(piece)
                if size > limit:
                    break
                pieces.append(piece)
        except Exception:
            self.env.handle_exception()
        if size > limit:
            raise RenderLimitError(f"render limit: output longer than {limit} characters")
        return "".join(pieces)
