"""Customer data rights: ``forget`` leaves no trace of the person in any column of any
table while every total stays; ``export`` holds every row about the customer; a
forgotten address stays suppressed."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pika
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select, text, update

from tests.support.factories import (
    TUESDAY_MORNING,
    as_json,
    customer_block,
    make_settings,
    purchase,
)
from tests.worker.end_to_end.test_pipeline import _close_runtimes, _dispatch, _ingest, _runtime
from tests.worker.intake.test_consumer_rabbitmq import (
    consumer_settings,
    pika_parameters,
    publish_plain,
    wait_for,
)
from triggers.addresses import canonical_address, lookup_key
from worker.commands.migrate import upgrade
from worker.core.clock import ShiftedClock
from worker.core.db import dispose_engines, transaction
from worker.core.models import Base, Customer, Send, Suppression
from worker.core.settings import Settings, get_settings
from worker.intake.publisher import publish_lines
from worker.outbox.delivery import deliver_send
from worker.process.runtime import Runtime
from worker.records.customers import is_suppressed, set_kind_preferences
from worker.records.privacy import (
    HASH_PREFIX,
    export_customer,
    forget_key,
    forget_now,
    suppression_keys,
    suppression_keys_of,
)
from worker.webhooks.apply import apply_events
from worker.webhooks.events import TrackingEvent

__all__ = ["_close_runtimes", "consumer_settings"]
KEY = "test-forget-key"


@pytest.fixture(autouse=True)
def _forget_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every process of these tests reads the same key from its environment."""
    monkeypatch.setenv("CROSSSELL_FORGET_KEY", KEY)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _person() -> dict[str, Any]:
    """A customer whose address and names appear nowhere else in the database."""
    tag = uuid.uuid4().hex[:8]
    return customer_block(
        f"C-forget-{tag}",
        email=f"Zenobia.Kowalczyk.{tag}@Example.ro",
        first_name=f"Zenobia{tag}",
        last_name=f"Kowalczyk{tag}",
        attributes={"loyalty_tier": "gold", "nickname": f"zeny{tag}"},
    )


def _history(runtime: Runtime) -> tuple[dict[str, Any], int]:
    """A person with two purchases, one email sent and hard-bounced, a preference change
    and a provider reply quoting them; the person and the sent send's id."""
    url = runtime.settings.resolved_database_url
    for _ in range(50):  # some customers fall in the holdout: try other people
        person = _person()
        event = purchase(customer=person)
        _ingest(runtime, event)
        with transaction(url) as session:
            send = session.scalars(select(Send).where(Send.event_id == event["id"])).one()
        if send.status == "planned":
            send_id = send.id
            break
    else:
        raise AssertionError("no customer outside the holdout in 50 tries")
    _ingest(runtime, purchase(customer=person, sku="MOUSE-1", category="mice", price="19.90"))
    runtime.clock = ShiftedClock(TUESDAY_MORNING + timedelta(hours=3))
    assert _dispatch(runtime) == [send_id]
    assert deliver_send(runtime, send_id) == "sent"
    with transaction(url) as session:
        message_id = session.get(Send, send_id).message_id  # type: ignore[union-attr]
        apply_events(
            session,
            [
                TrackingEvent(
                    "postmark",
                    f"b-{uuid.uuid4().hex}",
                    "bounced",
                    str(person["email"]).lower(),
                    TUESDAY_MORNING + timedelta(hours=4),
                    "hard",
                    message_id,
                )
            ],
            TUESDAY_MORNING + timedelta(hours=4),
        )
        customer = session.get(Customer, person["id"])
        assert customer is not None
        set_kind_preferences(session, customer, {"loyalty"}, "preference-page", TUESDAY_MORNING)
        session.execute(
            update(Send)
            .where(Send.id == send_id)
            .values(
                detail=f"550 5.1.1 {person['first_name']} {person['last_name']} "
                f"<{str(person['email']).upper()}>: no such user"
            )
        )
    return person, send_id


def _all_rows(url: str) -> dict[str, list[str]]:
    """Every row of every table the models know, each as the text of all its columns."""
    import worker.records.webhook_events  # noqa: F401  (registers webhook_events)

    rows: dict[str, list[str]] = {}
    with transaction(url) as session:
        for table in Base.metadata.sorted_tables:
            result = session.execute(select(table)).all()
            rows[table.name] = [
                json.dumps([str(value) for value in row], ensure_ascii=False) for row in result
            ]
    return rows


