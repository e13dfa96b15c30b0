"""The ``crosssell`` command line."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

import click

from worker.core.settings import Settings, get_settings, settings_error_lines
from worker.process.runtime import Runtime

if TYPE_CHECKING:
    from triggers.lint_issues import LintIssue


def _serve(runtime_name: str) -> Runtime:
    """The process runtime, with SIGHUP reloading campaigns and metrics served if asked."""
    import signal

    from worker.commands.migrate import SchemaNotCurrent, ensure_schema
    from worker.core.metrics import serve_metrics
    from worker.process.runtime import get_runtime

    runtime = get_runtime()
    settings = runtime.settings
    try:
        ensure_schema(settings.resolved_database_url, embedded=not settings.database_url)
    except SchemaNotCurrent as exc:
        raise click.ClickException(str(exc)) from None
    runtime.rules.current()  # fail fast on bad rules at start (RuleSetError: see the group)
    runtime.rules.watch_in_background()
    signal.signal(signal.SIGHUP, lambda *_: runtime.rules.request_reload())
    port = runtime.settings.metrics_port
    if port:
        serve_metrics(port, runtime.settings.metrics_host, settings.resolved_database_url)
        logging.getLogger(__name__).info("%s: metrics on :%s/metrics", runtime_name, port)
    return runtime


# Long-running processes log at INFO by default (their startup line, reloads); one-shot
# commands at WARNING, so their output is only their own result lines; the demo at ERROR,
# since its summary reports what the warnings would (dead letters, skips).
SERVICES = frozenset({"consume", "dispatch", "run", "web", "unsubscribe-mail"})
QUIET = frozenset({"demo"})


# Exit status of a command that cannot reach its database or broker at start (README
# "Settings"); 2 is for settings that do not validate.
UNREACHABLE_EXIT = 1
# Which broker URLs a command's kombu connection may have used, by command name; other
# commands that reach a broker publish or read events.
BROKER_URLS: dict[str, tuple[str, ...]] = {
    "dispatch": ("resolved_broker_url",),
    "run": ("resolved_events_url", "resolved_broker_url"),
}


def _first_line(exc: BaseException) -> str:
    """The innermost cause's first line: psycopg's or the socket's reason, not the
    SQLAlchemy or kombu wrapper's (whose text repeats it with a link and a traceback)."""
    while exc.__cause__ is not None or getattr(exc, "orig", None) is not None:
        exc = getattr(exc, "orig", None) or exc.__cause__  # type: ignore[assignment]
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def unreachable_line(exc: BaseException, command: str | None) -> str | None:
    """One line naming the service a command could not reach and its URL (password
    masked), or ``None`` when ``exc`` is not a failed connection."""
    import socket

    import sqlalchemy.exc
    from kombu.exceptions import OperationalError as KombuOperationalError

    from worker.process.startup import masked

    settings = get_settings()
    if isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
        if exc.statement is not None:
            return None  # a statement failed (no such table, …): connected, so not this
        from worker.core.db import sqlite_file

        database = sqlite_file(settings.resolved_database_url)
        if database is not None and not database.parent.is_dir():
            return (
                f"crosssell: no database at {database} (no directory {database.parent}): "
                "run `crosssell migrate` to create it, or check CROSSSELL_DATABASE_URL "
                "and CROSSSELL_VAR_DIR"
            )
        where = f"the database {masked(settings.resolved_database_url)}"
    elif isinstance(exc, BrokenPipeError):
        return None  # the reader of our output went away (`| head`), not a service
    elif isinstance(exc, KombuOperationalError | ConnectionError | socket.gaierror | TimeoutError):
        names = BROKER_URLS.get(command or "", ("resolved_events_url",))
        urls = dict.fromkeys(masked(str(getattr(settings, name))) for name in names)
        where = f"the message broker {' / '.join(urls)}"
    else:
        return None
    return f"crosssell: cannot connect to {where}: {_first_line(exc)}"


def unmigrated_line(exc: BaseException) -> str | None:
    """One line saying the database needs ``crosssell migrate`` when a statement failed
    on a schema older than the code (a missing table or column), else ``None``."""
    import sqlalchemy.exc

    if not isinstance(exc, sqlalchemy.exc.DBAPIError) or exc.statement is None:
        return None
    from worker.commands.migrate import pending
    from worker.process.startup import masked

    url = get_settings().resolved_database_url
    try:
        behind = pending(url)
    except Exception:  # the database went away meanwhile: the original error stands
        return None
    if not behind:
        return None
    return (
        f"crosssell: the database {masked(url)} is not at the latest schema revision: "
        "run `crosssell migrate` first"
    )


