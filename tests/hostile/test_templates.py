"""Hostile templates and hostile names: what a marketer's edit or a customer's name can do.

* text is never HTML-escaped, HTML always is;
* a template that fails at render time is a lint error, and at send time a skipped send;
* CPU and memory bombs stop within a limit, in milliseconds, with a clear message;
* the loader reads regular files inside ``templates/`` only.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from email import message_from_bytes, policy
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from jinja2 import TemplateNotFound
from jinja2.exceptions import SecurityError
from prometheus_client import REGISTRY
from sqlalchemy import select

from tests.support.factories import TUESDAY_MORNING, customer_block, make_settings, purchase
from tests.worker.email.test_rendering import _envelope
from tests.worker.end_to_end.test_pipeline import _dispatch, _ingest, _runtime
from triggers.lint_issues import LintIssue, RuleSetError
from worker.core.clock import ShiftedClock
from worker.core.db import transaction
from worker.core.models import Send
from worker.decide.rule_files import load_rule_set
from worker.decide.rules import RuleStore, load_rules
from worker.email.email_context import sample_context
from worker.email.mime import build_message
from worker.email.rendering import Renderer
from worker.email.template_sandbox import (
    RenderLimitError,
    RenderLimits,
    SafeFileSystemLoader,
    UnsafeTemplatePath,
)
from worker.outbox.delivery import deliver_send

REPO = Path(__file__).resolve().parents[2]

CAMPAIGN = """\
id: hostile
name: A campaign whose template is under test
kind: cross_sell
trigger: {event: purchase}
offer: {type: complementary}
schedule: {delay: 0m}
experiment:
  variants:
    - {id: A, template: t}
"""


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")


def _lint(tmp_path: Path, files: dict[str, str]) -> list[LintIssue]:
    """The errors ``crosssell lint`` reports for one campaign using template ``t``
    (warnings, such as a first name without a fallback, are not what these tests probe)."""
    templates = tmp_path / "templates"
    base = {"t/subject.txt": "Hello", "t/body.html": "<p>Hi</p>", "t/body.txt": "Hi"}
    _write(templates, base | files)
    campaign = tmp_path / "hostile.yaml"
    campaign.write_text(CAMPAIGN, encoding="utf-8")
    settings = make_settings(tmp_path, templates_dir=templates)
    try:
        load_rules(settings, Renderer(settings), [campaign])
    except RuleSetError as exc:
        assert "Traceback" not in str(exc)
        return list(exc.errors)
    return []


def _renderer(tmp_path: Path, files: dict[str, str], **limits: Any) -> Renderer:
    templates = tmp_path / "templates"
    _write(templates, files)
    return Renderer(make_settings(tmp_path, templates_dir=templates), RenderLimits(**limits))


class _Html(HTMLParser):
    """What a mail client shows: the text of the document, and which elements exist."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.tags: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _words(text: str) -> str:
    return " ".join(text.split())


# -- 1. text is never HTML-escaped ------------------------------------------------------


def test_an_inline_variant_subject_is_plain_text(tmp_path: Path) -> None:
    """Variant B of laptop-accessories names its subject inline in the campaign file; an
    apostrophe in a name used to come out as ``D&#39;Arcy``."""
    settings = make_settings(tmp_path)
    rules = load_rule_set(
        [REPO / "config" / "campaigns" / "laptop-accessories.yaml"], template_names=None
    )
    campaign = rules.by_id("laptop-accessories")
    assert campaign is not None
    variant = next(v for v in campaign.campaign.experiment.variants if v.id == "B")
    context = sample_context(campaign.campaign, settings, "en")
    context["customer"] = context["customer"] | {"first_name": "D'Arcy"}
    email = Renderer(settings).render(variant.template, context, "en", variant.subject)
    assert email.subject == "D'Arcy, complete your setup"


HOSTILE_NAMES = [
    "D'Arcy",
    'Jean "JJ" Jones',
    "Smith & Sons",
    "<b>Bold</b>",
    "<script>alert(1)</script>",
    "a < b > c",
    "&amp; &#39; &lt;",
    "{{ 7 * 7 }}",
    "Ștefan Țurcanu-O'Neill & <Co>",
]

