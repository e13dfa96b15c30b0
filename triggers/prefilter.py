"""Skip campaigns that cannot match before evaluating them.

Most campaigns' trigger conditions start with a discrete test — the categories bought,
the usage metric, the anniversary kind. When a campaign's ``where`` *requires* such a
leaf (it is the whole condition, or a direct child of its top ``all``), the campaign is
filed under each value that leaf accepts. For an event, only the campaigns filed under
one of its values (plus those without such a leaf) are evaluated; the others are known
not to match without running a single closure. A candidate filed under a value is known
to pass that leaf, so the engine evaluates the rest of its ``where`` only (``split_guard``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from triggers.conditions import AllOf, Condition, Leaf

_SET_OPS = ("contains", "contains_any")
_TEXT_OPS = ("eq", "in")

Guard = tuple[str, frozenset[str]]


def _guard_of(leaf: Leaf) -> Guard | None:
    value = leaf.value
    if leaf.op in _SET_OPS or leaf.op in _TEXT_OPS:
        values = value if isinstance(value, list) else [value]
        if values and all(isinstance(v, str) for v in values):
            return leaf.field, frozenset(values)
    return None


def split_guard(where: Condition | None) -> tuple[Guard | None, Condition | None]:
    """The leaf ``where`` cannot be true without, as (field, accepted values), and what is
    left of ``where`` once that leaf is known to hold (None: nothing left to test)."""
    if isinstance(where, Leaf):
        found = _guard_of(where)
        return (found, None) if found is not None else (None, where)
    if isinstance(where, AllOf):
        for index, child in enumerate(where.all):
            found = _guard_of(child) if isinstance(child, Leaf) else None
            if found is not None:
                rest = [*where.all[:index], *where.all[index + 1 :]]
                if not rest:
                    return found, None
                return found, rest[0] if len(rest) == 1 else AllOf(all=rest)
    return None, where


def guard(where: Condition | None) -> Guard | None:
    """(field, accepted values) of a leaf the condition cannot be true without."""
    return split_guard(where)[0]


@dataclass(frozen=True)
class Prefilter:
    """For one event type: campaign positions filed by (field, value), and the unfiled ones.

    Positions index the rule set's tuple of active campaigns for that event type.
    """

    filed: Mapping[tuple[str, str], frozenset[int]] = field(default_factory=dict)
    fields: tuple[str, ...] = ()
    unfiled: frozenset[int] = frozenset()
    # Sorted positions when a single (field, value) hits, and when none does: the usual
    # cases, answered without building or sorting a set.
    _alone: dict[tuple[str, str], tuple[int, ...]] = field(init=False, repr=False, compare=False)
    _none: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        alone = {key: tuple(sorted(self.unfiled | ids)) for key, ids in self.filed.items()}
        object.__setattr__(self, "_alone", alone)
        object.__setattr__(self, "_none", tuple(sorted(self.unfiled)))

    def _hits(self, facts: Mapping[str, object]) -> list[tuple[str, str]]:
        """The (field, value) keys of this event under which campaigns are filed.

        Exact types, as the leaves test them: a value a leaf would reject files nothing.
        """
        filed = self.filed
        hits = []
        for name in self.fields:
            value = facts.get(name)
            if type(value) is str:
                if (name, value) in filed:
                    hits.append((name, value))
            elif type(value) is frozenset:
                hits += [(name, item) for item in value if (name, item) in filed]
        return hits

    def positions(self, facts: Mapping[str, object]) -> Sequence[int]:
        """Ascending positions of the campaigns that could match: the unfiled ones and those
        filed under a (field, value) the facts hold."""
        hits = self._hits(facts)
        if not hits:
            return self._none
        if len(hits) == 1:
            return self._alone[hits[0]]
        found = set(self.unfiled)
        for key in hits:
            found |= self.filed[key]
        return sorted(found)


def build_prefilter(conditions: Iterable[Condition | None]) -> Prefilter:
    """File each campaign's position under the values its required leaf accepts."""
    filed: dict[tuple[str, str], set[int]] = defaultdict(set)
    unfiled: set[int] = set()
    for position, where in enumerate(conditions):
        found = guard(where)
        if found is None:
            unfiled.add(position)
            continue
        name, values = found
        for value in values:
            filed[(name, value)].add(position)
    return Prefilter(
        {key: frozenset(ids) for key, ids in filed.items()},
        tuple(sorted({name for name, _ in filed})),
        frozenset(unfiled),
    )
