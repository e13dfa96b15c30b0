"""The ``file`` provider: each email becomes ``<outbox>/<send id>.eml``.

The file is written to a temporary name and renamed into place, so a reader never sees
half a message and writing the same send twice leaves one file, not two. Nothing leaves
the machine, so this provider alone runs without ``CROSSSELL_POSTAL_ADDRESS``.
"""

from __future__ import annotations

from pathlib import Path

from worker.core.files import replace_whole
from worker.core.settings import PROJECT_ROOT
from worker.providers.base import (
    DeliveryResult,
    HandOver,
    OutgoingEmail,
    Provider,
    no_hand_over,
)
from worker.providers.registry import ProviderSettings, ProviderSpec


class FileSettings(ProviderSettings):
    """``CROSSSELL_OUTBOX_DIR``, by default ``<CROSSSELL_VAR_DIR>/outbox``."""

    var_dir: Path = PROJECT_ROOT / "var"
    outbox_dir: Path | None = None

    @property
    def outbox(self) -> Path:
        return self.outbox_dir or self.var_dir / "outbox"


class FileProvider(Provider):
    name = "file"

    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox

    @classmethod
    def from_settings(cls, settings: FileSettings) -> FileProvider:
        return cls(settings.outbox)

    def send(self, email: OutgoingEmail, hand_over: HandOver = no_hand_over) -> DeliveryResult:
        self.outbox.mkdir(parents=True, exist_ok=True)
        hand_over()
        target = self.outbox / f"{email.send_id:08d}.eml"
        replace_whole(target, email.data)
        return DeliveryResult(self.name, target.name)


PROVIDER = ProviderSpec(
    name="file",
    settings=FileSettings,
    sender=FileProvider.from_settings,
    summary="writes each email as an `.eml` file (embedded default; nothing leaves the machine)",
    reaches_inboxes=False,
)