NAME_TEMPLATES = {
    "t/subject.txt": "{{ customer.first_name }}, hello",
    "t/body.html": "<p id='n'>{{ customer.first_name }}</p><p>{{ customer.first_name|upper }}</p>",
    "t/body.txt": "Dear {{ customer.first_name }},\n",
    "h/subject.txt": "x",
    "h/body.html": "<p>{{ customer.first_name }}</p>",  # no body.txt: text made from HTML
}


@pytest.fixture(scope="module")
def name_renderer(tmp_path_factory: pytest.TempPathFactory) -> Renderer:
    return _renderer(tmp_path_factory.mktemp("names"), NAME_TEMPLATES)


def _check_name_renders_literally(renderer: Renderer, name: str) -> None:
    context = {"customer": {"first_name": name}}
    email = renderer.render("t", context, "en")
    assert email.subject == _words(f"{name}, hello")
    assert email.text == f"Dear {name},\n".strip() + "\n"
    inline = renderer.render("t", context, "en", "{{ customer.first_name }}: {{ 'a&b' }}")
    assert inline.subject == _words(f"{name}: a&b")
    # ... and reads back the same from the Subject header of the message a send builds.
    parsed_message = message_from_bytes(build_message(_envelope(), inline), policy=policy.default)
    assert parsed_message["Subject"] == _words(f"{name}: a&b")
    # The HTML, read back by a parser, shows exactly the name; the name adds no element.
    parsed = _Html(email.html)
    assert "".join(parsed.text) == name + name.upper()
    assert parsed.tags == ["html", "head", "body", "p", "p"]
    derived = renderer.render("h", context, "en")
    assert _words(derived.text) == _words(name)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_names_are_literal_in_text_and_escaped_in_html(name_renderer: Renderer, name: str) -> None:
    _check_name_renders_literally(name_renderer, name)


MARKUP_ALPHABET = st.one_of(
    st.sampled_from(list("&<>\"';#/= ")),
    st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")),
)


@given(name=st.text(MARKUP_ALPHABET, min_size=1, max_size=30).filter(lambda s: s.strip()))
@settings(max_examples=150, deadline=None)
def test_any_name_is_literal_in_text_and_escaped_in_html(
    name_renderer: Renderer, name: str
) -> None:
    context = {"customer": {"first_name": name}}
    email = name_renderer.render("t", context, "en")
    assert email.subject == _words(f"{name}, hello")
    assert email.text == f"Dear {name},".strip() + "\n"
    parsed = _Html(email.html)
    assert "".join(parsed.text) == name + name.upper()
    assert parsed.tags == ["html", "head", "body", "p", "p"]
    assert _words(name_renderer.render("h", context, "en").text) == _words(name)


# -- 2. runtime errors are lint errors --------------------------------------------------

RUNTIME_ERRORS = [
    ("{{ 1/0 }}", "ZeroDivisionError"),
    ("{{ 10 // (customer.first_name|length - 3) }}", "ZeroDivisionError"),
    ("{{ 1 + 'a' }}", "TypeError"),
    ("{{ '%d' % 'x' }}", "TypeError"),
    ("{{ 'abc'.index('z') }}", "ValueError"),
    ("{{ 2.0 ** 100000 }}", "OverflowError"),
    ("{{ range(10**12)|list }}", "OverflowError"),
    ("{{ offer['items'][0].name + 1 }}", "TypeError"),
    ("{% include 't/body.html' %}", "RecursionError"),
    ("{{ '%s %s' % ('a',) }}", "TypeError"),
]


@pytest.mark.parametrize(("expression", "error"), RUNTIME_ERRORS)
def test_a_template_failing_at_render_time_is_a_lint_error(
    tmp_path: Path, expression: str, error: str
) -> None:
    body = f"<h1>Hi</h1>\n<p>{{{{ customer.first_name }}}}</p>\n<p>{expression}</p>\n"
    issues = _lint(tmp_path, {"t/body.html": body})
    assert [(i.code, i.file, i.line) for i in issues] == [
        ("template-runtime", str(tmp_path / "templates" / "t" / "body.html"), 3)
    ]
    assert issues[0].message.startswith(f"{error}: ")
    assert "(locale default)" in issues[0].message


