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
        (lambda d: d["experiment"].update(holdout_percent=150), "maximum of 100"),
        (lambda d: d["experiment"].update(holdout_percent="10"), "is not of type 'number'"),
        (lambda d: d["offer"].update(max_items=30), "maximum of 12"),
        (lambda d: d["offer"].update(max_items=0), "minimum of 1"),
        (lambda d: d.update(priority=10**43), "maximum of 1000"),
        (
            lambda d: d.update(offer={"type": "loyalty_bonus", "points": 10**43}),
            "maximum of 1000000",
        ),
        (lambda d: d["experiment"]["variants"][0].update(weight=-5), "minimum of 0"),
    ],
)
def test_schema_rejects_what_an_editor_should_flag(change: Any, expected: str) -> None:
    document = _yaml(PROJECT_ROOT / "config" / "campaigns" / "laptop-accessories.yaml")
    change(document)
    errors = list(_validator("campaign.schema.json").iter_errors(document))
    messages = []  # an offer's error is one per variant of its union, in ``context``
    while errors:
        error = errors.pop()
        messages.append(error.message)
        errors += error.context or []
    assert messages and any(expected in message for message in messages), messages


def _numeric_schemas(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if node.get("type") in ("integer", "number"):
            found.append((path, node))
        for key, value in node.items():
            found += _numeric_schemas(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _numeric_schemas(value, f"{path}[{index}]")
    return found


@pytest.mark.parametrize("name", ["campaign.schema.json", "segments.schema.json"])
def test_every_number_a_campaign_takes_is_bounded_in_json_schema_terms(name: str) -> None:
    """Each number of a campaign file has an upper and a lower bound, written with JSON
    Schema's keywords (pydantic's own ``ge``/``le`` are ignored by editors): an absurd
    value (a 44-digit bonus, a 150 % holdout) is flagged as it is typed, as lint flags
    it at its line."""
    import json

    schema = json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))
    numbers = _numeric_schemas(schema)
    if name == "campaign.schema.json":
        assert len(numbers) >= 10
    for path, node in numbers:
        assert not {"ge", "le", "gt", "lt"} & set(node), path
        if path.startswith("/$defs/Leaf") or "/value" in path:
            continue  # a condition's operand: any number the event may carry
        assert {"maximum", "exclusiveMaximum"} & set(node), f"{path} has no upper bound"
        assert {"minimum", "exclusiveMinimum"} & set(node), f"{path} has no lower bound"
