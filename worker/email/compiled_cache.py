"""Compiled templates and parse trees shared by every renderer of the process.

Each rule-set load builds a new :class:`~worker.email.rendering.Renderer` (the lint
renders every template of every campaign for every locale), and a renderer compiles each
template it loads: Jinja's lexer, parser, code generator and Python's ``compile``, 10-30
ms a template, 47 % of a rule-set load's CPU in a cProfile of the test suite's set-up
(docs/testing.md, "Compiled templates shared"). A hot reload that changed one campaign
file compiled every unchanged template again.

This is Jinja's own mechanism for that (``jinja2.BytecodeCache``, "Bytecode Cache" in
Jinja's API documentation), kept in memory: a bucket is found by the template's name and
file, and Jinja uses its code only when the checksum of the source it was compiled from
matches the source just read, so an edited file is compiled again and never served stale.
The code depends on the environment's options too (autoescape, trim_blocks, the
sandbox's code generator): only renderers built with the same options may share one
cache, which :class:`~worker.email.rendering.Renderer` does (its options are fixed).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from jinja2 import Environment, TemplateSyntaxError, nodes
from jinja2.bccache import Bucket, BytecodeCache

MAX_TEMPLATES = 2048
"""Compiled templates kept (least recently used dropped first). Jinja finds a template's
bucket by its name and file, so an edited file replaces its entry: the count is that of
distinct template files, and this is a bound for a process serving several template
directories, never a limit on correctness."""

MAX_TREES = 512
"""Parse trees kept by :func:`parsed`, least recently used dropped first. These are found
by source, so each edit adds one (and the lint keeps up to two a file); the shipped rule
set uses 111. The shipped templates' trees take about 8 kB each (tracemalloc), so this
holds a few MB at most however long a worker reloads edited templates."""


class SharedBytecodeCache(BytecodeCache):
    """Marshalled template code in memory, at most ``capacity`` templates; thread-safe
    (Celery's thread pool renders with several renderers at once)."""

    def __init__(self, capacity: int = MAX_TEMPLATES) -> None:
        self.capacity = capacity
        self._code: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def load_bytecode(self, bucket: Bucket) -> None:
        with self._lock:
            data = self._code.get(bucket.key)
            if data is not None:
                self._code.move_to_end(bucket.key)
        if data is not None:
            bucket.bytecode_from_string(data)  # rejected (left empty) on a checksum change

    def dump_bytecode(self, bucket: Bucket) -> None:
        data = bucket.bytecode_to_string()
        with self._lock:
            self._code[bucket.key] = data
            self._code.move_to_end(bucket.key)
            while len(self._code) > self.capacity:
                self._code.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._code.clear()

    def __len__(self) -> int:
        return len(self._code)


_TREES: OrderedDict[tuple[object, ...], nodes.Template | TemplateSyntaxError] = OrderedDict()
_TREES_LOCK = threading.Lock()


def _syntax(environment: Environment) -> tuple[object, ...]:
    """The environment options a parse depends on (those Jinja's own lexer cache keys)."""
    return (
        type(environment),
        environment.block_start_string,
        environment.block_end_string,
        environment.variable_start_string,
        environment.variable_end_string,
        environment.comment_start_string,
        environment.comment_end_string,
        environment.line_statement_prefix,
        environment.line_comment_prefix,
        environment.trim_blocks,
        environment.lstrip_blocks,
        environment.newline_sequence,
        environment.keep_trailing_newline,
        tuple(sorted(environment.extensions)),
    )


def parsed(
    environment: Environment, source: str, name: str | None = None, filename: str | None = None
) -> nodes.Template:
    """``environment.parse(source, name, filename)``, parsed once per process for the same
    source and options: the lint parses every template file on every rule-set load (a
    third of a load's CPU once compiling was shared). The tree is shared: read it, never
    change it. Raises ``TemplateSyntaxError`` as ``parse`` does (a fresh copy each time)."""
    key = (_syntax(environment), source, name, filename)
    with _TREES_LOCK:
        tree = _TREES.get(key)
        if tree is not None:
            _TREES.move_to_end(key)
    if tree is None:
        try:
            tree = environment.parse(source, name, filename)
        except TemplateSyntaxError as exc:
            tree = exc
        with _TREES_LOCK:
            _TREES[key] = tree
            while len(_TREES) > MAX_TREES:
                _TREES.popitem(last=False)
    if isinstance(tree, TemplateSyntaxError):
        raise TemplateSyntaxError(tree.message or "", tree.lineno, tree.name, tree.filename)
    return tree