def test_a_runtime_error_only_in_one_locale_is_found(tmp_path: Path) -> None:
    issues = _lint(tmp_path, {"t/body.it.txt": "Ciao\n{{ 1/0 }}"})
    assert [(i.code, Path(i.file).name, i.line) for i in issues] == [
        ("template-runtime", "body.it.txt", 2)
    ]
    assert "(locale it)" in issues[0].message


def test_a_runtime_error_in_an_inline_subject_points_at_the_campaign(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    _write(templates, {"t/subject.txt": "x", "t/body.html": "<p>x</p>"})
    campaign = tmp_path / "hostile.yaml"
    campaign.write_text(
        CAMPAIGN.replace("template: t}", 'template: t, subject: "{{ 1/0 }}"}'), encoding="utf-8"
    )
    settings = make_settings(tmp_path, templates_dir=templates)
    with pytest.raises(RuleSetError) as raised:
        load_rules(settings, Renderer(settings), [campaign])
    [issue] = raised.value.issues
    assert (issue.file, issue.line, issue.code) == (str(campaign), 9, "template-runtime")


# -- 3. CPU and memory bombs ------------------------------------------------------------

BOMBS = [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) if j < 0 %}{% endfor %}{% endfor %}",
    "{{ 'x' * 10**9 }}",
    "{{ 'x' * 1000000000 }}",
    "{{ [[0] * 1000000] * 1000000 }}",
    "{{ 2 ** (10 ** 7) }}",
    "{% set ns = namespace(n=7) %}{% for i in range(64) %}{% set ns.n = ns.n * ns.n %}{% endfor %}",
    "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
    "{% endfor %}",
    "{% set ns = namespace(s=['x']) %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
    "{% endfor %}",
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
    "{% for x in [1] recursive %}{{ loop([x]) }}{% endfor %}",
    "{{ 'x'|center(1000000000) }}",
    "{{ 'a\nb'|indent(1000000000) }}",
    "{{ range(100000)|join('x' * 100000) }}",
    "{{ ('x' * 100000)|replace('x', 'y' * 100000) }}",
    "{{ ('x' * 100000).replace('x', 'y' * 100000) }}",
    "{{ 'x'.ljust(10 ** 9) }}",
    "{{ '{:>1000000000}'.format('x') }}",
    "{{ '%1000000000s' % 'x' }}",
    "{{ '%s'|format('x')|center(10**9) }}",
    "{{ range(100000)|map('center', 100000)|join }}",
    "{{ [1]|batch(1000000000, 'x')|list }}",
    "{{ range(1000)|list|tojson(indent=100000) }}",
    "{{ lipsum(1000000) }}",
    "{{ {}.fromkeys(range(100000), 'x' * 100000) }}",
    "{{ 'x'.encode().center(10 ** 9) }}",
    "{{ 'x'.encode() * 10 ** 9 }}",
    "{{ ('x' * 100000).join(range(100000)|map('string')) }}",
    "{{ ('x' * 100000).join(range(100000)|map('string')|list) }}",
    "{{ range(100000)|map('string')|join('x' * 100000) }}",
    "{{ 'x'.translate({120: 'y'}) }}",
    "{% for i in range(15000) %}<div>{% endfor %}x{% for i in range(15000) %}</div>{% endfor %}",
    "{% for i in range(15000) %}<b>{% endfor %}x",
    "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
    "{% set s %}{% for i in range(1000) %}{{ 'x' * 10000 }}{% endfor %}{% endset %}{{ s|length }}",
    "{% for i in range(100000) %}" + "x" * 100 + "{% endfor %}",
    "{% macro m() %}{{ caller() }}{{ caller() }}{% endmacro %}"
    + "{% call m() %}" * 30
    + "x"
    + "{% endcall %}" * 30,
]