def test_forget_erases_the_person_keeps_the_totals_and_the_suppression(
    tmp_path: Path, database_url: str
) -> None:
    runtime = _runtime(tmp_path, database_url)
    other = customer_block("C-bystander", email="bystander@example.it")
    _ingest(runtime, purchase(customer=other))
    person, _ = _history(runtime)
    address = str(person["email"])
    before = _all_rows(database_url)
    personal = [address, str(person["first_name"]), str(person["last_name"])]
    assert any(
        p.lower() in row.lower() for p in personal for rows in before.values() for row in rows
    )

    report = forget_now(runtime.settings, person["id"], runtime.clock.now())
    assert report is not None and report.suppressions == 1

    after = _all_rows(database_url)
    leaks = [
        (table, p)
        for table, rows in after.items()
        for row in rows
        for p in [*personal, str(person["attributes"]["nickname"])]
        if p.lower() in row.lower()
    ]
    assert leaks == []
    assert {t: len(r) for t, r in after.items()} == {t: len(r) for t, r in before.items()}
    with transaction(database_url) as session:
        bystander = session.get(Customer, "C-bystander")
        assert bystander is not None and bystander.email == "bystander@example.it"
        assert is_suppressed(session, address)
        assert is_suppressed(session, f"  {address.upper()} ")
        assert session.get(Suppression, address.lower()) is None

    # The CRM sends the person again, address and consent included: still no email.
    again = purchase(
        customer={**person, "consent": {"email_marketing": True}},
        sku="LAP-15",
        at=runtime.clock.now() + timedelta(minutes=1),
    )
    _ingest(runtime, again)
    with transaction(database_url) as session:
        sends = session.scalars(select(Send).where(Send.event_id == again["id"])).all()
    assert [(s.status, s.reason) for s in sends] == [("skipped", "suppressed")]


def test_forget_twice_changes_nothing_more(tmp_path: Path, database_url: str) -> None:
    runtime = _runtime(tmp_path, database_url)
    person, _ = _history(runtime)
    assert forget_now(runtime.settings, person["id"], datetime.now(UTC)) is not None
    once = _all_rows(database_url)
    second = forget_now(runtime.settings, person["id"], datetime.now(UTC))
    assert second is not None
    assert (second.addresses, second.suppressions, second.consent_records, second.events) == (
        0,
        0,
        0,
        0,
    )
    twice = _all_rows(database_url)
    for table in ("suppressions", "consent_records", "events", "sends", "orders"):
        assert twice[table] == once[table]
    assert forget_now(runtime.settings, "C-nobody", datetime.now(UTC)) is None


def test_export_holds_every_row_about_the_customer(tmp_path: Path, database_url: str) -> None:
    runtime = _runtime(tmp_path, database_url)
    person, send_id = _history(runtime)
    _ingest(runtime, purchase(customer=customer_block("C-bystander", email="b@example.it")))
    with transaction(database_url) as session:
        document = export_customer(session, person["id"], forget_key(runtime.settings))
        expected = {
            table: session.scalar(
                text(f'SELECT count(*) FROM "{table}" WHERE customer_id = :id'),
                {"id": person["id"]},
            )
            for table in ("events", "orders", "sends", "consent_records", "activity_outbox")
        }
    assert document is not None
    json.dumps(document)  # JSON all the way down
    assert document["customer"]["email"] == canonical_address(str(person["email"]))
    assert document["customer"]["first_name"] == person["first_name"]
    assert document["customer"]["attributes"] == person["attributes"]
    counts = {
        "events": len(document["events"]),
        "orders": len(document["orders"]),
        "sends": len(document["sends"]),
        "consent_records": len(document["consent_records"]),
        "activity_outbox": len(document["activity"]),
    }
    assert counts == expected and all(expected.values())
    assert send_id in [s["id"] for s in document["sends"]]
    assert all(o["lines"] for o in document["orders"])
    key = lookup_key(str(person["email"]))
    assert [s["email"] for s in document["suppressions"]] == [key]
    assert [w["recipient"] for w in document["webhook_events"]] == [key]

    forget_now(runtime.settings, person["id"], datetime.now(UTC))
    with transaction(database_url) as session:
        forgotten = export_customer(session, person["id"], forget_key(runtime.settings))
    assert forgotten is not None and forgotten["customer"]["email"] is None
    assert len(forgotten["sends"]) == counts["sends"]
    assert [s["email"][: len(HASH_PREFIX)] for s in forgotten["suppressions"]] == [HASH_PREFIX]


