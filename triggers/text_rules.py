"""What one line of text shown to people may hold: a customer's name, a campaign's name
or subject, a product's name or category.

Such text goes into email headers, greetings, subjects and report labels, so it holds
no control character (C0, DEL, C1: NUL, which PostgreSQL cannot store, line breaks,
escapes), no Unicode line or paragraph separator (U+2028, U+2029: line breaks to a text
reader) and no bidirectional embedding, override or isolate (U+202A-U+202E,
U+2066-U+2069), which can make it read backwards (Unicode TR #9; "Trojan Source",
CVE-2021-42574).
"""

from __future__ import annotations

import re

NOT_ONE_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


# Text that may break lines (a product's description): LF and CR LF, and U+2028/U+2029,
# but no other control character and no bidirectional embedding, override or isolate.
NOT_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def text_lines(value: str) -> str:
    """``value`` unchanged; ``ValueError`` naming the first character of :data:`NOT_TEXT`
    it holds, by code point."""
    return _refuse(NOT_TEXT, value, "must not contain control or bidirectional characters")


def one_line(value: str) -> str:
    """``value`` unchanged; ``ValueError`` naming the first character it may not hold, by
    code point (never the text itself: it may be a customer's data)."""
    return _refuse(
        NOT_ONE_LINE, value, "must be one line without control or bidirectional characters"
    )


def _refuse(forbidden: re.Pattern[str], value: str, rule: str) -> str:
    found = forbidden.search(value)
    if found is not None:
        raise ValueError(f"{rule} (found U+{ord(found.group()):04X})")
    return value