@pytest.mark.parametrize("bomb", BOMBS)
def test_a_bomb_stops_at_a_limit_quickly(tmp_path: Path, bomb: str) -> None:
    renderer = _renderer(tmp_path, {"t/subject.txt": "x", "t/body.html": bomb})
    # CPU time of this process, not wall time: the render's own 2 s limit is wall time,
    # and a loaded machine stretches the wall time around it, not the work done.
    started = time.process_time()
    with pytest.raises((RenderLimitError, SecurityError)) as raised:
        renderer.render("t", {}, "en")
    assert time.process_time() - started < 3.0
    if raised.type is RenderLimitError:
        assert str(raised.value).startswith("render limit: ")


@pytest.mark.parametrize("bomb", BOMBS[:3] + BOMBS[9:11])
def test_a_bomb_is_a_lint_error_at_its_line(tmp_path: Path, bomb: str) -> None:
    started = time.process_time()  # the lint renders in this process (see above)
    issues = _lint(tmp_path, {"t/body.txt": "Hi\n\n" + bomb})
    assert time.process_time() - started < 10.0
    assert [(i.code, Path(i.file).name, i.line) for i in issues] == [
        ("template-runtime", "body.txt", 3)
    ]
    assert "render limit: " in issues[0].message


def test_the_cpu_time_limit_stops_a_render_without_a_step_ceiling(tmp_path: Path) -> None:
    renderer = _renderer(
        tmp_path,
        {"t/subject.txt": "x", "t/body.html": BOMBS[0]},
        max_steps=10**12,
        time_limit=0.2,
    )
    # Without the limit the bomb would spend far more than 2 s of CPU.
    started = time.process_time()
    with pytest.raises(RenderLimitError, match=r"took longer than 0\.2 s of CPU time"):
        renderer.render("t", {}, "en")
    assert time.process_time() - started < 2.0


def test_the_time_limit_counts_cpu_not_waiting(tmp_path: Path) -> None:
    """A render that waits (here a context function sleeping, as a busy host or the GIL
    would make it wait) spends no CPU and is not stopped by a limit shorter than the wait."""
    renderer = _renderer(
        tmp_path, {"t/subject.txt": "x", "t/body.html": "{{ wait() }}done"}, time_limit=0.2
    )
    waited = time.monotonic()
    html = renderer.render("t", {"wait": lambda: time.sleep(0.5) or ""}, "en").html
    assert time.monotonic() - waited >= 0.5
    assert "done" in html


def test_each_thread_renders_on_its_own_budget(tmp_path: Path) -> None:
    """Celery runs sends in threads: bombs in some threads neither stop nor slow down to a
    failure the ordinary renders running beside them (a shared budget would)."""
    renderer = _renderer(
        tmp_path,
        {
            "bomb/subject.txt": "x",
            "bomb/body.html": BOMBS[0],
            "ok/subject.txt": "Hi {{ n }}",
            "ok/body.html": "{% for i in range(n) %}<p>{{ i }}</p>{% endfor %}",
            "ok/body.txt": "{% for i in range(n) %}{{ i }} {% endfor %}",
        },
        max_steps=30_000,
        # The budgets are told apart by steps (a shared one would stop the ordinary renders
        # after 30,000 steps of bombs), not by time.
        time_limit=30.0,
    )

    def render(index: int) -> str:
        if index % 2:
            with pytest.raises(RenderLimitError):
                renderer.render("bomb", {}, "en")
            return "bomb"
        return renderer.render("ok", {"n": 4_000}, "en").text

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(render, range(16)))
    expected = " ".join(str(i) for i in range(4_000)) + "\n"
    assert results == [expected if i % 2 == 0 else "bomb" for i in range(16)]


