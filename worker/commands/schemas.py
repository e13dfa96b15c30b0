"""Write ``schema/campaign.schema.json`` and ``schema/segments.schema.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from triggers.lint_issues import RuleSetError
from triggers.schema import campaign_schema, segments_schema
from worker.core.settings import PROJECT_ROOT, Settings
from worker.decide.rule_files import read_attributes


def render_schemas(settings: Settings) -> dict[str, str]:
    attributes, issues = read_attributes(settings.attributes_file)
    if issues:
        raise RuleSetError(issues)
    documents: dict[str, dict[str, Any]] = {
        "campaign.schema.json": campaign_schema(attributes),
        "segments.schema.json": segments_schema(attributes),
    }
    return {
        name: json.dumps(document, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
        for name, document in documents.items()
    }


def write_schemas(settings: Settings, directory: Path | None = None) -> list[Path]:
    target = directory or PROJECT_ROOT / "schema"
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_schemas(settings).items():
        path = target / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
