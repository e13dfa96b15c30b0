"""Signed unsubscribe tokens: ``<key id>.<payload>.<signature>``, HMAC-SHA256.

The key id lets keys rotate: new links use the first key, and old links still verify
while their key stays configured. The embedded default key is generated once and kept
in ``var/`` with owner-only permissions; production passes keys in the environment.

The payload is base64url of the JSON array ``[customer id, scope]``: JSON escapes every
control character, so no customer id can split into a different (id, scope) pair. The
first format joined the two with U+001F; a customer id holding U+001F made that
ambiguous. Tokens of that format already sent out still verify (their JSON-free payload
holds a raw U+001F, which a JSON payload never does) and are split at the *last*
U+001F, since scopes are never made with one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from worker.core.key_specs import parse_keys


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_keys(spec: str | None, var_dir: Path) -> dict[str, bytes]:
    """Keys from ``kid1:secret1,kid2:secret2``; the first signs. Default: a local key file."""
    if spec:
        return parse_keys(spec)
    path = var_dir / "unsubscribe.key"
    if not path.exists():
        var_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as stream:
            stream.write(secrets.token_urlsafe(32))
    return {"local": path.read_text().strip().encode()}


_LEGACY_SEPARATOR = "\x1f"


def sign(keys: dict[str, bytes], customer_id: str, scope: str) -> str:
    kid, key = next(iter(keys.items()))
    payload = _b64(json.dumps([customer_id, scope], ensure_ascii=True).encode("ascii"))
    mac = hmac.new(key, f"{kid}.{payload}".encode(), hashlib.sha256).digest()[:20]
    return f"{kid}.{payload}.{_b64(mac)}"


def _decode_payload(data: bytes) -> tuple[str, str] | None:
    """(customer id, scope) from either payload format, None if it is neither."""
    text = data.decode("utf-8")
    if _LEGACY_SEPARATOR in text:
        customer_id, _, scope = text.rpartition(_LEGACY_SEPARATOR)
        return customer_id, scope
    pair = json.loads(text)
    if isinstance(pair, list) and len(pair) == 2 and all(isinstance(part, str) for part in pair):
        return pair[0], pair[1]
    return None


def verify(keys: dict[str, bytes], token: str) -> tuple[str, str] | None:
    """(customer id, scope) for a genuine token, None for a tampered or foreign one."""
    try:
        kid, payload, signature = token.split(".")
        key = keys[kid]
        expected = hmac.new(key, f"{kid}.{payload}".encode(), hashlib.sha256).digest()[:20]
        # Compared as the one text ``sign`` writes, not as decoded bytes: base64 decoding
        # ignores a 20-byte MAC's two spare bits and any trailing "=", so a changed last
        # character or added padding decoded to the same MAC and verified.
        if not hmac.compare_digest(_b64(expected).encode("ascii"), signature.encode("ascii")):
            return None
        return _decode_payload(_unb64(payload))
    except (ValueError, KeyError, UnicodeError):
        return None
