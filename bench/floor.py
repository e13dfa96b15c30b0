"""The floor: the least any pipeline must spend per email, measured in the same run.

A minimal loop, in as many processes as the pipeline ran, that for the emails the
pipeline just sent (same customers, campaigns, variants, templates, offered products and
coupons, read back from the database) builds the template context with
``worker.email.email_context.email_context``, renders it with ``worker.email.rendering.Renderer``,
builds the MIME with ``worker.email.mime.build_email`` and sends it with ``smtplib`` over one
persistent connection per process to the same sink. No database, broker or bookkeeping:
what is left is what the pipeline cannot avoid. Message-IDs start with ``<floor-`` so the
harness can tell these apart at the sink.

    python -m bench.floor [--processes 3] [--per-process 1000]

run alone, replays the demo campaigns (config/campaigns: every variant, in English,
Romanian and Italian, with the sample offers and coupons ``crosssell lint`` renders) to
``bench.sink`` on a free loopback port, and prints emails per second and the CPU time per
email of the loops (``time.process_time`` of each, summed: what a loaded machine
distorts least).
"""

from __future__ import annotations

import argparse
import multiprocessing
import queue
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from triggers.offers import Product, ResolvedOffer, bundle_offer
from worker.core.settings import Settings
from worker.decide.rules import load_rules
from worker.email.email_context import (
    Coupon,
    email_context,
    links_for,
    sample_event,
    sample_offer,
)
from worker.email.mime import Envelope, build_email, feedback_id_for
from worker.email.rendering import Renderer

KEYS = {"k1": b"a-long-random-bench-secret"}


@dataclass(frozen=True, slots=True)
class Job:
    """One email as the pipeline sent it (plain data, so it pickles to a process)."""

    campaign_id: str
    variant: str
    template: str
    customer: dict[str, Any]
    event: dict[str, Any]
    products: tuple[dict[str, Any], ...]
    coupon_code: str | None
    coupon_expires_at: datetime | None


def _offer(kind: str, campaign_offer: Any, products: tuple[dict[str, Any], ...]) -> ResolvedOffer:
    items = tuple(
        Product(
            p["sku"],
            p["name"],
            p["category"],
            Decimal(p["price"]),
            p["currency"],
            url=p["url"],
            image_url=p["image_url"],
        )
        for p in products
    )
    if kind == "bundle" and items:
        return bundle_offer(items, campaign_offer.discount_percent)
    if kind == "loyalty_bonus":
        return ResolvedOffer(
            "loyalty_bonus",
            items,
            "EUR",
            points=campaign_offer.points,
            new_categories=tuple(sorted({p.category for p in items})),
        )
    return ResolvedOffer(kind, items, items[0].currency if items else "EUR")


def _loop(jobs: list[Job], count: int, port: int, worker: int, ready: Any, took: Any) -> None:
    settings = Settings()
    renderer = Renderer(settings)
    campaigns = {c.campaign.id: c.campaign for c in load_rules(settings, renderer).campaigns}
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        smtp.ehlo()
        ready.wait()
        started, started_cpu = time.perf_counter(), time.process_time()
        for n in range(count):
            job = jobs[n % len(jobs)]
            campaign = campaigns[job.campaign_id]
            variant = next(v for v in campaign.experiment.variants if v.id == job.variant)
            coupon = (
                Coupon(
                    job.coupon_code,
                    job.coupon_expires_at,
                    getattr(campaign.offer, "discount_percent", None),
                )
                if job.coupon_code and job.coupon_expires_at
                else None
            )
            context = email_context(
                settings=settings,
                customer=job.customer,
                event=job.event,
                campaign=campaign,
                variant=variant.id,
                offer=_offer(campaign.offer.type, campaign.offer, job.products),
                links=links_for(settings, KEYS, job.customer["id"]),
                coupon=coupon,
            )
            rendered = renderer.render(
                job.template, context, job.customer.get("locale"), variant.subject
            )
            envelope = Envelope(
                send_id=n,
                sender_name=settings.sender_name,
                sender_address=settings.sender_address,
                recipient_name=job.customer.get("first_name") or "",
                recipient_address=job.customer["email"],
                reply_to=None,
                date=datetime.now(UTC),
                message_id=f"<floor-{worker}-{n}@bench>",
                unsubscribe_url=context["unsubscribe_url"],
                unsubscribe_mailto=settings.unsubscribe_mailto,
                feedback_id=feedback_id_for(campaign.id, campaign.kind, "crosssell"),
            )
            outgoing = build_email(envelope, rendered)
            smtp.sendmail(outgoing.sender, [outgoing.recipient], outgoing.data)
        took.put((time.perf_counter() - started, time.process_time() - started_cpu))


