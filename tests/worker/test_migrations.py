"""The schema comes only from Alembic and matches the models on both databases."""

from __future__ import annotations

from alembic import command
from sqlalchemy import inspect

from worker.db import engine_for
from worker.migrate import alembic_config


def test_migrations_match_models(database_url: str) -> None:
    # alembic check raises if autogenerate finds any difference from the models.
    command.check(alembic_config(database_url))
    tables = set(inspect(engine_for(database_url)).get_table_names())
    assert {
        "customers",
        "products",
        "events",
        "orders",
        "order_lines",
        "sends",
        "suppressions",
    } <= tables


def test_sends_dedupe_key_is_unique(database_url: str) -> None:
    uniques = inspect(engine_for(database_url)).get_unique_constraints("sends")
    indexes = inspect(engine_for(database_url)).get_indexes("sends")
    unique_columns = [u["column_names"] for u in uniques] + [
        i["column_names"] for i in indexes if i.get("unique")
    ]
    assert ["dedupe_key"] in unique_columns