@given(outer=st.integers(0, 400), inner=st.integers(0, 400))
@settings(max_examples=60, deadline=None)
def test_loops_render_exactly_below_the_step_limit_and_stop_above_it(
    tmp_path_factory: pytest.TempPathFactory, outer: int, inner: int
) -> None:
    """Below the ceiling the output is exactly what the loops write; above it, an error.
    A render takes at least one step per inner iteration and at most a handful more."""
    loops = "{% for i in range(a) %}{% for j in range(b) %}x{% endfor %}{% endfor %}"
    renderer = _loop_renderer(tmp_path_factory, loops)
    context = {"a": outer, "b": inner}
    iterations = outer * inner
    if iterations + 3 * outer + 20 <= LOOP_LIMIT:
        assert renderer.render("t", context, "en").html.count("x") == iterations
    elif iterations > LOOP_LIMIT:
        with pytest.raises(RenderLimitError):
            renderer.render("t", context, "en")


LOOP_LIMIT = 20_000
_loop_renderers: dict[str, Renderer] = {}


def _loop_renderer(factory: pytest.TempPathFactory, body: str) -> Renderer:
    if body not in _loop_renderers:
        files = {"t/subject.txt": "x", "t/body.html": body, "t/body.txt": "t"}
        _loop_renderers[body] = _renderer(factory.mktemp("loops"), files, max_steps=LOOP_LIMIT)
    return _loop_renderers[body]


@given(size=st.integers(0, 3_000_000))
@example(size=999_990)
@example(size=1_000_001)
@settings(max_examples=40, deadline=None)
def test_a_string_renders_whole_up_to_the_size_limit_and_is_refused_beyond(
    tmp_path_factory: pytest.TempPathFactory, size: int
) -> None:
    renderer = _loop_renderer(tmp_path_factory, "{{ 'x' * n }}")
    limit = renderer.limits.max_value
    # The subject and text part ("x", "t") share the email's output budget.
    if size <= limit - 10:
        assert renderer.render("t", {"n": size}, "en").html.count("x") == size
    elif size > limit:
        with pytest.raises(RenderLimitError):
            renderer.render("t", {"n": size}, "en")


@given(depth=st.integers(0, 600), paragraphs=st.integers(0, 3000))
@settings(max_examples=40, deadline=None)
def test_html_nesting_renders_up_to_the_limit_and_is_refused_beyond(
    tmp_path_factory: pytest.TempPathFactory, depth: int, paragraphs: int
) -> None:
    """Nested elements count, siblings do not: any number of unclosed ``<p>`` (the parser
    closes each at the next) is fine, ``depth`` nested ``<div>`` only up to the limit."""
    body = (
        "{% for i in range(p) %}<p>x{% endfor %}"
        "{% for i in range(d) %}<div>{% endfor %}y{% for i in range(d) %}</div>{% endfor %}"
    )
    renderer = _loop_renderer(tmp_path_factory, body)
    context = {"d": depth, "p": paragraphs}
    if depth <= renderer.limits.max_html_depth:
        html = renderer.render("t", context, "en").html
        assert (html.count("<div>"), html.count("<p>")) == (depth, paragraphs)
    else:
        with pytest.raises(RenderLimitError, match="nested deeper than"):
            renderer.render("t", context, "en")


# -- 4. symlinks and paths outside templates/ -------------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to templates/ holding a 'secret' and a whole fake template."""
    secret = tmp_path / "outside"
    _write(secret, {"secret.txt": "SECRET-VALUE", "t/body.html": "SECRET-VALUE"})
    return secret


def _safe_base(tmp_path: Path) -> Path:
    templates = tmp_path / "templates"
    _write(templates, {"t/subject.txt": "x", "t/body.html": "<p>ok</p>", "t/body.txt": "ok"})
    return templates


SYMLINK_CASES = {
    "a part linked to /proc/self/environ": ("t/body.txt", "/proc/self/environ", "t/body.txt"),
    "a part linked to a file outside": ("t/body.txt", "{outside}/secret.txt", "t/body.txt"),
    "a part linked to a file inside": ("t/body.txt", "{templates}/t/subject.txt", "t/body.txt"),
    "a locale part linked outside": ("t/body.ro.txt", "{outside}/secret.txt", "t/body.ro.txt"),
    "the template directory linked outside": ("u", "{outside}/t", "u"),
    "an included directory linked outside": ("t/inc", "{outside}", "t/body.html"),
}


