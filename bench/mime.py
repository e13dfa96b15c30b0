"""Render + MIME build throughput for the shipped templates, next to the stdlib baseline.

    python -m bench.mime

For each demo campaign (config/campaigns) and locale (en, ro-RO, it-IT) the email is
rendered with a realistic context, then built as RFC 5322 bytes by
``worker.mime.build_message`` (the fast path the worker uses) and, in the same run, by
``build_message_stdlib`` (``email.message.EmailMessage``). Prints messages per second on
one core for each step and for render + build together.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory

from worker.email_context import sample_context
from worker.mime import Envelope, build_message, build_message_stdlib, message_id_for
from worker.rendering import RenderedEmail, Renderer
from worker.rules import load_rules
from worker.settings import Settings

LOCALES = ("en", "ro-RO", "it-IT")


def _rate(work: Callable[[int], object], count: int) -> float:
    best = 0.0
    for _ in range(3):
        started = time.perf_counter()
        for n in range(count):
            work(n)
        best = max(best, count / (time.perf_counter() - started))
    return best


def main(argv: list[str] | None = None) -> int:
    del argv
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
        rendered: list[RenderedEmail] = [
            renderer.render(variant.template, context, locale, variant.subject)
            for _, variant, locale, context in cases
        ]
        envelopes = [
            Envelope(
                send_id=n,
                sender_name="Magazinul Ștefăniță",
                sender_address="shop@example.ro",
                recipient_name="Ioana Țurcanu",
                recipient_address="ioana@example.ro",
                reply_to=None,
                date=datetime(2026, 11, 17, 10, 30, tzinfo=UTC),
                message_id=message_id_for(n, "example.ro"),
                unsubscribe_url="https://shop.example/u/k1.payload.signature",
                unsubscribe_mailto="unsubscribe@example.ro",
                campaign_id=campaign.id,
            )
            for n, (campaign, _, _, _) in enumerate(cases)
        ]
        size = len(cases)
        cycle = list(itertools.islice(itertools.cycle(range(size)), size))

        def render(n: int) -> object:
            _, variant, locale, context = cases[n % size]
            return renderer.render(variant.template, context, locale, variant.subject)

        def fast(n: int) -> object:
            return build_message(envelopes[n % size], rendered[n % size])

        def stdlib(n: int) -> object:
            return build_message_stdlib(envelopes[n % size], rendered[n % size])

        def render_fast(n: int) -> object:
            return build_message(envelopes[n % size], render(n))  # type: ignore[arg-type]

        def render_stdlib(n: int) -> object:
            return build_message_stdlib(envelopes[n % size], render(n))  # type: ignore[arg-type]

        count = 2000
        print(
            f"bench.mime: {len(rules.campaigns)} demo campaigns, {size} (campaign, variant, "
            f"locale) cases, best of 3 x {count} messages, one core ({len(cycle)} cases)"
        )
        rates = {
            "render only (sandboxed Jinja + CSS inlining)": _rate(render, count),
            "MIME build only, fast path (worker.mime.build_message)": _rate(fast, count),
            "MIME build only, stdlib EmailMessage (baseline)": _rate(stdlib, count),
            "render + fast MIME build": _rate(render_fast, count),
            "render + stdlib EmailMessage build (baseline)": _rate(render_stdlib, count),
        }
        for label, rate in rates.items():
            print(f"  {label:<58} {rate:>9,.0f} messages/s")
        speedup = (
            rates["MIME build only, fast path (worker.mime.build_message)"]
            / rates["MIME build only, stdlib EmailMessage (baseline)"]
        )
        print(f"  fast MIME build vs stdlib: {speedup:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
