"""Compiled campaigns and the rule set the engine decides with: predicates compiled,
fixed outcomes made, and the per-event lookups (active campaigns, prefilter, priority
ranks) prepared once per load."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import InitVar, dataclass, field

from triggers.campaigns import Campaign
from triggers.conditions import Condition, Facts, Predicate, compile_condition, compile_stages
from triggers.experiments import Assigner
from triggers.fields import FieldType
from triggers.lint_issues import LintIssue
from triggers.outcomes import Decision
from triggers.prefilter import Prefilter, build_prefilter, split_guard
from triggers.schedule import DailyWindow, campaign_window, send_windows
from triggers.sequences import CompiledSequence, compile_sequence

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
    # The custom attributes' declared types (config/attributes.yaml): intake refuses an
    # event whose attribute has another type (triggers.fields.check_attribute_types).
    attributes: Mapping[str, FieldType] = field(default_factory=dict)
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
