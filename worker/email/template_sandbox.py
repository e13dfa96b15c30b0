"""A Jinja sandbox with a budget: templates cannot hang, exhaust memory or read outside.

Jinja's ``ImmutableSandboxedEnvironment`` keeps templates away from Python internals but
not from spending unbounded CPU or memory: two nested ``range(100000)`` loops run 10^10
iterations, ``'x' * 10**9`` allocates a gigabyte, and its file loader follows a symlink to
``/proc/self/environ``. This module adds, without threads, signals or subprocesses (so it
works the same in a Celery thread, the rule watcher and ``crosssell lint``):

* **steps** — every loop iteration, macro or function call, filter and arithmetic
  operator is one step; a render may take ``max_steps``. The step hook also checks the
  ``time_limit``, CPU seconds of the rendering thread (``time.thread_time``), every
  ``CLOCK_EVERY`` steps, so a render ends within that many steps of its deadline. CPU
  time rather than wall time: a loaded machine or threads waiting on the GIL stretch wall
  time without the template costing more, and a cheap render must not fail because the
  host is busy. The thread's CPU clock is a system call (≈ 2 µs measured on the 2-core
  bench machine under load, where ``time.monotonic`` takes 0.25 µs), and a thread never
  spends more CPU time than wall time passes: the CPU clock is read only once half the
  limit has passed on the cheap wall clock, so an ordinary render reads it once, at its
  start.
* **size** — every string or list a template builds (``*``, ``+``, ``~``, ``%``, filters,
  string methods) is checked; operations that could *allocate* beyond ``max_value`` are
  refused before they run (``'x' * 10**9``, ``|center(10**9)``, ``|join`` of a huge list),
  others right after. Output is counted as it is produced, up to ``max_output``.
* **depth** — calls nest at most ``max_depth`` deep (recursive macros).
* **files** — the loader reads regular files inside the templates directory only: no
  symlinks, no ``..``, nothing larger than ``max_template_bytes``.

The budget of the render in progress lives in a ``ContextVar``: each thread (and each
asyncio task) has its own. Outside a render (compiling, constant folding) only the size
checks apply.
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import wraps
from html.parser import HTMLParser
from pathlib import Path
from string import Formatter
from typing import Any, cast

import markupsafe
from jinja2 import BaseLoader, Environment, Template, TemplateNotFound, nodes, pass_context
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError, TemplateRuntimeError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg
from jinja2.visitor import NodeTransformer


class RenderLimitError(TemplateRuntimeError):
    """A render used more steps, time, memory, output or call depth than allowed."""


class UnsafeTemplatePath(SecurityError):
    """A template name or file that would read outside the templates directory."""


@dataclass(frozen=True, slots=True)
class RenderLimits:
    """Ceilings of one render of one email (subject, HTML and text together).

    A real email needs a few hundred steps and a few kB; Gmail clips an HTML part
    beyond 102 kB. Units: steps, CPU seconds of the rendering thread, characters (or list
    items), call frames, bits, bytes; ``max_html_depth`` is elements nested in the HTML part.
    """

    max_steps: int = 100_000
    time_limit: float = 2.0
    max_value: int = 1_000_000
    max_output: int = 1_000_000
    max_depth: int = 64
    max_int_bits: int = 4096
    max_template_bytes: int = 512 * 1024
    max_html_depth: int = 256


CLOCK_EVERY = 32
"""Steps between two looks at the clocks (measured: ``time.thread_time`` 0.56 µs,
``time.monotonic`` 0.045 µs per call on this project's 2-core test machine when idle;
2.1 µs and 0.25 µs at a load average of 13)."""

WALL_SHARE = 0.5
"""The share of ``time_limit`` that must pass on the wall clock before the CPU clock is
read at all. CPU time of one thread cannot outrun wall time; the margin (rather than 1.0)
covers any difference in rate between the two clocks (NTP slews the wall clock by at
most 0.05 %)."""


class Budget:
    """What one render has spent; raises RenderLimitError when a ceiling is crossed."""

    def __init__(self, limits: RenderLimits, time_limit: float) -> None:
        self.limits = limits
        self.max_steps = limits.max_steps
        self.max_output = limits.max_output
        # The wall clock first: the wall time counted is never less than the CPU time.
        self.check_cpu_after = time.monotonic() + time_limit * WALL_SHARE
        self.deadline = time.thread_time() + time_limit
        self.time_limit = time_limit
        self.steps = 0
        self.output = 0
        self.depth = 0

    def step(self, output: int = 0) -> None:
        self.steps += 1
        self.output += output
        if self.steps > self.max_steps:
            raise RenderLimitError(
                f"render limit: more than {self.limits.max_steps} steps "
                "(loop iterations, calls, filters and operators)"
            )
        if self.output > self.max_output:
            raise RenderLimitError(
                f"render limit: output longer than {self.limits.max_output} characters"
            )
        if not self.steps % CLOCK_EVERY:
            self.check_time()

    def check_time(self) -> None:
        """Raise RenderLimitError once the thread has spent ``time_limit`` CPU seconds."""
        if time.monotonic() > self.check_cpu_after and time.thread_time() > self.deadline:
            raise RenderLimitError(
                f"render limit: took longer than {self.time_limit:g} s of CPU time"
            )


_BUDGET: ContextVar[Budget | None] = ContextVar("crosssell_render_budget", default=None)


@contextmanager
def budget(limits: RenderLimits, time_limit: float | None = None) -> Iterator[Budget]:
    """Run the block as one render with its own budget (nested renders share the outer)."""
    outer = _BUDGET.get()
    if outer is not None:
        yield outer
        return
    spent = Budget(limits, limits.time_limit if time_limit is None else time_limit)
    token = _BUDGET.set(spent)
    try:
        yield spent
    finally:
        _BUDGET.reset(token)


def _step(output: int = 0) -> None:
    current = _BUDGET.get()
    if current is not None:
        current.step(output)


def weight(value: Any, limit: int) -> int:
    """Characters plus items a value holds, counting shared references every time they
    occur (that is what ``str()`` or ``join`` would copy); stops counting past ``limit``."""
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, Mapping):
        items: Iterable[Any] = (x for pair in value.items() for x in pair)
        total = len(value)
    elif isinstance(value, list | tuple | set | frozenset):
        items, total = value, len(value)
    elif isinstance(value, range):
        return len(value)
    else:
        return 1
    if total > limit:
        return total
    for item in items:
        total += weight(item, limit - total)
        if total > limit:
            break
    return total


class _Sizes:
    """Size checks of one environment's limits."""

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits

    def refuse_if(self, estimate: int, what: str) -> None:
        if estimate > self.limits.max_value:
            raise RenderLimitError(
                f"render limit: {what} would exceed {self.limits.max_value} characters or items"
            )

    def checked(self, value: Any, what: str) -> Any:
        self.refuse_if(weight(value, self.limits.max_value), what)
        return value

    def width(self, value: Any, what: str) -> None:
        if isinstance(value, int) and not isinstance(value, bool):
            self.refuse_if(abs(value), what)

    def format_spec(self, template: str, args: Iterable[Any], what: str) -> None:
        """Refuse ``{:>1000000000}`` and ``%1000000000s`` before formatting pads."""
        for number in re.findall(r"\d+", template):
            if len(number) > 12:
                self.refuse_if(self.limits.max_value + 1, what)
            self.width(int(number), what)
        if "*" in template or "{" in template:
            for arg in args:
                self.width(arg, what)


