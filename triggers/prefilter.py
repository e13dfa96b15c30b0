"""Skip campaigns that cannot match before evaluating them.

Most campaigns' trigger conditions start with a discrete test — the categories bought,
the usage metric, the anniversary kind. When a campaign's ``where`` *requires* such a
leaf (it is the whole condition, or a direct child of its top ``all``), the campaign is
filed under each value that leaf accepts. For an event, only the campaigns filed under
one of its values (plus those without such a leaf) are evaluated; the others are known
not to match without running a single closure.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from triggers.conditions import AllOf, Condition, Leaf

_SET_OPS = ("contains", "contains_any")
_TEXT_OPS = ("eq", "in")


def guard(where: Condition | None) -> tuple[str, frozenset[str]] | None:
    """(field, accepted values) of a leaf the condition cannot be true without."""
    if where is None:
        return None
    leaves = (
        [where] if isinstance(where, Leaf) else list(where.all) if isinstance(where, AllOf) else []
    )
    for leaf in leaves:
        if not isinstance(leaf, Leaf):
            continue
        value = leaf.value
        if leaf.op in _SET_OPS or leaf.op in _TEXT_OPS:
            values = value if isinstance(value, list) else [value]
            if values and all(isinstance(v, str) for v in values):
                return leaf.field, frozenset(values)
    return None


@dataclass(frozen=True)
class Prefilter:
    """For one event type: campaign positions filed by (field, value), and the unfiled ones.

    Positions index the rule set's tuple of active campaigns for that event type.
    """

    filed: Mapping[tuple[str, str], frozenset[int]] = field(default_factory=dict)
    fields: tuple[str, ...] = ()
    unfiled: frozenset[int] = frozenset()

    def candidates(self, facts: Mapping[str, object]) -> set[int]:
        found = set(self.unfiled)
        for name in self.fields:
            value = facts.get(name)
            if isinstance(value, str):
                found |= self.filed.get((name, value), frozenset())
            elif isinstance(value, frozenset):
                for item in value:
                    found |= self.filed.get((name, item), frozenset())
        return found


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
