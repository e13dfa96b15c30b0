"""`crosssell demo` on embedded defaults, run twice as a user would run `make demo`."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from worker.commands.demo import shown_path
from worker.commands.demo_data import catalog_rows
from worker.core.models import Send

CROSSSELL = str(Path(sys.executable).parent / "crosssell")


def _run_demo(var_dir: Path) -> str:
    """The demo with its data in ``var_dir``, run from the directory above it (as
    ``make demo`` runs from the checkout, with ``var/`` under it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROSSSELL_")}
    env["CROSSSELL_VAR_DIR"] = str(var_dir)
    done = subprocess.run(
        [CROSSSELL, "demo"],
        cwd=var_dir.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # Only the demo's own summary: no worker log lines, no Celery shutdown banner.
    assert done.stderr == "", done.stderr
    labels = re.compile(
        r"^(crosssell demo: clock set to |catalog: |events published: |events stored: |"
        r"dead-lettered: |customers: |campaigns matched: |emails written: |held out \(control\): |"
        r"scheduled for later: |failed: |skipped by reason: |spaced out: |closest emails: |"
        r"journey follow-ups: |sequences: |  post-purchase-journey |sequence exits: |"
        r"the week after: |report: )"
    )
    stray = [line for line in done.stdout.splitlines() if not labels.match(line)]
    assert stray == [], done.stdout
    return done.stdout


def _emails(outbox: Path) -> dict[str, EmailMessage]:
    return {
        path.name: message_from_bytes(path.read_bytes(), policy=policy.default)  # type: ignore[misc]
        for path in sorted(outbox.glob("*.eml"))
    }


def _assert_no_two_emails_within_the_gap(var_dir: Path, output: str) -> None:
    """With default settings no customer gets two emails within CROSSSELL_MIN_GAP, and
    the summary says how many were spaced out (read from the outbox itself)."""
    engine = create_engine(f"sqlite:///{var_dir / 'crosssell.db'}")
    try:
        with Session(engine) as session:
            rows = session.execute(
                select(Send.customer_id, Send.sent_at, Send.send_at).where(
                    Send.status.in_(("sent", "planned", "queued", "sending"))
                )
            ).all()
    finally:
        engine.dispose()
    emails: dict[str, list[datetime]] = {}
    for customer_id, sent_at, send_at in rows:
        emails.setdefault(customer_id, []).append(sent_at or send_at)
    assert len(emails) >= 100
    gap = timedelta(hours=20)  # the documented default of CROSSSELL_MIN_GAP
    for customer_id, times in emails.items():
        times.sort()
        for earlier, later in itertools.pairwise(times):
            assert later - earlier >= gap, (customer_id, times)
    summary = re.search(r"^spaced out: +(\d+) not sent \(min_gap", output, re.M)
    assert summary is not None, output
    assert int(summary.group(1)) > 0
    assert re.search(r"^skipped by reason: .*min_gap \d+", output, re.M), output


def test_demo_writes_personal_multipart_emails_and_is_idempotent(tmp_path: Path) -> None:
    var_dir = tmp_path / "var"
    first_output = _run_demo(var_dir)
    _assert_no_two_emails_within_the_gap(var_dir, first_output)
    emails = _emails(var_dir / "outbox")
    assert len(emails) >= 100, first_output
    rows = catalog_rows()
    product_names = {row.name for row in rows} | {
        name for row in rows for name in row.name_i18n.values()
    }
    for name, message in emails.items():
        assert message.get_content_type() == "multipart/alternative", name
        parts = [part.get_content_type() for part in message.iter_parts()]
        assert parts == ["text/plain", "text/html"], name
        text = message.get_body(("plain",))
        html = message.get_body(("html",))
        assert text is not None and html is not None
        first_name = str(message["To"]).split(" ")[0]
        assert first_name in str(message["Subject"]) or first_name in text.get_content(), name
        body = text.get_content()
        assert any(product in body for product in product_names) or "points" in body, name
    assert any(ch in str(m["To"]) for m in emails.values() for ch in "ăâîșț"), "no Romanian names"
    assert any(ch in str(m["To"]) for m in emails.values() for ch in "òàèìù"), "no Italian names"
    assert "emails written:" in first_output and "skipped by reason:" in first_output
    # Paths under the current directory are printed relative to it, as a user types them.
    relative = var_dir.relative_to(var_dir.parent)
    assert f" from {relative / 'demo' / 'events.jsonl'}, " in first_output, first_output
    assert re.search(
        rf"^emails written: +\d+ -> {re.escape(str(relative / 'outbox'))}$", first_output, re.M
    )
    assert re.search(rf"^report: +{re.escape(str(relative / 'report.html'))} ", first_output, re.M)

    second_output = _run_demo(var_dir)
    again = _emails(var_dir / "outbox")
    assert set(again) == set(emails)  # nothing new, nothing duplicated
    ids = [m["Message-ID"] for m in again.values()]
    assert len(ids) == len(set(ids))
    assert "emails written:" in second_output


def test_paths_are_shown_relative_to_the_current_directory_when_under_it(tmp_path: Path) -> None:
    outbox = tmp_path / "var" / "outbox"
    assert shown_path(outbox, cwd=tmp_path) == str(Path("var") / "outbox")
    assert shown_path(outbox, cwd=tmp_path / "var") == "outbox"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert shown_path(outbox, cwd=elsewhere) == str(outbox)  # not under it: absolute