FIRST_YEAR, LAST_YEAR = 1970, 9000
"""The years a time option may name: events are not older than 1970 (the event rules),
and the commands add days and windows to the time, which must stay within datetime's
range (year 9999)."""


class IsoTime(click.ParamType[datetime | str, Any]):
    """Every time option of every command: an ISO 8601 time with a zone (``…Z`` or
    ``…+02:00``), one rule and one message, so a mistyped time is a usage error, never a
    traceback, and a zone-less time is never silently read in some zone. ``now=True``
    also takes ``now`` (returned as is: the command reads its runtime's clock);
    ``utc=True`` reads a time or date without a zone as UTC, for the options whose help
    documents that default (``report``)."""

    name = "TIME"

    def __init__(self, *, now: bool = False, utc: bool = False) -> None:
        self.now = now
        self.utc = utc

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime | str:
        from datetime import UTC

        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        if self.now and text == "now":
            return text
        example = "e.g. 2026-11-24T10:30Z or 2026-11-24T10:30+02:00"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            self.fail(f"{text!r} is not an ISO 8601 time ({example})", param, ctx)
        if moment.tzinfo is None:
            if not self.utc:
                self.fail(f"{text!r} has no time zone: give one, {example}", param, ctx)
            moment = moment.replace(tzinfo=UTC)
        try:
            year = moment.astimezone(UTC).year
        except OverflowError:  # 0001-01-01T00:00+01:00 is before datetime.min in UTC
            year = 0
        if not FIRST_YEAR <= year <= LAST_YEAR:
            self.fail(f"{text!r} is not between {FIRST_YEAR} and {LAST_YEAR}", param, ctx)
        return moment


class _CrosssellGroup(click.Group):
    """Settings that do not validate end the command with one line per bad variable (its
    ``CROSSSELL_`` name and why), exit status 2, instead of pydantic's traceback; a
    database or broker that cannot be reached, with one line naming it, exit status 1;
    a database whose schema is behind the code, with one line saying to migrate, exit 1;
    campaign files that do not load (any command that needs the rule set), with
    ``Error: the campaign files are not valid:`` and the lint lines, exit 1."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Click's own ``main``, and one line instead of a traceback when the output
        cannot be written — a disk is full (``crosssell … > /dev/full``), or standard
        output is no writable descriptor (``1<file``) — help texts included; exit 1."""
        try:
            return super().main(*args, **kwargs)
        except OSError as error:
            if error.errno not in _FULL and not _raised_writing_output(error):
                raise
            _give_up_output(error)
            sys.exit(1)

    def invoke(self, ctx: click.Context) -> Any:
        from pydantic import ValidationError

        from triggers.lint_issues import RuleSetError

        try:
            return super().invoke(ctx)
        except RuleSetError as exc:
            raise click.ClickException(f"the campaign files are not valid:\n{exc}") from None
        except ValidationError as error:
            if error.title != "Settings":
                raise
            lines = settings_error_lines(error)
            click.echo("crosssell: invalid settings:\n" + "\n".join(lines), err=True)
            ctx.exit(2)
        except Exception as error:
            line = unreachable_line(error, ctx.invoked_subcommand) or unmigrated_line(error)
            if line is None:
                raise
            click.echo(line, err=True)
            ctx.exit(UNREACHABLE_EXIT)


# A disk or quota that is full, or a device that cannot take more (``> /dev/full``).
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _raised_writing_output(error: OSError) -> bool:
    """Whether ``error`` came from writing the command's output (``click.echo``), where
    any error number (``EBADF``, ``EIO`` …) means the output is not writable."""
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and frame.tb_frame.f_code is click.utils.echo.__code__


