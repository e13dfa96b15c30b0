"""Check a campaign's templates the way a send would use them, before any send does.

Every file of every variant's template directory must parse in the sandbox, and each
template (and every locale variant) must render with a realistic context for the
campaign's trigger and offer types: a misspelt variable is a lint error with the
template's file and line, not a failed email at 9 a.m.
"""

from __future__ import annotations

import re
import traceback
from pathlib import Path

from jinja2 import TemplateError, TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError

from triggers.campaigns import Campaign
from triggers.loader import TemplateCheck, TemplateProblem
from worker.email_context import sample_context
from worker.rendering import Renderer

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


def make_template_check(renderer: Renderer) -> TemplateCheck:
    root = renderer.settings.templates_dir.resolve()

    def check(campaign: Campaign) -> list[TemplateProblem]:
        problems: list[TemplateProblem] = []
        for index, variant in enumerate(campaign.experiment.variants):
            directory = root / variant.template
            for path in sorted(directory.iterdir()):
                if path.suffix not in (".txt", ".html"):
                    continue
                try:
                    renderer.env.parse(path.read_text(encoding="utf-8"), path.name, str(path))
                except TemplateSyntaxError as exc:
                    problems.append(
                        TemplateProblem(
                            index, "template-syntax", exc.message or "", str(path), exc.lineno, 1
                        )
                    )
            if not (directory / "body.html").exists():
                problems.append(
                    TemplateProblem(
                        index, "missing-template-part", f"{variant.template}/body.html is missing"
                    )
                )
            if problems:
                continue
            for locale in template_locales(directory):
                context = sample_context(campaign, renderer.settings, locale)
                try:
                    renderer.render(variant.template, context, locale, variant.subject)
                except UndefinedError as exc:
                    file, line = _template_line(exc, root)
                    problems.append(
                        TemplateProblem(
                            index,
                            "unknown-variable",
                            f"{exc.message} (locale {locale or 'default'})",
                            file,
                            line,
                        )
                    )
                except SecurityError as exc:
                    file, line = _template_line(exc, root)
                    problems.append(TemplateProblem(index, "template-unsafe", str(exc), file, line))
                except TemplateError as exc:
                    file, line = _template_line(exc, root)
                    problems.append(TemplateProblem(index, "template-error", str(exc), file, line))
        return problems

    return check
