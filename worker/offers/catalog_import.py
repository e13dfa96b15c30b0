"""``crosssell catalog import FILE``: load products from CSV or JSON Lines.

Every row is validated first and every error is reported with its line number; only a
file without errors is written, in one transaction, as an upsert by SKU. Nothing is ever
half-imported. The format is documented in docs/offers.md.

Per-language texts: a CSV has ``name.<tag>`` and ``description.<tag>`` columns (``name.ro``,
``description.it``, ``name.pt-BR``) next to the default ``name`` and ``description``; a
JSON Lines row has ``name_i18n`` and ``description_i18n`` objects (``{"ro": "…"}``) or
the same dotted keys. Tags are BCP 47 language tags (RFC 5646), stored lower-case.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

from babel import Locale, UnknownLocaleError
from babel.lists import format_list
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator
from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from worker.core.models import Product

COLUMNS = (
    "sku",
    "name",
    "category",
    "price",
    "currency",
    "url",
    "image_url",
    "in_stock",
    "line",
    "tier",
    "description",
)
# Columns accepted and not stored: ``brand`` was stored by earlier versions and never used
# (migration 0013 dropped it), so files written for them still import.
IGNORED = ("brand",)
# Columns that take a language suffix: ``name.ro`` goes to ``name_i18n["ro"]``.
TRANSLATED = ("name", "description")
REQUIRED = ("sku", "name", "category", "price", "currency")
_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}
# A language tag as products use it: a 2-3 letter primary language subtag and optional
# script/region/variant subtags (RFC 5646 section 2.1, without extensions or private use).
LANGUAGE_TAG = re.compile(r"^[a-z]{2,3}(?:-[a-z0-9]{2,8})*$")
MAX_TRANSLATIONS = 50


def language_tag(tag: str) -> str:
    """``tag`` in the stored form: lower case, ``-`` separated (``pt_BR`` -> ``pt-br``).
    Raises ValueError if it is not a language tag. Tags compare case-insensitively
    (RFC 5646 section 2.1.1), so the lower-case form is canonical for lookups."""
    normalized = tag.strip().replace("_", "-").lower()
    if not LANGUAGE_TAG.fullmatch(normalized):
        raise ValueError(f"{tag!r} is not a language tag (like ro, it or pt-BR)")
    return normalized


def language_list(tags: Iterable[str]) -> str:
    """Stored language tags as an operator reads them: ``it``, ``ro`` -> "Italian (it)
    and Romanian (ro)". The name is the primary subtag's English name from Babel's CLDR
    data; a tag CLDR does not know is shown alone."""
    described = []
    for tag in sorted(set(tags)):
        try:
            name = Locale.parse(tag.split("-")[0]).english_name
        except (ValueError, UnknownLocaleError):
            name = None
        described.append(f"{name} ({tag})" if name else tag)
    return format_list(described, locale="en")


def _translations(value: object) -> object:
    """Validate a ``{tag: text}`` object and store its tags in canonical form."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError('write translations as an object, e.g. {"ro": "…", "it": "…"}')
    if len(value) > MAX_TRANSLATIONS:
        raise ValueError(f"at most {MAX_TRANSLATIONS} languages")
    texts: dict[str, object] = {}
    for tag, text in value.items():
        key = language_tag(str(tag))
        if key in texts:
            raise ValueError(f"language {key!r} given twice")
        texts[key] = text.strip() if isinstance(text, str) else text
    return texts


class CatalogRow(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    sku: Annotated[str, Field(min_length=1, max_length=128)]
    name: Annotated[str, Field(min_length=1, max_length=300)]
    category: Annotated[str, Field(min_length=1, max_length=128)]
    price: Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=4, allow_inf_nan=False)]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    url: Annotated[str, Field(max_length=500, pattern=r"^https?://")] | None = None
    image_url: Annotated[str, Field(max_length=500, pattern=r"^https?://")] | None = None
    in_stock: StrictBool = True
    line: Annotated[str, Field(max_length=128)] | None = None
    tier: Annotated[int, Field(ge=0, le=1000)] | None = None
    description: Annotated[str, Field(max_length=2000)] | None = None
    name_i18n: dict[str, Annotated[str, Field(min_length=1, max_length=300)]] = Field(
        default_factory=dict
    )
    description_i18n: dict[str, Annotated[str, Field(min_length=1, max_length=2000)]] = Field(
        default_factory=dict
    )

    @field_validator("name_i18n", "description_i18n", mode="before")
    @classmethod
    def _language_tags(cls, value: object) -> object:
        return _translations(value)

    @field_validator("price", mode="before")
    @classmethod
    def _no_float(cls, value: object) -> object:
        if isinstance(value, float):
            raise ValueError('write prices as text or exact numbers, e.g. "19.90"')
        return value