def _give_up_output(error: OSError) -> None:
    """One line on stderr instead of a traceback; standard output, which may be what is
    full, is pointed at ``/dev/null`` so that the interpreter's last flush of it at exit
    does not fail again (the standard library's advice for a closed pipe)."""
    where = error.filename or "standard output"
    with contextlib.suppress(OSError):  # standard error may be what cannot be written
        click.echo(f"crosssell: cannot write {where}: {error.strerror}", err=True)
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real descriptor (a test runner's stream)
        pass


@click.group(cls=_CrosssellGroup)
@click.option(
    "--log-level",
    default=None,
    help="Default: INFO for consume, dispatch, run, web, unsubscribe-mail; ERROR for demo; "
    "else WARNING.",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="text, or json: one object per line [default: CROSSSELL_LOG_FORMAT, else text]",
)
@click.pass_context
def main(
    ctx: click.Context, log_level: str | None, log_format: Literal["text", "json"] | None
) -> None:
    """crosssell: CRM events in, timely cross-sell emails out."""
    from worker.core.log_format import configure_logging

    command = ctx.invoked_subcommand
    default = "INFO" if command in SERVICES else "ERROR" if command in QUIET else "WARNING"
    configure_logging(log_level or default, log_format or get_settings().log_format)


def _revision_text(revision: str | None, docs: dict[str, str]) -> str:
    if revision is None:
        return "an empty database"
    return f"{revision} ({docs[revision]})" if docs.get(revision) else revision


@main.command()
def migrate() -> None:
    """Create or upgrade the database schema (Alembic); says from which revision to which."""
    from alembic.script import ScriptDirectory

    from worker.commands.migrate import alembic_config, current_revision, upgrade
    from worker.core.db import sqlite_parent
    from worker.process.startup import masked

    settings = get_settings()
    url = settings.resolved_database_url
    sqlite_parent(url)  # migrate is the command that creates an embedded database
    script = ScriptDirectory.from_config(alembic_config(url))
    docs = {rev.revision: str(rev.doc or "") for rev in script.walk_revisions()}
    before = current_revision(url)
    upgrade(url)
    after = current_revision(url)
    where = masked(url)
    if before == after:
        click.echo(f"{where}: already at {_revision_text(after, docs)}; nothing to do")
        return
    applied = [rev for rev in script.iterate_revisions(after, before)]
    click.echo(
        f"{where}: migrated from {_revision_text(before, docs)} "
        f"to {_revision_text(after, docs)} ({len(applied)} migration(s))"
    )


@main.command()
@click.argument("file", type=click.File("rb"))
def publish(file: BinaryIO) -> None:
    """Publish the events of a JSON Lines FILE ('-' for stdin) to the configured queue.

    Each line is validated as the consumer would; invalid lines are reported on stderr
    with their line numbers and not published, and the exit status is then 1. A line
    whose event id an earlier line had is published (the consumer drops it as a
    duplicate) and named on stderr as a warning.
    """
    from worker.intake.publisher import bounded_lines, publish_lines

    report = publish_lines(get_settings(), bounded_lines(file))
    notes = [(bad.line, f"{bad.code}: {bad.reason}") for bad in report.rejected]
    notes += [
        (
            again.line,
            f"warning: event id {again.event_id!r} repeats line {again.first_line}'s; the "
            "consumer stores the first and drops this one as a duplicate",
        )
        for again in report.repeated
    ]
    for line, note in sorted(notes):
        click.echo(f"line {line}: {note}", err=True)
    click.echo(
        f"published {report.published} event(s)"
        + (f", {len(report.repeated)} repeating an earlier id" if report.repeated else "")
        + (f", {len(report.rejected)} invalid line(s) not published" if report.rejected else "")
    )
    if report.rejected:
        sys.exit(1)


@main.command()
def consume() -> None:
    """Consume CRM events: store, decide and plan (production: one or more of these)."""
    from worker.intake.consumer import run_consumer

    run_consumer(_serve("consume"))


@main.command()
def dispatch() -> None:
    """Enqueue due sends for the Celery workers, re-enqueue lost ones, publish activity."""
    import signal

    from worker.outbox.dispatcher import run_dispatcher
    from worker.records.activity import start_activity_publisher

    runtime = _serve("dispatch")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    activity = start_activity_publisher(runtime.settings, stop)
    try:
        run_dispatcher(runtime, stop)
    except KeyboardInterrupt:
        stop.set()
    activity.join(timeout=10)


@main.command()
@click.option("--until-drained", is_flag=True, help="Stop when nothing is left to do.")
@click.option("--concurrency", default=1, show_default=True, help="Delivery threads.")
def run(until_drained: bool, concurrency: int) -> None:
    """Consumer, dispatcher and Celery worker in one process (embedded and small installs)."""
    from worker.commands.run import run_all
    from worker.providers import check_provider
    from worker.records.activity import start_activity_publisher

    runtime = _serve("run")
    try:
        check_provider(runtime.settings)
    except ValueError as exc:
        raise click.ClickException(f"email provider: {exc}") from None
    stop = threading.Event()
    activity = start_activity_publisher(runtime.settings, stop)
    try:
        code = run_all(runtime, until_drained=until_drained, concurrency=concurrency)
    finally:
        stop.set()
        activity.join(timeout=10)
    sys.exit(code)


@main.command()
def demo() -> None:
    """Run the demo shop through the whole pipeline on embedded defaults."""
    from worker.commands.demo import run_demo

    sys.exit(run_demo(get_settings(), sys.stdout))


def _print_issues(issues: Sequence[LintIssue], output: str) -> None:
    for issue in issues:
        if output == "github":
            where = f"{issue.path}: " if issue.path else ""
            click.echo(
                f"::{issue.level} file={issue.file},line={issue.line},col={issue.col},"
                f"title={issue.code}::{where}{issue.message}"
            )
        else:
            click.echo(str(issue))


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--format", "output", type=click.Choice(["text", "github"]), default="text")
@click.option("--strict", is_flag=True, help="Exit 1 on warnings too (for CI).")
def lint(paths: tuple[Path, ...], output: str, strict: bool) -> None:
    """Validate campaign files (default: the configured campaigns directory).

    Errors exit 1; warnings (an email that sends but reads badly for some customers) are
    printed the same way and exit 0, unless --strict.
    """
    from triggers.lint_issues import RuleSetError
    from worker.decide.rule_files import campaign_files
    from worker.decide.rules import load_rules
    from worker.email.rendering import Renderer

    settings = get_settings()
    # Nothing to lint is a mistyped path far more often than a project without
    # campaigns, and "0 campaign(s) OK" would pass a CI check that checks nothing.
    if not campaign_files(list(paths) or [settings.campaigns_dir]):
        where = ", ".join(map(str, paths)) if paths else str(settings.campaigns_dir)
        raise click.ClickException(f"no campaign files (*.yaml, *.yml) in {where}")
    try:
        rules = load_rules(settings, Renderer(settings), list(paths) or None, parallel=True)
    except RuleSetError as exc:
        _print_issues(exc.issues, output)
        warnings = len(exc.issues) - len(exc.errors)
        summary = f"{len(exc.errors)} error(s)" + (f", {warnings} warning(s)" if warnings else "")
        click.echo(summary, err=True)
        sys.exit(1)
    _print_issues(rules.warnings, output)
    if strict and rules.warnings:
        click.echo(f"{len(rules.warnings)} warning(s), failing with --strict", err=True)
        sys.exit(1)
    if rules.warnings:
        click.echo(f"{len(rules.warnings)} warning(s)", err=True)
    click.echo(f"{len(rules.campaigns)} campaign(s) OK")


@main.command()
@click.option(
    "--output",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory to write to (default: schema/ in the project).",
)
def schema(directory: Path | None) -> None:
    """Write the JSON Schemas of campaign and segment files (for editors and CI)."""
    from worker.commands.schemas import write_schemas

    try:
        written = write_schemas(get_settings(), directory)
    except OSError as exc:
        raise click.ClickException(f"cannot write to {exc.filename}: {exc.strerror}") from None
    for path in written:
        click.echo(f"wrote {path}")


@main.command()
@click.option(
    "--event",
    "event_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A file holding one event (JSON, or the first line of a JSONL file).",
)
@click.option("--campaign", "campaign_id", required=True)
@click.option(
    "--now",
    type=IsoTime(),
    default=None,
    help="Decide as of this ISO time, with a zone (e.g. 2026-11-24T10:30Z) "
    "[default: the event's occurred_at].",
)
def explain(event_file: Path, campaign_id: str, now: datetime | None) -> None:
    """Show how each condition of a campaign evaluated for an event."""
    from triggers.events import InvalidEvent
    from worker.commands.explain import event_from_file
    from worker.commands.explain import explain as explain_event
    from worker.process.runtime import get_runtime

    runtime = get_runtime()
    try:
        event = event_from_file(event_file, runtime.rules.current().attributes)
    except InvalidEvent as bad:
        raise click.ClickException(f"{event_file}: {bad.code}: {bad.reason}") from None
    try:
        for line in explain_event(runtime, event, campaign_id, now):
            click.echo(line)
    except LookupError as missing:
        raise click.ClickException(str(missing)) from None


@main.command()
@click.option(
    "--events",
    "events_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON Lines file of events to replay.",
)
@click.option(
    "--since",
    type=IsoTime(),
    default=None,
    help="Replay the stored event log, counting from this ISO time (with a zone).",
)
@click.option(
    "--at",
    type=IsoTime(now=True),
    default=None,
    help="Decide every event at this ISO time, with a zone ('now': the worker's clock), in "
    "arrival order, as the worker would ingest them; default: each event at its own time.",
)
def simulate(events_file: Path | None, since: datetime | None, at: datetime | str | None) -> None:
    """Dry run: which campaigns would fire, emails per day, what was skipped. Sends nothing."""
    from worker.commands.simulation import (
        events_from_file,
        events_from_log,
        report_lines,
        run_simulation,
    )
    from worker.process.runtime import get_runtime

    if (events_file is None) == (since is None):
        raise click.UsageError("give either --events FILE or --since TIME")
    runtime = get_runtime()
    problems: list[str] = []
    clock = runtime.clock.now() if isinstance(at, str) else at  # str: "now"
    if events_file is not None:
        declared = runtime.rules.current().attributes
        source, count_from = events_from_file(events_file, problems, declared), None
    else:
        source, count_from = events_from_log(runtime), since
    from worker.commands.progress import tracked

    replayed = tracked(source, "replaying events")
    report, standing = run_simulation(runtime, replayed, count_from=count_from, at=clock)
    campaigns = [c.id for c in runtime.rules.current().campaigns]
    for line in report_lines(report, campaigns, standing):
        click.echo(line)
    for problem in problems:
        click.echo(f"skipped line: {problem}", err=True)


@main.command()
@click.option(
    "--since", type=IsoTime(utc=True), default=None, help="Touches from this ISO time (UTC)."
)
@click.option(
    "--until", type=IsoTime(utc=True), default=None, help="Touches before this ISO time (UTC)."
)
@click.option("--campaign", "campaign_id", default=None, help="Only this campaign.")
@click.option(
    "--format", "output", type=click.Choice(["table", "csv", "json", "html"]), default="table"
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, allow_dash=True),
    default=None,
    help="File to write the report to (as export's --output: docs/events.md); default, "
    "or '-': standard output.",
)
@click.option("--no-reconcile", is_flag=True, help="Skip attributing late purchases first.")
def report(
    since: datetime | None,
    until: datetime | None,
    campaign_id: str | None,
    output: str,
    out: str | None,
    no_reconcile: bool,
) -> None:
    """Each campaign variant against its holdout: conversions, lift, revenue, verdict."""
    from worker.commands.report import run_report

    try:
        text = run_report(
            since.isoformat() if since else None,
            until.isoformat() if until else None,
            campaign_id,
            output,
            not no_reconcile,
        )
    except ValueError as bad:
        raise click.UsageError(str(bad)) from None
    if out is None or out == "-":
        click.echo(text, nl=False)
    else:
        from worker.core.files import names_a_descriptor

        # Aggregates only, no personal data: a new file gets the umask's mode.
        _write_to(out, text, "--out", private=False)
        # Not into the report itself when it went to standard output by name.
        click.echo(f"report written to {out}", err=names_a_descriptor(out))


