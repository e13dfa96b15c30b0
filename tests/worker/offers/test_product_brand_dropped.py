"""``products.brand`` is gone (migration 0013): stored, never used. Catalog files that
still carry a ``brand`` column or key import as before, the value ignored."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, select, text

from tests.support.services import fresh_postgres_database
from worker.commands.migrate import alembic_config
from worker.core.db import engine_for, transaction
from worker.core.models import Product
from worker.offers.catalog_import import CatalogError, parse_catalog, upsert_products

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
WITH_BRAND = """sku,name,category,price,currency,in_stock,brand,line,tier
CAM-1,Camera One,cameras,499.00,EUR,true,Acme,cam,1
CAM-2,Camera Two,cameras,799.50,EUR,false,,cam,2
"""


def test_a_csv_with_a_brand_column_imports_and_the_brand_is_not_kept(
    tmp_path: Path, database_url: str
) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text(WITH_BRAND, encoding="utf-8")
    rows = parse_catalog(path)
    assert [row.sku for row in rows] == ["CAM-1", "CAM-2"]
    assert all("brand" not in row.model_dump() for row in rows)
    with transaction(database_url) as session:
        assert upsert_products(session, rows, NOW) == 2
        stored = {p.sku: (p.line, p.tier) for p in session.scalars(select(Product))}
    assert stored == {"CAM-1": ("cam", 1), "CAM-2": ("cam", 2)}
    assert "brand" not in {
        c["name"] for c in inspect(engine_for(database_url)).get_columns("products")
    }


def test_a_json_line_with_a_brand_key_imports(tmp_path: Path) -> None:
    path = tmp_path / "catalog.jsonl"
    path.write_text(
        '{"sku": "T-1", "name": "Tripod", "category": "tripods", "price": "79.00", '
        '"currency": "EUR", "brand": "Acme"}\n',
        encoding="utf-8",
    )
    assert [row.sku for row in parse_catalog(path)] == ["T-1"]


def test_other_unknown_columns_are_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text(WITH_BRAND.replace(",brand,", ",brnd,"), encoding="utf-8")
    with pytest.raises(CatalogError) as caught:
        parse_catalog(path)
    assert "unknown column 'brnd'" in str(caught.value)
    assert "brand" not in str(caught.value)  # not listed among the columns to write


def test_0013_drops_brand_keeping_the_products_and_its_downgrade_brings_it_back_empty(
    tmp_path: Path,
) -> None:
    def run(url: str) -> None:
        config = alembic_config(url)
        command.upgrade(config, "0011")
        with engine_for(url).begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO products (sku, name, category, price, currency, in_stock, "
                    "brand, line, updated_at) "
                    "VALUES ('P-1', 'Laptop', 'laptops', 10, 'EUR', true, 'Acme', 'lap', :now)"
                ),
                {"now": NOW},
            )
        command.upgrade(config, "0013")
        with engine_for(url).connect() as connection:
            row = connection.execute(text("SELECT sku, name, line FROM products")).one()
        assert tuple(row) == ("P-1", "Laptop", "lap")
        columns = {c["name"] for c in inspect(engine_for(url)).get_columns("products")}
        assert "brand" not in columns
        command.downgrade(config, "0011")
        with engine_for(url).connect() as connection:
            row = connection.execute(text("SELECT sku, brand, line FROM products")).one()
        assert tuple(row) == ("P-1", None, "lap")
        command.upgrade(config, "head")
        command.check(config)

    run(f"sqlite:///{tmp_path / 'brand.db'}")
    with fresh_postgres_database() as url:
        run(url)
