"""The exact bytes of every shipped email, and of hostile bodies, stay what they were.

Rendering and the MIME builder are tuned for speed (docs/performance.md, "Rendering and
the MIME build"); a tuning must not change one byte of what a customer receives. Each
case is rendered (the cases of test_shipped_emails: every shipped template and variant,
in English, Romanian and Italian, named or not, with a coupon or not) and built with a fixed
envelope (fixed Date and Message-ID), and the SHA-256 of the message is compared with
the one recorded in ``message_digests.json``. The bodies of ``HOSTILE`` go through the
builder alone: every line end, lone surrogates, Unicode line separators, long lines,
trailing white space and ``=``.

After an intended change of a template, the context or the builder, record the new
digests with ``python -m tests.worker.email.test_message_bytes`` and review the diff
of the rendered emails the change explains.
"""

from __future__ import annotations

import hashlib
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory

import pytest

from tests.worker.email.test_shipped_emails import CASES, Case, _settings, render
from worker.core.settings import Settings
from worker.email.mime import Envelope, build_message, message_id_for
from worker.email.rendering import RenderedEmail

DIGESTS = Path(__file__).with_name("message_digests.json")

ENVELOPE = Envelope(
    send_id=7,
    sender_name="Magazinul Ștefăniță",
    sender_address="shop@example.ro",
    recipient_name="Ioana Mureșan",
    recipient_address="ioana@exemplu-țară.ro",
    reply_to='"Asistență" <help@example.ro>',
    date=datetime(2026, 11, 17, 10, 30, tzinfo=UTC),
    message_id=message_id_for(7, "example.ro", b"k" * 32),
    unsubscribe_url="https://shop.example/u/k1.payload.signature",
    unsubscribe_mailto="unsubscribe@example.ro?subject=unsubscribe",
    feedback_id="0123456789:cross-sell:crosssell",
)

HOSTILE: dict[str, RenderedEmail] = {
    "line-ends": RenderedEmail(
        "Line ends", "<p>a\r\nb\rc\nd\r\r\ne</p>\r", "one\r\ntwo\rthree\nfour\n\r\n\rfive"
    ),
    "separators": RenderedEmail(
        "Sep\u2028arators", "<p>x\u2028y\u0085z\x0bv\x0cw\x1cq</p>", "a\u2029b\x1dc\x1ed"
    ),
    "surrogates": RenderedEmail("Lone \ud800 half", "<p>\udfff é \ud83d</p>", "ok \ud800\r\nx"),
    "long-lines": RenderedEmail(
        "Long", "<p>" + "ă" * 200 + "</p>", ("word " * 60 + "\n") * 3 + "x" * 300
    ),
    "white-space-and-equals": RenderedEmail(
        "Spaces", "<p>a=b \t\n</p>  \n\t\n", "trailing \nand\ttab\t\n=3D = \n.\n..\nFrom x"
    ),
    "empty": RenderedEmail("", "", ""),
    "ascii-only": RenderedEmail("Plain", "<p>plain</p>", "plain"),
}


def _case_id(case: Case) -> str:
    return f"shipped:{case}"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _shipped_digest(case: Case, settings: Settings) -> str:
    rendered, _ = render(case, settings)
    return _digest(build_message(ENVELOPE, rendered))


def _recorded() -> dict[str, str]:
    recorded: dict[str, str] = json.loads(DIGESTS.read_text(encoding="utf-8"))
    return recorded


@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_shipped_email_is_byte_for_byte_as_recorded(tmp_path: Path, case: Case) -> None:
    assert _shipped_digest(case, _settings(tmp_path)) == _recorded()[_case_id(case)]


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_body_is_built_byte_for_byte_as_recorded(name: str) -> None:
    assert _digest(build_message(ENVELOPE, HOSTILE[name])) == _recorded()[f"hostile:{name}"]


def test_every_recorded_digest_has_a_case() -> None:
    expected = {_case_id(case) for case in CASES} | {f"hostile:{name}" for name in HOSTILE}
    assert set(_recorded()) == expected


def record() -> None:
    """Write ``message_digests.json`` from the code as it is now."""
    with TemporaryDirectory() as scratch:
        settings = _settings(Path(scratch))
        digests = {_case_id(case): _shipped_digest(case, settings) for case in CASES}
    for name, email in HOSTILE.items():
        digests[f"hostile:{name}"] = _digest(build_message(ENVELOPE, email))
    DIGESTS.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{len(digests)} digests written to {DIGESTS}", file=sys.stderr)


if __name__ == "__main__":
    record()