@main.group()
def catalog() -> None:
    """The product catalog offers draw from."""


@catalog.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def catalog_import(file: Path) -> None:
    """Import products from CSV or JSON Lines (.jsonl); all rows or none."""
    from datetime import UTC, datetime

    from worker.commands.progress import progress
    from worker.core.db import transaction
    from worker.offers.catalog_import import (
        CatalogError,
        language_list,
        parse_catalog,
        upsert_products,
    )

    try:
        with progress(f"reading {file.name}"):
            rows = parse_catalog(file)
    except CatalogError as bad:
        for error in bad.errors[:100]:
            click.echo(f"{file}:{error.line}: {error.column}: {error.message}", err=True)
        more = len(bad.errors) - 100
        raise click.ClickException(
            f"{len(bad.errors)} error(s){f' ({more} not shown)' if more > 0 else ''}; "
            "nothing was imported"
        ) from None
    settings = get_settings()
    with (
        progress("importing products", total=len(rows)) as advance,
        transaction(settings.resolved_database_url) as session,
    ):
        count = upsert_products(session, rows, datetime.now(UTC), on_batch=advance)
    translated = {tag for row in rows for tag in row.name_i18n}
    languages = f"; names also in {language_list(translated)}" if translated else ""
    click.echo(f"imported {count} product(s) from {file}{languages}")


