"""The ``crosssell`` command line."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path
from typing import BinaryIO

import click

from worker.settings import get_settings


def _logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@click.group()
@click.option(
    "--log-level",
    default="WARNING",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
def main(log_level: str) -> None:
    """crosssell: CRM events in, timely cross-sell emails out."""
    _logging(log_level)


@main.command()
def migrate() -> None:
    """Create or upgrade the database schema (Alembic)."""
    from worker.migrate import upgrade

    settings = get_settings()
    upgrade(settings.resolved_database_url)
    click.echo("database is at the latest schema")


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
    from worker.runtime import get_runtime

    run_consumer(get_runtime())


@main.command()
def dispatch() -> None:
    """Enqueue due sends for the Celery workers and re-enqueue lost ones."""
    import signal

    from worker.dispatcher import run_dispatcher
    from worker.runtime import get_runtime

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        run_dispatcher(get_runtime(), stop)
    except KeyboardInterrupt:
        stop.set()


@main.command()
@click.option("--until-drained", is_flag=True, help="Stop when nothing is left to do.")
@click.option("--concurrency", default=1, show_default=True, help="Delivery threads.")
def run(until_drained: bool, concurrency: int) -> None:
    """Consumer, dispatcher and Celery worker in one process (embedded and small installs)."""
    from worker.run import run_all
    from worker.runtime import get_runtime

    sys.exit(run_all(get_runtime(), until_drained=until_drained, concurrency=concurrency))


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
        rules = load_rules(settings, Renderer(settings), list(paths) or None)
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
