"""The sandbox's shortcuts answer as Jinja's own sandbox does, and the CPU clock is read
only when a render may have run out of time.

The shortcuts (docs/performance.md, "Rendering and the MIME build"): ``obj.name`` on a
plain dict, a template's globals as one dict, the picked template remembered per
renderer, the CPU clock behind the wall clock. The limits themselves are tested in
tests/hostile/test_templates.py.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2 import DictLoader, StrictUndefined, TemplateError, TemplateNotFound
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup, escape

from tests.support.factories import make_settings
from worker.email import template_sandbox
from worker.email.rendering import Renderer
from worker.email.template_sandbox import (
    CLOCK_EVERY,
    WALL_SHARE,
    BudgetedSandbox,
    RenderLimitError,
    RenderLimits,
)

# Keys that are also dict attributes (methods, dunders, the immutable sandbox's refused
# mutators), keys that are not, and one the dicts below never hold.
NAMES = ["name", "items", "keys", "get", "update", "pop", "clear", "__class__", "__len__"]
NAMES += ["__dict__", "mro", "fromkeys", "copy", "missing", "_private", "setdefault"]


class Record(dict[str, Any]):
    """A dict subclass: the shortcut leaves it to the sandbox."""

    def label(self) -> str:
        return "label"


KINDS: list[type[dict[str, Any]]] = [dict, Record, OrderedDict]


def _outcome(env: Any, source: str, context: dict[str, Any]) -> tuple[str, str]:
    try:
        return "ok", env.from_string(source).render(context)
    except Exception as exc:  # the same error either way, whatever it is
        return type(exc).__name__, str(exc)


def _jinja() -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(undefined=StrictUndefined)


def _ours() -> BudgetedSandbox:
    return BudgetedSandbox(undefined=StrictUndefined)


@settings(max_examples=200, deadline=None)
@given(
    keys=st.lists(st.sampled_from(NAMES), max_size=6, unique=True),
    name=st.sampled_from(NAMES),
    kind=st.sampled_from(KINDS),
    use=st.sampled_from(["{{ d.%s }}", "{{ d.%s is defined }}", "{{ d.%s() }}"]),
)
def test_attribute_lookup_answers_as_jinjas_sandbox(
    keys: list[str], name: str, kind: type[dict[str, Any]], use: str
) -> None:
    data = kind({key: f"value of {key}" for key in keys})
    source = use % name
    ours, theirs = _outcome(_ours(), source, {"d": data}), _outcome(_jinja(), source, {"d": data})
    if ours[0] == "ok" and theirs[0] == "ok" and " at 0x" in theirs[1]:
        # A bound method's repr names its address; the same method either way.
        assert ours[1].split(" at 0x")[0] == theirs[1].split(" at 0x")[0]
    else:
        assert ours == theirs


def test_a_dict_key_named_like_a_dict_method_is_the_method_and_a_mutator_is_refused() -> None:
    data = {"items": "key", "update": "key", "name": "Ana"}
    env = _ours()
    assert env.from_string("{{ d.name }}|{{ d['items'] }}").render(d=data) == "Ana|key"
    assert env.from_string("{{ d.items()|list|length }}").render(d=data) == "3"
    with pytest.raises(TemplateError, match="unsafe"):
        env.from_string("{{ d.update({'x': 1}) }}").render(d=data)


def test_templates_see_the_environments_globals_and_their_own_first() -> None:
    source = "{{ shop }} {{ range(3)|list }} {{ lipsum(1, false)|length > 0 }}"
    env = BudgetedSandbox(undefined=StrictUndefined, loader=DictLoader({"t": source}))
    env.globals["shop"] = "Magazin"
    assert env.get_template("t").render() == "Magazin [0, 1, 2] True"
    own = env.from_string("{{ shop }}", globals={"shop": "own"})
    assert own.render() == "own"
    assert env.from_string("{{ shop }}").render() == "Magazin"
    assert env.globals["shop"] == "Magazin"
    # The budgeted lipsum, not Jinja's: its size is checked before it is written.
    with pytest.raises(RenderLimitError):
        env.from_string("{{ lipsum(10 ** 6) }}").render()


class _Html:
    def __html__(self) -> str:
        return "<i>as is</i>"


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=60), number=st.integers() | st.floats(allow_nan=False))
def test_autoescaped_output_is_markupsafes_escaping_once(text: str, number: float) -> None:
    """``{{ … }}`` in an autoescaped template goes through one ``finalize_escaped`` call
    (docs/performance.md): the text is MarkupSafe's escaping of each value, once, also
    through a macro, a ``{% set %}`` block and a filter block (buffers wrapped in Markup)."""
    source = (
        "{% macro m(v) %}<b>{{ v }}</b>{% endmacro %}{% set block %}[{{ t }}]{% endset %}"
        "{{ t }}|{{ n }}|{{ h }}|{{ safe }}|{{ m(t) }}|{{ block }}|"
        "{% filter upper %}{{ t }}{% endfilter %}"
    )
    env = BudgetedSandbox(autoescape=True)
    assert "finalize_escaped" in str(env.compile(source, raw=True))
    values = {"t": text, "n": number, "h": _Html(), "safe": Markup("<u>")}
    jinja = ImmutableSandboxedEnvironment(autoescape=True).from_string(source).render(values)
    assert env.from_string(source).render(values) == jinja
    e = str(escape(text))
    assert jinja.startswith(f"{e}|{escape(number)}|<i>as is</i>|<u>|<b>{e}</b>|[{e}]|")


def test_templates_are_remembered_by_name_only_when_they_never_reload() -> None:
    """``get_template`` answers as Jinja's cache did: one template per name for an
    environment without ``auto_reload``, the same errors for a missing name every time,
    a new loader's templates after the loader is replaced, reloads when ``auto_reload``."""
    files = {
        "base": "[{% block b %}{% endblock %}]",
        "t": '{% extends "base" %}{% block b %}x{% include "part" %}{% endblock %}',
        "part": "p",
    }
    env = BudgetedSandbox(loader=DictLoader(files), auto_reload=False)
    first = env.get_template("t")
    assert env.get_template("t") is first
    assert env.get_template("base", parent="t") is env.get_template("base")
    assert first.render() == "[xp]"
    for _ in range(2):
        with pytest.raises(TemplateNotFound):
            env.get_template("missing")
    env.loader = DictLoader({"t": "other"})
    assert env.get_template("t").render() == "other"
    files["part"] = "q"
    reloading = BudgetedSandbox(loader=DictLoader(files), auto_reload=True)
    assert reloading.get_template("t").render() == "[xq]"


