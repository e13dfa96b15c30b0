"""Render + MIME build throughput for the shipped templates, next to the stdlib baseline.

    python -m bench.mime

For each demo campaign (config/campaigns) and locale (en, ro-RO, it-IT) the email is
rendered with a realistic context, then built by ``worker.email.mime.build_email`` (the one
builder every provider and preview use: bytes, envelope and API fields) and, in the same
run, as the same message through the standard library's ``email.message.EmailMessage``
(``policy.SMTP``), the baseline. Prints messages per second on one core for each step,
for render + build together, and the builder's ratio to the baseline; next to each rate,
the CPU time per message of the same round (``time.process_time``), the figure a loaded
machine distorts least. Every message has a new recipient, name and address alike, so
no header of it is cached. Target: at least 2,000 messages per second for the build
alone.

    python -m bench.mime --count 500    # fewer messages per round (default 2,000)

With ``--threads N`` it measures instead what a Celery worker's threads spend per email:
N threads render, build and send (``SMTPProvider.send``, pool of N, to the PIPELINING
sink of ``bench.smtp`` in its own process) emails whose customer has a first name of
its own (so the subject, the body and the recipient are new to every cache, as they
are in production), and prints this process's CPU time per email, rounds alternating
with ``--rounds``. ``--cpu-clock-ab`` renders only, alternating rounds with the
budget's ``time.thread_time`` and with a constant in its place (no time limit: for the
measurement only), to tell the clock's cost from a profiler's view of it.

    python -m bench.mime --threads 8 --per-thread 100 --rounds 5
    python -m bench.mime --threads 8 --cpu-clock-ab
"""

from __future__ import annotations

import argparse
import itertools
import threading
import time
import types
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path
from statistics import median
from tempfile import TemporaryDirectory
from typing import Any

from bench.smtp import Sink
from triggers.addresses import parse_address
from worker.core.settings import Settings
from worker.decide.rules import load_rules
from worker.email import template_sandbox
from worker.email.email_context import sample_context
from worker.email.mime import Envelope, build_email, clear_caches, feedback_id_for, message_id_for
from worker.email.rendering import RenderedEmail, Renderer
from worker.providers.smtp import SMTPProvider

LOCALES = ("en", "ro-RO", "it-IT")
TARGET = 2000.0
COUNT = 2000
BUILDER = "MIME build only (worker.email.mime.build_email, the one builder)"
BASELINE = "MIME build only, stdlib EmailMessage (baseline)"


