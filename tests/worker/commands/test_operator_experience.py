"""What an operator sees: startup lines, skipped offers, migrate's report, progress, previews."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import get_args
from urllib.parse import quote, urlsplit

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from rich.console import Console
from sqlalchemy import select

from tests.support.factories import TUESDAY_MORNING, customer_block, make_settings, purchase
from triggers.events import validate_event
from triggers.offers import OfferUnavailable
from worker.commands.cli import main
from worker.commands.demo import seed_catalog
from worker.commands.progress import progress, tracked
from worker.core.db import transaction
from worker.core.models import Customer
from worker.intake.ingest import ingest_event
from worker.offers.offer_resolution import resolve_for_send
from worker.process.runtime import Runtime
from worker.process.startup import Process, masked, provider_description, startup_line
from worker.records.customers import profile_of

# --- startup lines -------------------------------------------------------------------------

password_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=30
)


@given(
    scheme=st.sampled_from(["amqp", "redis", "postgresql+psycopg", "rediss", "amqps"]),
    user=st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True),
    password=password_text,
    query=st.sampled_from(["", "?ssl_cert_reqs=required", "?password=also-secret"]),
)
def test_masked_urls_never_hold_the_password(
    scheme: str, user: str, password: str, query: str
) -> None:
    url = f"{scheme}://{user}:{quote(password, safe='')}@db.internal:5432/x{query}"
    shown = masked(url)
    assert quote(password, safe="") not in shown.split("@", 1)[0].split("://", 1)[1][len(user) :]
    assert "also-secret" not in shown
    # What is left still names where it connects (as the stdlib parser reads it).
    parsed = urlsplit(url)
    assert parsed.hostname is not None and parsed.hostname in shown
    assert shown.startswith(f"{scheme}://{user}:")


def test_urls_without_credentials_are_unchanged() -> None:
    for url in ("amqp://guest@rabbit:5672//", "redis://127.0.0.1:6379/0"):
        assert masked(url) == url


@pytest.fixture
def runtime(tmp_path: Path, database_url: str) -> Iterator[Runtime]:
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        events_url="amqp://crm:events-secret@rabbit:5672//",
        broker_url="redis://:broker-secret@redis:6379/0",
        email_provider="smtp",
        smtp_host="smtp.example.com",
        smtp_port=587,
        smtp_security="starttls",
        smtp_username="mailer",
        smtp_password="smtp-secret",
    )
    runtime = Runtime(settings)
    yield runtime
    runtime.close()


@pytest.mark.parametrize("process", get_args(Process))
def test_startup_line_names_connections_campaigns_and_provider(
    runtime: Runtime, process: Process
) -> None:
    line = startup_line(runtime, process)
    assert line.startswith(f"{process}: ")
    assert not re.search(r"(events|broker|smtp)-secret", line), line
    campaigns = runtime.rules.current().campaigns
    active = sum(c.campaign.status == "active" for c in campaigns)
    assert f"{active} active campaign(s) of {len(campaigns)}" in line
    assert "provider smtp (smtp.example.com:587, starttls)" in line
    wanted = {
        "consume": ["events amqp://crm:**@rabbit:5672//", "database "],
        "dispatch": ["database ", "broker redis://:**@redis:6379/0"],
        "celery worker": ["broker redis://:**@redis:6379/0", "database "],
        "run": ["events amqp://crm:**@rabbit", "database ", "broker redis://:**@redis"],
        "web": ["database "],
    }[process]
    for part in wanted:
        assert part in line, line


def test_provider_descriptions_hold_no_credentials(tmp_path: Path) -> None:
    for provider, extra in [
        ("file", {}),
        ("postmark", {"postmark_server_token": "pm-secret"}),
        ("sendgrid", {"sendgrid_api_key": "sg-secret"}),
        ("mailgun", {"mailgun_api_key": "mg-secret", "mailgun_domain": "mg.shop.example"}),
        ("ses", {"ses_region": "eu-west-1", "ses_secret_access_key": "ses-secret"}),
    ]:
        settings = make_settings(tmp_path, email_provider=provider, **extra)
        text = provider_description(settings)
        assert text.startswith(provider) and "secret" not in text, text


def test_the_consumer_logs_its_line_once_at_info(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    """``run_consumer`` logs before connecting: with an unreachable broker it still has
    said what it tried to reach."""
    from worker.intake.consumer import EventConsumer, run_consumer

    def stop_at_once(consumer: EventConsumer) -> None:
        consumer.should_stop = True

    with caplog.at_level(logging.INFO, logger="worker.process.startup"):
        run_consumer(runtime, stop_at_once)
    lines = [r for r in caplog.records if r.getMessage().startswith("consume: ")]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert "events-secret" not in caplog.text


# --- a missing offer is logged and counted -------------------------------------------------


def _counter(reason: str) -> float:
    value = REGISTRY.get_sample_value("crosssell_offers_unavailable_total", {"reason": reason})
    return value or 0.0


def test_an_empty_catalog_is_logged_and_counted(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The production steps once left the catalog empty: every send was skipped
    ``no_offer`` and nothing said so. Now each is a WARNING naming the customer id only."""
    runtime = Runtime(make_settings(tmp_path, database_url=database_url))
    event = validate_event(
        purchase(customer=customer_block("C-empty", first_name="Ioana", email="ioana@example.ro"))
    )
    rules = runtime.rules.current()
    offer = next(c for c in rules.campaigns if c.id == "laptop-accessories").campaign.offer
    with transaction(database_url) as session:
        ingest_event(session, event, rules, runtime.policy, TUESDAY_MORNING)
    before = _counter("no_offer")
    with transaction(database_url) as session:
        customer = session.scalars(select(Customer).where(Customer.id == "C-empty")).one()
        profile = profile_of(customer)
        with caplog.at_level(logging.WARNING), pytest.raises(OfferUnavailable) as caught:
            resolve_for_send(session, offer, event, profile, runtime.complements)
    assert caught.value.reason == "no_offer"
    assert _counter("no_offer") == before + 1
    records = [r for r in caplog.records if r.name == "worker.offers.offer_resolution"]
    (message,) = {r.getMessage() for r in records}  # one warning (a handler may see it twice)
    assert {r.levelno for r in records} == {logging.WARNING}
    assert "C-empty" in message and "catalog import" in message
    assert "Ioana" not in message and "ioana@example.ro" not in message  # no personal data

    seed_catalog(runtime.settings, TUESDAY_MORNING)  # with the catalog: an offer, no log
    caplog.clear()
    with transaction(database_url) as session:
        resolved = resolve_for_send(session, offer, event, profile, runtime.complements)
    assert resolved.items and not caplog.records
    runtime.close()


