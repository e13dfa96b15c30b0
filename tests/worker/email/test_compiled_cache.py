"""Renderers share compiled templates and the lint shares parsed ones, never stale ones.

Every rule-set load builds a new renderer; compiled code and parse trees are found by the
template's source, so a renderer built after an edit renders the edited file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from jinja2 import Environment, TemplateSyntaxError

from tests.support.factories import make_settings
from worker.email import compiled_cache
from worker.email.compiled_cache import SharedBytecodeCache, parsed
from worker.email.rendering import Renderer

CONTEXT = {"customer": {"first_name": "Ana"}}


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")


def _counting_compiles(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    compiled: list[str | None] = []
    original = Environment.compile

    def compile_counted(self: Environment, source: Any, name: Any = None, *a: Any, **k: Any) -> Any:
        compiled.append(name)
        return original(self, source, name, *a, **k)

    monkeypatch.setattr(Environment, "compile", compile_counted)
    return compiled


def test_a_new_renderer_reuses_code_compiled_by_an_earlier_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "templates"
    _write(root, {"t/subject.txt": "Hi {{ customer.first_name }}", "t/body.html": "<p>x</p>"})
    settings = make_settings(tmp_path, templates_dir=root)
    compiled = _counting_compiles(monkeypatch)
    first = Renderer(settings).render("t", CONTEXT, "en")
    assert sorted(compiled) == ["t/body.html", "t/subject.txt"]
    again = Renderer(settings).render("t", CONTEXT, "en")
    assert again == first
    assert len(compiled) == 2  # nothing compiled the second time


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        ("Hi {{ customer.first_name }}", "Hello {{ customer.first_name }}", "Hello Ana"),
        ("Hi {{ customer.first_name }}", "Hi {{ customer.first_name }}!", "Hi Ana!"),
        ("{% if true %}A{% endif %}", "{% if false %}A{% else %}B{% endif %}", "B"),
        # same length, one character changed
        ("Hi {{ customer.first_name }}", "Yo {{ customer.first_name }}", "Yo Ana"),
    ],
)
def test_an_edited_template_is_compiled_again_never_served_stale(
    tmp_path: Path, before: str, after: str, expected: str
) -> None:
    root = tmp_path / "templates"
    _write(root, {"t/subject.txt": before, "t/body.html": "<p>x</p>"})
    settings = make_settings(tmp_path, templates_dir=root)
    Renderer(settings).render("t", CONTEXT, "en")
    _write(root, {"t/subject.txt": after})
    assert Renderer(settings).render("t", CONTEXT, "en").subject == expected


def test_templates_of_two_directories_with_the_same_names_do_not_mix(tmp_path: Path) -> None:
    rendered = []
    for word in ("one", "two"):
        root = tmp_path / word / "templates"
        _write(root, {"t/subject.txt": word, "t/body.html": f"<p>{word}</p>"})
        settings = make_settings(tmp_path / word, templates_dir=root)
        rendered.append(Renderer(settings).render("t", CONTEXT, "en").subject)
    assert rendered == ["one", "two"]


def test_the_cache_keeps_at_most_its_capacity_dropping_the_least_recent(tmp_path: Path) -> None:
    cache = SharedBytecodeCache(capacity=2)
    env = Environment(bytecode_cache=cache)
    sources = {f"n{i}": f"{{{{ {i} }}}}" for i in range(3)}
    for name, source in sources.items():
        bucket = cache.get_bucket(env, name, None, source)
        bucket.code = env.compile(source, name)
        cache.set_bucket(bucket)
    assert len(cache) == 2
    assert cache.get_bucket(env, "n0", None, sources["n0"]).code is None  # dropped
    assert cache.get_bucket(env, "n2", None, sources["n2"]).code is not None
    cache.clear()
    assert len(cache) == 0


def test_parsed_trees_are_shared_and_syntax_errors_raised_every_time() -> None:
    env = Environment(trim_blocks=True)
    source = "{% if customer.first_name %}{{ customer.first_name }}{% endif %}"
    assert parsed(env, source) is parsed(env, source)
    # other options parse differently: never the same entry
    other = Environment(block_start_string="<%", block_end_string="%>")
    assert parsed(other, source) is not parsed(env, source)
    for _ in range(2):
        with pytest.raises(TemplateSyntaxError) as raised:
            parsed(env, "line one\n{% if %}", "t/body.txt", "/x/t/body.txt")
        assert (raised.value.lineno, raised.value.name) == (2, "t/body.txt")
        assert raised.value.filename == "/x/t/body.txt"


def test_parsed_trees_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiled_cache, "MAX_TREES", 3)
    env = Environment()
    for i in range(10):
        parsed(env, f"{{{{ {i} }}}} bounded")
    assert len(compiled_cache._TREES) <= 3
