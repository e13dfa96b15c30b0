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


def one_line(value: str) -> str:
    """``value`` unchanged; ``ValueError`` naming the first character it may not hold, by
    code point (never the text itself: it may be a customer's data)."""
    found = NOT_ONE_LINE.search(value)
    if found is not None:
        raise ValueError(
            "must be one line without control or bidirectional characters"
            f" (found U+{ord(found.group()):04X})"
        )
    return value
