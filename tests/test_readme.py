"""The README's settings table is the user's reference: it must list every setting."""

from __future__ import annotations

from pathlib import Path

from worker.core.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_documented() -> None:
    missing = [
        name for name in Settings.model_fields if f"`CROSSSELL_{name.upper()}`" not in README
    ]
    assert missing == []