@dataclass(frozen=True, slots=True)
class RowError:
    line: int
    column: str
    message: str


class CatalogError(Exception):
    def __init__(self, path: Path, errors: list[RowError]) -> None:
        self.path, self.errors = path, errors
        super().__init__("\n".join(f"{path}:{e.line}: {e.column}: {e.message}" for e in errors))


# Limits on an import file, so a wrong or hostile file is a list of errors, not an
# exhausted worker. A product row is at most ~2 KB of values (the column limits above);
# a line of 16 KiB leaves room for JSON escapes. 128 MiB is about 500,000 products.
MAX_FILE_BYTES = 128 * 1024 * 1024
MAX_LINE_CHARS = 16 * 1024
MAX_ERRORS = 1000  # reporting stops there; the file is rejected either way


def _checked_lines(text: str, errors: list[RowError]) -> Iterator[tuple[int, str]]:
    """The file's lines with their 1-based numbers; a line over ``MAX_LINE_CHARS`` is
    reported and replaced by an empty one, so the numbering of the rest stays right."""
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        if len(line.rstrip("\r\n")) > MAX_LINE_CHARS:
            message = f"the line has {len(line):,} characters; at most {MAX_LINE_CHARS:,}"
            errors.append(RowError(number, "line", message))
            line = "\n"
        yield number, line


def _split_column(name: str) -> tuple[str, str | None]:
    """``"name.ro"`` -> ``("name", "ro")``; ``"price"`` -> ``("price", None)``."""
    base, dot, tag = name.partition(".")
    return (base, tag) if dot else (name, None)


def _gather_translations(values: dict[str, Any]) -> dict[str, Any]:
    """Move ``name.<tag>`` / ``description.<tag>`` values into ``name_i18n`` /
    ``description_i18n``; a bad tag is left under its own key for validation to name."""
    gathered: dict[str, Any] = {}
    for key, value in values.items():
        base, tag = _split_column(key)
        if tag is None or base not in TRANSLATED:
            gathered[key] = value
            continue
        try:
            canonical = language_tag(tag)
        except ValueError:
            gathered[key] = value
            continue
        texts = gathered.setdefault(f"{base}_i18n", {})
        if isinstance(texts, dict):
            texts[canonical] = value
    return gathered


def _canonical_column(name: str) -> str:
    """``name.RO`` and ``name.ro`` are one column: language tags ignore case."""
    base, tag = _split_column(name)
    if tag is None or base not in TRANSLATED:
        return name
    try:
        return f"{base}.{language_tag(tag)}"
    except ValueError:
        return name


def _known_column(name: str) -> bool:
    base, tag = _split_column(name)
    if tag is None:
        return name in COLUMNS or name in IGNORED
    try:
        language_tag(tag)
    except ValueError:
        return False
    return base in TRANSLATED


def _csv_rows(text: str, errors: list[RowError]) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    reader = csv.DictReader(line for _number, line in _checked_lines(text, errors))
    try:
        header = reader.fieldnames or []
    except csv.Error as exc:
        yield 1, RowError(1, "csv", str(exc))
        return
    unknown = [name for name in header if not _known_column(name)]
    canonical = [_canonical_column(name) for name in header]
    unknown += sorted({f"{name} (twice)" for name in canonical if canonical.count(name) > 1})
    missing = [name for name in REQUIRED if name not in header]
    if unknown or missing:
        problems = [f"unknown column {name!r}" for name in unknown]
        problems += [f"missing column {name!r}" for name in missing]
        known = ", ".join(COLUMNS) + ", name.<language>, description.<language>"
        yield 1, RowError(1, "header", "; ".join(problems) + f" (columns: {known})")
        return
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            # e.g. a quote never closed: the field runs on past csv's own field limit.
            line = reader.reader.line_num  # the DictReader's own count stops at the last row
            yield line, RowError(line, "csv", str(exc))
            return
        line = reader.line_num
        if None in row:
            yield line, RowError(line, "row", "more values than columns")
            continue
        values: dict[str, Any] = {k: v for k, v in row.items() if v not in ("", None)}
        if "in_stock" in values:
            flag = str(values["in_stock"]).strip().lower()
            if flag in _TRUE | _FALSE:
                values["in_stock"] = flag in _TRUE
        if "tier" in values and str(values["tier"]).strip().isdigit():
            values["tier"] = int(values["tier"])
        yield line, _gather_translations(values)


