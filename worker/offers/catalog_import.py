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
import io
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
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
)
from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from triggers.events import CurrencyCode
from triggers.text_rules import one_line, text_lines
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


# Names, categories and SKUs go into subjects, emails and reports: one line
# (triggers.text_rules). A description may break lines (LF, CR LF), but holds no other control
# character (NUL cannot even be stored by PostgreSQL) and no bidirectional override.
OneLineText = AfterValidator(one_line)
# A price written plainly: digits, one optional point and fraction. Python's Decimal
# would also read "1_000", "+5", "1e2" and digits of other scripts ("١٢").
_PRICE_TEXT = re.compile(r"(?:0|[1-9][0-9]*)(?:\.[0-9]+)?")
# An absolute http(s) URL with a host and no space, double quote, backtick, angle
# bracket or control (an apostrophe is legal in a path: /men's-shoes).
_WEB_URL = r"^https?://[^\s/<>\"`'\x00-\x1f\x7f]+(?:/[^\s<>\"`\x00-\x1f\x7f]*)?$"


def _web_url(value: str) -> str:
    if not re.match(_WEB_URL, value):
        raise ValueError(
            "must be an absolute http(s) URL with a host, and no space, double quote,"
            " backtick or angle bracket (write them %-encoded)"
        )
    return value


class CatalogRow(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    sku: Annotated[str, Field(min_length=1, max_length=128), OneLineText]
    name: Annotated[str, Field(min_length=1, max_length=300), OneLineText]
    category: Annotated[str, Field(min_length=1, max_length=128), OneLineText]
    price: Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=4, allow_inf_nan=False)]
    currency: CurrencyCode
    url: Annotated[str, Field(max_length=500), AfterValidator(_web_url)] | None = None
    image_url: Annotated[str, Field(max_length=500), AfterValidator(_web_url)] | None = None
    in_stock: StrictBool = True
    line: Annotated[str, Field(max_length=128), OneLineText] | None = None
    tier: Annotated[int, Field(ge=0, le=1000)] | None = None
    description: Annotated[str, Field(max_length=2000), AfterValidator(text_lines)] | None = None
    name_i18n: dict[str, Annotated[str, Field(min_length=1, max_length=300), OneLineText]] = Field(
        default_factory=dict
    )
    description_i18n: dict[
        str, Annotated[str, Field(min_length=1, max_length=2000), AfterValidator(text_lines)]
    ] = Field(default_factory=dict)

    @field_validator("name_i18n", "description_i18n", mode="before")
    @classmethod
    def _language_tags(cls, value: object) -> object:
        return _translations(value)

    @field_validator("price", mode="before")
    @classmethod
    def _no_float(cls, value: object) -> object:
        if isinstance(value, float):
            raise ValueError('write prices as text or exact numbers, e.g. "19.90"')
        if isinstance(value, bool) or (
            isinstance(value, str) and not _PRICE_TEXT.fullmatch(value.strip())
        ):
            raise ValueError(
                'write a price plainly, e.g. "19.90": digits and one point, no sign,'
                " exponent, separator or leading zero"
            )
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
    # Lines end at \n, \r\n or \r only: ``str.splitlines`` also breaks at U+2028, U+0085
    # and other characters a JSON string or a CSV field may hold, which would cut a row
    # in two and misreport it.
    for number, line in enumerate(io.StringIO(text, newline=""), start=1):
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


@dataclass(frozen=True, slots=True)
class _Parsed:
    """One row as read, before validation. ``problem`` is a row that cannot be validated
    (its values are still read, so its SKU still counts towards duplicates)."""

    line: int
    values: dict[str, Any]
    problem: RowError | None = None


UNCLOSED_QUOTE = (
    "a quote opened on this line is never closed: a field cannot contain a line break "
    '(close the quote; write a quote inside a quoted field as "")'
)


def _csv_record(number: int, line: str) -> tuple[list[str], RowError | None]:
    """One physical line as one CSV record, and what is wrong with it. Product fields
    never contain line breaks, so each line is parsed alone: a quote left open on a line
    is an error there, and it cannot swallow the lines after it."""
    body = line.rstrip("\r\n")
    try:
        record = next(csv.reader([body + "\n"]), [])
    except csv.Error as exc:
        return [], RowError(number, "csv", str(exc))
    # ``body`` holds no line break, so the one added can only end up inside a field
    # whose quote is still open at the end of the line.
    if any("\n" in field for field in record):
        return [field.rstrip("\n") for field in record], RowError(number, "csv", UNCLOSED_QUOTE)
    return record, None


