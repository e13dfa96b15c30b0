"""Watch every log record of the test suite for the test customers' addresses and names.

The personal data is taken from where the test customers are defined — the builders in
:mod:`tests.support.factories` and the demo shop's generator in :mod:`worker.commands.demo_data`
— never typed in here, so a new name or market there is watched at once.

``tests/conftest.py`` installs :class:`LeakRecorder` on the root logger at DEBUG around
every test; at the end of the session it reports each leak with its logger and test,
and fails the run.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache

from tests.support.factories import customer_block
from worker.commands import demo_data


@dataclass(frozen=True)
class PersonalData:
    """What identifies a test customer: the domains of their addresses and their names."""

    domains: frozenset[str]
    names: frozenset[str]


@cache
def customers_data() -> PersonalData:
    """Every address domain and name the factories and the demo shop give customers."""
    block = customer_block()
    people = demo_data.customers(220, random.Random(demo_data.SEED))
    domains = {str(block["email"]).rsplit("@", 1)[1]}
    domains |= {market[5] for market in demo_data.MARKETS}
    domains |= {person.email.rsplit("@", 1)[1] for person in people}
    names = {str(block["first_name"]), str(block["last_name"])}
    for market in demo_data.MARKETS:
        names |= set(market[3]) | set(market[4])
    names |= {person.first_name for person in people} | {person.last_name for person in people}
    return PersonalData(frozenset(domains), frozenset(names))


@cache
def pattern() -> re.Pattern[str]:
    """Any address at a test customer's domain (any case), or any of their names as a
    whole word (names are case-sensitive: "Mia" is a name, "mia" is not)."""
    data = customers_data()
    domains = "|".join(re.escape(d) for d in sorted(data.domains, key=len, reverse=True))
    names = "|".join(re.escape(n) for n in sorted(data.names, key=len, reverse=True))
    address = rf"(?i:[^\s<>()\[\]{{}},;:\"'`@]+@(?:{domains}))(?![\w-]|\.\w)"
    return re.compile(rf"{address}|(?<!\w)(?:{names})(?!\w)")


@dataclass(frozen=True)
class Leak:
    test: str
    logger: str
    level: str
    excerpt: str


_FORMATTER = logging.Formatter()


def record_text(record: logging.LogRecord) -> str:
    """Everything a handler could write for the record: message, exception, stack."""
    try:
        parts = [record.getMessage()]
    except Exception:  # a broken format string still must not hide its arguments
        parts = [str(record.msg), repr(record.args)]
    if record.exc_info:
        parts.append(_FORMATTER.formatException(record.exc_info))
    elif record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(record.stack_info)
    return "\n".join(parts)


# Loggers of the stand-ins for the outside world, not of crosssell: aiosmtpd, behind the
# SMTP sink, logs every envelope and DATA line it receives, as a real mail server would.
STAND_IN_LOGGERS = ("mail.log",)
# A record logged with ``extra={PROBE: True}`` is a deliberate leak planted by a test of
# this module; only a recorder built with ``probes=True`` looks at it.
PROBE = "personal_data_probe"


class LeakRecorder(logging.Handler):
    """A handler that keeps only the records naming a test customer (up to 200)."""

    def __init__(self, probes: bool = False) -> None:
        super().__init__(logging.DEBUG)
        self.leaks: list[Leak] = []
        self.test = "(outside any test)"
        self.probes = probes

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, PROBE, False) is not self.probes:
            return
        if record.name.startswith(STAND_IN_LOGGERS):
            return
        text = record_text(record)
        match = pattern().search(text)
        if match is None or len(self.leaks) >= 200:
            return
        start = max(match.start() - 60, 0)
        self.leaks.append(
            Leak(self.test, record.name, record.levelname, text[start : match.end() + 60])
        )

    @contextmanager
    def watching(self, test: str) -> Iterator[None]:
        """Record at DEBUG on the root logger while ``test`` runs."""
        root = logging.getLogger()
        level = root.level
        self.test = test
        root.addHandler(self)
        root.setLevel(logging.DEBUG)
        try:
            yield
        finally:
            root.setLevel(level)
            root.removeHandler(self)
            self.test = "(outside any test)"

    def report(self) -> list[str]:
        """One line per leak: logger, level, test and where in the text it was."""
        lines = [
            f"{leak.logger} [{leak.level}] in {leak.test}: …{leak.excerpt}…" for leak in self.leaks
        ]
        loggers = sorted({leak.logger for leak in self.leaks})
        lines.append(
            f"the session fails: {len(self.leaks)} log record(s) named a test customer "
            f"(loggers: {', '.join(loggers)}); log ids or worker.core.redaction.address_ref instead"
        )
        return lines