def _renderer(tmp_path: Path, files: dict[str, str], **limits: Any) -> Renderer:
    root = tmp_path / "templates"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return Renderer(make_settings(tmp_path, templates_dir=root), RenderLimits(**limits))


def test_each_locale_gets_its_own_variant_however_the_renders_alternate(tmp_path: Path) -> None:
    renderer = _renderer(
        tmp_path,
        {
            "t/subject.txt": "Hello",
            "t/subject.ro.txt": "Salut",
            "t/body.html": "<p>en</p>",
            "t/body.ro.html": "<p>ro</p>",
            "t/body.ro_MD.html": "<p>ro-MD</p>",
            "t/body.txt": "en text",
            "h/subject.txt": "Only HTML",
            "h/body.html": "<p>html only</p>",
        },
    )
    expected = {
        "ro-RO": ("Salut", "<p>ro</p>", "en text\n"),
        "ro-MD": ("Salut", "<p>ro-MD</p>", "en text\n"),
        "en": ("Hello", "<p>en</p>", "en text\n"),
        "it-IT": ("Hello", "<p>en</p>", "en text\n"),
    }
    for locale in ["ro-RO", "en", "ro-MD", "it-IT", "ro-RO", "en", "ro-MD"]:
        email = renderer.render("t", {}, locale)
        body = email.html.removeprefix("<html><head></head><body>").removesuffix("</body></html>")
        assert (email.subject, body, email.text) == expected[locale]
        # No body.txt: the text part comes from the HTML, every time.
        assert renderer.render("h", {}, locale).text == "html only\n"


class FakeClocks:
    """The two clocks the budget reads, moved by the test; counts CPU clock readings."""

    def __init__(self) -> None:
        self.wall = 1000.0
        self.cpu = 5.0
        self.cpu_readings = 0

    def monotonic(self) -> float:
        return self.wall

    def thread_time(self) -> float:
        self.cpu_readings += 1
        return self.cpu


LOOP = "{% for i in range(n) %}{{ i }}{% endfor %}"


def test_an_ordinary_render_reads_the_cpu_clock_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    renderer = _renderer(tmp_path, {"t/subject.txt": "x", "t/body.html": LOOP})
    clocks = FakeClocks()
    monkeypatch.setattr(template_sandbox, "time", clocks)
    renderer.render("t", {"n": 50 * CLOCK_EVERY}, "en")
    assert clocks.cpu_readings == 1


def test_past_half_the_limit_on_the_wall_clock_the_cpu_clock_decides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    renderer = _renderer(
        tmp_path,
        {"t/subject.txt": "x", "t/body.html": "{{ wait() }}" + LOOP},
        time_limit=2.0,
    )
    clocks = FakeClocks()
    monkeypatch.setattr(template_sandbox, "time", clocks)

    def wait(cpu: float) -> str:
        clocks.wall += 2.0 * WALL_SHARE + 0.01
        clocks.cpu += cpu
        return ""

    # Waited (wall time) but spent little CPU: not stopped; the CPU clock was consulted.
    renderer.render("t", {"wait": lambda: wait(0.5), "n": 4 * CLOCK_EVERY}, "en")
    assert clocks.cpu_readings > 1
    # Spent the CPU time: stopped within CLOCK_EVERY steps.
    with pytest.raises(RenderLimitError, match=r"took longer than 2 s of CPU time"):
        renderer.render("t", {"wait": lambda: wait(2.01), "n": 4 * CLOCK_EVERY}, "en")
