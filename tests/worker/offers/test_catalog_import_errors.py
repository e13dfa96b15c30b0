"""Catalog import errors land on the line that holds the fault, and none hides another:
an unclosed CSV quote is reported where it opened and swallows nothing after it; a
repeated SKU is reported whatever else is wrong with either row."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from worker.offers.catalog_import import CatalogError, parse_catalog

HEADER = "sku,name,category,price,currency\n"


def _errors(path: Path) -> list[tuple[int, str]]:
    with pytest.raises(CatalogError) as caught:
        parse_catalog(path)
    return [(error.line, error.column) for error in caught.value.errors]


def _write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_bytes(text.encode("utf-8"))
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The tryout's file: the quote on line 3 used to swallow line 4.
        (
            HEADER + "E-1,One,laptops,1.00,EUR\n"
            'E-2,"Two,laptops,2.00,EUR\n'
            "E-3,Three,laptops,3.00,EUR\n",
            [(3, "csv")],
        ),
        # Quote opened in the first and in the last field.
        (HEADER + '"E-1,One,laptops,1.00,EUR\nE-2,Two,laptops,2.00,EUR\n', [(2, "csv")]),
        (HEADER + 'E-1,One,laptops,1.00,"EUR\nE-2,Two,laptops,2.00,EUR\n', [(2, "csv")]),
        # Windows line endings, and an unclosed quote on the last line without newline.
        (
            HEADER.replace("\n", "\r\n") + 'E-1,"One,laptops,1.00,EUR\r\nE-2,Two,x,-1,EUR\r\n',
            [(2, "csv"), (3, "price")],
        ),
        (HEADER + "E-1,One,laptops,1.00,EUR\n" + 'E-2,"Two,laptops,2.00,EUR', [(3, "csv")]),
        # A well-formed quoted field that spans lines is refused too, at its first line;
        # the line after is read as a row of its own.
        (
            HEADER + 'E-1,"One\nline two",laptops,1.00,EUR\n',
            [(2, "csv"), (3, "price"), (3, "currency")],
        ),
        # Two unclosed quotes: each on its own line; the rows after them are still read.
        (
            HEADER + 'A,"a,c,1,EUR\nB,b,c,-1,EUR\nC,"c,c,1,EUR\nD,d,c,1,euro\n',
            [(2, "csv"), (3, "price"), (4, "csv"), (5, "currency")],
        ),
        # In the header.
        ('sku,"name,category,price,currency\nE-1,One,laptops,1.00,EUR\n', [(1, "csv")]),
    ],
    ids=["tryout", "first-field", "last-field", "crlf", "last-line", "multiline", "two", "header"],
)
def test_an_unclosed_quote_is_an_error_on_its_own_line(
    tmp_path: Path, text: str, expected: list[tuple[int, str]]
) -> None:
    path = _write(tmp_path, "catalog.csv", text)
    errors = _errors(path)
    assert errors == expected
    with pytest.raises(CatalogError) as caught:
        parse_catalog(path)
    message = str(caught.value)
    assert f"{path}:{expected[0][0]}: csv: a quote opened on this line is never closed" in message


ROW_KINDS = st.sampled_from(["good", "unclosed", "bad-price", "blank"])


@settings(max_examples=200, deadline=None, database=None)
@given(kinds=st.lists(ROW_KINDS, min_size=1, max_size=15), crlf=st.booleans())
@example(kinds=["good", "unclosed", "good"], crlf=False)
def test_every_line_keeps_its_own_errors_around_unclosed_quotes(
    tmp_path_factory: pytest.TempPathFactory, kinds: list[str], crlf: bool
) -> None:
    """Whatever mix of rows: each unclosed quote is one error at its line, each other
    bad row keeps its error at its line, and no row disappears into a quoted field."""
    lines = [HEADER]
    expected: list[tuple[int, str]] = []
    for n, kind in enumerate(kinds):
        line = n + 2
        if kind == "blank":
            lines.append("\n")
        elif kind == "unclosed":
            lines.append(f'U-{n},"Name {n},c,1.00,EUR\n')
            expected.append((line, "csv"))
        elif kind == "bad-price":
            lines.append(f"P-{n},Name {n},c,-1,EUR\n")
            expected.append((line, "price"))
        else:
            lines.append(f"G-{n},Name {n},c,1.00,EUR\n")
    text = "".join(lines)
    if crlf:
        text = text.replace("\n", "\r\n")
    path = _write(tmp_path_factory.mktemp("catalog"), "catalog.csv", text)
    if not expected:
        good = [f"G-{n}" for n, kind in enumerate(kinds) if kind == "good"]
        assert [row.sku for row in parse_catalog(path)] == good
        return
    assert _errors(path) == expected


# A row's own faults, in CSV and in JSON Lines (None: not expressible in that format).
FAULTS: dict[str, tuple[str | None, dict[str, object] | None, str]] = {
    "none": ("{sku},Name,c,1.00,EUR", {}, ""),
    "price": ("{sku},Name,c,-1,EUR", {"price": "-1"}, "price"),
    "currency+price": ("{sku},Name,c,-1,euro", {"price": "-1", "currency": "euro"}, "price"),
    "missing": ("{sku},Name,,,", {"category": None, "price": None}, "category"),
    "extra-values": ("{sku},Name,c,1.00,EUR,surplus", None, "row"),
    "unclosed-quote": ('{sku},"Name,c,1.00,EUR', None, "csv"),
    "both-i18n": (None, {"name.ro": "x", "name_i18n": {"ro": "y"}}, "name.ro"),
}


def _jsonl_row(sku: str, changes: dict[str, object]) -> str:
    document: dict[str, object] = {
        "sku": sku,
        "name": "Name",
        "category": "c",
        "price": "1.00",
        "currency": "EUR",
    }
    document.update(changes)
    return json.dumps({k: v for k, v in document.items() if v is not None}) + "\n"


@settings(max_examples=200, deadline=None, database=None)
@given(
    rows=st.lists(
        st.tuples(st.sampled_from(["A", "B", "C"]), st.sampled_from(sorted(FAULTS))),
        min_size=1,
        max_size=10,
    ),
    jsonl=st.booleans(),
)
@example(rows=[("A", "none"), ("A", "price")], jsonl=False)
@example(rows=[("A", "price"), ("A", "none")], jsonl=True)
def test_a_repeated_sku_is_reported_whatever_else_is_wrong(
    tmp_path_factory: pytest.TempPathFactory, rows: list[tuple[str, str]], jsonl: bool
) -> None:
    lines = [] if jsonl else [HEADER]
    first = 1 if jsonl else 2
    seen: dict[str, int] = {}
    expected: list[tuple[int, str]] = []
    duplicates: list[tuple[int, str]] = []
    written = 0
    for sku, fault in rows:
        csv_row, json_changes, column = FAULTS[fault]
        if (json_changes if jsonl else csv_row) is None:
            continue
        line = first + written
        written += 1
        lines.append(
            _jsonl_row(sku, json_changes or {}) if jsonl else (csv_row or "").format(sku=sku) + "\n"
        )
        if column:
            expected.append((line, column))
        if sku in seen:
            expected.append((line, "sku"))
            duplicates.append((line, f"{sku!r} already on line {seen[sku]}"))
        else:
            seen[sku] = line
    path = _write(
        tmp_path_factory.mktemp("catalog"),
        "catalog.jsonl" if jsonl else "catalog.csv",
        "".join(lines),
    )
    if not expected:
        assert [row.sku for row in parse_catalog(path)] == list(seen)
        return
    with pytest.raises(CatalogError) as caught:
        parse_catalog(path)
    found = [(error.line, error.column) for error in caught.value.errors]
    # Every row's own first error, and the duplicate, each at the row's line.
    assert [e for e in found if e[1] == "sku"] == [(line, "sku") for line, _ in duplicates]
    assert set(expected) <= set(found)
    messages = [(e.line, e.message) for e in caught.value.errors if e.column == "sku"]
    assert messages == duplicates


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c"])
def test_characters_str_splitlines_breaks_at_do_not_cut_a_row(
    tmp_path: Path, separator: str
) -> None:
    """Rows end at \\n, \\r\\n or \\r only. A JSON string (or a CSV field) may hold
    U+2028, NEL or a form feed; cutting the row there made one good row two bad lines.
    The row is read whole and judged on its own line: a description may break lines
    (U+2028, U+2029) but holds no other control; a name is one line.)"""
    description = f"folds{separator}flat"
    jsonl = _write(
        tmp_path,
        "catalog.jsonl",
        json.dumps(
            {
                "sku": "A-1",
                "name": "Tripod",
                "category": "tripods",
                "price": "9.00",
                "currency": "EUR",
                "description": description,
            },
            ensure_ascii=False,
        )
        + "\n"
        + '{"sku": "A-2", "name": "Bag", "category": "bags", "price": "-1", "currency": "EUR"}\n',
    )
    line_break = separator in ("\u2028", "\u2029")
    assert _errors(jsonl) == ([] if line_break else [(1, "description")]) + [(2, "price")]
    csv_file = _write(
        tmp_path,
        "catalog.csv",
        HEADER + "A-1,Tri" + separator + "pod,tripods,9.00,EUR\nA-2,Bag,bags,-1,EUR\n",
    )
    assert _errors(csv_file) == [(2, "name"), (3, "price")]


@pytest.mark.parametrize("code", ["XYZ", "ABC", "EUX", "QQQ"])
def test_a_currency_iso_4217_does_not_assign_is_refused_on_its_line(
    tmp_path: Path, code: str
) -> None:
    path = _write(
        tmp_path, "catalog.csv", HEADER + "A-1,One,c,1.00,EUR\n" + f"A-2,Two,c,1.00,{code}\n"
    )
    assert _errors(path) == [(3, "currency")]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        # The tab is the 25th character; the open string meets the line's end (a control
        # character inside a string) at its 37th.
        ('{"sku": "Z2", "name": "a\tb"}', "Invalid control character at column 25"),
        ('{"sku": "Z2", "name": "unterminated}', "Invalid control character at column 37"),
        ('{"sku": "Z2",, "name": "x"}', "Expecting property name enclosed in double quotes at"),
        ('{"sku": 1.2.3}', "Expecting ',' delimiter at column 12"),
    ],
)
def test_a_json_syntax_error_says_what_and_where(tmp_path: Path, row: str, message: str) -> None:
    """The reason was cut after "at" for some JSON errors: the column belongs to it."""
    path = _write(tmp_path, "catalog.jsonl", row + "\n")
    with pytest.raises(CatalogError) as caught:
        parse_catalog(path)
    [error] = caught.value.errors
    assert (error.line, error.column) == (1, "json")
    assert error.message.startswith(message)
    assert re.search(r" at column \d+$", error.message)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "a\x00b"),  # PostgreSQL cannot store NUL: the import crashed there
        ("name", "Tripod\u202e"),
        ("name", "Tri\x1bpod"),
        ("name", "Tri\tpod"),
        ("category", "c\x01d"),
        ("category", "cams\u2066"),
        ("sku", "A\x00-1"),
        ("description", "folds\x00flat"),
        ("description", "folds\u202eflat"),
        ("description", "bell\x07"),
        ("price", "1_000"),
        ("price", "\u0661\u0662"),
        ("price", "+5"),
        ("price", "-0"),
        ("price", "1e2"),
        ("price", "019.90"),
        ("price", "19,90"),
        ("price", "19."),
        ("url", "https://x y/"),
        ("url", "https://shop.example/<script>"),
        ("url", "http://"),
        ("url", 'https://shop.example/"onmouseover'),
        ("image_url", "https://cdn.example/a\x00.png"),
    ],
)
def test_a_row_value_no_email_can_show_is_refused_on_its_line(
    tmp_path: Path, field: str, value: str
) -> None:
    """Names, categories and SKUs are one line (no control, no bidirectional control); a
    description may break lines but holds no other control; a price is written plainly;
    a URL has a host and no space, quote or angle bracket. Each is refused on its own
    line, in both formats, and nothing is imported."""
    good = {"sku": "A-1", "name": "Tripod", "category": "tripods", "price": "9.00"}
    row = {**good, "sku": "A-2", "currency": "EUR", field: value}
    jsonl = _write(
        tmp_path,
        "catalog.jsonl",
        json.dumps({**good, "currency": "EUR"}) + "\n" + json.dumps(row) + "\n",
    )
    assert _errors(jsonl) == [(2, field)]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("description", "line one\r\nline two"),
        ("description", "line one\nline two\u2028three"),
        ("url", "https://shop.example/men's-shoes?size=42#top"),
        ("image_url", "https://cdn.example/a%20b.png"),
        ("name", "Ștefan's Tripod — 2 m (ø 5 cm)"),
    ],
)
def test_a_row_value_an_email_can_show_is_accepted(tmp_path: Path, field: str, value: str) -> None:
    row = {"sku": "A-1", "name": "Tripod", "category": "tripods", "price": "9.00"}
    path = _write(
        tmp_path, "catalog.jsonl", json.dumps({**row, "currency": "EUR", field: value}) + "\n"
    )
    (parsed,) = parse_catalog(path)
    assert getattr(parsed, field) == value


@pytest.mark.parametrize("price", ["0", "0.50", "19.90", "1234567890.1234", " 19.90 "])
def test_a_price_written_plainly_is_accepted(tmp_path: Path, price: str) -> None:
    path = _write(tmp_path, "catalog.csv", HEADER + f'A-1,Tripod,tripods,"{price}",EUR\n')
    (row,) = parse_catalog(path)
    assert str(row.price) == price.strip()


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("url", "https://x y/", "absolute http(s) URL with a host"),
        ("currency", "eur", "ISO 4217 currency code"),
        ("currency", "EURO", "ISO 4217 currency code"),
    ],
)
def test_a_refusal_says_what_is_expected_not_a_pattern(
    tmp_path: Path, field: str, value: str, said: str
) -> None:
    row = {"sku": "A-1", "name": "Tripod", "category": "tripods", "price": "9.00"}
    path = _write(
        tmp_path, "catalog.jsonl", json.dumps({"currency": "EUR", **row, field: value}) + "\n"
    )
    with pytest.raises(CatalogError) as caught:
        parse_catalog(path)
    (error,) = caught.value.errors
    assert error.column == field and said in error.message and "pattern" not in error.message
