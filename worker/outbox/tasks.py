"""Thin Celery tasks: they take ids and call the shell's functions, nothing more."""

from __future__ import annotations

from worker.outbox.app import app
from worker.outbox.delivery import deliver_batch as deliver_sends
from worker.process.runtime import get_runtime


@app.task(name="crosssell.deliver_batch", ignore_result=True)  # type: ignore[untyped-decorator,unused-ignore]
def deliver_batch(send_ids: list[int]) -> dict[int, str]:
    """Deliver a batch of sends; safe to run twice for the same ids (the claim decides)."""
    return deliver_sends(get_runtime(), send_ids)


@app.task(name="crosssell.deliver", ignore_result=True)  # type: ignore[untyped-decorator,unused-ignore]
def deliver(send_id: int) -> str:
    """One send: a batch of one. Kept so tasks published before the upgrade still run."""
    return deliver_sends(get_runtime(), [send_id])[send_id]


@app.task(name="crosssell.rebuild_recommendations", ignore_result=True)  # type: ignore[untyped-decorator,unused-ignore]
def rebuild_recommendations() -> int:
    """Periodic (Celery beat): recompute "customers who bought X also bought Y"."""
    # Imported here: scipy takes ~0.3 s and much memory to import, and the dispatcher
    # imports this module to publish deliver tasks.
    from worker.offers.recommendations import run_rebuild

    return run_rebuild(get_runtime().settings).pairs