def _csv_rows(text: str, errors: list[RowError]) -> Iterator[_Parsed]:
    lines = _checked_lines(text, errors)
    first = next(lines, None)
    header, problem = _csv_record(1, first[1]) if first is not None else ([], None)
    if problem is not None:
        yield _Parsed(1, {}, problem)
        return
    unknown = [name for name in header if not _known_column(name)]
    canonical = [_canonical_column(name) for name in header]
    unknown += sorted({f"{name} (twice)" for name in canonical if canonical.count(name) > 1})
    missing = [name for name in REQUIRED if name not in header]
    if unknown or missing:
        problems = [f"unknown column {name!r}" for name in unknown]
        problems += [f"missing column {name!r}" for name in missing]
        known = ", ".join(COLUMNS) + ", name.<language>, description.<language>"
        yield _Parsed(1, {}, RowError(1, "header", "; ".join(problems) + f" (columns: {known})"))
        return
    for line, text_line in lines:
        if not text_line.strip("\r\n"):
            continue  # a blank line, as csv skips it
        record, problem = _csv_record(line, text_line)
        if problem is not None:
            # What the line holds is kept: its SKU still counts towards duplicates.
            yield _Parsed(line, dict(zip(header, record, strict=False)), problem)
            continue
        values: dict[str, Any] = {
            k: v for k, v in zip(header, record, strict=False) if v not in ("", None)
        }
        if len(record) > len(header):
            yield _Parsed(line, values, RowError(line, "row", "more values than columns"))
            continue
        if "in_stock" in values:
            flag = str(values["in_stock"]).strip().lower()
            if flag in _TRUE | _FALSE:
                values["in_stock"] = flag in _TRUE
        if "tier" in values and str(values["tier"]).strip().isdigit():
            values["tier"] = int(values["tier"])
        yield _Parsed(line, _gather_translations(values))


def _jsonl_rows(text: str, errors: list[RowError]) -> Iterator[_Parsed]:
    for line, raw in _checked_lines(text, errors):
        if not raw.strip():
            continue
        try:
            document = json.loads(raw, parse_float=Decimal)
        except json.JSONDecodeError as exc:
            # ``msg`` alone ends "… at" for some errors ("Invalid control character at"):
            # the position is the rest; the line is the row's own.
            reason = f"{exc.msg.removesuffix(' at')} at column {exc.colno}"
            yield _Parsed(line, {}, RowError(line, "json", reason))
            continue
        except (ValueError, RecursionError) as exc:
            # ValueError: an integer of thousands of digits (Python's int conversion limit).
            nested = isinstance(exc, RecursionError)
            message = "nested too deeply" if nested else str(exc)
            yield _Parsed(line, {}, RowError(line, "json", message))
            continue
        if not isinstance(document, dict):
            yield _Parsed(line, {}, RowError(line, "json", "each line must be a JSON object"))
            continue
        dotted = {k: v for k, v in document.items() if "." in k}
        for key in dotted:
            base = _split_column(key)[0]
            if f"{base}_i18n" in document:
                message = f"give {base}_i18n or {base}.<language>, not both"
                yield _Parsed(line, document, RowError(line, key, message))
                break
        else:
            yield _Parsed(line, _gather_translations(document))


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


def _sku_of(values: dict[str, Any]) -> str | None:
    """The row's SKU as validation stores it (stripped), or None if it has none."""
    sku = values.get("sku")
    if not isinstance(sku, str) or not sku.strip():
        return None
    return sku.strip()


def parse_catalog(path: Path) -> list[CatalogRow]:
    """Validate the whole file; raise CatalogError listing every bad row (the first
    ``MAX_ERRORS``), or the one limit the file is over (size, line length, encoding)."""
    text = _read(path)
    rows_of = _jsonl_rows if path.suffix.lower() in (".jsonl", ".ndjson") else _csv_rows
    errors: list[RowError] = []
    rows: list[CatalogRow] = []
    seen: dict[str, int] = {}
    for parsed in rows_of(text, errors):
        line = parsed.line
        if len(errors) >= MAX_ERRORS:
            errors.append(RowError(line, "file", f"stopped after {MAX_ERRORS} errors"))
            break
        found: list[RowError] = [parsed.problem] if parsed.problem else []
        row: CatalogRow | None = None
        if not found:
            try:
                row = CatalogRow.model_validate(
                    {key: value for key, value in parsed.values.items() if key not in IGNORED}
                )
            except ValidationError as exc:
                for error in exc.errors(include_url=False):
                    column = ".".join(str(part) for part in error["loc"]) or "row"
                    message = error["msg"].removeprefix("Value error, ")
                    found.append(RowError(line, column, message))
        # A repeated SKU is reported whatever else is wrong with either row.
        sku = _sku_of(parsed.values)
        if sku is not None and not any(error.column == "sku" for error in found):
            if sku in seen:
                found.append(RowError(line, "sku", f"{sku!r} already on line {seen[sku]}"))
            else:
                seen[sku] = line
        errors.extend(found)
        if row is not None and not found:
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