def build_with_email_message(envelope: Envelope, email: RenderedEmail) -> bytes:
    """The same message through ``EmailMessage``: the baseline the builder is timed against."""
    message = EmailMessage(policy=SMTP)
    local, _, domain = envelope.sender_address.rpartition("@")
    message["From"] = Address(envelope.sender_name, local, domain)
    local, _, domain = envelope.recipient_address.rpartition("@")
    message["To"] = Address(envelope.recipient_name, local, domain)
    message["Subject"] = email.subject
    message["Date"] = format_datetime(envelope.date)
    message["Message-ID"] = envelope.message_id
    message["List-Unsubscribe"] = (
        f"<{envelope.unsubscribe_url}>, <mailto:{envelope.unsubscribe_mailto}>"
    )
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message["Feedback-ID"] = envelope.feedback_id
    message.set_content(email.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    message.add_alternative(email.html, subtype="html", charset="utf-8", cte="quoted-printable")
    return message.as_bytes()


def _rate(work: Callable[[int], object], count: int) -> tuple[float, float]:
    """Best of 3 rounds: messages per second (wall clock) and CPU µs per message."""
    best, cpu = 0.0, float("inf")
    for _ in range(3):
        # Every recipient is new to the process each round: no cached address or header
        # (the sender's lines are cached in the worker too, and are here after message 1).
        clear_caches()
        started, started_cpu = time.perf_counter(), time.process_time()
        for n in range(count):
            work(n)
        best = max(best, count / (time.perf_counter() - started))
        cpu = min(cpu, (time.process_time() - started_cpu) / count * 1e6)
    return best, cpu


FIRST_NAMES = ("Ioana", "Ștefan", "Giulia", "John", "Mihaela", "Lorenzo")


def _in_threads(threads: int, work: Callable[[int], object], per_thread: int, start: int) -> float:
    """CPU µs of this process per call of ``work`` over ``threads`` threads at once."""

    def loop(first: int) -> None:
        for n in range(first, first + per_thread):
            work(n)

    workers = [
        threading.Thread(target=loop, args=(start + k * per_thread,)) for k in range(threads)
    ]
    started = time.process_time()
    for worker_thread in workers:
        worker_thread.start()
    for worker_thread in workers:
        worker_thread.join()
    return (time.process_time() - started) / (threads * per_thread) * 1e6


def bench_envelope(n: int, campaign: Any, recipient_name: str, recipient_address: str) -> Envelope:
    """Message ``n``'s envelope: the demo shop's sender, a fixed date, ``n``'s Message-ID."""
    return Envelope(
        send_id=n,
        sender_name="Magazinul Ștefăniță",
        sender_address="shop@example.ro",
        recipient_name=recipient_name,
        recipient_address=recipient_address,
        reply_to=None,
        date=datetime(2026, 11, 17, 10, 30, tzinfo=UTC),
        message_id=message_id_for(n, "example.ro", b"k" * 32),
        unsubscribe_url="https://shop.example/u/k1.payload.signature",
        unsubscribe_mailto="unsubscribe@example.ro",
        feedback_id=feedback_id_for(campaign.id, campaign.kind, "crosssell"),
    )


def threaded(args: argparse.Namespace, renderer: Renderer, cases: list[Any]) -> None:
    """The ``--threads`` measurements (module docstring)."""
    size = len(cases)

    def render(n: int) -> RenderedEmail:
        _, variant, locale, context = cases[n % size]
        first = f"{FIRST_NAMES[n % len(FIRST_NAMES)]}{n}"
        context = {**context, "customer": {**context["customer"], "first_name": first}}
        return renderer.render(variant.template, context, locale, variant.subject)

    def envelope(n: int) -> Envelope:
        return bench_envelope(
            n,
            cases[n % size][0],
            f"{FIRST_NAMES[n % len(FIRST_NAMES)]}{n} Țurcanu",
            f"client.{n}@exemplu-țară.ro",
        )

    per, rounds = args.per_thread, args.rounds
    if args.cpu_clock_ab:
        clocks = {
            "time.thread_time": template_sandbox.time,
            "a constant": types.SimpleNamespace(monotonic=time.monotonic, thread_time=float),
        }
        figures: dict[str, list[float]] = {name: [] for name in clocks}
        for round_ in range(rounds):
            order = list(clocks) if round_ % 2 == 0 else list(reversed(clocks))
            for name in order:
                template_sandbox.time = clocks[name]  # type: ignore[assignment]
                try:
                    figures[name].append(_in_threads(args.threads, render, per, round_ * 10**6))
                finally:
                    template_sandbox.time = clocks["time.thread_time"]  # type: ignore[assignment]
        print(f"render only, {args.threads} threads, {rounds} rounds x {args.threads * per}:")
        for name, values in figures.items():
            print(
                f"  budget CPU clock {name:<16} {median(values):6.1f} µs CPU/render median "
                f"({min(values):.1f}-{max(values):.1f})"
            )
        return
    sink = Sink(0)
    provider = SMTPProvider("127.0.0.1", sink.ports[True], pool_size=args.threads)

    def send(n: int) -> object:
        return provider.send(build_email(envelope(n), render(n)))

    try:
        for n in range(size):
            send(10**9 + n)  # warm-up: templates compiled, connections open
        values = [
            _in_threads(args.threads, send, per, (round_ + 1) * 10**6) for round_ in range(rounds)
        ]
    finally:
        provider.close()
        sink.stop()
    print(
        f"render + build_email + SMTPProvider.send, {args.threads} threads, {rounds} rounds "
        f"x {args.threads * per} emails, a new customer name each: {median(values):.0f} µs "
        f"CPU/email median ({min(values):.0f}-{max(values):.0f})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mime", description=__doc__)
    parser.add_argument("--count", type=int, default=COUNT, help="messages per round")
    parser.add_argument("--threads", type=int, default=0, help="the threaded measurement")
    parser.add_argument("--per-thread", type=int, default=100, help="emails per thread a round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of --threads")
    parser.add_argument(
        "--cpu-clock-ab", action="store_true", help="with --threads: the CPU clock's cost"
    )
    args = parser.parse_args(argv)
    count = args.count
    with TemporaryDirectory() as scratch:
        settings = Settings(var_dir=Path(scratch))
        renderer = Renderer(settings)
        rules = load_rules(settings, renderer)
        cases = [
            (
                campaign.campaign,
                variant,
                locale,
                sample_context(campaign.campaign, settings, locale),
            )
            for campaign in rules.campaigns
            for variant in campaign.campaign.experiment.variants
            for locale in LOCALES
        ]
        if args.threads:
            threaded(args, renderer, cases)
            return 0
        rendered: list[RenderedEmail] = [
            renderer.render(variant.template, context, locale, variant.subject)
            for _, variant, locale, context in cases
        ]
        envelopes = [
            # One name and IDN address per message, as in a real send.
            bench_envelope(n, campaign, f"Ioana Țurcanu {n}", f"ioana.{n}@exemplu-țară.ro")
            for n, (campaign, _, _, _) in enumerate(itertools.islice(itertools.cycle(cases), count))
        ]
        size = len(cases)
        # EmailMessage takes no IDN domain (it would need the A-labels done for it).
        ascii_envelopes = [
            replace(envelope, recipient_address=parse_address(envelope.recipient_address).wire)
            for envelope in envelopes
        ]
        cycle = list(itertools.islice(itertools.cycle(range(size)), size))

        def render(n: int) -> object:
            _, variant, locale, context = cases[n % size]
            return renderer.render(variant.template, context, locale, variant.subject)

        def fast(n: int) -> object:
            return build_email(envelopes[n], rendered[n % size])

        def stdlib(n: int) -> object:
            return build_with_email_message(ascii_envelopes[n], rendered[n % size])

        def render_fast(n: int) -> object:
            return build_email(envelopes[n], render(n))  # type: ignore[arg-type]

        def render_stdlib(n: int) -> object:
            return build_with_email_message(ascii_envelopes[n], render(n))  # type: ignore[arg-type]

        print(
            f"bench.mime: {len(rules.campaigns)} demo campaigns, {size} (campaign, variant, "
            f"locale) cases, best of 3 x {count} messages, one core ({len(cycle)} cases)"
        )
        rates = {
            "render only (sandboxed Jinja + CSS inlining)": _rate(render, count),
            BUILDER: _rate(fast, count),
            BASELINE: _rate(stdlib, count),
            "render + worker.email.mime build": _rate(render_fast, count),
            "render + stdlib EmailMessage build (baseline)": _rate(render_stdlib, count),
        }
        for label, (rate, cpu) in rates.items():
            print(f"  {label:<58} {rate:>9,.0f} messages/s {cpu:>7,.0f} µs CPU/message")
        speedup = rates[BUILDER][0] / rates[BASELINE][0]
        verdict = "meets" if rates[BUILDER][0] >= TARGET else "MISSES"
        print(f"  worker.email.mime build vs stdlib EmailMessage: {speedup:.1f}x")
        print(f"  builder {verdict} the target of {TARGET:,.0f} messages/s on one core")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
