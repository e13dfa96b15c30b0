"""The ``crosssell`` command line."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path
from typing import BinaryIO

import click

from worker.runtime import Runtime
from worker.settings import get_settings


def _serve(runtime_name: str) -> Runtime:
    """The process runtime, with SIGHUP reloading campaigns and metrics served if asked."""
    import signal

    from prometheus_client import start_http_server

    from triggers.loader import RuleSetError
    from worker.migrate import SchemaNotCurrent, ensure_schema
    from worker.runtime import get_runtime

    runtime = get_runtime()
    settings = runtime.settings
    try:
        ensure_schema(settings.resolved_database_url, embedded=not settings.database_url)
    except SchemaNotCurrent as exc:
        raise click.ClickException(str(exc)) from None
    try:
        runtime.rules.current()  # fail fast on bad rules at start, before taking any work
    except RuleSetError as exc:
        raise click.ClickException(f"the campaign files are not valid:\n{exc}") from None
    runtime.rules.watch_in_background()
    signal.signal(signal.SIGHUP, lambda *_: runtime.rules.request_reload())
    port = runtime.settings.metrics_port
    if port:
        start_http_server(port, addr=runtime.settings.metrics_host)
        logging.getLogger(__name__).info("%s: metrics on :%s/metrics", runtime_name, port)
    return runtime


def _logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


# Long-running processes log at INFO by default (their startup line, reloads); one-shot
# commands at WARNING, so their output is only their own result lines; the demo at ERROR,
# since its summary reports what the warnings would (dead letters, skips).
SERVICES = frozenset({"consume", "dispatch", "run", "web", "unsubscribe-mail"})
QUIET = frozenset({"demo"})


@click.group()
@click.option(
    "--log-level",
    default=None,
    help="Default: INFO for consume, dispatch, run, web, unsubscribe-mail; ERROR for demo; "
    "else WARNING.",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.pass_context
def main(ctx: click.Context, log_level: str | None) -> None:
    """crosssell: CRM events in, timely cross-sell emails out."""
    command = ctx.invoked_subcommand
    default = "INFO" if command in SERVICES else "ERROR" if command in QUIET else "WARNING"
    _logging(log_level or default)


def _revision_text(revision: str | None, docs: dict[str, str]) -> str:
    if revision is None:
        return "an empty database"
    return f"{revision} ({docs[revision]})" if docs.get(revision) else revision


@main.command()
def migrate() -> None:
    """Create or upgrade the database schema (Alembic); says from which revision to which."""
    from alembic.script import ScriptDirectory

    from worker.migrate import alembic_config, current_revision, upgrade
    from worker.startup import masked

    settings = get_settings()
    url = settings.resolved_database_url
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
    """Publish the events of a JSON Lines FILE ('-' for stdin) to the configured queue."""
    from worker.publisher import publish_lines

    report = publish_lines(get_settings(), iter(file))
    click.echo(
        f"published {report.published} event(s)"
        + (
            f", {report.unparseable} not parseable (will be dead-lettered)"
            if report.unparseable
            else ""
        )
    )


@main.command()
def consume() -> None:
    """Consume CRM events: store, decide and plan (production: one or more of these)."""
    from worker.consumer import run_consumer

    run_consumer(_serve("consume"))


@main.command()
def dispatch() -> None:
    """Enqueue due sends for the Celery workers and re-enqueue lost ones."""
    import signal

    from worker.dispatcher import run_dispatcher

    runtime = _serve("dispatch")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        run_dispatcher(runtime, stop)
    except KeyboardInterrupt:
        stop.set()


@main.command()
@click.option("--until-drained", is_flag=True, help="Stop when nothing is left to do.")
@click.option("--concurrency", default=1, show_default=True, help="Delivery threads.")
def run(until_drained: bool, concurrency: int) -> None:
    """Consumer, dispatcher and Celery worker in one process (embedded and small installs)."""
    from worker.providers import check_provider
    from worker.run import run_all

    runtime = _serve("run")
    try:
        check_provider(runtime.settings)
    except ValueError as exc:
        raise click.ClickException(f"email provider: {exc}") from None
    sys.exit(run_all(runtime, until_drained=until_drained, concurrency=concurrency))


@main.command()
def demo() -> None:
    """Run the demo shop through the whole pipeline on embedded defaults."""
    from worker.demo import run_demo

    sys.exit(run_demo(get_settings(), sys.stdout))


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--format", "output", type=click.Choice(["text", "github"]), default="text")
def lint(paths: tuple[Path, ...], output: str) -> None:
    """Validate campaign files (default: the configured campaigns directory)."""
    from triggers.loader import RuleSetError
    from worker.rendering import Renderer
    from worker.rules import load_rules

    settings = get_settings()
    try:
        rules = load_rules(settings, Renderer(settings), list(paths) or None, parallel=True)
    except RuleSetError as exc:
        for issue in exc.issues:
            if output == "github":
                where = f"{issue.path}: " if issue.path else ""
                click.echo(
                    f"::error file={issue.file},line={issue.line},col={issue.col},"
                    f"title={issue.code}::{where}{issue.message}"
                )
            else:
                click.echo(str(issue))
        click.echo(f"{len(exc.issues)} error(s)", err=True)
        sys.exit(1)
    click.echo(f"{len(rules.campaigns)} campaign(s) OK")


@main.command()
@click.option(
    "--output",
    "directory",
    type=click.Path(path_type=Path),
    default=None,
    help="Directory to write to (default: schema/ in the project).",
)
def schema(directory: Path | None) -> None:
    """Write the JSON Schemas of campaign and segment files (for editors and CI)."""
    from worker.schemas import write_schemas

    for path in write_schemas(get_settings(), directory):
        click.echo(f"wrote {path}")


@main.command()
@click.option(
    "--event",
    "event_file",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="A file holding one event (JSON, or the first line of a JSONL file).",
)
@click.option("--campaign", "campaign_id", required=True)
@click.option("--now", "now_text", default=None, help="Decide as of this ISO time.")
def explain(event_file: Path, campaign_id: str, now_text: str | None) -> None:
    """Show how each condition of a campaign evaluated for an event."""
    from datetime import datetime

    from triggers.events import InvalidEvent, parse_event
    from worker.explain import explain as explain_event
    from worker.runtime import get_runtime

    raw = event_file.read_bytes().strip()
    try:
        event = parse_event(raw)
    except InvalidEvent as bad:
        if bad.code != "not_json" or not raw:
            raise click.ClickException(f"{event_file}: {bad.code}: {bad.reason}") from None
        try:  # a JSON Lines file: explain its first event
            event = parse_event(raw.splitlines()[0])
        except InvalidEvent as first:
            raise click.ClickException(f"{event_file}: {first.code}: {first.reason}") from None
    now = datetime.fromisoformat(now_text) if now_text else None
    try:
        for line in explain_event(get_runtime(), event, campaign_id, now):
            click.echo(line)
    except LookupError as missing:
        raise click.ClickException(str(missing)) from None


@main.command()
@click.option(
    "--events",
    "events_file",
    type=click.Path(exists=True, path_type=Path),
    help="JSON Lines file of events to replay.",
)
@click.option(
    "--since",
    "since_text",
    default=None,
    help="Replay the stored event log, counting from this ISO time.",
)
def simulate(events_file: Path | None, since_text: str | None) -> None:
    """Dry run: which campaigns would fire, emails per day, what was skipped. Sends nothing."""
    from triggers.simulate import simulate as run_simulation
    from worker.runtime import get_runtime
    from worker.simulation import (
        events_from_file,
        events_from_log,
        parse_since,
        report_lines,
    )

    if (events_file is None) == (since_text is None):
        raise click.UsageError("give either --events FILE or --since TIME")
    runtime = get_runtime()
    rules = runtime.rules.current()
    problems: list[str] = []
    if events_file is not None:
        source, count_from = events_from_file(events_file, problems), None
    else:
        try:
            count_from = parse_since(str(since_text))
        except ValueError as bad:
            raise click.BadParameter(str(bad), param_hint="--since") from None
        source = events_from_log(runtime)
    from worker.progress import tracked

    replayed = tracked(source, "replaying events")
    report = run_simulation(replayed, rules, runtime.policy, count_from=count_from)
    for line in report_lines(report, [c.id for c in rules.campaigns]):
        click.echo(line)
    for problem in problems:
        click.echo(f"skipped bad event: {problem}", err=True)


@main.group()
def catalog() -> None:
    """The product catalog offers draw from."""


@catalog.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def catalog_import(file: Path) -> None:
    """Import products from CSV or JSON Lines (.jsonl); all rows or none."""
    from datetime import UTC, datetime

    from worker.catalog_import import CatalogError, parse_catalog, upsert_products
    from worker.db import transaction
    from worker.progress import progress

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
    translated = sorted({tag for row in rows for tag in row.name_i18n})
    languages = f"; names also in {', '.join(translated)}" if translated else ""
    click.echo(f"imported {count} product(s) from {file}{languages}")


@main.group()
def recommendations() -> None:
    """ "Customers who bought X also bought Y" for recommended offers."""


@recommendations.command("rebuild")
def recommendations_rebuild() -> None:
    """Recompute product affinities and bestsellers from the order history now."""
    from worker.progress import progress
    from worker.recommendations import run_rebuild

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

    from worker.runtime import get_runtime
    from worker.web import create_app

    uvicorn.run(create_app(get_runtime()), host=host, port=port, proxy_headers=True)


@main.group()
def suppressions() -> None:
    """Addresses that never get email: hard bounces, complaints, unsubscribes, manual."""


@suppressions.command("list")
@click.option("--reason", default=None, help="Only this reason (hard_bounce, complaint, …).")
def suppressions_list(reason: str | None) -> None:
    """List suppressed addresses, newest first (tab-separated)."""
    from sqlalchemy import select

    from worker.db import transaction
    from worker.models import Suppression

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

    from worker.customers import customers_with_address, withdraw_consent
    from worker.db import transaction
    from worker.models import Suppression

    address = email.strip().lower()
    if "@" not in address or any(ch in address for ch in "\r\n\t "):
        raise click.BadParameter(f"{email!r} is not an email address", param_hint="EMAIL")
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
            click.echo(f"{address} is already suppressed")
        else:
            session.add(Suppression(email=address, reason=reason, source="cli", created_at=now))
            click.echo(f"suppressed {address} ({reason})")
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

    from worker.runtime import get_runtime
    from worker.unsubscribe_mail import parse_listen, receiver

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
    logging.getLogger(__name__).warning(
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
    from worker.db import transaction
    from worker.models import Suppression

    address = email.strip().lower()
    with transaction(get_settings().resolved_database_url) as session:
        row = session.get(Suppression, address)
        if row is None:
            raise click.ClickException(f"{address} is not suppressed")
        session.delete(row)
    click.echo(f"removed {address} ({row.reason})")


@main.command()
@click.argument("campaign_id")
@click.option("--customer", "customer_id", required=True)
@click.option(
    "--locale",
    default=None,
    help="Render in this locale instead of the customer's (each locale has its own directory).",
)
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Directory (default: var/preview)."
)
def preview(campaign_id: str, customer_id: str, locale: str | None, out: Path | None) -> None:
    """Render a campaign's email for one customer: subject, HTML, text and .eml files."""
    from babel import Locale, UnknownLocaleError

    from worker.preview import preview as make_preview
    from worker.runtime import get_runtime

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
            runtime, campaign_id, customer_id, locale, out or runtime.settings.var_dir / "preview"
        )
    except LookupError as missing:
        raise click.ClickException(str(missing)) from None
    for result in results:
        for note in result.notes:
            click.echo(f"note: {note}")
        click.echo(f"wrote {result.directory}/{{subject.txt,body.html,body.txt,message.eml}}")
