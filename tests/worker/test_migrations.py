"""The schema comes only from Alembic and matches the models on both databases."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_upgrades_keep_existing_rows(tmp_path: Path) -> None:
    """Every migration runs over a database that already holds data (SQLite rebuilds
    tables in batch mode; foreign keys must not stop it)."""
    from datetime import UTC, datetime

    from sqlalchemy import text

    url = f"sqlite:///{tmp_path / 'old.db'}"
    config = alembic_config(url)
    command.upgrade(config, "0001")
    now = datetime.now(UTC).isoformat()
    with engine_for(url).begin() as connection:
        connection.execute(
            text(
                "INSERT INTO customers (id, attributes, orders_count, lifetime_spend, "
                "categories_bought, skus_owned, created_at, updated_at) "
                "VALUES ('C-1', '{}', 0, '0', '[]', '[]', :now, :now)"
            ),
            {"now": now},
        )
        connection.execute(
            text(
                "INSERT INTO events (event_id, type, customer_id, occurred_at, received_at, "
                "payload, outcome) VALUES ('e1', 'purchase', 'C-1', :now, :now, '{}', '{}')"
            ),
            {"now": now},
        )
    command.upgrade(config, "head")
    with engine_for(url).connect() as connection:
        kinds = connection.execute(
            text("SELECT opted_out_kinds FROM customers WHERE id = 'C-1'")
        ).scalar_one()
        events = connection.execute(text("SELECT count(*) FROM events")).scalar_one()
    assert kinds == "[]" and events == 1
    command.check(config)


def test_localized_product_texts_migrate_up_and_down(tmp_path: Path) -> None:
    """0007 adds the per-language texts with empty defaults for products already there,
    and its downgrade removes them again, on SQLite and PostgreSQL alike."""
    from datetime import UTC, datetime

    from sqlalchemy import text

    from tests.support.services import fresh_postgres_database

    def run(url: str) -> None:
        config = alembic_config(url)
        command.upgrade(config, "0006")
        with engine_for(url).begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO products (sku, name, category, price, currency, in_stock, "
                    "updated_at) VALUES ('P-1', 'Laptop', 'laptops', 10, 'EUR', true, :now)"
                ),
                {"now": datetime.now(UTC)},
            )
        command.upgrade(config, "0007")
        with engine_for(url).connect() as connection:
            row = connection.execute(
                text("SELECT name, name_i18n, description, description_i18n FROM products")
            ).one()
        as_json = [value if isinstance(value, dict) else json.loads(value) for value in row[1::2]]
        assert (row.name, row.description, as_json) == ("Laptop", None, [{}, {}])
        command.check(config)
        command.downgrade(config, "0006")
        columns = {c["name"] for c in inspect(engine_for(url)).get_columns("products")}
        assert not {"name_i18n", "description", "description_i18n"} & columns
        assert "name" in columns
        command.upgrade(config, "head")
        command.check(config)

    run(f"sqlite:///{tmp_path / 'i18n.db'}")
    with fresh_postgres_database() as url:
        run(url)


def _revisions_in_order(url: str) -> list[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config(url))
    return [revision.revision for revision in reversed(list(script.walk_revisions()))]


def test_every_migration_goes_up_down_and_up_again(tmp_path: Path) -> None:
    """Each revision's downgrade undoes it exactly (the schema after up, down, up is the
    schema after up), on SQLite and PostgreSQL; afterwards ``alembic check`` is clean."""
    from tests.support.services import fresh_postgres_database
    from worker.migrate import current_revision

    def schema(url: str) -> dict[str, list[tuple[str, str]]]:
        inspector = inspect(engine_for(url))
        return {
            table: sorted((c["name"], str(c["type"])) for c in inspector.get_columns(table))
            + sorted(("index", i["name"] or "") for i in inspector.get_indexes(table))
            for table in inspector.get_table_names()
            if table != "alembic_version"  # Alembic's own, stays once created
        }

    def run(url: str) -> None:
        config = alembic_config(url)
        revisions = _revisions_in_order(url)
        assert len(revisions) >= 10
        previous: str = "base"
        for revision in revisions:
            before = schema(url)
            command.upgrade(config, revision)
            after = schema(url)
            command.downgrade(config, previous)
            assert schema(url) == before, f"downgrade of {revision} left changes behind"
            assert current_revision(url) == (None if previous == "base" else previous)
            command.upgrade(config, revision)
            assert schema(url) == after, f"{revision} differs on its second upgrade"
            previous = revision
        command.check(config)
        command.downgrade(config, "base")
        assert schema(url) == {}
        command.upgrade(config, "head")
        command.check(config)

    run(f"sqlite:///{tmp_path / 'updown.db'}")
    with fresh_postgres_database() as url:
        run(url)
