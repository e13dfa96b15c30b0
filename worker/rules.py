"""The live campaign rule set: loaded whole, swapped atomically, last good set kept.

The worker calls :meth:`RuleStore.current` on every decision; at most every
``check_every`` seconds it looks at the files' modification times and reloads when they
changed. A reload that fails leaves the previous rules running and logs every error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ruamel.yaml import YAML

from triggers.loader import RuleSet, RuleSetError, campaign_files, load_rule_set

log = logging.getLogger(__name__)


def template_names(templates_dir: Path) -> set[str]:
    """Template directories that have at least a subject and an HTML body."""
    if not templates_dir.is_dir():
        return set()
    return {
        path.name
        for path in templates_dir.iterdir()
        if path.is_dir() and not path.name.startswith("_") and (path / "subject.txt").exists()
    }


def load_complements(path: Path) -> dict[str, list[str]]:
    """The category complement map: category -> complementary categories, best first."""
    if not path.exists():
        return {}
    reader = YAML(typ="safe")
    data = reader.load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(i, str) for i in v)
        for k, v in data.items()
    ):
        raise ValueError(f"{path}: expected a mapping of category to a list of categories")
    return {str(k): [str(i) for i in v] for k, v in data.items()}


class RuleStore:
    def __init__(self, campaigns_dir: Path, templates_dir: Path, check_every: float = 2.0) -> None:
        self._campaigns_dir = campaigns_dir
        self._templates_dir = templates_dir
        self._check_every = check_every
        self._lock = threading.Lock()
        self._rules: RuleSet | None = None
        self._signature: tuple[tuple[str, int, int], ...] = ()
        self._checked_at = 0.0
        self.reload_failures = 0
        self.last_error: str | None = None

    def _current_signature(self) -> tuple[tuple[str, int, int], ...]:
        files: Sequence[Path] = campaign_files([self._campaigns_dir])
        stats = []
        for path in files:
            try:
                stat = path.stat()
            except OSError:
                continue
            stats.append((str(path), stat.st_mtime_ns, stat.st_size))
        return tuple(stats)

    def load(self) -> RuleSet:
        """Load now; raises RuleSetError if the files are bad (nothing is swapped)."""
        signature = self._current_signature()
        rules = load_rule_set(
            [self._campaigns_dir], template_names=template_names(self._templates_dir)
        )
        with self._lock:
            self._rules, self._signature = rules, signature
            self._checked_at = time.monotonic()
            self.last_error = None
        return rules

    def current(self) -> RuleSet:
        """The rules in force, reloaded first if the files changed since the last look."""
        if self._rules is None:
            return self.load()
        if time.monotonic() - self._checked_at >= self._check_every:
            self.reload_if_changed()
        assert self._rules is not None
        return self._rules

    def reload_if_changed(self) -> bool:
        self._checked_at = time.monotonic()
        signature = self._current_signature()
        if signature == self._signature:
            return False
        try:
            rules = self.load()
        except RuleSetError as exc:
            with self._lock:
                self._signature = signature
                self.reload_failures += 1
                self.last_error = str(exc)
            log.error("campaign reload failed; the previous rules keep running:\n%s", exc)
            return False
        log.info("campaigns reloaded: %s", ", ".join(c.id for c in rules.campaigns))
        return True