@pytest.mark.parametrize("case", sorted(SYMLINK_CASES))
def test_symlinks_are_refused_by_lint_and_by_a_send(
    tmp_path: Path, outside: Path, case: str
) -> None:
    link, target, reported = SYMLINK_CASES[case]
    templates = _safe_base(tmp_path)
    if link == "t/inc":  # a regular body.html that includes through a linked directory
        _write(templates, {"t/body.html": "<p>ok</p>\n{% include 't/inc/secret.txt' %}"})
    target_path = Path(target.format(outside=outside, templates=templates))
    (templates / link).unlink(missing_ok=True)
    os.symlink(target_path, templates / link)
    template = "u" if link == "u" else "t"
    campaign = tmp_path / "hostile.yaml"
    campaign.write_text(CAMPAIGN.replace("template: t}", f"template: {template}}}"))
    settings = make_settings(tmp_path, templates_dir=templates)

    with pytest.raises(RuleSetError) as raised:
        load_rules(settings, Renderer(settings), [campaign])
    issues = raised.value.issues
    assert {issue.code for issue in issues} == {"template-unsafe"}, issues
    assert any(issue.file == str(templates / reported) for issue in issues), issues
    assert "SECRET-VALUE" not in str(raised.value)

    renderer = Renderer(settings)
    with pytest.raises(UnsafeTemplatePath) as refused:
        renderer.render(template, {}, "ro-RO")
    assert "SECRET-VALUE" not in str(refused.value)


@pytest.mark.parametrize(
    "name",
    [
        "../outside/secret.txt",
        "t/../../outside/secret.txt",
        "/etc/passwd",
        "..\\outside\\secret.txt",
        "t/./../../outside/secret.txt",
    ],
)
def test_names_leaving_the_templates_directory_are_refused(
    tmp_path: Path, outside: Path, name: str
) -> None:
    templates = _safe_base(tmp_path)
    _write(templates, {"t/body.html": f"<p>ok</p>\n{{% include {name!r} %}}"})
    renderer = Renderer(make_settings(tmp_path, templates_dir=templates))
    with pytest.raises(UnsafeTemplatePath):
        renderer.render("t", {}, "en")
    issues = _lint(tmp_path, {"t/body.html": f"<p>ok</p>\n{{% include {name!r} %}}"})
    assert [(i.code, Path(i.file).name, i.line) for i in issues] == [
        ("template-unsafe", "body.html", 2)
    ]


def test_a_fifo_or_an_oversized_file_is_refused_without_blocking(tmp_path: Path) -> None:
    templates = _safe_base(tmp_path)
    os.mkfifo(templates / "t" / "pipe.txt")
    (templates / "t" / "big.txt").write_text("x" * 2000)
    loader = SafeFileSystemLoader(templates, max_bytes=1000)
    renderer = Renderer(make_settings(tmp_path, templates_dir=templates))
    with pytest.raises(UnsafeTemplatePath, match="not a regular file"):
        loader.get_source(renderer.env, "t/pipe.txt")
    with pytest.raises(UnsafeTemplatePath, match="2000 bytes"):
        loader.get_source(renderer.env, "t/big.txt")
    with pytest.raises(TemplateNotFound):
        loader.get_source(renderer.env, "t/missing.txt")
    source, filename, uptodate = loader.get_source(renderer.env, "t/body.txt")
    assert (source, filename, uptodate()) == ("ok", str(templates / "t" / "body.txt"), True)


def test_a_templates_directory_that_is_itself_a_symlink_still_works(tmp_path: Path) -> None:
    """Deployments often point ``templates`` at a release directory: the root may be a
    link; only what is below it must be real."""
    real = _safe_base(tmp_path / "release")
    os.symlink(real, tmp_path / "current")
    renderer = Renderer(make_settings(tmp_path, templates_dir=tmp_path / "current"))
    assert renderer.render("t", {}, "en").text == "ok\n"


# -- send time: a failing render is skipped/render_error and blocks nobody -------------

