"""What the engine decided for one campaign and one event (shared by loader and engine)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

Outcome = Literal["planned", "held_out", "skipped", "not_matched"]


@dataclass(frozen=True, slots=True)
class Decision:
    campaign_id: str
    outcome: Outcome
    reason: str | None = None
    variant: str | None = None
    template: str | None = None
    send_at: datetime | None = None
    expires_at: datetime | None = None
    dedupe_key: str | None = None