def test_a_forget_event_on_the_queue_erases_and_a_bad_one_is_dead_lettered(
    consumer_settings: Settings,
) -> None:
    person = _person()
    forget = {
        "id": f"forget-{uuid.uuid4().hex[:8]}",
        "type": "forget",
        "occurred_at": "2026-11-20T10:00:00+00:00",
        "customer": {"id": person["id"]},
    }
    leaky = {**forget, "id": "forget-bad", "customer": {"id": "C-1", "email": "x@example.ro"}}
    lines = [as_json(purchase(customer=person)), as_json(forget), as_json(leaky)]
    report = publish_lines(consumer_settings, lines)
    # `crosssell publish` refuses the bad forget itself; a CRM's own client sends it anyway.
    assert report.published == 2
    assert [(r.line, r.code) for r in report.rejected] == [(3, "wrong_schema")]
    publish_plain(consumer_settings, as_json(leaky), "forget")
    url = consumer_settings.resolved_database_url

    def forgotten() -> bool:
        with transaction(url) as session:
            customer = session.get(Customer, person["id"])
        return customer is not None and customer.email is None

    wait_for(forgotten)
    with transaction(url) as session:
        customer = session.get(Customer, person["id"])
        assert customer is not None and customer.first_name is None
        assert customer.orders_count == 1
    channel = pika.BlockingConnection(pika_parameters(consumer_settings)).channel()
    try:
        deadline = time.monotonic() + 15
        method = None
        while method is None and time.monotonic() < deadline:
            method, properties, body = channel.basic_get(consumer_settings.dead_letter_queue)
            time.sleep(0.1)
        assert method is not None, "the forget with personal data was not dead-lettered"
        assert json.loads(body)["id"] == "forget-bad"
        assert properties.headers["x-crosssell-error"] == "wrong_schema"
        assert "customer.email" in properties.headers["x-crosssell-reason"]
        assert "x@example.ro" not in properties.headers["x-crosssell-reason"]
    finally:
        channel.connection.close()


@given(
    local=st.from_regex(r"[a-zA-Z0-9._%+-]{1,20}", fullmatch=True),
    domain=st.from_regex(r"[a-zA-Z0-9-]{1,15}\.[a-zA-Z]{2,6}", fullmatch=True),
    pad=st.sampled_from(["", " ", "\t", "  "]),
    key=st.binary(min_size=1, max_size=64),
)
def test_suppression_keys_match_any_spelling_of_the_address(
    local: str, domain: str, pad: str, key: bytes
) -> None:
    address = f"{local}@{domain}"
    canonical = address.lower()
    reference = HASH_PREFIX + hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()
    for spelling in (address, address.upper(), address.swapcase(), f"{pad}{address}{pad}"):
        assert suppression_keys(spelling, key) == [canonical, reference]
    other_key = key + b"x"
    assert suppression_keys(address, other_key)[1] != reference


def test_without_any_key_only_the_plain_address_is_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CROSSSELL_FORGET_KEY")
    monkeypatch.setenv("CROSSSELL_VAR_DIR", str(tmp_path / "var"))
    get_settings.cache_clear()
    addresses = ["A@Example.ro", " b@example.ro"]
    assert suppression_keys("A@Example.ro") == ["a@example.ro"]
    assert suppression_keys_of(addresses) == {
        "A@Example.ro": ["a@example.ro"],
        " b@example.ro": ["b@example.ro"],
    }
    assert not (tmp_path / "var" / "forget.key").exists()  # checking never makes a key
    key = forget_key(get_settings(), create=True)
    assert key is not None and (tmp_path / "var" / "forget.key").stat().st_mode & 0o777 == 0o600
    assert (
        suppression_keys("A@Example.ro")[1]
        == HASH_PREFIX + hmac.new(key, b"a@example.ro", hashlib.sha256).hexdigest()
    )
    # A batch after the key file appeared (a forget in another process) uses it.
    assert suppression_keys_of(addresses) == {
        address: suppression_keys(address) for address in addresses
    }
    assert len(suppression_keys_of(addresses)[" b@example.ro"]) == 2


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.setenv("CROSSSELL_VAR_DIR", str(tmp_path / "var"))
    get_settings.cache_clear()
    upgrade(get_settings().resolved_database_url)
    yield CliRunner()
    get_settings.cache_clear()
    dispose_engines()