# --- crosssell migrate ---------------------------------------------------------------------


def _cli(args: list[str], env: dict[str, str]) -> str:
    from worker.core.settings import get_settings

    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, args, env=env, catch_exceptions=False)
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    return result.output


def test_migrate_says_from_which_revision_to_which(tmp_path: Path) -> None:
    from alembic import command
    from alembic.script import ScriptDirectory

    from worker.commands.migrate import alembic_config

    url = f"sqlite:///{tmp_path / 'm.db'}"
    env = {"CROSSSELL_DATABASE_URL": url, "CROSSSELL_VAR_DIR": str(tmp_path / "var")}
    script = ScriptDirectory.from_config(alembic_config(url))
    head = script.get_current_head()
    assert head is not None
    revisions = list(script.walk_revisions())  # head first
    first = _cli(["migrate"], env)
    assert f"migrated from an empty database to {head}" in first
    assert f"({len(revisions)} migration(s))" in first
    assert "nothing to do" in _cli(["migrate"], env)
    previous = revisions[1].revision
    command.downgrade(alembic_config(url), previous)
    again = _cli(["migrate"], env)
    assert f"migrated from {previous} (" in again and f"to {head} (" in again
    assert "(1 migration(s))" in again


# --- progress ------------------------------------------------------------------------------


