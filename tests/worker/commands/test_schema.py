"""The committed JSON Schemas match the models, and accept and reject what lint does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
from ruamel.yaml import YAML

from worker.commands.schemas import render_schemas
from worker.core.settings import PROJECT_ROOT, Settings

SCHEMA_DIR = PROJECT_ROOT / "schema"


def _yaml(path: Path) -> Any:
    reader = YAML(typ="safe")
    reader.version = (1, 2)
    return reader.load(path.read_text(encoding="utf-8"))


def test_committed_schemas_are_up_to_date() -> None:
    for name, text in render_schemas(Settings()).items():
        committed = (SCHEMA_DIR / name).read_text(encoding="utf-8")
        assert committed == text, f"schema/{name} is stale: run `crosssell schema`"


def _validator(name: str) -> jsonschema.Draft202012Validator:
    import json

    schema = json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("path", sorted((PROJECT_ROOT / "config" / "campaigns").glob("*.yaml")))
def test_shipped_campaigns_validate(path: Path) -> None:
    assert list(_validator("campaign.schema.json").iter_errors(_yaml(path))) == []


def test_shipped_segments_validate() -> None:
    document = _yaml(PROJECT_ROOT / "config" / "segments.yaml")
    assert list(_validator("segments.schema.json").iter_errors(document)) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.update(priorty=1), "Additional properties"),
        (lambda d: d["trigger"]["where"]["all"][0].update(field="event.totl"), "event.totl"),
        (lambda d: d["trigger"]["where"]["all"][0].update(op="contains_al"), "contains_al"),
        (lambda d: d["schedule"].update(delay="2 days"), "2 days"),
        (lambda d: d["schedule"]["window"].update({"from": "9am"}), "9am"),
    ],
)
def test_schema_rejects_what_an_editor_should_flag(change: Any, expected: str) -> None:
    document = _yaml(PROJECT_ROOT / "config" / "campaigns" / "laptop-accessories.yaml")
    change(document)
    errors = list(_validator("campaign.schema.json").iter_errors(document))
    assert errors and any(expected in str(error) for error in errors)
