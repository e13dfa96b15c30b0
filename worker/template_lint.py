"""Check a campaign's templates the way a send would use them, before any send does.

Every file of every variant's template directory must parse in the sandbox, and each
template (and every locale variant) must render with a realistic context for the
campaign's trigger and offer types: a misspelt variable is a lint error with the
template's file and line, not a failed email at 9 a.m.

Rendering runs under the sandbox's limits (``worker/template_sandbox.py``), so a template
that loops for ever, builds a gigabyte string or recurses without end is a lint error
(``template-runtime``) found in milliseconds, like one that divides by zero. Symlinks and
paths leaving the templates directory are ``template-unsafe``. Every problem is reported
as ``file:line`` with a message, never as a traceback.
"""

from __future__ import annotations

import re
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

from jinja2 import TemplateError, TemplateNotFound, TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError

from triggers.campaigns import Campaign
from triggers.conditions import did_you_mean
from triggers.loader import TemplateCheck, TemplateProblem
from worker.email_context import sample_context
from worker.rendering import Renderer
from worker.template_sandbox import RenderLimitError, SafeFileSystemLoader, UnsafeTemplatePath

_LOCALE_PART = re.compile(r"^(?:subject|body)\.([a-z]{2,3}(?:_[A-Z]{2})?)\.(?:txt|html)$")


def template_locales(directory: Path) -> list[str | None]:
    """None (the default) plus every locale that has its own variant file."""
    found = {match.group(1) for p in directory.iterdir() if (match := _LOCALE_PART.match(p.name))}
    return [None, *sorted(found)]


def _template_line(exc: BaseException, root: Path) -> tuple[str | None, int]:
    """The template file and line an exception was raised from, if it came from one."""
    where: tuple[str | None, int] = (None, 1)
    for frame, line in traceback.walk_tb(exc.__traceback__):
        filename = frame.f_code.co_filename
        if filename.startswith(str(root)):
            where = (filename, line)
    return where


_MISSING_ATTRIBUTE = re.compile(r"has no attribute '(\w+)'")
_UNDEFINED_NAME = re.compile(r"^'(\w+)' is undefined")


def _unknown_variable(message: str, file: str | None, line: int, context: dict[str, Any]) -> str:
    """Name the expression the template wrote (``customer.frist_name``) and what exists."""
    name = _UNDEFINED_NAME.match(message)
    if name:
        return f"unknown variable {name.group(1)!r}" + did_you_mean(name.group(1), sorted(context))
    attribute = _MISSING_ATTRIBUTE.search(message)
    if attribute is None or file is None:
        return message
    source = Path(file).read_text(encoding="utf-8").splitlines()
    text = source[line - 1] if 0 < line <= len(source) else ""
    found = re.search(rf"([A-Za-z_][\w.]*)\.{re.escape(attribute.group(1))}\b", text)
    if found is None:
        return message
    base = found.group(1)
    value: Any = context
    for part in base.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    keys = sorted(value) if isinstance(value, dict) else []
    hint = did_you_mean(attribute.group(1), keys)
    return f"unknown variable {base}.{attribute.group(1)}{hint}"


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
            renderer.env.parse(source, path.name, filename)
        except TemplateSyntaxError as exc:
            problems.append(
                TemplateProblem(0, "template-syntax", exc.message or "", str(path), exc.lineno, 1)
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


def _describe(exc: BaseException) -> str:
    """``ZeroDivisionError: division by zero``: the exception's type and message, one line."""
    message = " ".join(str(exc).split())
    return f"{exc.__class__.__name__}: {message}" if message else exc.__class__.__name__


def _render_problems(
    renderer: Renderer, root: Path, campaign: Campaign, template: str, subject: str | None
) -> list[TemplateProblem]:
    problems: list[TemplateProblem] = []
    for locale in template_locales(root / template):
        context = sample_context(campaign, renderer.settings, locale)
        where = f"locale {locale or 'default'}"
        try:
            renderer.render(template, context, locale, subject)
        except UndefinedError as exc:
            file, line = _template_line(exc, root)
            message = _unknown_variable(exc.message or "", file, line, context)
            problems.append(
                TemplateProblem(0, "unknown-variable", f"{message} ({where})", file, line)
            )
        except RenderLimitError as exc:
            file, line = _template_line(exc, root)
            problems.append(TemplateProblem(0, "template-runtime", f"{exc} ({where})", file, line))
        except SecurityError as exc:
            file, line = _template_line(exc, root)
            problems.append(TemplateProblem(0, "template-unsafe", str(exc), file, line))
        except TemplateError as exc:
            file, line = _template_line(exc, root)
            problems.append(TemplateProblem(0, "template-error", str(exc), file, line))
        except Exception as exc:  # whatever an expression raises: 1/0, 1 + "a", int("x") …
            file, line = _template_line(exc, root)
            message = f"{_describe(exc)} ({where})"
            problems.append(TemplateProblem(0, "template-runtime", message, file, line))
    return problems


def make_template_check(renderer: Renderer) -> TemplateCheck:
    """A check for one lint run; a template is parsed once and rendered once per distinct
    (trigger, offer type, coupon, subject) it is used with, however many campaigns share it."""
    root = renderer.settings.templates_dir.resolve()
    parsed: dict[str, list[TemplateProblem]] = {}
    rendered: dict[tuple[str, str, str, bool, str | None], list[TemplateProblem]] = {}

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
                    variant.subject,
                )
                if key not in rendered:
                    rendered[key] = _render_problems(
                        renderer, root, campaign, template, variant.subject
                    )
                found = rendered[key]
            problems += [replace(problem, variant=index) for problem in found]
        return problems

    return check