def _jsonl_rows(
    text: str, errors: list[RowError]
) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    for line, raw in _checked_lines(text, errors):
        if not raw.strip():
            continue
        try:
            document = json.loads(raw, parse_float=Decimal)
        except json.JSONDecodeError as exc:
            yield line, RowError(line, "json", exc.msg)
            continue
        except (ValueError, RecursionError) as exc:
            # ValueError: an integer of thousands of digits (Python's int conversion limit).
            nested = isinstance(exc, RecursionError)
            yield line, RowError(line, "json", "nested too deeply" if nested else str(exc))
            continue
        if not isinstance(document, dict):
            yield line, RowError(line, "json", "each line must be a JSON object")
            continue
        dotted = {k: v for k, v in document.items() if "." in k}
        for key in dotted:
            base = _split_column(key)[0]
            if f"{base}_i18n" in document:
                yield line, RowError(line, key, f"give {base}_i18n or {base}.<language>, not both")
                break
        else:
            yield line, _gather_translations(document)


def _read(path: Path) -> str:
    """The file's text, at most ``MAX_FILE_BYTES``; raises CatalogError otherwise."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        message = f"the file is {size:,} bytes; at most {MAX_FILE_BYTES:,} (128 MiB): split it"
        raise CatalogError(path, [RowError(1, "file", message)])
    with path.open("rb") as stream:
        data = stream.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:  # it grew since
        raise CatalogError(path, [RowError(1, "file", f"at most {MAX_FILE_BYTES:,} bytes")])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise CatalogError(path, [RowError(line, "file", f"not UTF-8: {exc.reason}")]) from None


def parse_catalog(path: Path) -> list[CatalogRow]:
    """Validate the whole file; raise CatalogError listing every bad row (the first
    ``MAX_ERRORS``), or the one limit the file is over (size, line length, encoding)."""
    text = _read(path)
    rows_of = _jsonl_rows if path.suffix.lower() in (".jsonl", ".ndjson") else _csv_rows
    errors: list[RowError] = []
    rows: list[CatalogRow] = []
    seen: dict[str, int] = {}
    for line, item in rows_of(text, errors):
        if len(errors) >= MAX_ERRORS:
            errors.append(RowError(line, "file", f"stopped after {MAX_ERRORS} errors"))
            break
        if isinstance(item, RowError):
            errors.append(item)
            continue
        try:
            row = CatalogRow.model_validate(
                {key: value for key, value in item.items() if key not in IGNORED}
            )
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                column = ".".join(str(part) for part in error["loc"]) or "row"
                message = error["msg"].removeprefix("Value error, ")
                errors.append(RowError(line, column, message))
            continue
        if row.sku in seen:
            errors.append(RowError(line, "sku", f"{row.sku!r} already on line {seen[row.sku]}"))
            continue
        seen[row.sku] = line
        rows.append(row)
    if errors:
        raise CatalogError(path, errors)
    return rows


UPSERT_BATCH = 1000


def upsert_products(
    session: Session,
    rows: list[CatalogRow],
    now: datetime,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Insert new SKUs and update existing ones, in batches, in the caller's transaction.

    Every column is taken from the file, translations included: a language left out of
    the file is removed from the product. ``on_batch(n)`` is told each batch's size (for
    a progress bar)."""
    table: Table = Product.__table__  # type: ignore[assignment]
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    columns = (*COLUMNS[1:], "name_i18n", "description_i18n", "updated_at")
    for start in range(0, len(rows), UPSERT_BATCH):
        chunk = rows[start : start + UPSERT_BATCH]
        batch = [{**row.model_dump(), "updated_at": now} for row in chunk]
        statement = insert(table).values(batch)
        updates = {c: statement.excluded[c] for c in columns}
        session.execute(statement.on_conflict_do_update(index_elements=["sku"], set_=updates))
        if on_batch is not None:
            on_batch(len(chunk))
    return len(rows)
