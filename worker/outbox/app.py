"""The Celery application. ``celery -A worker.outbox.app worker`` runs the deliver tasks.

Configuration is applied when Celery first reads it (``on_configure``), from the same
settings as everything else; nothing connects at import time.
"""

from __future__ import annotations

import sys
from typing import Any

from celery import Celery, bootsteps
from celery.signals import after_setup_logger, worker_process_init, worker_ready

from triggers.durations import parse_duration
from worker.core.settings import Settings
from worker.core.topology import transport_options
from worker.process.runtime import get_runtime


def celery_config(settings: Settings) -> dict[str, Any]:
    url = settings.resolved_broker_url
    return {
        "broker_url": url,
        "broker_transport_options": transport_options(url),
        "broker_connection_retry_on_startup": True,
        "task_default_queue": settings.deliver_queue,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        # A task is acknowledged only when it finished, and given back if its worker
        # died; the claim in the task makes the redelivery harmless.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # The pool the fault-injection tests prove (docs/performance.md "## Delivery":
        # prefork measured faster on a loaded machine, but is not covered by them and
        # splits the per-worker metrics); `--pool` on the command line still wins.
        "worker_pool": "threads",
        # Not cancelled: a task past its hand-over must record the provider's answer,
        # and the message redelivered meanwhile finds the send claimed and does nothing.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # Notice a dead or wedged broker connection within about 20 s, not minutes.
        "broker_heartbeat": 10,
        # After a reconnect Celery would restore the prefetch count from the task
        # threads, on a connection that is not thread-safe: with the thread pool that
        # corrupted frames and wedged workers in the RabbitMQ restart test.
        "worker_enable_prefetch_count_reduction": False,
        "task_publish_retry": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "enable_utc": True,
        "beat_schedule": {
            "rebuild-recommendations": {
                "task": "crosssell.rebuild_recommendations",
                "schedule": parse_duration(settings.recommendations_rebuild_every),
            }
        },
        "beat_schedule_filename": str(settings.var_dir / "celerybeat-schedule"),
    }


def exit_on_invalid_settings() -> None:
    """Stop ``celery -A worker.outbox.app worker|beat`` at import, before Celery boots,
    when the settings do not validate: one ``CROSSSELL_*`` line per problem on stderr,
    exit status 2, as the ``crosssell`` commands do. Later, Celery would meet the error
    inside a signal handler, which logs it as a traceback (the worker exits 1, beat keeps
    running). Only validates: the process's settings are still read on first use."""
    from pydantic import ValidationError

    from worker.core.settings import settings_error_lines

    try:
        Settings()
    except ValidationError as error:
        lines = settings_error_lines(error)
        print("crosssell: invalid settings:\n" + "\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None


exit_on_invalid_settings()
app = Celery("crosssell", include=["worker.outbox.tasks"])


@app.on_configure.connect  # type: ignore[untyped-decorator,unused-ignore]
def _configure(sender: Celery, **_: Any) -> None:
    sender.conf.update(celery_config(get_runtime().settings))


class ProviderCheck(bootsteps.Step):  # type: ignore[misc,unused-ignore]
    """A worker whose email provider lacks settings stops at start, naming the variable
    (a Celery signal handler could only log it: signals swallow exceptions)."""

    def __init__(self, parent: Any, **options: Any) -> None:
        from worker.providers import check_provider
        from worker.providers.base import ConfigurationError

        super().__init__(parent, **options)
        try:
            check_provider(get_runtime().settings)
        except ConfigurationError as exc:
            # One line naming the variable, not a 40-line traceback from Celery's boot.
            raise SystemExit(f"crosssell: {exc}") from None


app.steps["worker"].add(ProviderCheck)


class MetricsServer(bootsteps.Step):  # type: ignore[misc,unused-ignore]
    """With ``CROSSSELL_WORKER_METRICS_PORT`` set, the worker serves ``/metrics``: the
    deliveries its threads made (``crosssell_sends_total``, provider latency) and the
    outbox gauges. One registry per process: run the worker with ``--pool threads`` (or
    ``solo``); prefork children would each count apart, unseen by the server."""

    def __init__(self, parent: Any, **options: Any) -> None:
        from worker.core.metrics import serve_metrics

        super().__init__(parent, **options)
        settings = get_runtime().settings
        if settings.worker_metrics_port:
            serve_metrics(
                settings.worker_metrics_port, settings.metrics_host, settings.resolved_database_url
            )


app.steps["worker"].add(MetricsServer)


@after_setup_logger.connect  # type: ignore[untyped-decorator,unused-ignore]
def _log_format(logger: Any = None, **_: Any) -> None:
    """``CROSSSELL_LOG_FORMAT=json`` applies to ``celery -A worker.outbox.app worker`` too."""
    from worker.core.log_format import formatter

    log_format = get_runtime().settings.log_format
    if log_format == "json" and logger is not None:
        for handler in logger.handlers:
            handler.setFormatter(formatter(log_format))


@worker_ready.connect  # type: ignore[untyped-decorator,unused-ignore]
def _announce(**_: Any) -> None:
    """The Celery worker's startup line: broker, database, campaigns, provider."""
    from worker.process.startup import announce

    announce(get_runtime(), "celery worker")


@worker_ready.connect  # type: ignore[untyped-decorator,unused-ignore]
@worker_process_init.connect  # type: ignore[untyped-decorator,unused-ignore]
def _tune_collector(**_: Any) -> None:
    """Once the worker (or a prefork child) has started, what it built is frozen and the
    youngest generation collected less often, for the process's life
    (``worker.process.collector``). A worker started on another thread (tests) leaves
    its process's collector alone."""
    from worker.process.collector import on_own_process, tune_for_service

    if on_own_process():
        tune_for_service()
