"""Read campaign files as YAML 1.2 and report every problem as ``file:line:col``.

ruamel.yaml's round-trip loader keeps the position of every key and value, so an error
found by pydantic or by the field catalogue can point at the exact line a marketer typed.
"""

from __future__ import annotations

import io
import multiprocessing
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import InitVar, dataclass, field, replace
from decimal import Decimal
from functools import cache
from itertools import repeat
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.composer import Composer, MaxDepthExceededError
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.nodes import MappingNode, Node, SequenceNode

from triggers.campaigns import Campaign, Experiment, Variant
from triggers.conditions import (
    Condition,
    Facts,
    Predicate,
    Problem,
    check_condition,
    compile_condition,
    compile_stages,
    did_you_mean,
)
from triggers.experiments import Assigner
from triggers.fields import FieldType, fields_for
from triggers.outcomes import Decision
from triggers.prefilter import Prefilter, build_prefilter, split_guard
from triggers.schedule import DailyWindow, campaign_window, send_windows
from triggers.sequences import CompiledSequence, compile_sequence, sequence_problems

Level = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class LintIssue:
    """One finding, printed ``file:line:col: error[code] path: message``.

    An ``error`` makes the rule set unusable; a ``warning`` (an email that works but reads
    badly for some customers) is reported and the rule set is used all the same.
    """

    file: str
    line: int
    col: int
    code: str
    path: str
    message: str
    level: Level = "error"

    def __str__(self) -> str:
        where = f" {self.path}:" if self.path else ""
        return (
            f"{self.file}:{self.line}:{self.col}: {self.level}[{self.code}]{where} {self.message}"
        )


class RuleSetError(Exception):
    """A rule set that cannot be used; carries every issue found (errors and warnings),
    in file order."""

    def __init__(self, issues: Sequence[LintIssue]) -> None:
        super().__init__("\n".join(str(issue) for issue in issues))
        self.issues = tuple(issues)

    @property
    def errors(self) -> tuple[LintIssue, ...]:
        return tuple(issue for issue in self.issues if issue.level == "error")


Check = Callable[[Facts], Decision | None]


