"""YAML 1.2 text to round-trip data with positions, within limits (size, expanded
aliases, depth).

ruamel.yaml's round-trip loader keeps the position of every key and value, so an error
found by pydantic or by the field catalogue can point at the exact line a marketer typed.
Takes text: reading files is the shell's job (``worker.decide.rule_files``).
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.composer import Composer, MaxDepthExceededError
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.nodes import MappingNode, Node, SequenceNode
from ruamel.yaml.reader import ReaderError

from triggers.lint_issues import LintIssue

# A file's contents as the core takes them: (name, text). The name (a path, for the shell)
# is the file every issue names; the text is the file decoded as UTF-8.
Source = tuple[str, str]

# Limits on a YAML file (campaigns, segments, attributes, complements), so that a file
# written by mistake or by an attacker cannot exhaust memory or the stack: the size is
# checked before a file is read (by the shell, ``worker.decide.rule_files.read_limited``) and on
# the text here, the node graph after it is composed and before it is turned into data.
# An alias (``*name``) costs nothing in the file but is copied wherever it is used: a few
# hundred bytes of nested aliases ("billion laughs") expand to billions of nodes, so what
# is limited is the number of nodes once every alias is expanded.
MAX_YAML_BYTES = 256 * 1024
MAX_YAML_NODES = 100_000
MAX_YAML_DEPTH = 64


def _yaml() -> YAML:
    # ruamel reads YAML 1.2 by default: on, no and 22:00 stay text (tests pin it).
    reader = YAML(typ="rt")
    reader.allow_duplicate_keys = False
    reader.Composer = _CheckedComposer
    reader.max_depth = MAX_YAML_DEPTH  # checked while composing: deeper nesting is refused
    return reader


def plain_data(node: Any) -> Any:
    """Round-trip nodes to plain Python data; floats become exact decimals."""
    if isinstance(node, CommentedMap):
        return {str(key): plain_data(value) for key, value in node.items()}
    if isinstance(node, CommentedSeq):
        return [plain_data(item) for item in node]
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return Decimal(repr(float(node)))
    if isinstance(node, str):
        return str(node)
    return node


def too_large_issue(filename: str, size: int) -> LintIssue:
    """The issue for a file or text of ``size`` bytes, over ``MAX_YAML_BYTES``."""
    message = (
        f"the file is {size:,} bytes; a YAML file may have at most {MAX_YAML_BYTES:,} bytes"
        " (256 KiB): split it"
    )
    return LintIssue(filename, 1, 1, "yaml-too-large", "", message)


def _crowded_line(text: str, filename: str) -> LintIssue | None:
    """A line with more than ``MAX_YAML_DEPTH`` ``[`` and ``{``, quoted or not.

    Checked before parsing because ruamel's scanner slows down quadratically with the
    brackets open on one line (each may start a key, and every one is re-examined at each
    token): thousands of ``[`` on a line take seconds to reach the depth limit.
    """
    for number, line in enumerate(text.splitlines(), 1):
        if line.count("[") + line.count("{") > MAX_YAML_DEPTH:
            opened = 0
            for col, char in enumerate(line, 1):
                opened += char in "[{"
                if opened > MAX_YAML_DEPTH:
                    message = f"a line may open at most {MAX_YAML_DEPTH} brackets ([ or {{)"
                    return LintIssue(filename, number, col, "yaml-too-deep", "", message)
    return None


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):  # merge keys (<<: *a) are pairs like any other
        return [part for pair in node.value for part in pair]
    return []


def graph_issue(root: Node, filename: str) -> LintIssue | None:
    """Check a composed YAML node graph before it is constructed: at most
    ``MAX_YAML_NODES`` values with every alias expanded, and no alias inside the node it
    names (depth is limited by the composer itself: ``YAML.max_depth``). Iterative and
    memoised on node identity, so a bomb is measured in time proportional to its file,
    not its expansion.

    Points at the smallest node whose expansion alone is over the limit (in a billion
    laughs, the anchor of the line that multiplies once too often): ``yaml-aliases`` when
    aliases got it there, ``yaml-too-large`` when it is that big as written.
    """
    expanded: dict[int, int] = {}
    reused = 0  # nodes reached again through an alias, so far
    reused_before: dict[int, int] = {}  # per open node: ``reused`` when it was opened
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            size = 1 + sum(expanded[id(child)] for child in _children(node))
            expanded[key] = size
            through_aliases = reused > reused_before.pop(key)
            if size > MAX_YAML_NODES:
                return _over_limit(node, filename, through_aliases)
            continue
        if key in expanded:
            reused += 1  # an alias of a node already measured
            continue
        if key in reused_before:  # still open: the alias is inside the node it names
            message = "an alias is used inside the node it names (a loop)"
            return _issue_at(node, filename, "yaml-aliases", message)
        reused_before[key] = reused
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node))
    return None


def _over_limit(node: Node, filename: str, through_aliases: bool) -> LintIssue:
    anchor = getattr(node, "anchor", None)
    what = f"&{anchor}" if anchor else "this value"
    if through_aliases:
        message = (
            f"with its aliases expanded, {what} holds more than {MAX_YAML_NODES:,} values;"
            " write the values out instead of repeating aliases"
        )
        return _issue_at(node, filename, "yaml-aliases", message)
    message = f"{what} holds more than {MAX_YAML_NODES:,} values: split the file"
    return _issue_at(node, filename, "yaml-too-large", message)


def _issue_at(node: Node, filename: str, code: str, message: str) -> LintIssue:
    mark = node.start_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    return LintIssue(filename, line, col, code, "", message)


class _OverLimit(Exception):
    """Raised by :class:`_CheckedComposer` for a document over the limits."""

    def __init__(self, issue: LintIssue) -> None:
        super().__init__(str(issue))
        self.issue = issue


class _CheckedComposer(Composer):
    """ruamel's composer, checking each composed document with :func:`graph_issue` before
    the constructor turns it into data (where aliases become shared or copied objects)."""

    def compose_document(self) -> Any:
        node = super().compose_document()
        issue = graph_issue(node, "")
        if issue is not None:
            raise _OverLimit(issue)
        return node


def syntax_message(exc: MarkedYAMLError) -> str:
    """ruamel's whole message: the context (``while parsing a flow mapping``, ``expected a
    single document in the stream``) with where it started, then the problem (``but found
    another document``); either alone when the other is missing."""
    context, problem = (exc.context or "").strip(), (exc.problem or "").strip()
    if not context or not problem:
        return context or problem or "invalid YAML"
    mark, at = exc.context_mark, exc.problem_mark
    if mark is not None and (at is None or (mark.line, mark.column) != (at.line, at.column)):
        context += f" (line {mark.line + 1}, column {mark.column + 1})"
    return f"{context}{',' if problem.startswith('but ') else ':'} {problem}"


def read_yaml(text: str, filename: str, what: str) -> tuple[Any, list[LintIssue]]:
    """Parse YAML 1.2 keeping positions; a syntax error, a duplicate key or a file over
    the limits above (size, expanded aliases, depth) is an issue, never an exception."""
    size = len(text.encode("utf-8"))
    if size > MAX_YAML_BYTES:
        return None, [too_large_issue(filename, size)]
    crowded = _crowded_line(text, filename)
    if crowded is not None:
        return None, [crowded]
    try:
        document = _yaml().load(text)
    except _OverLimit as exc:
        return None, [replace(exc.issue, file=filename)]
    except MaxDepthExceededError as exc:
        mark = exc.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = f"nested more than {MAX_YAML_DEPTH} levels deep"
        return None, [LintIssue(filename, line, col, "yaml-too-deep", "", message)]
    except DuplicateKeyError as exc:
        mark = exc.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        key = (exc.problem or "").split('"')[1] if '"' in (exc.problem or "") else ""
        message = f"duplicate key {key!r}" if key else "duplicate key"
        return None, [LintIssue(filename, line, col, "duplicate-key", "", message)]
    except ReaderError as exc:
        # A character YAML forbids (C0 controls but tab and line ends, DEL, C1, U+FFFE):
        # ruamel gives its offset in the text, not a mark.
        offset = max(0, min(int(exc.position), len(text)))
        line = text.count("\n", 0, offset) + 1
        col = offset - (text.rfind("\n", 0, offset) + 1) + 1
        code = (
            exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "?")
        )
        message = f"YAML syntax: the character U+{code:04X} is not allowed in YAML (YAML 1.2, 5.1)"
        return None, [LintIssue(filename, line, col, "yaml-syntax", "", message)]
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = f"YAML syntax: {syntax_message(exc)}"
        if "'\\t'" in message:
            message = "YAML syntax: a tab cannot indent YAML; indent with spaces"
        return None, [LintIssue(filename, line, col, "yaml-syntax", "", message)]
    if not isinstance(document, CommentedMap):
        message = f"{what} is one mapping (key: value lines)"
        first = next(
            (
                n
                for n, line in enumerate(text.splitlines(), 1)
                if line.strip() and not line.lstrip().startswith("#")
            ),
            1,
        )
        return None, [LintIssue(filename, first, 1, "not-a-mapping", "", message)]
    return document, []
