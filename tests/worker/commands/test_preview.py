"""`crosssell preview`: a real customer's email per variant, written to files, nothing stored."""

from __future__ import annotations

from email import message_from_bytes, policy
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.support.factories import TUESDAY_MORNING, customer_block, make_settings, purchase
from triggers.events import validate_event
from worker.commands.demo import seed_catalog
from worker.commands.preview import preview
from worker.core.db import transaction
from worker.core.models import Send
from worker.intake.ingest import ingest_event
from worker.process.runtime import Runtime


def test_preview_writes_every_variant_for_the_customer(tmp_path: Path, database_url: str) -> None:
    runtime = Runtime(make_settings(tmp_path, database_url=database_url))
    seed_catalog(runtime.settings, TUESDAY_MORNING)
    event = validate_event(
        purchase(customer=customer_block("C-prev", first_name="Chiara", locale="it-IT"))
    )
    with transaction(database_url) as session:
        ingest_event(session, event, runtime.rules.current(), runtime.policy, TUESDAY_MORNING)
        sends_before = session.scalar(select(func.count()).select_from(Send))
    results = preview(runtime, "laptop-accessories", "C-prev", None, tmp_path / "out")
    assert [r.directory.name for r in results] == [
        "laptop-accessories-C-prev-A",
        "laptop-accessories-C-prev-B",
    ]
    message = message_from_bytes(
        (results[1].directory / "message.eml").read_bytes(), policy=policy.default
    )
    assert str(message["Subject"]).startswith("Chiara")  # variant B's own subject
    text = (results[0].directory / "body.txt").read_text()
    # A real complementary product from the catalog, by its Italian name (it-IT customer).
    assert 'Custodia per portatile da 14"' in text and "Laptop Sleeve" not in text
    assert "€" in text  # Italian currency format
    with transaction(database_url) as session:
        assert session.scalar(select(func.count()).select_from(Send)) == sends_before


def test_preview_of_an_unknown_customer_is_a_clear_error(tmp_path: Path, database_url: str) -> None:
    runtime = Runtime(make_settings(tmp_path, database_url=database_url))
    with pytest.raises(LookupError, match="no customer 'C-nobody'"):
        preview(runtime, "laptop-accessories", "C-nobody", None, tmp_path / "out")