@main.group()
def recommendations() -> None:
    """ "Customers who bought X also bought Y" for recommended offers."""


@recommendations.command("rebuild")
def recommendations_rebuild() -> None:
    """Recompute product affinities and bestsellers from the order history now."""
    from worker.commands.progress import progress
    from worker.offers.recommendations import run_rebuild

    with progress("rebuilding product affinities"):
        report = run_rebuild(get_settings())
    click.echo(
        f"rebuilt from {report.customers} customers and {report.products} products: "
        f"{report.pairs} product pairs kept, in {report.seconds:.1f} s"
    )


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True)
def web(host: str, port: int) -> None:
    """Unsubscribe and preference pages, /healthz and /metrics (ASGI, uvicorn)."""
    import uvicorn

    from worker.core.metrics import install_outbox_gauges
    from worker.process.runtime import get_runtime
    from worker.process.startup import announce
    from worker.web.web import create_app

    runtime = get_runtime()
    install_outbox_gauges(runtime.settings.resolved_database_url)
    runtime.rules.current()  # loads the rules: crosssell_campaigns_active on /metrics
    announce(runtime, "web")
    uvicorn.run(create_app(runtime), host=host, port=port, proxy_headers=True)


@main.group()
def suppressions() -> None:
    """Addresses that never get email: hard bounces, complaints, unsubscribes, manual."""