def test_progress_is_silent_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    assert list(tracked(range(5), "counting")) == [0, 1, 2, 3, 4]
    with progress("working", total=3) as advance:
        advance(3)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_progress_draws_on_a_terminal() -> None:
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=True, width=80)
    assert list(tracked(range(3), "replaying events", console=console)) == [0, 1, 2]
    assert "replaying events" in stream.getvalue()


def test_catalog_import_prints_its_result_only_off_a_terminal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    env = {"CROSSSELL_DATABASE_URL": url, "CROSSSELL_VAR_DIR": str(tmp_path / "var")}
    _cli(["migrate"], env)
    output = _cli(["catalog", "import", "config/demo/catalog.csv"], env)
    assert output.splitlines() == [
        "imported 33 product(s) from config/demo/catalog.csv; "
        "names also in Italian (it) and Romanian (ro)"
    ]


# --- preview --locale ----------------------------------------------------------------------


def test_preview_writes_a_directory_per_locale(tmp_path: Path, database_url: str) -> None:
    from worker.commands.preview import preview

    runtime = Runtime(make_settings(tmp_path, database_url=database_url))
    seed_catalog(runtime.settings, TUESDAY_MORNING)
    event = validate_event(purchase(customer=customer_block("C-loc", locale="ro-RO")))
    with transaction(database_url) as session:
        ingest_event(session, event, runtime.rules.current(), runtime.policy, TUESDAY_MORNING)
    out = tmp_path / "preview"
    texts = {}
    for locale in (None, "it-IT", "en"):
        results = preview(runtime, "laptop-accessories", "C-loc", locale, out)
        directories = {r.directory.parent.name for r in results}
        assert directories == {locale or "ro-RO"}
        texts[locale] = (results[0].directory / "body.txt").read_text(encoding="utf-8")
    assert sorted(p.name for p in out.iterdir()) == ["en", "it-IT", "ro-RO"]
    # Each directory kept its own language: the product names say so.
    assert 'Husă pentru laptop de 14"' in texts[None]
    assert 'Custodia per portatile da 14"' in texts["it-IT"]
    assert 'Laptop Sleeve 14"' in texts["en"]
    runtime.close()


def test_preview_refuses_a_locale_that_is_a_path(tmp_path: Path) -> None:
    from worker.core.settings import get_settings

    get_settings.cache_clear()
    result = CliRunner().invoke(
        main,
        ["preview", "laptop-accessories", "--customer", "C-1", "--locale", "../../etc"],
        env={"CROSSSELL_VAR_DIR": str(tmp_path / "var")},
    )
    get_settings.cache_clear()
    assert result.exit_code == 2 and "is not a locale" in result.output


def test_run_logs_one_line_for_its_three_parts(tmp_path: Path) -> None:
    """``crosssell run`` embeds the consumer, the dispatcher and a Celery worker: one
    startup line for the process, not one per part (and INFO without --log-level)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("CROSSSELL_")}
    env["CROSSSELL_VAR_DIR"] = str(tmp_path / "var")
    crosssell = str(Path(sys.executable).parent / "crosssell")
    done = subprocess.run(
        [crosssell, "run", "--until-drained"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert done.returncode == 0, done.stderr
    starts = [
        line
        for line in done.stderr.splitlines()
        if re.search(r"(run|consume|dispatch|celery worker): (events|database|broker) ", line)
    ]
    assert len(starts) == 1, done.stderr
    assert " INFO worker.process.startup: run: events sqlite:///" in starts[0]
    assert "provider file (" in starts[0] and "active campaign(s) of" in starts[0]
    assert "Warm shutdown" not in done.stdout + done.stderr
