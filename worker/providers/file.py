"""The ``file`` provider: each email becomes ``<outbox>/<send id>.eml``.

The file is written to a temporary name and renamed into place, so a reader never sees
half a message and writing the same send twice leaves one file, not two.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from worker.providers.base import (
    DeliveryResult,
    HandOver,
    OutgoingEmail,
    Provider,
    no_hand_over,
)


class FileProvider(Provider):
    name = "file"

    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox

    def send(self, email: OutgoingEmail, hand_over: HandOver = no_hand_over) -> DeliveryResult:
        self.outbox.mkdir(parents=True, exist_ok=True)
        hand_over()
        target = self.outbox / f"{email.send_id:08d}.eml"
        handle, temporary = tempfile.mkstemp(dir=self.outbox, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(email.data)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return DeliveryResult(self.name, target.name)