def test_cli_export_then_forget(cli: CliRunner, tmp_path: Path) -> None:
    settings = get_settings()
    runtime = Runtime(make_settings(tmp_path, database_url=settings.resolved_database_url))
    runtime.clock = ShiftedClock(TUESDAY_MORNING)
    person = _person()
    _ingest(runtime, purchase(customer=person))
    out = tmp_path / "export.json"
    exported = cli.invoke(main_cli(), ["export", person["id"], "--output", str(out)])
    assert exported.exit_code == 0, exported.output
    document = json.loads(out.read_text(encoding="utf-8"))
    assert document["customer"]["id"] == person["id"] and len(document["events"]) == 1
    forgotten = cli.invoke(main_cli(), ["forget", person["id"]])
    assert forgotten.exit_code == 0, forgotten.output
    assert "forgot customer" in forgotten.output
    after = cli.invoke(main_cli(), ["export", person["id"]])
    assert json.loads(after.output)["customer"]["email"] is None
    unknown = cli.invoke(main_cli(), ["forget", "C-nobody"])
    assert unknown.exit_code == 1 and "not known" in unknown.output
    assert "recorded as forgotten" in unknown.output
    with transaction(settings.resolved_database_url) as session:
        count = session.scalar(select(func.count()).select_from(Customer))
        nobody = session.get(Customer, "C-nobody")
    # The request is kept as a customer with nothing but its id and when it was made.
    assert count == 2
    assert nobody is not None and nobody.forgotten_at is not None
    assert (nobody.email, nobody.first_name, nobody.attributes) == (None, None, {})
    runtime.close()


def _stored_person(tmp_path: Path) -> dict[str, Any]:
    """A customer with one purchase, stored through ingest in the CLI's database."""
    settings = get_settings()
    runtime = Runtime(make_settings(tmp_path, database_url=settings.resolved_database_url))
    runtime.clock = ShiftedClock(TUESDAY_MORNING)
    person = _person()
    _ingest(runtime, purchase(customer=person))
    runtime.close()
    return person


@pytest.mark.parametrize(
    ("customer_id", "reason"),
    [
        ("", "String should have at least 1 character"),
        (" C-1", "must not start or end with whitespace"),
        ("C-1\n", "must contain printable characters only"),
        ("x" * 129, "String should have at most 128 characters"),
    ],
)
def test_cli_forget_of_an_id_no_event_could_carry_is_a_usage_error(
    cli: CliRunner, customer_id: str, reason: str
) -> None:
    """It stored a "forgotten" customer under the junk id (a traceback on PostgreSQL
    for one over the column's 128 characters)."""
    result = cli.invoke(main_cli(), ["forget", customer_id])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for CUSTOMER_ID: {reason}" in result.output
    with transaction(get_settings().resolved_database_url) as session:
        assert session.scalar(select(func.count()).select_from(Customer)) == 0


def test_cli_export_writes_a_private_file_whole_or_not_at_all(
    cli: CliRunner, tmp_path: Path
) -> None:
    """The export holds personal data: a new file is its owner's only (0600); its
    directory is made as ``report --out`` makes its own; an unknown customer, or a path
    that is a directory, leaves what is there as it was."""
    person = _stored_person(tmp_path)
    out = tmp_path / "exports" / "new" / "export.json"
    exported = cli.invoke(main_cli(), ["export", person["id"], "--output", str(out)])
    assert exported.exit_code == 0, exported.output
    assert json.loads(out.read_text(encoding="utf-8"))["customer"]["id"] == person["id"]
    assert out.stat().st_mode & 0o777 == 0o600
    kept = out.read_bytes()
    unknown = cli.invoke(main_cli(), ["export", "C-nobody", "--output", str(out)])
    assert unknown.exit_code == 1 and "customer C-nobody is not known" in unknown.output
    assert out.read_bytes() == kept
    directory = cli.invoke(main_cli(), ["export", person["id"], "--output", str(out.parent)])
    assert directory.exit_code == 2 and "is a directory" in directory.output
    assert sorted(path.name for path in out.parent.iterdir()) == ["export.json"]  # no leftovers

    # A link to a file: the file it names is replaced, the link stays.
    link = tmp_path / "latest.json"
    link.symlink_to(out)
    assert cli.invoke(main_cli(), ["export", person["id"], "--output", str(link)]).exit_code == 0
    assert link.is_symlink() and json.loads(link.read_text(encoding="utf-8"))["customer"]
    # A file named "-" in a directory is a file, not standard output.
    dash = tmp_path / "dash"
    dash.mkdir()
    named = cli.invoke(main_cli(), ["export", person["id"], "--output", f"{dash}/-"])
    assert named.exit_code == 0 and named.output == ""
    assert json.loads((dash / "-").read_text(encoding="utf-8"))["customer"]["id"] == person["id"]


