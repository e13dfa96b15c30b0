"""The HTML report opens in headless Chromium with the network cut off: no console
errors, the three charts drawn with the expected marks, and a screenshot that shows
them (not a blank page)."""

from __future__ import annotations

import os
import re
import subprocess
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from triggers.lift import rate_difference, relative_lift, verdict
from worker.commands.preview import CHROMIUM_FLAGS, find_chromium
from worker.commands.report import Comparison, DayRow, GroupStats, OfferRow, Report
from worker.commands.report_html import render_html

CHROMIUM = find_chromium()
FLAGS = [
    *CHROMIUM_FLAGS,
    # Any request leaving the machine fails: the page must need none.
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=20000",
]
VARIANT_BLUE = (0x2F, 0x6F, 0xDF)
HOLDOUT_GREY = (0x9A, 0xA3, 0xB2)


def _chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing (.ci/run installs it)")
        pytest.skip("chromium is not installed")
    return CHROMIUM


def _group(label: str, sent: int, converted: int) -> GroupStats:
    return GroupStats(
        label, eligible=sent, sent=sent, delivered=sent, converted=converted, direct=converted
    )


def _report() -> Report:
    holdout = _group("holdout", 500, 20)
    comparisons = []
    for label, sent, converted in (("A", 2400, 150), ("B", 2300, 110)):
        group = _group(label, sent, converted)
        comparisons.append(
            Comparison(
                campaign_id="laptop-accessories",
                window=timedelta(days=7),
                variant=group,
                holdout=holdout,
                absolute_lift=rate_difference(converted, sent, 20, 500),
                relative_lift=relative_lift(converted, sent, 20, 500),
                incremental_revenue=[],
                verdict=verdict(converted, sent, 20, 500),
            )
        )
    start = date(2026, 11, 17)
    days = [
        DayRow(start + timedelta(days=n), "laptop-accessories", 300 + 40 * n, 10 + 3 * n)
        for n in range(7)
    ]
    pairs = [OfferRow(f"laptops -> SKU-{n}", 200 - 10 * n, 30 - 2 * n) for n in range(5)]
    return Report(
        since=None,
        until=None,
        generated_at=datetime(2026, 11, 29, 12, tzinfo=UTC),
        comparisons=comparisons,
        offer_types=[OfferRow("complementary", 4700, 260)],
        pairs=pairs,
        days=days,
        credited_revenue={"EUR": Decimal("12345.60")},
    )


class _Marks(HTMLParser):
    """Counts plotly's drawn marks per chart (the ``chart-N`` div they are in)."""

    def __init__(self) -> None:
        super().__init__()
        self.chart: str | None = None
        self.depth = 0
        self.svgs: dict[str, int] = {}
        self.bars: dict[str, int] = {}
        self.markers: dict[str, int] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        classes = (values.get("class") or "").split()
        if tag == "div" and (values.get("id") or "").startswith("chart-"):
            self.chart, self.depth = values["id"], 0
        if self.chart is None:
            return
        if tag == "div":
            self.depth += 1
        if tag == "svg" and "main-svg" in classes:
            self.svgs[self.chart] = self.svgs.get(self.chart, 0) + 1
        # A bar is a <g class="point"> holding a path with a drawn outline.
        if tag == "g" and "point" in classes:
            self.bars[self.chart] = self.bars.get(self.chart, 0) + 1
        if tag == "path" and "point" in classes:
            self.markers[self.chart] = self.markers.get(self.chart, 0) + 1

    def handle_endtag(self, tag: str) -> None:
        if self.chart is not None and tag == "div":
            self.depth -= 1
            if self.depth <= 0:
                self.chart = None


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(render_html(_report()), encoding="utf-8")
    return path


def _run(page: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_chromium(), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *extra, page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_page_is_self_contained(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]+src=", text), "a script is loaded from elsewhere"
    assert not re.search(r"<link[^>]+href=\"?https?:", text), "a stylesheet from elsewhere"
    assert text.count("Plotly.newPlot") == 3


def test_charts_render_without_console_errors(page: Path, tmp_path: Path) -> None:
    done = _run(page, tmp_path, "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "Uncaught" in line or "Error" in line], console
    marks = _Marks()
    marks.feed(done.stdout)
    assert set(marks.svgs) == {"chart-0", "chart-1", "chart-2"}, marks.svgs
    # Rate chart: variant A, variant B and the campaign's one holdout.
    assert marks.bars["chart-0"] == 3
    # Daily chart: one bar per day, one conversion marker per day.
    assert marks.bars["chart-1"] == 7
    assert marks.markers["chart-1"] == 7
    # Pairs chart: offers shown and direct conversions for each of the 5 pairs.
    assert marks.bars["chart-2"] == 10


def test_the_screenshot_shows_the_charts(page: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    done = _run(page, tmp_path, f"--screenshot={shot}", "--window-size=1200,1800")
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    assert pixels.shape[:2] == (1800, 1200)
    not_white = np.any(pixels < 235, axis=2).mean()
    assert not_white > 0.05, not_white

    def share(colour: tuple[int, int, int]) -> float:
        return float(np.all(np.abs(pixels - np.array(colour)) <= 6, axis=2).mean())

    # The variant bars and the holdout bar are drawn, in their colours.
    assert share(VARIANT_BLUE) > 0.002
    assert share(HOLDOUT_GREY) > 0.0005
