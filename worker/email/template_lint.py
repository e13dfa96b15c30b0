"""Check a campaign's templates the way a send would use them, before any send does.

Every file of every variant's template directory must parse in the sandbox, and each
template (and every locale variant) must render with a realistic context for the
campaign's trigger and offer types: a misspelt variable is a lint error with the
template's file and line, not a failed email at 9 a.m.

Rendering runs under the sandbox's limits (``worker/email/template_sandbox.py``), so a template
that loops for ever, builds a gigabyte string or recurses without end is a lint error
(``template-runtime``) found in milliseconds, like one that divides by zero. Symlinks and
paths leaving the templates directory are ``template-unsafe``. Every problem is reported
as ``file:line`` with a message, never as a traceback.

Warnings (``warning[code]``, exit 0 unless ``crosssell lint --strict``) are emails that
send but read badly for some customers:

* ``optional-field-without-fallback``: a subject or body prints ``customer.first_name``
  or ``customer.last_name`` outside ``{% if customer.first_name %}``, ``… or "…"``,
  ``|default(…)`` or ``x if customer.first_name else y``: a customer without one reads
  ``, complete your setup``.
* ``single-language-subject``: a variant's ``subject:`` is one text where the template
  has subject files per locale: Romanian and Italian customers would get it as written.
* ``coupon-not-shown``: the offer defines a coupon and the rendered email never shows its
  code, so codes are generated that no customer can use.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from jinja2 import TemplateError, TemplateNotFound, TemplateSyntaxError, UndefinedError, nodes
from jinja2.exceptions import SecurityError

from triggers.campaigns import Campaign
from triggers.conditions import did_you_mean
from triggers.rule_checks import TemplateCheck, TemplateProblem
from worker.email.compiled_cache import parsed
from worker.email.email_context import sample_context
from worker.email.rendering import Renderer, babel_locale, subject_for, subject_key
from worker.email.template_sandbox import RenderLimitError, SafeFileSystemLoader, UnsafeTemplatePath

_LOCALE_PART = re.compile(r"^(?:subject|body)\.([a-z]{2,3}(?:_[A-Z]{2})?)\.(?:txt|html)$")


def template_locales(directory: Path, part: str | None = None) -> list[str | None]:
    """None (the default) plus every locale that has its own variant file (of ``part``,
    ``subject`` or ``body``, when given)."""
    found = {
        match.group(1)
        for p in directory.iterdir()
        if (match := _LOCALE_PART.match(p.name)) and (part is None or p.name.startswith(part))
    }
    return [None, *sorted(found)]


_INLINE = "<template>"  # the file name Jinja gives a template made from a string


def _template_line(exc: BaseException, root: Path) -> tuple[str | None, int, bool]:
    """The template file and line an exception was raised from, if it came from one; and
    whether it came from the inline subject (a template made from a string) instead."""
    where: tuple[str | None, int, bool] = (None, 1, False)
    for frame, line in traceback.walk_tb(exc.__traceback__):
        filename = frame.f_code.co_filename
        if filename.startswith(str(root)):
            where = (filename, line, False)
        elif filename == _INLINE:
            where = (None, line, True)
    return where


# --- columns: Jinja reports a line; the column is found by the text the error names ----------

_NEWLINE = re.compile(r"\r\n|\r|\n")  # as Jinja's lexer splits lines
# What Jinja reads as code: {{ … }} and {% … %} (to the end when unclosed); {# … #} is not.
_CODE = re.compile(
    r"(?P<open>\{\{|\{%)[-+]?(?P<inner>.*?)(?:[-+]?(?:\}\}|%\})|\Z)|\{#.*?(?:#\}|\Z)", re.DOTALL
)
_UNEXPECTED_CHAR = re.compile(r"^unexpected char '.+' at (\d+)$")
_END_OF_TEMPLATE = re.compile(r"^unexpected end of template", re.IGNORECASE)
_NAMED = re.compile(r"(?:unexpected|got|unknown tag|named|attribute) '([^'\s]+)'")


def _lines(source: str) -> list[str]:
    return _NEWLINE.split(source)


def _line_span(source: str, line: int) -> tuple[str, int, int] | None:
    """The newline-normalised source and the offsets where ``line`` (1-based) starts and
    ends in it; None for a line the source does not have."""
    lines = _lines(source)
    if not 0 < line <= len(lines):
        return None
    start = sum(len(each) + 1 for each in lines[: line - 1])
    return "\n".join(lines), start, start + len(lines[line - 1])


def first_column(source: str, line: int) -> int:
    """1-based column of the first non-blank character of ``line`` (1 for a blank line):
    where an error points when its exact column cannot be known."""
    lines = _lines(source)
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    stripped = text.lstrip()
    return len(text) - len(stripped) + 1 if stripped else 1


def code_column(source: str, line: int) -> int:
    """1-based column of the ``{{``/``{%`` opened on ``line`` when exactly one is: an error
    Jinja places only by line (a runtime error, a syntax error inside a tag) is in it.
    Otherwise the line's first non-blank column (:func:`first_column`)."""
    span = _line_span(source, line)
    if span is None:
        return 1
    text, line_start, line_end = span
    opened = [
        match.start()
        for match in _CODE.finditer(text)
        if match["open"] is not None and line_start <= match.start() < line_end
    ]
    if len(opened) == 1:
        return opened[0] - line_start + 1
    return first_column(source, line)


def _code_on_line(source: str, line: int) -> Iterator[tuple[int, int, int, bool]]:
    """``(start, end, line_start, closed)`` offsets (in the newline-normalised source) of
    the inside of each ``{{ … }}``/``{% … %}`` that overlaps ``line``, clipped to it."""
    span = _line_span(source, line)
    if span is None:
        return
    text, line_start, line_end = span
    for match in _CODE.finditer(text):
        if match["open"] is None:
            continue
        start, end = match.start("inner"), match.end("inner")
        if end < line_start or start > line_end:
            continue
        closed = match.end() > match.end("inner")
        yield max(start, line_start), min(end, line_end), line_start, closed


def _columns_in_code(source: str, line: int, pattern: re.Pattern[str]) -> list[int]:
    """1-based columns on ``line`` where ``pattern`` matches inside Jinja code."""
    text = "\n".join(_lines(source))
    return [
        found.start() - line_start + 1
        for start, end, line_start, _ in _code_on_line(source, line)
        for found in pattern.finditer(text, start, end)
    ]


def _token(name: str) -> re.Pattern[str]:
    if re.fullmatch(r"\w+", name):
        return re.compile(rf"(?<!\w){re.escape(name)}(?!\w)")
    if name == "}":  # a lone brace, not one of a closing }}
        return re.compile(r"(?<!\})\}(?!\})")
    return re.compile(re.escape(name))


def syntax_column(source: str, line: int, message: str) -> int:
    """The column of a Jinja syntax error on ``line``: the offset the lexer gives, the
    unclosed ``{{``/``{%`` for an unexpected end, else the one place on the line the token
    the message names is; the line's first non-blank column when that is not certain."""
    lines = _lines(source)
    span = _line_span(source, line)
    char = _UNEXPECTED_CHAR.match(message)
    if char is not None and span is not None:
        column = int(char.group(1)) - span[1] + 1
        if 0 < column <= span[2] - span[1]:
            return column
    if _END_OF_TEMPLATE.match(message):
        unclosed = [
            start - line_start
            for start, _, line_start, closed in _code_on_line(source, line)
            if not closed
        ]
        if unclosed:
            # The opening delimiter is just before the inside (a ``-`` may follow it).
            text = lines[line - 1]
            column = unclosed[-1]
            while column > 0 and text[column - 1] in "-+":
                column -= 1
            if column >= 2:
                return column - 1
    named = _NAMED.search(message)
    if named is not None:
        columns = _columns_in_code(source, line, _token(named.group(1)))
        if len(columns) == 1:
            return columns[0]
    return code_column(source, line)


_MISSING_ATTRIBUTE = re.compile(r"has no attribute '(\w+)'")
_UNDEFINED_NAME = re.compile(r"^'(\w+)' is undefined")


def _unknown_variable(
    message: str, source: str | None, line: int, context: dict[str, Any]
) -> tuple[str, int]:
    """Name the expression the template wrote (``customer.frist_name``) and what exists,
    and the column where it is written on ``line`` (of ``source``, the template's text)."""
    if source is None:
        return message, 1
    name = _UNDEFINED_NAME.match(message)
    if name:
        columns = _columns_in_code(source, line, re.compile(rf"(?<![\w.]){name.group(1)}\b"))
        return (
            f"unknown variable {name.group(1)!r}" + did_you_mean(name.group(1), sorted(context)),
            columns[0] if columns else code_column(source, line),
        )
    attribute = _MISSING_ATTRIBUTE.search(message)
    if attribute is None:
        return message, code_column(source, line)
    written = re.escape(attribute.group(1))
    pattern = re.compile(
        rf"(?<![\w.])([A-Za-z_][\w.]*?)\s*(?:\.\s*{written}\b|\[\s*['\"]{written}['\"]\s*\])"
    )
    text = "\n".join(_lines(source))
    found = next(
        (
            match
            for start, end, _, _ in _code_on_line(source, line)
            for match in pattern.finditer(text, start, end)
        ),
        None,
    )
    if found is None:
        return message, code_column(source, line)
    span = _line_span(source, line)
    column = found.start() - span[1] + 1 if span is not None else 1
    base = found.group(1)
    value: Any = context
    for part in base.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    keys = sorted(value) if isinstance(value, dict) else []
    hint = did_you_mean(attribute.group(1), keys)
    return f"unknown variable {base}.{attribute.group(1)}{hint}", column


def _parse_problems(renderer: Renderer, directory: Path, template: str) -> list[TemplateProblem]:
    """Every ``.txt``/``.html`` file of the template directory, read through the sandbox's
    loader (so a symlink is refused here, not followed) and parsed."""
    if directory.is_symlink():
        message = f"{template}/ is a symbolic link; templates must be real directories"
        return [TemplateProblem(0, "template-unsafe", message, str(directory), 1)]
    loader = renderer.env.loader
    assert isinstance(loader, SafeFileSystemLoader)
    problems: list[TemplateProblem] = []
    for path in sorted(directory.iterdir()):
        if path.suffix not in (".txt", ".html"):
            continue
        try:
            source, filename, _ = loader.get_source(renderer.env, f"{template}/{path.name}")
            parsed(renderer.env, source, path.name, filename)
        except TemplateSyntaxError as exc:
            message = exc.message or ""
            column = syntax_column(source, exc.lineno, message)
            problems.append(
                TemplateProblem(0, "template-syntax", message, str(path), exc.lineno, column)
            )
        except UnsafeTemplatePath as exc:
            problems.append(TemplateProblem(0, "template-unsafe", exc.message or "", str(path)))
        except (TemplateNotFound, UnicodeDecodeError) as exc:
            problems.append(TemplateProblem(0, "template-error", _describe(exc), str(path)))
    if not (directory / "body.html").exists():
        problems.append(
            TemplateProblem(0, "missing-template-part", f"{template}/body.html is missing")
        )
    return problems


# Customer fields a profile may lack (the CRM sends only ``id`` for sure); the email
# address is always there for a send.
OPTIONAL_CUSTOMER_FIELDS = frozenset({"first_name", "last_name"})
_FALLBACK_FILTERS = frozenset({"default", "d"})


def _optional_field(node: nodes.Node) -> str | None:
    """``customer.first_name`` / ``customer["first_name"]`` → ``first_name``."""
    if isinstance(node, nodes.Getattr):
        base, name = node.node, node.attr
    elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        base, name = node.node, node.arg.value
    else:
        return None
    is_customer = isinstance(base, nodes.Name) and base.name == "customer"
    if is_customer and isinstance(name, str) and name in OPTIONAL_CUSTOMER_FIELDS:
        return name
    return None


def _fields_in(node: nodes.Node) -> set[str]:
    found = {
        name
        for child in node.find_all((nodes.Getattr, nodes.Getitem))
        if (name := _optional_field(child))
    }
    if (name := _optional_field(node)) is not None:
        found.add(name)
    return found


def _guards(test: nodes.Node) -> tuple[set[str], set[str]]:
    """Fields known non-empty where ``test`` is true, and where it is false."""
    if isinstance(test, nodes.Not):
        when_true, when_false = _guards(test.node)
        return when_false, when_true
    if isinstance(test, nodes.And):
        left, right = _guards(test.left), _guards(test.right)
        return left[0] | right[0], set()
    if isinstance(test, nodes.Or):
        left, right = _guards(test.left), _guards(test.right)
        return set(), left[1] | right[1]
    return _fields_in(test), set()


def unguarded_fields(
    node: nodes.Node, guarded: frozenset[str] = frozenset()
) -> Iterator[tuple[int, str]]:
    """``(line, field)`` for each optional customer field a template uses without a
    fallback: outside an ``if`` that tests it, the left side of ``or``, the subject of
    ``|default`` and the true branch of a conditional expression that tests it."""
    if isinstance(node, nodes.If):
        when_true, when_false = _guards(node.test)
        for child in node.body:
            yield from unguarded_fields(child, guarded | when_true)
        for branch in node.elif_:
            yield from unguarded_fields(branch, guarded | when_false)
        for child in node.else_:
            yield from unguarded_fields(child, guarded | when_false)
        return
    if isinstance(node, nodes.CondExpr):
        when_true, when_false = _guards(node.test)
        yield from unguarded_fields(node.expr1, guarded | when_true)
        if node.expr2 is not None:
            yield from unguarded_fields(node.expr2, guarded | when_false)
        return
    if isinstance(node, nodes.Or):
        yield from unguarded_fields(node.left, guarded | _fields_in(node.left))
        yield from unguarded_fields(node.right, guarded)
        return
    if isinstance(node, nodes.Filter) and node.name in _FALLBACK_FILTERS:
        if node.node is not None:
            yield from unguarded_fields(node.node, guarded | _fields_in(node.node))
        for argument in node.args:
            yield from unguarded_fields(argument, guarded)
        return
    name = _optional_field(node)
    if name is not None and name not in guarded:
        yield node.lineno, name
        return
    for child in node.iter_child_nodes():
        yield from unguarded_fields(child, guarded)


def _column(source: str, line: int, name: str) -> int:
    """1-based column of ``customer.<name>`` (or ``customer["<name>"]``) on ``line``."""
    lines = source.splitlines()
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    found = re.search(rf"customer\s*(\.\s*{name}\b|\[\s*['\"]{name}['\"]\s*\])", text)
    return found.start() + 1 if found else 1


def fallback_problems(
    source: str, renderer: Renderer, file: str | None, what: str
) -> list[TemplateProblem]:
    """``optional-field-without-fallback`` warnings for one template's source."""
    try:
        tree = parsed(renderer.env, source)
    except TemplateSyntaxError:
        return []  # reported as an error elsewhere
    return [
        TemplateProblem(
            0,
            "optional-field-without-fallback",
            f"customer.{name} may be empty: {what} would read oddly without it; write "
            f'{{{{ customer.{name} or "…" }}}}, |default(…) or {{% if customer.{name} %}}',
            file,
            line,
            _column(source, line, name) if file else 1,
            "warning",
            "template" if file else "subject",
        )
        for line, name in dict.fromkeys(unguarded_fields(tree))
    ]


def _warning_problems(renderer: Renderer, directory: Path, template: str) -> list[TemplateProblem]:
    """Warnings about the template's own files (the same for every campaign using it)."""
    loader = renderer.env.loader
    assert isinstance(loader, SafeFileSystemLoader)
    problems: list[TemplateProblem] = []
    for path in sorted(directory.iterdir()):
        if path.suffix not in (".txt", ".html"):
            continue
        source, filename, _ = loader.get_source(renderer.env, f"{template}/{path.name}")
        what = "the subject" if path.name.startswith("subject") else "the body"
        problems += fallback_problems(source, renderer, filename, what)
    return problems


def subject_problems(
    variant_subject: str | Mapping[str, str], renderer: Renderer, directory: Path, template: str
) -> list[TemplateProblem]:
    """Warnings about a variant's own ``subject:``."""
    problems: list[TemplateProblem] = []
    texts = (
        [variant_subject] if isinstance(variant_subject, str) else list(variant_subject.values())
    )
    for text in texts:
        problems += fallback_problems(text, renderer, None, "the variant's subject")
    localized = [locale for locale in template_locales(directory, "subject") if locale]
    if isinstance(variant_subject, str) and localized:
        problems.append(
            TemplateProblem(
                0,
                "single-language-subject",
                f"one subject for every locale replaces {template}/subject.<locale>.txt "
                f"({', '.join(localized)}): those customers get it untranslated; write it "
                "per locale, subject: {en: …, "
                + ", ".join(f"{lang}: …" for lang in localized)
                + "}, or leave it out",
                level="warning",
                at="subject",
            )
        )
    return problems


def _describe(exc: BaseException) -> str:
    """``ZeroDivisionError: division by zero``: the exception's type and message, one line."""
    message = " ".join(str(exc).split())
    return f"{exc.__class__.__name__}: {message}" if message else exc.__class__.__name__


def _render_problem(
    exc: Exception, root: Path, context: dict[str, Any], subject: tuple[str | None, str | None]
) -> tuple[TemplateProblem, bool]:
    """What one failed render reports, located in the template file or in the variant's
    inline subject (``subject``: its locale key and text); and whether it depends on the
    locale rendered (then the locales it failed for are added to the message)."""
    file, line, inline = _template_line(exc, root)
    if isinstance(exc, TemplateSyntaxError):  # a template compiled only when rendered
        inline, line = exc.filename is None, exc.lineno
        file = None if inline else exc.filename
    source: str | None = None
    if inline:
        source = subject[1]
    elif file is not None:
        try:
            source = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            source = None
    column = code_column(source, line) if source is not None else 1
    per_locale = False
    if isinstance(exc, TemplateSyntaxError):
        code, message = "template-syntax", exc.message or ""
        column = syntax_column(source, line, message) if source is not None else 1
    elif isinstance(exc, UndefinedError):
        code, per_locale = "unknown-variable", True
        message, column = _unknown_variable(exc.message or "", source, line, context)
    elif isinstance(exc, RenderLimitError):
        code, message, per_locale = "template-runtime", str(exc), True
    elif isinstance(exc, SecurityError):
        code, message = "template-unsafe", str(exc)
        named = _NAMED.search(message)
        if named is not None and source is not None:
            columns = _columns_in_code(source, line, _token(named.group(1)))
            column = columns[0] if columns else column
    elif isinstance(exc, TemplateError):
        code, message = "template-error", str(exc)
    else:  # whatever an expression raises: 1/0, 1 + "a", int("x") …
        code, message, per_locale = "template-runtime", _describe(exc), True
    if inline:
        problem = TemplateProblem(
            0,
            code,
            message,
            at="subject",
            subject_locale=subject[0],
            text_line=line,
            text_col=column,
        )
    elif file is not None:
        problem = TemplateProblem(0, code, message, file, line, column)
    else:
        problem = TemplateProblem(0, code, message)
    return problem, per_locale


def _render_problems(
    renderer: Renderer,
    root: Path,
    campaign: Campaign,
    template: str,
    subject: str | Mapping[str, str] | None,
) -> list[TemplateProblem]:
    """Render the template in every locale it has; a problem found in several locales is
    reported once, naming them."""
    found: dict[tuple[TemplateProblem, bool], list[str]] = {}
    locales = template_locales(root / template)
    own = [locale or "default" for locale in locales]
    if isinstance(subject, Mapping):
        locales += sorted(set(subject) - {locale for locale in locales if locale})
    no_coupon: list[str] = []
    for locale in locales:
        context = sample_context(campaign, renderer.settings, locale)
        try:
            rendered = renderer.render(template, context, locale, subject)
            coupon = context.get("coupon")
            if coupon and not (coupon["code"] in rendered.html and coupon["code"] in rendered.text):
                no_coupon.append(locale or "default")
        except Exception as exc:
            babel = babel_locale(locale, renderer.settings.default_locale)
            text = subject_for(subject, babel)
            key = subject_key(subject, babel)
            found.setdefault(_render_problem(exc, root, context, (key, text)), []).append(
                locale or "default"
            )
    problems: list[TemplateProblem] = []
    for (problem, per_locale), names in found.items():
        if per_locale:
            # In a template file, the template's own locales are named (a locale only the
            # subject adds renders the same files): the same problem whatever the subject,
            # so variants with and without one report it once.
            if problem.file is not None:
                names = [name for name in names if name in own] or names
            problem = replace(problem, message=f"{problem.message} (locale {', '.join(names)})")
        problems.append(problem)
    if no_coupon:
        message = (
            f"the offer defines a coupon but {template} never shows coupon.code "
            f"(locale {', '.join(no_coupon)}): customers get codes they cannot see; "
            '{% include "_base/coupon.html" %} (and coupon.txt) shows it'
        )
        problems.append(TemplateProblem(0, "coupon-not-shown", message, level="warning"))
    return problems


def make_template_check(renderer: Renderer) -> TemplateCheck:
    """A check for one lint run; a template is parsed once and rendered once per distinct
    (trigger, offer type, coupon, subject) it is used with, however many campaigns share it."""
    root = renderer.settings.templates_dir.resolve()
    parsed: dict[str, list[TemplateProblem]] = {}
    warned: dict[str, list[TemplateProblem]] = {}
    rendered: dict[tuple[object, ...], list[TemplateProblem]] = {}

    def check(campaign: Campaign) -> list[TemplateProblem]:
        problems: list[TemplateProblem] = []
        for index, variant in enumerate(campaign.experiment.variants):
            template = variant.template
            if template not in parsed:
                parsed[template] = _parse_problems(renderer, root / template, template)
            found = parsed[template]
            if not found:
                key = (
                    template,
                    campaign.trigger.event,
                    campaign.offer.type,
                    campaign.offer.coupon is not None,
                    variant.subject_cache_key(),
                )
                if key not in rendered:
                    rendered[key] = _render_problems(
                        renderer, root, campaign, template, variant.subject
                    )
                if template not in warned:
                    warned[template] = _warning_problems(renderer, root / template, template)
                found = rendered[key] + warned[template]
                if variant.subject is not None:
                    found += subject_problems(variant.subject, renderer, root / template, template)
            problems += [replace(problem, variant=index) for problem in found]
        return problems

    return check
