"""The live campaign rule set: loaded whole, swapped atomically, last good set kept.

A snapshot is the campaigns, the segments and attributes they use, and the template
renderer whose templates were checked with them. The worker asks for the current
snapshot on every decision; at most every ``check_every`` seconds (or at once on SIGHUP)
it compares the files' modification times and reloads when they changed. A reload that
fails leaves the previous snapshot running, logs every error as ``file:line:col`` and
raises the ``crosssell_rules_reload_failing`` gauge. Templates are part of the set: lint
renders each one under the sandbox's limits, so an edit that makes a template fail at
render time (``{{ 1/0 }}``, a loop bomb, a symlink) is refused like a bad campaign field.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml.error import YAMLError

from triggers.lint_issues import LintIssue, RuleSetError
from triggers.rule_set import RuleSet
from triggers.yaml_source import plain_data, read_yaml
from worker.core.metrics import CAMPAIGNS_ACTIVE, RULE_RELOADS, RULES_STALE
from worker.core.settings import Settings
from worker.decide.rule_files import (
    campaign_files,
    load_definitions,
    load_rule_set,
    read_limited,
    template_names,
)
from worker.email.rendering import Renderer
from worker.email.template_lint import make_template_check

log = logging.getLogger(__name__)
Signature = tuple[tuple[str, int, int], ...]


def load_complements(path: Path) -> dict[str, list[str]]:
    """The category complement map: category -> complementary categories, best first.

    Raises ``ValueError`` for a file of the wrong shape, ``RuleSetError`` for one that is
    not YAML or is over the YAML limits."""
    if not path.exists():
        return {}
    # Read like campaign files (YAML 1.2: a category "no" stays text) and within the same
    # limits (size, expanded aliases, depth); a file over them raises RuleSetError.
    text, issues = read_limited(path)
    document = None
    if text is not None and text.strip():
        document, issues = read_yaml(text, str(path), "the complements file")
    if issues:
        raise RuleSetError(issues)
    data = plain_data(document) or {}
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(i, str) for i in v)
        for k, v in data.items()
    ):
        raise ValueError(f"{path}: expected a mapping of category to a list of categories")
    return {str(k): [str(i) for i in v] for k, v in data.items()}


def load_rules(
    settings: Settings,
    renderer: Renderer,
    paths: list[Path] | None = None,
    parallel: bool = False,
) -> RuleSet:
    """Validate and compile everything a rule set depends on; raises RuleSetError."""
    try:
        load_complements(settings.complements_file)
    except (ValueError, YAMLError) as exc:
        issue = LintIssue(str(settings.complements_file), 1, 1, "bad-complements", "", str(exc))
        raise RuleSetError([issue]) from None
    definitions = load_definitions(settings.attributes_file, settings.segments_file)
    return load_rule_set(
        paths or [settings.campaigns_dir],
        template_names=template_names(settings.templates_dir),
        segments=definitions.segments,
        attributes=definitions.attributes,
        template_check=make_template_check(renderer),
        parallel=parallel,
    )


@dataclass(frozen=True)
class Snapshot:
    rules: RuleSet
    renderer: Renderer


class RuleStore:
    def __init__(self, settings: Settings, check_every: float = 2.0) -> None:
        self._settings = settings
        self._check_every = check_every
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._signature: Signature = ()
        self._checked_at = 0.0
        self.reload_failures = 0
        self.last_error: str | None = None
        self._reload_requested = False

    def request_reload(self) -> None:
        """Ask for a reload at the next use (safe to call from a signal handler)."""
        self._reload_requested = True

    def _current_signature(self) -> Signature:
        settings = self._settings
        files = campaign_files([settings.campaigns_dir])
        files += [settings.segments_file, settings.attributes_file]
        if settings.templates_dir.is_dir():
            files += sorted(p for p in settings.templates_dir.rglob("*") if p.is_file())
        stats = []
        for path in files:
            try:
                stat = path.stat()
            except OSError:
                continue
            stats.append((str(path), stat.st_mtime_ns, stat.st_size))
        return tuple(stats)

    def load(self) -> Snapshot:
        """Load now; raises RuleSetError if anything is bad (nothing is swapped)."""
        signature = self._current_signature()
        renderer = Renderer(self._settings)
        snapshot = Snapshot(load_rules(self._settings, renderer), renderer)
        with self._lock:
            self._snapshot, self._signature = snapshot, signature
            self._checked_at = time.monotonic()
            self.last_error = None
        RULE_RELOADS.labels("ok").inc()
        RULES_STALE.set(0)
        CAMPAIGNS_ACTIVE.set(sum(c.campaign.status == "active" for c in snapshot.rules.campaigns))
        return snapshot

    def snapshot(self) -> Snapshot:
        """The snapshot in force, reloaded first if the files changed since the last look."""
        if self._snapshot is None:
            return self.load()
        if self._reload_requested:
            self._reload_requested = False
            self.reload_if_changed(force=True)
        elif time.monotonic() - self._checked_at >= self._check_every:
            self.reload_if_changed()
        assert self._snapshot is not None
        return self._snapshot

    def current(self) -> RuleSet:
        return self.snapshot().rules

    def watch_in_background(self) -> threading.Thread:
        """Look at the files every few seconds even when no work arrives, so a broken edit
        is reported (log and metric) right away rather than at the next event."""

        def loop() -> None:
            while True:
                time.sleep(self._check_every)
                try:
                    self.snapshot()
                except Exception:  # never let the watcher die; the error is logged
                    log.exception("watching the campaign files failed")

        thread = threading.Thread(target=loop, name="rules-watch", daemon=True)
        thread.start()
        return thread

    def reload_if_changed(self, force: bool = False) -> bool:
        """Reload when the files changed (or always with ``force``); False if kept as is."""
        self._checked_at = time.monotonic()
        signature = self._current_signature()
        if signature == self._signature and not force:
            return False
        try:
            snapshot = self.load()
        except Exception as exc:
            # RuleSetError lists every file:line problem (a template that fails to render
            # or hits a render limit among them); anything else is reported the same way,
            # so a set that cannot be loaded never replaces the running one.
            error = str(exc) if isinstance(exc, RuleSetError) else f"{type(exc).__name__}: {exc}"
            with self._lock:
                self._signature = signature
                self.reload_failures += 1
                self.last_error = error
            RULE_RELOADS.labels("failed").inc()
            RULES_STALE.set(1)
            log.error("campaign reload failed; the previous rules keep running:\n%s", error)
            return False
        log.info("campaigns reloaded: %s", ", ".join(c.id for c in snapshot.rules.campaigns))
        return True