@suppressions.command("list")
@click.option("--reason", default=None, help="Only this reason (hard_bounce, complaint, …).")
def suppressions_list(reason: str | None) -> None:
    """List suppressed addresses, newest first (tab-separated)."""
    from sqlalchemy import select

    from worker.core.db import transaction
    from worker.core.models import Suppression

    query = select(Suppression).order_by(Suppression.created_at.desc())
    if reason:
        query = query.where(Suppression.reason == reason)
    with transaction(get_settings().resolved_database_url) as session:
        for row in session.scalars(query):
            click.echo(
                f"{row.email}\t{row.reason}\t{row.source or ''}\t{row.created_at:%Y-%m-%d %H:%M}"
            )


@suppressions.command("add")
@click.argument("email")
@click.option("--reason", default="manual", show_default=True)
def suppressions_add(email: str, reason: str) -> None:
    """Never email EMAIL again (until removed).

    Unless the reason is hard_bounce (a fact about the address, not a wish of the
    person), the customers who have this address are also opted out in their consent
    history (source cli), so the opt-out follows them to a new address.
    """
    from datetime import UTC, datetime

    from triggers.addresses import InvalidAddress, suppression_key
    from worker.core.db import transaction
    from worker.core.models import Suppression
    from worker.records.customers import customers_with_address, withdraw_consent

    try:
        address = suppression_key(email)
    except InvalidAddress as exc:
        shown = email if len(email) <= 80 else f"{email[:80]}… ({len(email)} characters)"
        raise click.BadParameter(
            f"{shown!r} is not an email address: {str(exc)[:200]}", param_hint="EMAIL"
        ) from None
    now = datetime.now(UTC)
    with transaction(get_settings().resolved_database_url) as session:
        withdrawn = []
        if reason != "hard_bounce":
            for customer in customers_with_address(session, address):
                if withdraw_consent(
                    session, customer, "cli", now, detail=f"suppressions add: {reason}"
                ):
                    withdrawn.append(customer.id)
        if session.get(Suppression, address) is not None:
            said = f"{address} is already suppressed"
        else:
            session.add(Suppression(email=address, reason=reason, source="cli", created_at=now))
            said = f"suppressed {address} ({reason})"
    # Said after the commit: an output that cannot be written must not undo the change.
    click.echo(said)
    for customer_id in withdrawn:
        click.echo(f"consent withdrawn for customer {customer_id}")


@main.command("unsubscribe-mail")
@click.option(
    "--listen",
    default="127.0.0.1:2525",
    show_default=True,
    help="HOST:PORT to accept the unsubscribe mail on ([::1]:2525 for IPv6).",
)
@click.option("--lmtp", is_flag=True, help="Speak LMTP (RFC 2033) instead of SMTP.")
def unsubscribe_mail(listen: str, lmtp: bool) -> None:
    """Receive List-Unsubscribe mailto requests (SMTP or LMTP) and opt the senders out."""
    import signal

    from worker.process.runtime import get_runtime
    from worker.web.unsubscribe_mail import parse_listen, receiver

    try:
        host, port = parse_listen(listen)
    except ValueError as bad:
        raise click.BadParameter(str(bad), param_hint="--listen") from None
    runtime = get_runtime()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    controller = receiver(runtime, host, port, lmtp=lmtp)
    controller.start()
    logging.getLogger(__name__).info(
        "unsubscribe mail receiver (%s) on %s:%s for %s",
        "LMTP" if lmtp else "SMTP",
        host,
        port,
        runtime.settings.unsubscribe_mailto,
    )
    try:
        stop.wait()
    finally:
        controller.stop()


@suppressions.command("remove")
@click.argument("email")
def suppressions_remove(email: str) -> None:
    """Allow email to EMAIL again (consent is still required)."""
    from triggers.addresses import lookup_key
    from worker.core.db import transaction
    from worker.core.models import Suppression
    from worker.records.privacy import suppression_keys

    address = lookup_key(email)
    with transaction(get_settings().resolved_database_url) as session:
        rows = [
            row
            for key in suppression_keys(address)
            if (row := session.get(Suppression, key)) is not None
        ]
        if not rows:
            raise click.ClickException(f"{address} is not suppressed")
        for row in rows:  # the address itself, and its hash if its customer was forgotten
            session.delete(row)
    click.echo(f"removed {address} ({', '.join(row.reason for row in rows)})")


