"""Which campaigns a purchase counts for: the attribution rules, pure (time passed in).

A *touch* is one campaign decision about one customer that a later purchase can be
measured against:

* ``sent``: an email handed to the provider; its window starts at ``sent_at``.
* ``held_out``: the control group's decision not to send; its window starts at the
  moment the email would have gone out (the held-out send's ``send_at``), so both groups
  start their clock at the same point of the same plan.

A purchase is a conversion of a touch when it happened inside the touch's window:
``touched_at < ordered_at <= touched_at + window`` (strictly after the touch; the window
end included). Within one campaign a purchase counts once, for the latest touch whose
window holds it. It is *direct* when it contains a product the touch offered, otherwise
*influenced*; both groups' offers are resolved the same way (see ``worker.decide.attribution``).

Across campaigns — last touch: the purchase counts in the measurement of **every**
campaign whose window holds it, so each campaign's treatment and control groups are
counted by the same rule whatever other campaigns did (a rule that gave the purchase to
one campaign only would take conversions away from a campaign's emailed group more often
than from its control group, whenever another campaign emails the same customers later,
and bias its lift). The *credited* flag only serves the cross-campaign total of revenue
after emails: it marks, per purchase, the one attribution of the latest ``sent`` touch
(ties broken by the larger send id), so that total never counts a purchase twice.
Held-out touches are never credited: no email was there to credit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

Group = Literal["sent", "held_out"]
Kind = Literal["direct", "influenced"]

DEFAULT_WINDOW = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class Touch:
    """One campaign decision a purchase can be attributed to."""

    send_id: int
    campaign_id: str
    variant: str | None
    group: Group
    touched_at: datetime
    window: timedelta
    offered_skus: frozenset[str]

    def holds(self, at: datetime) -> bool:
        """Whether a purchase at ``at`` falls in this touch's window (start excluded)."""
        return self.touched_at < at <= self.touched_at + self.window


@dataclass(frozen=True, slots=True)
class Purchase:
    """The parts of an order attribution looks at."""

    order_id: str
    ordered_at: datetime
    skus: frozenset[str]


@dataclass(frozen=True, slots=True)
class Attribution:
    """The purchase as a conversion of one campaign's touch."""

    order_id: str
    campaign_id: str
    send_id: int
    variant: str | None
    group: Group
    kind: Kind
    credited: bool
    touched_at: datetime


def _recency(touch: Touch) -> tuple[datetime, int]:
    return touch.touched_at, touch.send_id


def attribute(purchase: Purchase, touches: Iterable[Touch]) -> tuple[Attribution, ...]:
    """The purchase's attributions, one per campaign whose window holds it, sorted by
    campaign id; at most one of them ``credited`` (the latest ``sent`` touch)."""
    latest: dict[str, Touch] = {}
    for touch in touches:
        if not touch.holds(purchase.ordered_at):
            continue
        kept = latest.get(touch.campaign_id)
        if kept is None or _recency(touch) > _recency(kept):
            latest[touch.campaign_id] = touch
    sent = [touch for touch in latest.values() if touch.group == "sent"]
    credited = max(sent, key=_recency) if sent else None
    return tuple(
        Attribution(
            order_id=purchase.order_id,
            campaign_id=touch.campaign_id,
            send_id=touch.send_id,
            variant=touch.variant,
            group=touch.group,
            kind="direct" if purchase.skus & touch.offered_skus else "influenced",
            credited=touch is credited,
            touched_at=touch.touched_at,
        )
        for touch in (latest[campaign_id] for campaign_id in sorted(latest))
    )


def window_for(campaign_window: timedelta | None, default: timedelta) -> timedelta:
    """A campaign's own ``attribution_window`` if it sets one, else the installation's."""
    return campaign_window if campaign_window is not None else default


def earliest_touch_start(ordered_at: datetime, windows: Sequence[timedelta]) -> datetime:
    """The earliest touch time whose window can still hold a purchase at ``ordered_at``:
    the lower bound for looking up candidate touches."""
    return ordered_at - max(windows, default=DEFAULT_WINDOW)