@dataclass(frozen=True, slots=True)
class CompiledCampaign:
    """A campaign ready for the engine: predicates compiled, fixed outcomes made once.

    ``segments`` (given by ``compile_campaign``) lets ``check`` be generated from the
    campaign's trees; without it ``check`` calls ``where`` and ``audience``.
    """

    campaign: Campaign
    source: str
    where: Predicate
    audience: Predicate
    segments: InitVar[Mapping[str, Condition] | None] = None
    # A sequence's steps and exits (``triggers.sequences``); None for a one-email campaign.
    sequence: CompiledSequence | None = None
    id: str = field(init=False)
    miss_trigger: Decision = field(init=False, repr=False, compare=False)
    miss_audience: Decision = field(init=False, repr=False, compare=False)
    check: Check = field(init=False, repr=False, compare=False)
    window: DailyWindow | None = field(init=False, repr=False, compare=False)
    assign: Assigner = field(init=False, repr=False, compare=False)
    _send_windows: dict[DailyWindow | None, tuple[DailyWindow, ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self, segments: Mapping[str, Condition] | None) -> None:
        object.__setattr__(self, "id", self.campaign.id)
        object.__setattr__(self, "window", campaign_window(self.campaign.schedule))
        object.__setattr__(self, "assign", Assigner(self.campaign.experiment, self.campaign.id))
        object.__setattr__(self, "_send_windows", {})
        object.__setattr__(
            self, "miss_trigger", Decision(self.campaign.id, "not_matched", "trigger_conditions")
        )
        object.__setattr__(
            self, "miss_audience", Decision(self.campaign.id, "not_matched", "audience")
        )
        object.__setattr__(self, "check", self._check(segments))

    def _check(self, segments: Mapping[str, Condition] | None) -> Check:
        """For a prefilter candidate: None if the campaign matches, else its miss outcome.

        Generated as one function, and without the leaf the prefilter filed the campaign
        under: being a candidate already proves it (``split_guard``). Not for other uses.
        """
        if segments is None:
            where, audience = self.where, self.audience
            trigger_miss, audience_miss = self.miss_trigger, self.miss_audience

            def check(facts: Facts) -> Decision | None:
                if not where(facts):
                    return trigger_miss
                return None if audience(facts) else audience_miss

            return check
        _, rest = split_guard(self.campaign.trigger.where)
        stages = [(rest, self.miss_trigger), (self.campaign.audience, self.miss_audience)]
        return compile_stages(stages, segments)

    def send_windows(self, quiet: DailyWindow | None) -> tuple[DailyWindow, ...]:
        """This campaign's window and the quiet hours, combined once per quiet setting:
        they do not change between decisions, and combining them per send was slow."""
        found = self._send_windows.get(quiet)
        if found is None:
            found = self._send_windows[quiet] = send_windows(self.window, quiet)
        return found


@dataclass(frozen=True)
class RuleSet:
    """An immutable, fully validated set of campaigns; swapped whole on reload.

    Lookups the engine needs on every event are prepared once, here.
    """

    campaigns: tuple[CompiledCampaign, ...]
    segments: Mapping[str, Condition] = field(default_factory=dict)
    warnings: tuple[LintIssue, ...] = ()
    _by_id: dict[str, CompiledCampaign] = field(init=False, repr=False, compare=False)
    _active: dict[str, tuple[CompiledCampaign, ...]] = field(init=False, repr=False, compare=False)
    _prefilters: dict[str, Prefilter] = field(init=False, repr=False, compare=False)
    _misses: dict[str, tuple[Decision, ...]] = field(init=False, repr=False, compare=False)
    _ranks: dict[str, tuple[int, ...]] = field(init=False, repr=False, compare=False)
    _checks: dict[str, tuple[Check, ...]] = field(init=False, repr=False, compare=False)
    _stepped: frozenset[str] = field(init=False, repr=False, compare=False)
    _has_steps: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        active: dict[str, list[CompiledCampaign]] = {}
        for compiled in self.campaigns:
            if compiled.campaign.status == "active":
                active.setdefault(compiled.campaign.trigger.event, []).append(compiled)
        object.__setattr__(self, "_by_id", {c.id: c for c in self.campaigns})
        object.__setattr__(self, "_has_steps", any(c.sequence is not None for c in self.campaigns))
        object.__setattr__(
            self,
            "_stepped",
            frozenset(
                event_type
                for event_type, compiled in active.items()
                if any(c.sequence is not None for c in compiled)
            ),
        )
        object.__setattr__(self, "_active", {k: tuple(v) for k, v in active.items()})
        object.__setattr__(
            self,
            "_prefilters",
            {
                event_type: build_prefilter(c.campaign.trigger.where for c in compiled)
                for event_type, compiled in active.items()
            },
        )
        object.__setattr__(
            self,
            "_misses",
            {
                event_type: tuple(c.miss_trigger for c in compiled)
                for event_type, compiled in active.items()
            },
        )
        object.__setattr__(
            self,
            "_ranks",
            {event_type: _ranks(compiled) for event_type, compiled in active.items()},
        )
        object.__setattr__(
            self,
            "_checks",
            {
                event_type: tuple(c.check for c in compiled)
                for event_type, compiled in active.items()
            },
        )

    def by_id(self, campaign_id: str) -> CompiledCampaign | None:
        return self._by_id.get(campaign_id)

    def has_sequences(self, event_type: str) -> bool:
        """Whether an active campaign with steps is triggered by ``event_type``."""
        return event_type in self._stepped

    @property
    def has_steps(self) -> bool:
        """Whether any campaign of the set (whatever its status) is a sequence."""
        return self._has_steps

    def sequences(self) -> dict[str, CompiledSequence]:
        """Every campaign with steps (whatever its status), by id."""
        return {c.id: c.sequence for c in self.campaigns if c.sequence is not None}

    def active_for(self, event_type: str) -> tuple[CompiledCampaign, ...]:
        return self._active.get(event_type, ())

    def candidates(self, event_type: str, facts: Mapping[str, object]) -> Sequence[int]:
        """Positions in ``active_for(event_type)`` of campaigns whose trigger could match,
        ascending."""
        prefilter = self._prefilters.get(event_type)
        return prefilter.positions(facts) if prefilter else ()

    def misses(self, event_type: str) -> tuple[Decision, ...]:
        """ "Trigger did not match" for every active campaign, in ``active_for`` order."""
        return self._misses.get(event_type, ())

    def checks(self, event_type: str) -> tuple[Check, ...]:
        """Each active campaign's ``check``, in ``active_for`` order."""
        return self._checks.get(event_type, ())

    def ranks(self, event_type: str) -> tuple[int, ...]:
        """Each active campaign's place in the priority order, in ``active_for`` order."""
        return self._ranks.get(event_type, ())


def _ranks(campaigns: Sequence[CompiledCampaign]) -> tuple[int, ...]:
    """0 for the campaign that wins a tie-free contest: highest priority, then lowest id,
    then (for equal ids) file order. Sorting matched campaigns by rank once at load
    replaces building a sort key per matched campaign per event."""
    order = sorted(
        range(len(campaigns)),
        key=lambda position: (
            -campaigns[position].campaign.priority,
            campaigns[position].id,
            position,
        ),
    )
    ranks = [0] * len(campaigns)
    for rank, position in enumerate(order):
        ranks[position] = rank
    return tuple(ranks)


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


def locate(document: Any, path: Sequence[str | int], at_key: bool = False) -> tuple[int, int]:
    """1-based line and column of the deepest node of ``path`` present in the document.

    Points at the value of the last key, or at the key itself when ``at_key`` is set.
    Steps that are not in the document (pydantic's union tags such as ``complementary``
    or ``Leaf``) are skipped when the step after them is there.
    """
    line, col = 0, 0
    if isinstance(document, CommentedMap) and document:
        line, col = document.lc.key(next(iter(document)))
    node = document
    for index, step in enumerate(path):
        last = index == len(path) - 1
        if isinstance(node, CommentedMap):
            if step not in node:
                following = path[index + 1] if not last else None
                if following is not None and following in node:
                    continue
                if step in _union_tags():
                    continue
                return line + 1, col + 1
            line, col = node.lc.key(step)
            value = node[step]
            scalar = not isinstance(value, CommentedMap | CommentedSeq)
            # A list written inline is itself the wrong value: point at it.
            inline = (
                last
                and isinstance(value, CommentedSeq)
                and (not value or bool(value.fa.flow_style()))
            )
            if (scalar or inline) and not (at_key and last):
                line, col = node.lc.value(step)
            node = value
        elif isinstance(node, CommentedSeq) and isinstance(step, int) and step < len(node):
            line, col = node.lc.item(step)
            node = node[step]
        elif isinstance(step, str) and step in _union_tags():
            continue
        else:
            break
    return line + 1, col + 1


def _without_tags(document: Any, path: Sequence[str | int]) -> list[str | int]:
    """Drop pydantic's union tags (``complementary``, ``Leaf``…) that are not document keys."""
    kept: list[str | int] = []
    node = document
    for index, step in enumerate(path):
        following = path[index + 1] if index + 1 < len(path) else None
        if isinstance(node, CommentedMap) and step not in node:
            if step in _union_tags() or (following is not None and following in node):
                continue
            kept.append(step)
            node = None
        elif isinstance(node, CommentedMap) or (
            isinstance(node, CommentedSeq) and isinstance(step, int) and step < len(node)
        ):
            kept.append(step)
            node = node[step]
        elif isinstance(step, str) and step in _union_tags():
            continue
        else:
            kept.append(step)
            node = None
    return kept


def _dotted(path: Sequence[str | int]) -> str:
    text = ""
    for step in path:
        if isinstance(step, int):
            text += f"[{step}]"
        elif step not in _union_tags():
            text += f".{step}" if text else step
    return text


def _known_keys(model: type[BaseModel], seen: set[type[BaseModel]] | None = None) -> set[str]:
    """Every key any campaign mapping may hold, for "did you mean" on unknown keys."""
    seen = seen if seen is not None else set()
    if model in seen:
        return set()
    seen.add(model)
    keys: set[str] = set()
    for name, info in model.model_fields.items():
        keys.add(info.alias or name)
        for candidate in _models_in(info.annotation):
            keys |= _known_keys(candidate, seen)
    return keys


def _models_in(annotation: Any) -> Iterable[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for argument in getattr(annotation, "__args__", ()) or ():
        yield from _models_in(argument)
    for extra in getattr(annotation, "__metadata__", ()) or ():
        yield from _models_in(extra)
    origin = getattr(annotation, "__origin__", None)
    if origin is not None and origin is not annotation:
        yield from _models_in(origin)


def _tag_of(model: type[BaseModel]) -> str:
    """The name pydantic puts in error locations for a union member."""
    field = model.model_fields.get("type")
    if field is not None and get_args(field.annotation):
        return str(get_args(field.annotation)[0])
    return model.__name__


@cache
def _union_tags() -> frozenset[str]:
    """Names pydantic inserts into error locations that are not keys of the document."""
    offers = _models_in(Campaign.model_fields["offer"].annotation)
    return frozenset({"AllOf", "AnyOf", "NotOf", "SegmentRef", "Leaf"}) | {
        _tag_of(model) for model in offers
    }


def _keys(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _models_at(path: Sequence[str | int]) -> tuple[list[type[BaseModel]], list[type[BaseModel]]]:
    """The models a mapping at ``path`` may be, and its union siblings (for hints)."""
    models: list[type[BaseModel]] = [Campaign]
    siblings: list[type[BaseModel]] = []
    for step in path:
        if isinstance(step, int):
            continue
        tagged = [model for model in models if _tag_of(model) == step]
        if tagged:
            siblings, models = models, tagged
            continue
        following: list[type[BaseModel]] = []
        for model in models:
            for name, info in model.model_fields.items():
                if (info.alias or name) == step:
                    following += _models_in(info.annotation)
        models, siblings = list(dict.fromkeys(following)), []
    return models, siblings


def _unknown_key_message(loc: Sequence[str | int]) -> str:
    key = str(loc[-1])
    models, siblings = _models_at(loc[:-1])
    allowed = sorted({k for model in models for k in _keys(model)})
    owners = [_tag_of(m) for m in siblings if key in _keys(m) and m not in models]
    if owners:
        return f"unknown key {key!r} here: it belongs to {' and '.join(owners)} offers"
    hint = did_you_mean(key, allowed)
    listing = "" if hint or not allowed else f" (keys here: {', '.join(allowed)})"
    return f"unknown key {key!r}{hint}{listing}"


_CODES = {
    "extra_forbidden": "unknown-key",
    "missing": "missing-key",
    "bad-duration": "bad-duration",
    "bad-time": "bad-time",
}


def _message(item: Any, loc: tuple[str | int, ...], code: str) -> tuple[str, tuple[str | int, ...]]:
    """A marketer's wording for a pydantic error, and the location to point at."""
    kind = item["type"]
    message = str(item["msg"]).removeprefix("Value error, ")
    if code == "unknown-key" and loc and isinstance(loc[-1], str):
        return _unknown_key_message(loc), loc
    if code == "missing-key" and loc:
        return f"missing required key {loc[-1]!r}", loc
    if kind == "bool_type":
        return "write true or false (YAML 1.2 reads yes, no, on and off as text)", loc
    if kind == "union_tag_invalid":
        context = item.get("ctx") or {}
        tag, expected = str(context.get("tag", "")), str(context.get("expected_tags", ""))
        choices = [choice.strip(" '") for choice in expected.split(",")]
        listing = ", ".join(repr(choice) for choice in choices)
        return f"unknown type {tag!r}{did_you_mean(tag, choices)} (one of {listing})", (
            *loc,
            "type",
        )
    if kind == "literal_error":
        choices = _literal_choices(item)
        written = item.get("input")
        hint = did_you_mean(str(written), choices)
        listing = ", ".join(repr(choice) for choice in choices)
        return f"{written!r} is not allowed{hint} (one of {listing})", loc
    return message, loc


def _literal_choices(item: Any) -> list[str]:
    expected = str((item.get("ctx") or {}).get("expected", ""))
    return [part.strip(" '") for part in expected.replace(" or ", ",").split(",") if part.strip()]


def pydantic_issues(filename: str, document: Any, error: ValidationError) -> list[LintIssue]:
    issues = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        code = _CODES.get(item["type"], "bad-value")
        message, loc = _message(item, loc, code)
        if "bad duration" in message or "write a duration" in message:
            code = "bad-duration"
        elif "bad time" in message or "time of day" in message:
            code = "bad-time"
        clean = _without_tags(document, loc)
        line, col = locate(document, clean, at_key=code == "unknown-key")
        issues.append(LintIssue(filename, line, col, code, _dotted(clean), message))
    return sorted(issues, key=lambda issue: (issue.line, issue.col))


def problem_issue(filename: str, document: Any, problem: Problem) -> LintIssue:
    line, col = locate(document, problem.path)
    return LintIssue(filename, line, col, problem.code, _dotted(problem.path), problem.message)


# Limits on a YAML file (campaigns, segments, attributes, complements), so that a file
# written by mistake or by an attacker cannot exhaust memory or the stack: the file's size
# is checked before it is read, the node graph after it is composed and before it is
# turned into data. An alias (``*name``) costs nothing in the file but is copied wherever
# it is used: a few hundred bytes of nested aliases ("billion laughs") expand to billions
# of nodes, so what is limited is the number of nodes once every alias is expanded.
MAX_YAML_BYTES = 256 * 1024
MAX_YAML_NODES = 100_000
MAX_YAML_DEPTH = 64


def read_limited(path: Path) -> tuple[str | None, list[LintIssue]]:
    """The UTF-8 text of ``path``, or why not: unreadable, or over ``MAX_YAML_BYTES``.

    Reads at most one byte past the limit, so a huge (or growing) file is never loaded.
    """
    name = str(path)
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_YAML_BYTES + 1)
        if len(data) > MAX_YAML_BYTES:
            return None, [_too_large(name, max(path.stat().st_size, len(data)))]
        return data.decode("utf-8"), []
    except (OSError, UnicodeDecodeError) as exc:
        return None, [LintIssue(name, 1, 1, "unreadable", "", str(exc))]


def _too_large(filename: str, size: int) -> LintIssue:
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


def read_yaml(text: str, filename: str, what: str) -> tuple[Any, list[LintIssue]]:
    """Parse YAML 1.2 keeping positions; a syntax error, a duplicate key or a file over
    the limits above (size, expanded aliases, depth) is an issue, never an exception."""
    size = len(text.encode("utf-8"))
    if size > MAX_YAML_BYTES:
        return None, [_too_large(filename, size)]
    crowded = _crowded_line(text, filename)
    if crowded is not None:
        return None, [crowded]
    try:
        document = _yaml().load(io.StringIO(text))
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
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = f"YAML syntax: {exc.problem or exc.context}"
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


def parse_campaign(
    text: str,
    filename: str,
    segments: Mapping[str, Condition],
    attributes: Mapping[str, FieldType] | None = None,
) -> tuple[Campaign | None, Any, list[LintIssue]]:
    """Parse and validate one campaign file's text; returns the campaign or its issues."""
    document, syntax = read_yaml(text, filename, "a campaign file")
    if syntax:
        return None, document, syntax
    try:
        campaign = Campaign.model_validate(plain_data(document))
    except ValidationError as exc:
        return None, document, pydantic_issues(filename, document, exc)
    problems: list[Problem] = []
    fields = fields_for(campaign.trigger.event, attributes)
    names = list(segments)
    if campaign.trigger.where is not None:
        problems += check_condition(campaign.trigger.where, fields, names, ("trigger", "where"))
    if campaign.audience is not None:
        problems += check_condition(campaign.audience, fields, names, ("audience",))
    problems += _variant_problems(campaign)
    problems += sequence_problems(campaign, names, attributes)
    issues = [problem_issue(filename, document, problem) for problem in problems]
    return (None if issues else campaign), document, issues


def _variant_problems(campaign: Campaign) -> list[Problem]:
    variants = campaign.experiment.variants
    problems = []
    seen: set[str] = set()
    for index, variant in enumerate(variants):
        if variant.id in seen:
            problems.append(
                Problem(
                    ("experiment", "variants", index, "id"),
                    "bad-value",
                    f"variant id {variant.id!r} is used twice",
                )
            )
        seen.add(variant.id)
    if all(variant.weight == 0 for variant in variants):
        problems.append(
            Problem(
                ("experiment", "variants"),
                "bad-value",
                "at least one variant needs a weight above 0",
            )
        )
    return problems


def compile_campaign(
    campaign: Campaign, source: str, segments: Mapping[str, Condition]
) -> CompiledCampaign:
    def always(_facts: Mapping[str, object]) -> bool:
        return True

    where = campaign.trigger.where
    audience = campaign.audience
    return CompiledCampaign(
        campaign=campaign,
        source=source,
        where=compile_condition(where, segments) if where is not None else always,
        audience=compile_condition(audience, segments) if audience is not None else always,
        segments=segments,
        sequence=compile_sequence(campaign, segments),
    )


def campaign_files(paths: Iterable[Path]) -> list[Path]:
    """Expand directories to their ``*.yaml``/``*.yml`` files, sorted for stable output."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
        else:
            found.append(path)
    return found


@dataclass(frozen=True, slots=True)
class TemplateProblem:
    """A problem a template check found; located in the template file when it knows where,
    else at the variant's ``template:`` (or, with ``at="subject"``, ``subject:``) line of
    the campaign."""

    variant: int
    code: str
    message: str
    file: str | None = None
    line: int = 1
    col: int = 1
    level: Level = "error"
    at: Literal["template", "subject"] = "template"


TemplateCheck = Callable[[Campaign], Iterable[TemplateProblem]]


@dataclass(frozen=True, slots=True)
class ParsedFile:
    """One campaign file, parsed and checked, with the positions later checks point at.

    Plain data only, so files can be parsed in worker processes and sent back.
    """

    name: str
    campaign: Campaign | None
    issues: tuple[LintIssue, ...]
    id_at: tuple[int, int] = (1, 1)
    templates_at: tuple[tuple[int, int], ...] = ()
    subjects_at: tuple[tuple[int, int] | None, ...] = ()
    # Each step's ``template:`` (or its ``id:`` when it has none), for the template check.
    step_templates_at: tuple[tuple[int, int], ...] = ()


def parse_file(
    path: Path, segments: Mapping[str, Condition], attributes: Mapping[str, FieldType] | None
) -> ParsedFile:
    name = str(path)
    text, unreadable = read_limited(path)
    if text is None:
        return ParsedFile(name, None, tuple(unreadable))
    campaign, document, found = parse_campaign(text, name, segments, attributes)
    if campaign is None:
        return ParsedFile(name, None, tuple(found))
    variants = range(len(campaign.experiment.variants))
    return ParsedFile(
        name,
        campaign,
        tuple(found),
        locate(document, ("id",)),
        tuple(locate(document, ("experiment", "variants", i, "template")) for i in variants),
        tuple(
            locate(document, ("experiment", "variants", i, "subject"))
            if campaign.experiment.variants[i].subject is not None
            else None
            for i in variants
        ),
        tuple(
            locate(document, ("steps", i, "template" if step.template else "id"))
            for i, step in enumerate(campaign.steps or ())
        ),
    )


# Parsing YAML is the slow part of a lint (ruamel's round-trip parser is pure Python);
# large rule sets are parsed on every core.
PARALLEL_FROM = 48


def parse_files(
    files: Sequence[Path],
    segments: Mapping[str, Condition],
    attributes: Mapping[str, FieldType] | None,
    parallel: bool = False,
) -> list[ParsedFile]:
    """Parse in order; with ``parallel`` (single-threaded callers such as ``crosssell lint``
    only: forking a process that runs other threads is unsafe) on every core."""
    workers = min(os.cpu_count() or 1, 8)
    if not parallel or len(files) < PARALLEL_FROM or workers < 2:
        return [parse_file(path, segments, attributes) for path in files]
    context = multiprocessing.get_context(
        "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    )
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        chunk = max(1, len(files) // (workers * 4))
        return list(
            pool.map(parse_file, files, repeat(segments), repeat(attributes), chunksize=chunk)
        )


def _in_template(problem: TemplateProblem) -> LintIssue:
    """A template check's problem located in the template file itself."""
    assert problem.file is not None
    return LintIssue(
        problem.file, problem.line, problem.col, problem.code, "", problem.message, problem.level
    )


def _at_variant(
    parsed: ParsedFile,
    index: int,
    code: str,
    message: str,
    level: Level = "error",
    at: Literal["template", "subject"] = "template",
) -> LintIssue:
    subject_at = parsed.subjects_at[index] if index < len(parsed.subjects_at) else None
    if at == "subject" and subject_at is not None:
        line, col = subject_at
    else:
        line, col = parsed.templates_at[index]
        at = "template"
    path = f"experiment.variants[{index}].{at}"
    return LintIssue(parsed.name, line, col, code, path, message, level)


def _step_template_issues(
    parsed: ParsedFile, campaign: Campaign, template_check: TemplateCheck
) -> list[LintIssue]:
    """The template check for each sequence step, as the step will render: its template,
    subject and offer (or the campaign's), located in the template or at the step."""
    issues: list[LintIssue] = []
    first = campaign.experiment.variants[0]
    for index, step in enumerate(campaign.steps or ()):
        variant = Variant(
            id=first.id,
            template=step.template or first.template,
            subject=step.subject or first.subject,
        )
        probe = campaign.model_copy(
            update={
                "offer": step.offer or campaign.offer,
                "experiment": Experiment(variants=[variant]),
                "steps": None,
            }
        )
        for problem in template_check(probe):
            if problem.file:
                issues.append(_in_template(problem))
            else:
                line, col = parsed.step_templates_at[index]
                path = f"steps[{index}]"
                issues.append(
                    LintIssue(
                        parsed.name, line, col, problem.code, path, problem.message, problem.level
                    )
                )
    return issues


def load_rule_set(
    paths: Iterable[Path],
    template_names: Iterable[str] | None = None,
    segments: Mapping[str, Condition] | None = None,
    attributes: Mapping[str, FieldType] | None = None,
    template_check: TemplateCheck | None = None,
    parallel: bool = False,
) -> RuleSet:
    """Load, validate and compile every campaign; all or nothing (raises RuleSetError
    when any issue is an error). Warnings come back in ``RuleSet.warnings``."""
    segments = dict(segments or {})
    templates = set(template_names) if template_names is not None else None
    issues: list[LintIssue] = []
    compiled: list[CompiledCampaign] = []
    first_seen: dict[str, str] = {}
    for parsed in parse_files(campaign_files(paths), segments, attributes, parallel):
        name, campaign = parsed.name, parsed.campaign
        issues += parsed.issues
        if campaign is None:
            continue
        if campaign.id in first_seen:
            line, col = parsed.id_at
            message = f"campaign id {campaign.id!r} is also used by {first_seen[campaign.id]}"
            issues.append(LintIssue(name, line, col, "duplicate-id", "id", message))
            continue
        first_seen[campaign.id] = name

        if templates is not None:
            unknown = [
                _at_variant(
                    parsed,
                    index,
                    "unknown-template",
                    f"no template {variant.template!r}"
                    + did_you_mean(variant.template, sorted(templates)),
                )
                for index, variant in enumerate(campaign.experiment.variants)
                if variant.template not in templates
            ]
            unknown += [
                LintIssue(
                    parsed.name,
                    *parsed.step_templates_at[index],
                    "unknown-template",
                    f"steps[{index}].template",
                    f"no template {step.template!r}"
                    + did_you_mean(step.template, sorted(templates)),
                )
                for index, step in enumerate(campaign.steps or ())
                if step.template is not None and step.template not in templates
            ]
            if unknown:
                issues += unknown
                continue
        if template_check is not None:
            checked = [
                _in_template(problem)
                if problem.file
                else _at_variant(
                    parsed,
                    problem.variant,
                    problem.code,
                    problem.message,
                    problem.level,
                    problem.at,
                )
                for problem in template_check(campaign)
            ]
            checked += _step_template_issues(parsed, campaign, template_check)
            # A template shared by several variants warns once, not once per variant.
            issues += [i for i in checked if i.level == "error" or i not in issues]
            if any(issue.level == "error" for issue in checked):
                continue
        compiled.append(compile_campaign(campaign, name, segments))
    if any(issue.level == "error" for issue in issues):
        raise RuleSetError(issues)
    return RuleSet(tuple(compiled), segments, tuple(issues))