@main.command()
@click.argument("campaign_id")
@click.option(
    "--customer",
    "customer_id",
    default=None,
    help="A customer in the database (default: the sample customer lint uses; no database).",
)
@click.option(
    "--locale",
    default=None,
    help="Render in this locale instead of the customer's (each locale has its own directory).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory (default: var/preview).",
)
@click.option(
    "--screenshot",
    "screenshots",
    is_flag=True,
    help="Also write screenshot-800.png and screenshot-375.png (headless Chromium).",
)
def preview(
    campaign_id: str,
    customer_id: str | None,
    locale: str | None,
    out: Path | None,
    screenshots: bool,
) -> None:
    """Render a campaign's email for one customer: subject, HTML, text and .eml files."""
    from babel import Locale, UnknownLocaleError

    from worker.commands.preview import preview as make_preview
    from worker.process.runtime import get_runtime

    if locale is not None:
        try:
            Locale.parse(locale.replace("-", "_"))
        except (ValueError, UnknownLocaleError):
            raise click.BadParameter(
                f"{locale!r} is not a locale (like ro-RO or it)", param_hint="--locale"
            ) from None
    runtime = get_runtime()
    try:
        results = make_preview(
            runtime,
            campaign_id,
            customer_id,
            locale,
            out or runtime.settings.var_dir / "preview",
            screenshots,
        )
    except (LookupError, RuntimeError) as problem:
        raise click.ClickException(str(problem)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write to {exc.filename}: {exc.strerror}") from None
    for result in results:
        for note in result.notes:
            click.echo(f"note: {note}")
        files = "subject.txt,body.html,body.txt,message.eml"
        if screenshots:
            files += ",screenshot-800.png,screenshot-375.png"
        click.echo(f"wrote {result.directory}/{{{files}}}")


def _check_customer_id(customer_id: str) -> None:
    """A usage error (exit 2) for an id no event could carry (the events' identifier
    rules), before it is stored or echoed."""
    from pydantic import ValidationError

    from triggers.events import ForgetCustomer

    try:
        ForgetCustomer.model_validate({"id": customer_id})
    except ValidationError as invalid:
        reasons = "; ".join(
            error["msg"].removeprefix("Value error, ")
            for error in invalid.errors(include_input=False)
        )
        raise click.BadParameter(reasons, param_hint="CUSTOMER_ID") from None


@main.command()
@click.argument("customer_id")
def forget(customer_id: str) -> None:
    """Erase CUSTOMER_ID's personal data; anonymised rows stay, so totals do not change.
    An id that no event could carry (empty, spaces around it, a control character, over
    128 characters: the events' identifier rules) is a usage error: nothing is recorded
    for it."""
    from datetime import UTC, datetime

    from worker.records.privacy import forget_now

    _check_customer_id(customer_id)
    report = forget_now(get_settings(), customer_id, datetime.now(UTC))
    if report is None:
        raise click.ClickException(
            f"customer {customer_id} is not known; recorded as forgotten, so its events"
            " from before now that arrive later are stored erased"
        )
    click.echo(
        f"forgot customer {customer_id}: {report.addresses} address(es) replaced by their "
        f"keyed hash ({report.suppressions} suppression(s), {report.consent_records} consent "
        f"record(s), {report.webhook_events} webhook record(s)); {report.events} event(s) "
        f"cut to the customer id; {report.sends_scrubbed} send detail(s) scrubbed; "
        f"{report.sends_cancelled} waiting send(s) skipped"
    )


@main.command()
@click.argument("customer_id")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True),
    default="-",
    show_default=True,
    help="File to write the JSON to ('-': standard output); written whole, readable by "
    "its owner only (it holds personal data); its directory is made if missing.",
)
def export(customer_id: str, output: str) -> None:
    """Write everything held about CUSTOMER_ID as one JSON document."""
    import json

    from worker.core.db import transaction
    from worker.records.privacy import export_customer, forget_key

    _check_customer_id(customer_id)
    settings = get_settings()
    with transaction(settings.resolved_database_url) as session:
        document = export_customer(session, customer_id, forget_key(settings))
    if document is None:
        raise click.ClickException(f"customer {customer_id} is not known")
    text = json.dumps(document, ensure_ascii=False, indent=2) + "\n"
    if output == "-":
        click.echo(text, nl=False)
        return
    _write_to(output, text, "--output", private=True)


def _write_to(name: str, text: str, option: str, *, private: bool) -> None:
    """A command's output to the file ``name`` (``worker.core.files.write_output``), its
    failures as the CLI says them: a reader that went away (``/dev/stdout | head``)
    quietly, exit 1; a name that can only be a directory's, a usage error of ``option``;
    anything else, one line naming the file (or the directory at fault), exit 1."""
    from worker.core.files import write_output

    try:
        write_output(name, text.encode("utf-8"), private=private)
    except BrokenPipeError:
        sys.exit(1)
    except IsADirectoryError as exc:
        raise click.BadParameter(f"{name!r}: {exc.strerror}", param_hint=option) from None
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename not in (None, name) else ""
        raise click.ClickException(f"cannot write {name!r}: {where}{exc.strerror}") from None


