"""Campaign, segment and attribute files on disk, handed to the pure core as text.

``triggers/`` parses and compiles ``(name, text)`` pairs and never touches the file
system; this module is the shell around it: it lists the campaign directory, reads each
file within the YAML size limit (before reading it whole), and parses large sets in a
process pool. The file's path is the name every ``file:line:col`` message carries.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path

from triggers.campaign_text import ParsedFile, parse_campaign_text
from triggers.compile_rules import compile_parsed_files
from triggers.conditions import Condition
from triggers.definitions import Definitions, parse_attributes, parse_segments
from triggers.fields import FieldType
from triggers.lint_issues import LintIssue, RuleSetError
from triggers.rule_checks import TemplateCheck
from triggers.rule_set import RuleSet
from triggers.yaml_source import MAX_YAML_BYTES, too_large_issue


def read_limited(path: Path) -> tuple[str | None, list[LintIssue]]:
    """The UTF-8 text of ``path``, or why not: unreadable, or over ``MAX_YAML_BYTES``.

    Reads at most one byte past the limit, so a huge (or growing) file is never loaded.
    """
    name = str(path)
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_YAML_BYTES + 1)
        if len(data) > MAX_YAML_BYTES:
            return None, [too_large_issue(name, max(path.stat().st_size, len(data)))]
        return data.decode("utf-8"), []
    except (OSError, UnicodeDecodeError) as exc:
        return None, [LintIssue(name, 1, 1, "unreadable", "", str(exc))]


def campaign_files(paths: Iterable[Path]) -> list[Path]:
    """Expand directories to their ``*.yaml``/``*.yml`` files, sorted for stable output;
    a file named twice (``lint a.yaml a.yaml``, a file and its directory) is read once,
    or it would be reported as a duplicate of itself."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
        else:
            found.append(path)
    seen: set[Path] = set()
    unique: list[Path] = []
    for path in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def template_names(templates_dir: Path) -> set[str]:
    """Template directories (``_base`` and other ``_`` folders are layouts, not templates;
    ``pages`` holds the unsubscribe and preference pages, see ``worker.web.web``)."""
    if not templates_dir.is_dir():
        return set()
    return {
        path.name
        for path in templates_dir.iterdir()
        if path.is_dir() and not path.name.startswith("_") and path.name != "pages"
    }


def _definition_text(path: Path | None) -> tuple[str | None, list[LintIssue]]:
    """A definitions file's text; a missing file (optional) is no text and no issue."""
    if path is None or not path.exists():
        return None, []
    return read_limited(path)  # at most MAX_YAML_BYTES, like campaign files


def read_attributes(path: Path | None) -> tuple[dict[str, FieldType], list[LintIssue]]:
    """The custom attribute types declared in ``path``, and the issues found."""
    text, issues = _definition_text(path)
    if text is None:
        return {}, issues
    return parse_attributes(str(path), text)


def load_definitions(attributes_path: Path | None, segments_path: Path | None) -> Definitions:
    """Attributes, then segments (which may test attributes); raises RuleSetError."""
    attributes, issues = read_attributes(attributes_path)
    text, segment_issues = _definition_text(segments_path)
    segments: dict[str, Condition] = {}
    if text is not None:
        segments, segment_issues = parse_segments(str(segments_path), text, attributes)
    issues += segment_issues
    if issues:
        raise RuleSetError(issues)
    return Definitions(attributes, segments)


def parse_file(
    path: Path, segments: Mapping[str, Condition], attributes: Mapping[str, FieldType] | None
) -> ParsedFile:
    """Read one campaign file and parse its text; an unreadable file is its issue."""
    text, unreadable = read_limited(path)
    if text is None:
        return ParsedFile(str(path), None, tuple(unreadable))
    return parse_campaign_text(str(path), text, segments, attributes)


# Parsing YAML is the slow part of a lint (ruamel's round-trip parser is pure Python);
# large rule sets are parsed on every core.
PARALLEL_FROM = 48


def parse_files(
    files: Sequence[Path],
    segments: Mapping[str, Condition],
    attributes: Mapping[str, FieldType] | None,
    parallel: bool = False,
) -> list[ParsedFile]:
    """Parse in order; with ``parallel`` (single-threaded callers such as ``crosssell lint``
    only: forking a process that runs other threads is unsafe) on every core."""
    workers = min(os.cpu_count() or 1, 8)
    if not parallel or len(files) < PARALLEL_FROM or workers < 2:
        return [parse_file(path, segments, attributes) for path in files]
    context = multiprocessing.get_context(
        "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    )
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        chunk = max(1, len(files) // (workers * 4))
        return list(
            pool.map(parse_file, files, repeat(segments), repeat(attributes), chunksize=chunk)
        )


def load_rule_set(
    paths: Iterable[Path],
    template_names: Iterable[str] | None = None,
    segments: Mapping[str, Condition] | None = None,
    attributes: Mapping[str, FieldType] | None = None,
    template_check: TemplateCheck | None = None,
    parallel: bool = False,
) -> RuleSet:
    """Read, validate and compile every campaign file (directories expanded); all or
    nothing: raises RuleSetError when any issue is an error."""
    segments = dict(segments or {})
    parsed = parse_files(campaign_files(paths), segments, attributes, parallel)
    return compile_parsed_files(parsed, segments, template_names, template_check, attributes)