def _str_format_widths(text: str) -> str:
    """The format specs of a ``str.format`` template, joined, for the width check."""
    try:
        return " ".join(spec or "" for _, _, spec, _ in Formatter().parse(text))
    except ValueError:
        return ""


def _percent_widths(text: str) -> str:
    return " ".join(re.findall(r"%[-#0 +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?", text))


def _as_tuple(args: Any) -> tuple[Any, ...]:
    if isinstance(args, tuple):
        return args
    if isinstance(args, Mapping):
        return tuple(args.values())
    return (args,)


def _check_filter_arguments(
    sizes: _Sizes, name: str, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """Refuse a filter call whose result would be too large, before it allocates it."""
    if not isinstance(value, str | list | tuple | Mapping | range):
        return  # generators and other lazy values are counted as they are consumed
    what = f"|{name}"
    length = weight(value, sizes.limits.max_value)
    first = args[0] if args else None
    if name == "center":
        sizes.width(kwargs.get("width", first), what)
    elif name == "indent":
        width = kwargs.get("width", first if first is not None else 4)
        pad = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        lines = value.count("\n") + 1 if isinstance(value, str) else 1
        sizes.refuse_if(length + lines * abs(pad), what)
    elif name == "wordwrap":
        width = kwargs.get("width", first if first is not None else 79)
        wrap = kwargs.get("wrapstring", args[2] if len(args) > 2 else "\n")
        if isinstance(width, int) and width > 0 and isinstance(wrap, str):
            sizes.refuse_if(length + (length // width + 1) * len(wrap), what)
    elif name == "replace" and isinstance(value, str):
        old = kwargs.get("old", first)
        new = kwargs.get("new", args[1] if len(args) > 1 else "")
        count = kwargs.get("count", args[2] if len(args) > 2 else None)
        if isinstance(old, str) and isinstance(new, str):
            found = value.count(old)
            if isinstance(count, int) and count >= 0:
                found = min(found, count)
            sizes.refuse_if(length + found * len(new), what)
    elif name == "join":
        separator = kwargs.get("d", first if first is not None else "")
        sizes.refuse_if(length + len(value) * len(str(separator)), what)
    elif name in ("batch", "slice"):
        sizes.width(kwargs.get("linecount", kwargs.get("slices", first)), what)
    elif name == "format" and isinstance(value, str):
        sizes.format_spec(_percent_widths(value), (*args, *kwargs.values()), what)
    elif name == "tojson":
        sizes.width(kwargs.get("indent", first), what)
        indent = kwargs.get("indent", first)
        if isinstance(indent, int):
            sizes.refuse_if(length * (1 + abs(indent)), what)
    elif name == "sum":
        start = kwargs.get("start", args[1] if len(args) > 1 else 0)
        if not isinstance(start, int | float):
            sizes.refuse_if(length + weight(start, sizes.limits.max_value), what)
    elif name == "truncate":
        sizes.width(kwargs.get("length", first), what)


MAX_LOADED = 4096
"""Templates an environment remembers by name beyond Jinja's cache (a bound on memory)."""

_DICT_ATTRIBUTES = frozenset(dir(dict))
"""Every name ``getattr`` finds on a ``dict`` instance (its type's and ``object``'s)."""

_STR_METHODS_WITH_WIDTH = frozenset({"ljust", "rjust", "center", "zfill"})
_STR_METHODS_REFUSED = frozenset({"translate", "maketrans", "expandtabs"})


def _escaped_markup_text(text: str) -> str:
    return str(markupsafe.escape(text))


_ESCAPE_TEXT: Callable[[str], str] = (
    getattr(markupsafe, "_escape_inner", None) or _escaped_markup_text
)
"""MarkupSafe's own escaping of a ``str`` (its C function, which ``markupsafe.escape``
calls and then wraps in ``Markup`` in Python: 21 ns against 268 ns for a 30-character
name, timeit); ``markupsafe.escape`` itself should a release stop offering it."""


class BudgetedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox plus the budget of this module (see its docstring)."""

    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    def __init__(self, *args: Any, limits: RenderLimits | None = None, **kwargs: Any) -> None:
        self.limits = limits or RenderLimits()
        self.sizes = _Sizes(self.limits)
        super().__init__(*args, finalize=self._finalize, **kwargs)
        self.code_generator_class = BudgetedCodeGenerator
        self.filters = {name: self._budgeted_filter(name, f) for name, f in self.filters.items()}
        self.filters[STEP_FILTER] = _step_filter
        self.filters[SIZE_FILTER] = self._size_filter
        self.globals["lipsum"] = self._lipsum(cast(Callable[..., str], self.globals["lipsum"]))
        self._loaded: dict[str, Template] = {}
        self._loaded_by = self.loader

    def get_template(
        self,
        name: str | Template,
        parent: str | None = None,
        globals: MutableMapping[str, Any] | None = None,
    ) -> Template:
        """The template ``name`` names, remembered by name when templates never reload.

        ``{% extends %}`` and ``{% include %}`` load their template on every render,
        through Jinja's template cache: a locked LRU whose ``deque.remove`` is linear in
        its size (7 lookups per email, 7 % of a render's samples, py-spy). With
        ``auto_reload`` off, a name loads the same template for the environment's life, so
        a plain dict in front answers the same. The first load, its errors (not found,
        refused paths) and loads with ``globals`` still go through Jinja.
        """
        if (
            isinstance(name, str)
            and not globals
            and not self.auto_reload
            and self.cache is not None
            and self.loader is self._loaded_by
        ):
            if parent is not None:
                name = self.join_path(name, parent)
            template = self._loaded.get(name)
            if template is None:
                template = super().get_template(name)
                if len(self._loaded) < MAX_LOADED:
                    self._loaded[name] = template
            return template
        return super().get_template(name, parent, globals)

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        """A template's globals as one plain dict over the environment's (``d`` first).

        Jinja returns a ``ChainMap``, which every context of every render copies and
        lists key by key in Python (about ten contexts per email: templates, includes,
        macros). The environment's globals are final once ``__init__`` has run (Jinja's
        own advice: never change them after a template is loaded), so the copy holds the
        same names and values, and writes to it stay with the template, as before.
        """
        return {**self.globals, **(d or {})}

    def getattr(self, obj: Any, attribute: str) -> Any:
        """``obj.attribute``: for a plain dict whose type has no such attribute, the item
        (or undefined), as Jinja's sandbox returns it after its ``getattr`` has raised
        AttributeError; the emails' context is dicts, and the raise costs a microsecond
        on each of some 60 lookups per email. Everything else goes to the sandbox."""
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)

    # -- steps and sizes at the points the generated code calls back -----------------

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _step()
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(owner, str | bytes):
            args = __self._check_str_method(owner, name, args, kwargs)
        current = _BUDGET.get()
        if current is not None:
            current.depth += 1
            try:
                if current.depth > __self.limits.max_depth:
                    raise RenderLimitError(
                        f"render limit: calls nested deeper than {__self.limits.max_depth} "
                        "(a macro calling itself?)"
                    )
                result = super().call(__context, __obj, *args, **kwargs)
            finally:
                current.depth -= 1
        else:
            result = super().call(__context, __obj, *args, **kwargs)
        return __self.sizes.checked(result, f"{name or 'call'}()")

    def _check_str_method(
        self, owner: str | bytes, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Any, ...]:
        """Refuse a ``str``/``bytes`` method call that would build too much; returns the
        arguments to call with (a lazy iterable to ``join`` is collected first, to count it)."""
        what = f"{type(owner).__name__}.{name}()"
        if name in _STR_METHODS_REFUSED:
            raise SecurityError(f"{what} is not allowed in templates")
        if name in _STR_METHODS_WITH_WIDTH:
            self.sizes.width(args[0] if args else kwargs.get("width"), what)
        elif name == "replace" and len(args) >= 2 and all(type(a) is type(owner) for a in args[:2]):
            self.sizes.refuse_if(len(owner) + owner.count(args[0]) * len(args[1]), what)
        elif name == "join" and args:
            items = args[0] if hasattr(args[0], "__len__") else list(args[0])
            self.sizes.refuse_if(
                weight(items, self.limits.max_value) + len(items) * len(owner), what
            )
            return (items, *args[1:])
        return args

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        template: str = value.__self__
        specs = _str_format_widths(template)
        sizes = self.sizes

        @wraps(wrapped)
        def checked(*args: Any, **kwargs: Any) -> str:
            values = (*args, *(v for a in args if isinstance(a, Mapping) for v in a.values()))
            sizes.format_spec(specs, (*values, *kwargs.values()), "str.format()")
            return str(sizes.checked(wrapped(*args, **kwargs), "str.format()"))

        return checked

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _step()
        what = f"the {operator!r} operator"
        if operator == "*":
            self._check_repeat(left, right, what)
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0:
                self.sizes_refuse_bits(max(left.bit_length(), 1) * right, what)
        elif operator == "%" and isinstance(left, str | bytes):
            text = left if isinstance(left, str) else left.decode("latin-1")
            self.sizes.format_spec(_percent_widths(text), _as_tuple(right), what)
        result = super().call_binop(context, operator, left, right)
        if isinstance(result, int) and not isinstance(result, bool):
            self.sizes_refuse_bits(result.bit_length(), what)
        return self.sizes.checked(result, what)

    def _check_repeat(self, left: Any, right: Any, what: str) -> None:
        for sequence, count in ((left, right), (right, left)):
            if isinstance(count, int) and not isinstance(count, bool):
                if isinstance(sequence, str | bytes | list | tuple):
                    self.sizes.refuse_if(weight(sequence, self.limits.max_value) * count, what)
                elif isinstance(sequence, int) and not isinstance(sequence, bool):
                    self.sizes_refuse_bits(sequence.bit_length() + count.bit_length(), what)

    def sizes_refuse_bits(self, bits: int, what: str) -> None:
        if bits > self.limits.max_int_bits:
            raise RenderLimitError(
                f"render limit: {what} would make a number over {self.limits.max_int_bits} bits"
            )

    def _finalize(self, value: Any) -> Any:
        """Every ``{{ … }}`` passes here: check its size before it is turned into text.
        Most values are text, whose weight is its length (no call to :func:`weight`), and
        fit: the refusal is called only for a value over the limit (some 50 values an
        email)."""
        max_value = self.limits.max_value
        size = len(value) if isinstance(value, str) else weight(value, max_value)
        if size > max_value:
            self.sizes.refuse_if(size, "an output value")
        current = _BUDGET.get()
        if current is not None:
            current.step(size)
        return value

    def finalize_escaped(self, value: Any) -> Any:
        """``escape(finalize(value))`` in one call: what every ``{{ … }}`` of an
        autoescaped template outputs (see :meth:`BudgetedCodeGenerator._output_child_pre`).
        A ``str`` comes back escaped as a ``str``: output pieces are only ever joined (a
        buffer is wrapped in ``Markup`` after joining), so the ``Markup`` that
        ``markupsafe.escape`` builds for each one in Python is not needed."""
        value = self._finalize(value)
        if type(value) is str:
            return _ESCAPE_TEXT(value)
        return markupsafe.escape(value)

    def _budgeted_filter(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """The filter with a step and size checks; as a context filter, never constant-folded
        at compile time (where a ``|center(10**9)`` would allocate before any render)."""
        passes = _PassArg.from_obj(function)
        sizes = self.sizes

        @pass_context
        @wraps(function)
        def budgeted(context: Context, value: Any, *args: Any, **kwargs: Any) -> Any:
            _step()
            if name == "join" and isinstance(value, Iterator):
                value = list(value)  # counted (a lazy filter's items) and then sized below
            _check_filter_arguments(sizes, name, value, args, kwargs)
            if passes is _PassArg.context:
                result = function(context, value, *args, **kwargs)
            elif passes is _PassArg.eval_context:
                result = function(context.eval_ctx, value, *args, **kwargs)
            elif passes is _PassArg.environment:
                result = function(context.environment, value, *args, **kwargs)
            else:
                result = function(value, *args, **kwargs)
            if isinstance(result, Iterator):  # map, select, …: lazy, sized when consumed
                return _counted(result, sizes, f"|{name}")
            return sizes.checked(result, f"|{name}")

        return budgeted

    @pass_context
    def _size_filter(self, context: Context, value: Any) -> Any:
        _step()
        return self.sizes.checked(value, "the '~' operator")

    def _lipsum(self, function: Callable[..., str]) -> Callable[..., str]:
        sizes = self.sizes

        @wraps(function)
        def lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
            sizes.refuse_if(abs(n) * abs(max) * 12, "lipsum()")
            return function(n, html, min, max)

        return lipsum


def _counted(items: Iterator[Any], sizes: _Sizes, what: str) -> Iterator[Any]:
    """A lazy filter result (``map``, ``select`` …): one step per item, and the items
    together held to the size limit, as ``|join`` or ``|list`` would keep them all."""
    total = 0
    for item in items:
        _step()
        total += weight(item, sizes.limits.max_value)
        sizes.refuse_if(total, what)
        yield item


STEP_FILTER = "\x00step"  # not a name a template can write: only generated code uses it
SIZE_FILTER = "\x00size"


@pass_context
def _step_filter(context: Context, output: int) -> str:
    _step(output)
    return ""


def _literal_size(body: Iterable[nodes.Node]) -> int:
    """Characters of template text a body outputs itself (nested loops, macros and
    blocks count their own when they run)."""
    total = 0
    for node in body:
        if isinstance(node, nodes.TemplateData):
            total += len(node.data)
        elif not isinstance(
            node, nodes.For | nodes.Macro | nodes.CallBlock | nodes.Block | nodes.FilterBlock
        ):
            total += _literal_size(node.iter_child_nodes())
    return total


class _Instrument(NodeTransformer):
    """Adds a step at the start of every body that may run many times (loop iterations,
    macro and call-block bodies, blocks, included templates) and a size check on ``~``."""

    def _with_step(self, body: list[nodes.Node], lineno: int) -> list[nodes.Node]:
        size = nodes.Const(_literal_size(body), lineno=lineno)
        call = nodes.Filter(size, STEP_FILTER, [], [], None, None, lineno=lineno)
        return [nodes.ExprStmt(call, lineno=lineno), *body]

    def generic_visit(self, node: nodes.Node, *args: Any, **kwargs: Any) -> nodes.Node:
        node = super().generic_visit(node, *args, **kwargs)
        if isinstance(
            node, nodes.For | nodes.Macro | nodes.CallBlock | nodes.Block | nodes.FilterBlock
        ):
            node.body = self._with_step(node.body, node.lineno)
        if isinstance(node, nodes.For) and node.test is not None:
            # ``for x in xs if test``: items the test rejects are steps too.
            step = nodes.Filter(nodes.Const(0), STEP_FILTER, [], [], None, None)
            node.test = nodes.Or(step, node.test, lineno=node.lineno)
        return node

    def visit_Template(self, node: nodes.Template) -> nodes.Node:
        visited = self.generic_visit(node)
        assert isinstance(visited, nodes.Template)
        visited.body = self._with_step(visited.body, 1)
        return visited

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        visited = self.generic_visit(node)
        return nodes.Filter(visited, SIZE_FILTER, [], [], None, None, lineno=node.lineno)


class BudgetedCodeGenerator(CodeGenerator):
    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        instrumented = _Instrument().visit(node)
        assert isinstance(instrumented, nodes.Template)
        super().visit_Template(instrumented, frame)

    def _escaped_output(self, frame: Frame, finalize: CodeGenerator._FinalizeInfo) -> bool:
        """An autoescaped ``{{ … }}`` of this module's sandbox: written as one call of
        ``environment.finalize_escaped`` instead of ``escape(environment.finalize(…))``."""
        return (
            isinstance(self.environment, BudgetedSandbox)
            and not frame.eval_ctx.volatile
            and bool(frame.eval_ctx.autoescape)
            and finalize.src == "environment.finalize("
        )

    def _output_child_pre(
        self, node: nodes.Expr, frame: Frame, finalize: CodeGenerator._FinalizeInfo
    ) -> None:
        if self._escaped_output(frame, finalize):
            self.write("environment.finalize_escaped(")
        else:
            super()._output_child_pre(node, frame, finalize)

    def _output_child_post(
        self, node: nodes.Expr, frame: Frame, finalize: CodeGenerator._FinalizeInfo
    ) -> None:
        if self._escaped_output(frame, finalize):
            self.write(")")
        else:
            super()._output_child_post(node, frame, finalize)


# Elements that never hold others, and those whose end tag the HTML parser supplies when
# the next sibling starts (``<p><p>`` are siblings): neither adds nesting.
_VOID_ELEMENTS = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param"}
    | {"source", "track", "wbr"}
)
_IMPLIED_END = frozenset(
    {"p", "li", "dt", "dd", "tr", "td", "th", "option", "optgroup", "thead", "tbody"}
    | {"tfoot", "colgroup", "caption", "rb", "rt", "rtc", "rp", "html", "head", "body"}
)


class _Nesting(HTMLParser):
    def __init__(self, limit: int) -> None:
        super().__init__(convert_charrefs=False)
        self.limit = limit
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID_ELEMENTS or tag in _IMPLIED_END:
            return
        self.open.append(tag)
        if len(self.open) > self.limit:
            raise RenderLimitError(f"render limit: HTML elements nested deeper than {self.limit}")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        return

    def handle_endtag(self, tag: str) -> None:
        if tag in self.open:
            while self.open.pop() != tag:
                pass


def check_html_nesting(html: str, limit: int) -> None:
    """Refuse HTML nested deeper than ``limit`` elements (raises RenderLimitError).

    css-inline (0.24) parses and serialises recursively: some 15,000 nested ``<div>``
    (75 kB, well inside the other limits) overflow the native stack of a worker thread
    and kill the process. Nesting is at most the number of ``<``, so ordinary emails
    (a few hundred tags) are let through without parsing.
    """
    if html.count("<") <= limit:
        return
    parser = _Nesting(limit)
    parser.feed(html)
    parser.close()


class SafeFileSystemLoader(BaseLoader):
    """Loads ``name`` from regular files under ``root`` only.

    Refused with :class:`UnsafeTemplatePath` (a security error, never "not found", so a
    locale variant that is a symlink is reported rather than silently skipped): ``..`` or
    absolute names, a symlink anywhere between ``root`` and the file, a path that resolves
    outside ``root``, anything that is not a regular file (``/proc`` files, FIFOs, devices)
    and files over the size limit. The file is opened with ``O_NOFOLLOW`` and checked with
    ``fstat`` on the open descriptor, so it cannot be swapped for a symlink in between.
    """

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root).resolve()
        self.max_bytes = max_bytes

    def path_of(self, name: str) -> Path:
        """The file a template name refers to; raises UnsafeTemplatePath or TemplateNotFound."""
        parts = [part for part in name.replace("\\", "/").split("/") if part not in ("", ".")]
        if name.startswith(("/", "\\")) or ".." in parts or not parts:
            raise UnsafeTemplatePath(f"template {name!r} is outside the templates directory")
        path = self.root
        for part in parts:
            path = path / part
            if path.is_symlink():
                raise UnsafeTemplatePath(
                    f"template {name!r}: {path} is a symbolic link; templates must be "
                    "regular files inside the templates directory"
                )
        if not path.exists():
            raise TemplateNotFound(name)
        root = self.root.resolve()
        if not path.resolve().is_relative_to(root):
            raise UnsafeTemplatePath(f"template {name!r} resolves outside {root}")
        return path

    def get_source(
        self, environment: Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        path = self.path_of(template)
        try:
            fd = os.open(
                path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
            )
        except OSError as exc:
            raise UnsafeTemplatePath(
                f"template {template!r} cannot be opened: {exc.strerror}"
            ) from None
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise UnsafeTemplatePath(f"template {template!r} is not a regular file")
            if info.st_size > self.max_bytes:
                raise UnsafeTemplatePath(
                    f"template {template!r} is {info.st_size} bytes, over {self.max_bytes}"
                )
            data = handle.read(self.max_bytes + 1)
        source = data.decode("utf-8")
        mtime = info.st_mtime_ns

        def uptodate() -> bool:
            try:
                return os.stat(path, follow_symlinks=False).st_mtime_ns == mtime
            except OSError:
                return False

        return source, str(path), uptodate

    def list_templates(self) -> list[str]:
        found = []
        for directory, _, files in os.walk(self.root):
            for file in files:
                found.append(
                    str((Path(directory) / file).relative_to(self.root)).replace(os.sep, "/")
                )
        return sorted(found)