@main.command()
@click.option("--ambiguous", "ambiguous_limit", default=10, show_default=True, help="List at most.")
def status(ambiguous_limit: int) -> None:
    """The pipeline at a glance: backlog, due and queued sends, recent failures, rules."""
    from datetime import UTC, datetime

    from triggers.lint_issues import RuleSetError
    from worker.commands.run import waiting_events
    from worker.commands.status import outbox_status, rules_summary, status_lines
    from worker.core.db import transaction
    from worker.decide.rules import load_rules
    from worker.email.rendering import Renderer
    from worker.process.runtime import Runtime

    settings = get_settings()
    now = datetime.now(UTC)
    with transaction(settings.resolved_database_url) as session:
        report = outbox_status(session, now, ambiguous_limit)
    try:
        waiting: int | None = waiting_events(Runtime(settings))
    except Exception:  # no broker, or the queue not declared yet: say so, do not fail
        waiting = None
    campaigns: int | None = None
    problems: int | None = None
    try:
        campaigns = len(load_rules(settings, Renderer(settings), None, parallel=True).campaigns)
    except RuleSetError as exc:
        problems = len(exc.issues)
    summary = rules_summary(settings, campaigns, problems, now)
    for line in status_lines(report, now, waiting, summary, settings.activity_publish):
        click.echo(line)


@main.group()
def sends() -> None:
    """The outbox: what is waiting, what failed, and why."""


@sends.command("list")
@click.option(
    "--status",
    "status_name",
    type=click.Choice(["planned", "queued", "sending", "failed", "skipped", "sent", "held_out"]),
    default="planned",
    show_default=True,
)
@click.option("--campaign", default=None, help="Only this campaign id.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
def sends_list(status_name: str, campaign: str | None, limit: int) -> None:
    """List sends in a status (tab-separated): planned ones with why they wait, failed
    ones with the provider's answer (addresses redacted). An unknown --campaign (neither
    in the campaign files nor in the sends) is a usage error, not an empty list. When
    more sends match than --limit, a note on stderr says so (the list itself stays
    tab-separated rows for scripts)."""
    from worker.commands.report import check_campaign
    from worker.commands.status import list_sends, send_lines
    from worker.core.db import transaction

    settings = get_settings()
    with transaction(settings.resolved_database_url) as session:
        rows = list_sends(session, status_name, campaign, limit + 1)
        if campaign is not None and not rows:
            try:
                check_campaign(session, _configured_campaign_ids(settings), campaign)
            except ValueError as unknown:
                raise click.UsageError(str(unknown)) from None
    more = len(rows) > limit
    for line in send_lines(rows[:limit], status_name):
        click.echo(line)
    if more:
        click.echo(
            f"(the first {limit} {status_name} sends"
            + (f" of campaign {campaign}" if campaign is not None else "")
            + "; more are not shown: --limit N shows up "
            "to N, at most 10,000)",
            err=True,
        )


def _configured_campaign_ids(settings: Settings) -> list[str]:
    """The ids of the campaign files as they load now; none when they do not load (the
    sends' own campaign ids still count: see ``check_campaign``)."""
    from triggers.lint_issues import RuleSetError
    from worker.decide.rules import load_rules
    from worker.email.rendering import Renderer

    try:
        rules = load_rules(settings, Renderer(settings), None, parallel=True)
    except RuleSetError:
        return []
    return [compiled.id for compiled in rules.campaigns]


@sends.command("release")
@click.argument("send_ids", nargs=-1, required=True, type=click.IntRange(1, 2**63 - 1))
def sends_release(send_ids: tuple[int, ...]) -> None:
    """Send again sends reported ambiguous (or stuck ``sending``) whose message the
    provider's log shows never arrived: they go back to the outbox, due now. Any other
    status is refused (exit 1). See docs/delivery.md, "The ambiguous window"."""
    from worker.core.clock import SystemClock
    from worker.core.db import engine_for
    from worker.outbox.claims import release_by_operator

    url = get_settings().resolved_database_url
    refused = False
    for answer in release_by_operator(engine_for(url), send_ids, SystemClock().now()):
        if answer.released:
            click.echo(f"send {answer.send_id}: {answer.found} → planned, due now")
        elif answer.found is None:
            refused = True
            click.echo(f"send {answer.send_id}: no such send")
        else:
            refused = True
            click.echo(
                f"send {answer.send_id}: is {answer.found}; only failed/ambiguous or "
                "sending sends can be released"
            )
    if refused:
        sys.exit(1)