@pytest.mark.parametrize(
    ("output", "exit_code", "message"),
    [
        ("missing/", 2, "'missing/': a file name is needed, not a directory's"),
        ("", 2, "'': a file name is needed, not a directory's"),
        ("plain/x.json", 1, "plain: Not a directory"),
        ("a" * 250 + ".json", 0, ""),  # as long as names go: the temporary name is short
    ],
)
def test_cli_export_output_names(
    cli: CliRunner,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    output: str,
    exit_code: int,
    message: str,
) -> None:
    person = _stored_person(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    (work / "plain").write_text("a file, not a directory\n", encoding="utf-8")
    monkeypatch.chdir(work)
    result = cli.invoke(main_cli(), ["export", person["id"], "--output", output])
    assert result.exit_code == exit_code, result.output
    assert message in result.output
    written = {path.name for path in work.iterdir()} - {"plain"}
    assert written == ({output} if exit_code == 0 else set())


@pytest.mark.parametrize("output", ["new/.", "new/..", ".", "loop"])
def test_cli_export_refuses_a_name_that_is_no_file(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output: str
) -> None:
    """``new/.`` wrote a file named ``new``; a link to itself was replaced by a file."""
    person = _stored_person(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    (work / "loop").symlink_to("loop")
    monkeypatch.chdir(work)
    result = cli.invoke(main_cli(), ["export", person["id"], "--output", output])
    if output == "loop":
        assert result.exit_code == 1 and "Too many levels of symbolic links" in result.output
    else:
        assert result.exit_code == 2, result.output
        assert "a file name is needed" in result.output or "is a directory" in result.output
    assert sorted(path.name for path in work.iterdir()) == ["loop"]
    assert (work / "loop").is_symlink()


@pytest.mark.parametrize(
    "spelling",
    [
        "/dev/fd/{fd}",
        "//dev//fd/{fd}",
        "link",
        "/proc/self/fd/{fd}",
        "/proc/thread-self/fd/{fd}",
        "{tmp}/fds/{fd}",  # through a linked directory (fds -> /dev/fd)
    ],
)
def test_cli_export_to_a_descriptor_writes_at_its_place(
    cli: CliRunner, tmp_path: Path, spelling: str
) -> None:
    """``{ echo BEFORE; crosssell export C --output /dev/stdout; echo AFTER; } > f``:
    the export replaced ``f`` (``/dev/stdout`` leads to it), and reopening it instead
    would write at offset 0 under what the shell writes next. The descriptor itself is
    written, at its place, whatever the spelling or a link to it."""
    person = _stored_person(tmp_path)
    redirected = tmp_path / "redirected.log"
    redirected.write_bytes(b"")
    inode = redirected.stat().st_ino
    descriptor = os.open(redirected, os.O_WRONLY)  # not O_APPEND: as a shell's ">"
    (tmp_path / "link").symlink_to(f"/dev/fd/{descriptor}")
    (tmp_path / "fds").symlink_to("/dev/fd")
    name = (
        str(tmp_path / "link")
        if spelling == "link"
        else spelling.format(fd=descriptor, tmp=tmp_path)
    )
    try:
        os.write(descriptor, b"BEFORE\n")
        result = cli.invoke(main_cli(), ["export", person["id"], "--output", name])
        os.write(descriptor, b"AFTER\n")
    finally:
        os.close(descriptor)
    assert result.exit_code == 0, result.output
    assert redirected.stat().st_ino == inode
    before, *exported, after, end = redirected.read_text(encoding="utf-8").split("\n")
    assert (before, after, end) == ("BEFORE", "AFTER", "")
    assert json.loads("\n".join(exported))["customer"]["id"] == person["id"]


def test_cli_export_through_a_dangling_link_makes_a_private_file(
    cli: CliRunner, tmp_path: Path
) -> None:
    """The kernel made the link's target with the umask's mode (0644): personal data
    readable by everyone."""
    person = _stored_person(tmp_path)
    link = tmp_path / "latest.json"
    link.symlink_to(tmp_path / "nowhere.json")
    result = cli.invoke(main_cli(), ["export", person["id"], "--output", str(link)])
    assert result.exit_code == 0, result.output
    assert link.is_symlink()
    assert (tmp_path / "nowhere.json").stat().st_mode & 0o777 == 0o600


def test_a_stop_signal_while_writing_leaves_no_temporary_file(tmp_path: Path) -> None:
    """SIGTERM (``timeout``, a service manager) during the write left the temporary file
    of personal data behind; now the write is undone and the process exits 143."""
    script = tmp_path / "writer.py"
    script.write_text(
        "import os, signal, sys\n"
        "from worker.core import files\n"
        "real = os.fsync\n"
        "def slow(fd):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    real(fd)\n"
        "os.fsync = slow\n"
        "files.write_output(sys.argv[1], b'personal data')\n",
        encoding="utf-8",
    )
    target = tmp_path / "out" / "export.json"
    done = subprocess.run(
        [sys.executable, str(script), str(target)], capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 143, done.stderr
    assert list(target.parent.iterdir()) == []


def test_cli_export_writes_into_a_pipe(cli: CliRunner, tmp_path: Path) -> None:
    """A named pipe (or ``/dev/stdout``, or a shell's ``>(gzip > x.gz)``) is written into,
    not replaced by a regular file."""
    person = _stored_person(tmp_path)
    fifo = tmp_path / "export.fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    exported = cli.invoke(main_cli(), ["export", person["id"], "--output", str(fifo)])
    reader.join(10)
    assert exported.exit_code == 0, exported.output
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert json.loads(received[0])["customer"]["id"] == person["id"]


def main_cli() -> Any:
    from worker.commands.cli import main

    return main


def test_the_documented_forget_event_is_valid() -> None:
    import re

    from triggers.events import parse_forget

    guide = (Path(__file__).resolve().parents[3] / "docs" / "events.md").read_text("utf-8")
    section = guide.split("## Forgetting a customer", 1)[1]
    block = re.search(r"```json\n(.*?)```", section, flags=re.DOTALL)
    assert block is not None
    request = parse_forget(block.group(1))
    assert request is not None and request.customer.id == "C-1001"


_FORGET = {
    "id": "f-1",
    "type": "forget",
    "occurred_at": "2026-11-20T10:00:00+00:00",
    "customer": {"id": "C-1"},
}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (json.dumps(_FORGET), "C-1"),
        (json.dumps({**_FORGET, "type": "purchase"}), None),
        (json.dumps([_FORGET]), None),
        ("not json", None),
        (b"\xff\xfe{", None),
        ("[" * 100_000 + "]" * 100_000, None),
        (json.dumps({k: v for k, v in _FORGET.items() if k != "customer"}), "customer"),
        (json.dumps({**_FORGET, "customer": {"id": "C-1", "first_name": "Ana"}}), "first_name"),
        (json.dumps({**_FORGET, "customer": {"id": ""}}), "customer.id"),
        (json.dumps({**_FORGET, "occurred_at": "2026-11-20T10:00:00"}), "occurred_at"),
        (json.dumps({**_FORGET, "data": {}}), "data"),
    ],
)
def test_forget_requests_are_told_apart_from_other_messages(
    body: str | bytes, expected: str | None
) -> None:
    from triggers.events import InvalidEvent, parse_forget

    if expected is None:
        assert parse_forget(body) is None
    elif expected.startswith("C-"):
        request = parse_forget(body)
        assert request is not None and request.customer.id == expected
    else:
        with pytest.raises(InvalidEvent) as bad:
            parse_forget(body)
        assert bad.value.code == "wrong_schema" and expected in bad.value.reason
        assert "Ana" not in bad.value.reason


def _stored(database_url: str, customer_id: str) -> tuple[Customer, list[Any], int, int]:
    """The customer, its events' customer blocks, its sends and its orders."""
    from worker.core.models import Event, Order

    with transaction(database_url) as session:
        customer = session.get(Customer, customer_id)
        assert customer is not None
        session.expunge(customer)
        blocks = [
            payload["customer"]
            for payload in session.scalars(
                select(Event.payload)
                .where(Event.customer_id == customer_id)
                .order_by(Event.occurred_at)
            )
        ]
        sends = session.scalar(
            select(func.count()).select_from(Send).where(Send.customer_id == customer_id)
        )
        orders = session.scalar(
            select(func.count()).select_from(Order).where(Order.customer_id == customer_id)
        )
    return customer, blocks, sends or 0, orders or 0


@pytest.mark.parametrize("stored_before", [False, True], ids=["unknown-then", "known-then"])
def test_an_event_from_before_an_erasure_request_that_arrives_after_it_is_stored_erased(
    tmp_path: Path, database_url: str, stored_before: bool
) -> None:
    """Several consumers do not keep the order across processes: the customer's purchase
    published before a ``forget`` can be stored after it, even when the customer was not
    stored yet. It is stored as the request would have left it (customer block cut to the
    id), changes no profile, plans nothing, and its log line says so. A purchase made after
    the request is new data and is stored as usual."""
    from worker.intake.consumer import handle_bodies

    runtime = _runtime(tmp_path, database_url)
    now = runtime.clock.now()
    person = _person()
    if stored_before:
        assert not _ingest(runtime, purchase(customer=person, at=now - timedelta(hours=2)))
    report = forget_now(runtime.settings, person["id"], now)
    assert (report is not None) == stored_before

    late = purchase(customer=person, at=now - timedelta(minutes=5))
    [handled] = handle_bodies(runtime, [as_json(late)])
    assert handled.outcome == "stored"
    assert "stored erased" in handled.decided
    customer, blocks, sends, orders = _stored(database_url, person["id"])
    assert (customer.email, customer.first_name, customer.last_name, customer.attributes) == (
        None,
        None,
        None,
        {},
    )
    assert blocks == [{"id": person["id"]}] * len(blocks)
    # No email for it; its order counts (orders hold no personal data), as do the
    # earlier purchase's send and order.
    assert (sends, orders) == ((1, 2) if stored_before else (0, 1))
    assert customer.orders_count == orders

    after = purchase(customer=person, at=now + timedelta(minutes=1))
    [handled] = handle_bodies(runtime, [as_json(after)])
    assert handled.outcome == "stored" and "stored erased" not in handled.decided
    customer, blocks, sends, orders = _stored(database_url, person["id"])
    assert customer.email == canonical_address(person["email"])
    assert blocks[-1] != {"id": person["id"]}
    assert orders == (3 if stored_before else 2)


def test_a_forget_request_erases_what_occurred_before_it_was_made_not_before_it_was_applied(
    tmp_path: Path, database_url: str
) -> None:
    """A ``forget`` event taken from a backlog half an hour late: the customer's purchase
    made after the CRM's request is new data and is stored as usual; one made before it
    (and arriving after it) is stored erased."""
    from worker.intake.consumer import handle_bodies

    runtime = _runtime(tmp_path, database_url)
    now = runtime.clock.now()
    person = _person()
    request = {
        "id": f"forget-{uuid.uuid4().hex[:8]}",
        "type": "forget",
        "occurred_at": (now - timedelta(minutes=30)).isoformat(),
        "customer": {"id": person["id"]},
    }
    [forgot] = handle_bodies(runtime, [json.dumps(request).encode()])
    assert forgot.outcome == "stored", forgot
    before = purchase(customer=person, at=now - timedelta(minutes=35))
    after = purchase(customer=person, at=now - timedelta(minutes=25))
    handled = handle_bodies(runtime, [as_json(before), as_json(after)])
    assert ["stored erased" in h.decided for h in handled] == [True, False]
    customer, blocks, _, _ = _stored(database_url, person["id"])
    assert customer.email == canonical_address(person["email"])
    assert blocks[0] == {"id": person["id"]} and blocks[1] != {"id": person["id"]}
