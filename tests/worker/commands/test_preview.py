"""`crosssell preview`: a real customer's email per variant, written to files, nothing stored."""

from __future__ import annotations

import re
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.support.factories import TUESDAY_MORNING, customer_block, make_settings, purchase
from triggers.events import validate_event
from worker.commands.demo import seed_catalog
from worker.commands.preview import customer_directory, preview
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


HOSTILE_IDS = [
    "../../../../../../tmp/escape",
    "/etc/cron.d/x",
    "..",
    "a/b",
    "a_b",
    "a\\b",
    "C-1\x00",
    "ĂȘ-€",
    "x" * 128,
    "x" * 127 + "y",
]


def test_a_customer_id_never_steers_where_a_preview_is_written() -> None:
    """The CRM's ids may hold ``/`` and ``..``: each becomes one plain directory-name
    component, and no two ids share one."""
    names = [customer_directory(customer_id) for customer_id in HOSTILE_IDS]
    for name in names:
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,89}", name), name
    assert len(set(names)) == len(names)
    assert customer_directory("C-prev") == "C-prev"


def test_preview_of_a_customer_with_a_path_in_its_id_stays_under_its_directory(
    tmp_path: Path, postgres_url: str
) -> None:
    runtime = Runtime(make_settings(tmp_path, database_url=postgres_url))
    seed_catalog(runtime.settings, TUESDAY_MORNING)
    customer_id = "../../../../escape"
    customer = customer_block(customer_id, email="escape@example.ro", locale="en-US")
    event = validate_event(purchase(customer=customer))
    with transaction(postgres_url) as session:
        ingest_event(session, event, runtime.rules.current(), runtime.policy, TUESDAY_MORNING)
    out = tmp_path / "deep" / "er" / "out"
    results = preview(runtime, "laptop-accessories", customer_id, None, out)
    assert results
    for result in results:
        assert result.directory.resolve().parent.parent == out.resolve()
        assert (result.directory / "message.eml").is_file()
    assert not (tmp_path / "escape").exists() and not (tmp_path / "deep" / "escape").exists()