DATA_DEPENDENT = (
    "{% extends '_base/body.ro.html' %}{% block content %}"
    "{% set n = customer.first_name|length %}"
    "<p>{{ 100 // (n - 6) if n < 9 else '' }}</p>"
    "{% if n > 8 %}{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
    "{% endfor %}{% endif %}{% endblock %}"
)


def test_a_send_whose_render_fails_is_skipped_and_the_others_are_sent(
    tmp_path: Path, database_url: str
) -> None:
    """Lint renders with a sample customer "Ana" and passes; real names trip it:
    "Ștefan" divides by zero, "Bartholomew" starts a loop bomb."""
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "templates", templates)
    (templates / "accessories" / "body.ro.html").write_text(DATA_DEPENDENT, encoding="utf-8")
    runtime = _runtime(tmp_path, database_url, templates_dir=templates)
    sends: dict[str, int] = {}
    for index, name in enumerate(("Ștefan", "Bartholomew", "Ana")):
        for suffix in range(50):
            event = purchase(customer=customer_block(f"C-{index}-{suffix}", first_name=name))
            _ingest(runtime, event)
            with transaction(database_url) as session:
                send = session.scalars(select(Send).where(Send.event_id == event["id"])).one()
            if send.status == "planned":
                sends[name] = send.id
                break
    runtime.clock = ShiftedClock(TUESDAY_MORNING + timedelta(hours=3))
    assert sorted(_dispatch(runtime)) == sorted(sends.values())
    started = time.monotonic()
    outcomes = {name: deliver_send(runtime, send_id) for name, send_id in sends.items()}
    assert time.monotonic() - started < 10.0
    assert outcomes == {"Ștefan": "skipped", "Bartholomew": "skipped", "Ana": "sent"}
    with transaction(database_url) as session:
        rows = {name: session.get(Send, send_id) for name, send_id in sends.items()}
        found = {n: (s.status, s.reason, s.detail) for n, s in rows.items() if s is not None}
    assert found["Ștefan"][:2] == ("skipped", "render_error")
    assert (found["Ștefan"][2] or "").startswith("ZeroDivisionError: ")
    assert found["Bartholomew"][:2] == ("skipped", "render_error")
    assert "RenderLimitError: render limit: " in (found["Bartholomew"][2] or "")


# -- hot reload refuses a failing set and recovers -------------------------------------


def _stale() -> float | None:
    return REGISTRY.get_sample_value("crosssell_rules_reload_failing")


@pytest.mark.parametrize(
    "broken",
    [
        "{{ 1/0 }}",
        "{{ 1 + customer }}",
        BOMBS[0],
        "{{ 'x' * 10**9 }}",
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    ],
)
def test_hot_reload_keeps_the_last_good_templates(tmp_path: Path, broken: str) -> None:
    templates = tmp_path / "templates"
    _write(templates, {"t/subject.txt": "Hello", "t/body.html": "<p>good</p>"})
    campaigns = tmp_path / "campaigns"
    _write(campaigns, {"hostile.yaml": CAMPAIGN})
    settings = make_settings(tmp_path, templates_dir=templates, campaigns_dir=campaigns)
    store = RuleStore(settings, check_every=0)
    context = sample_context(store.current().campaigns[0].campaign, settings, None)
    assert "good" in store.snapshot().renderer.render("t", context, None).text

    body = templates / "t" / "body.html"
    body.write_text(f"<p>bad</p>\n{broken}", encoding="utf-8")
    os.utime(body, ns=(time.time_ns(), time.time_ns() + 10**9))
    started = time.monotonic()
    assert store.reload_if_changed() is False
    assert time.monotonic() - started < 10.0
    assert _stale() == 1
    assert (
        store.last_error is not None and f"{body}:2:1: error[template-runtime]" in store.last_error
    )
    assert "good" in store.snapshot().renderer.render("t", context, None).text

    body.write_text("<p>fixed</p>", encoding="utf-8")
    os.utime(body, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    assert store.reload_if_changed() is True
    assert _stale() == 0
    assert "fixed" in store.snapshot().renderer.render("t", context, None).text