def measure_floor(jobs: list[Job], processes: int, per_process: int, port: int) -> float:
    """Emails per second of ``processes`` loops together, each sending ``per_process``
    emails; set-up (imports, rules, connecting) happens before the clock starts. The
    processes inherit the environment, so ``Settings()`` reads the bench's CROSSSELL_*."""
    return run_floor(jobs, processes, per_process, port)[0]


def run_floor(jobs: list[Job], processes: int, per_process: int, port: int) -> tuple[float, float]:
    """:func:`measure_floor`'s emails per second, and the loops' CPU seconds per email."""
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(processes)
    took = context.Queue()
    workers = [
        context.Process(target=_loop, args=(jobs, per_process, port, k, ready, took))
        for k in range(processes)
    ]
    for worker in workers:
        worker.start()
    times = []
    for _ in workers:
        while True:
            try:
                times.append(took.get(timeout=5))
                break
            except queue.Empty:
                if any(worker.exitcode for worker in workers):
                    raise RuntimeError("a floor process failed (its traceback is above)") from None
    for worker in workers:
        worker.join()
    emails = processes * per_process
    return emails / max(wall for wall, _ in times), sum(cpu for _, cpu in times) / emails


LOCALES = ("en", "ro-RO", "it-IT")


def demo_jobs() -> list[Job]:
    """One job per demo campaign, variant and locale, with the sample offer and coupon."""
    settings = Settings()
    jobs: list[Job] = []
    for compiled in load_rules(settings, Renderer(settings)).campaigns:
        campaign = compiled.campaign
        coupon = campaign.offer.coupon is not None
        products = tuple(
            {
                "sku": p.sku,
                "name": p.name,
                "category": p.category,
                "price": str(p.price),
                "currency": p.currency,
                "url": p.url,
                "image_url": p.image_url,
            }
            for p in sample_offer(campaign).items
        )
        for variant in campaign.experiment.variants:
            for locale in LOCALES:
                customer_id = f"C-FLOOR-{len(jobs)}"
                customer = {
                    "id": customer_id,
                    "email": f"floor.{len(jobs)}@example.com",
                    "first_name": "Ana",
                    "last_name": "Pop",
                    "locale": locale,
                    "timezone": "Europe/Bucharest",
                }
                jobs.append(
                    Job(
                        campaign.id,
                        variant.id,
                        variant.template,
                        customer,
                        sample_event(campaign, customer_id),
                        products,
                        "SAMPLE-CODE1" if coupon else None,
                        datetime(2026, 1, 15, tzinfo=UTC) if coupon else None,
                    )
                )
    return jobs


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_port(port: int, sink: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and sink.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the SMTP sink (python -m bench.sink) did not start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--per-process", type=int, default=1000, help="emails per process")
    args = parser.parse_args(argv)
    jobs = demo_jobs()
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="crosssell-floor-") as scratch:
        command = [sys.executable, "-m", "bench.sink", "--port", str(port)]
        sink = subprocess.Popen([*command, "--log", f"{scratch}/sink.log"])
        try:
            _wait_for_port(port, sink)
            rate, cpu = run_floor(jobs, args.processes, args.per_process, port)
        finally:
            sink.terminate()
            sink.wait(timeout=10)
    print(
        f"bench.floor: {len(jobs)} demo emails replayed, {args.processes} process(es) x "
        f"{args.per_process:,} (render + MIME + smtplib): {rate:,.0f} emails/s, "
        f"{cpu * 1000:.2f} ms CPU per email"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
