"""Signed unsubscribe tokens: ``<key id>.<payload>.<signature>``, HMAC-SHA256.

The key id lets keys rotate: new links use the first key, and old links still verify
while their key stays configured. The embedded default key is generated once and kept
in ``var/`` with owner-only permissions; production passes keys in the environment.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_keys(spec: str | None, var_dir: Path) -> dict[str, bytes]:
    """Keys from ``kid1:secret1,kid2:secret2``; the first signs. Default: a local key file."""
    if spec:
        keys = {}
        for item in spec.split(","):
            kid, _, secret = item.strip().partition(":")
            if not kid or not secret:
                raise ValueError("unsubscribe keys look like 'k1:secret,k0:oldsecret'")
            keys[kid] = secret.encode()
        return keys
    path = var_dir / "unsubscribe.key"
    if not path.exists():
        var_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as stream:
            stream.write(secrets.token_urlsafe(32))
    return {"local": path.read_text().strip().encode()}


def sign(keys: dict[str, bytes], customer_id: str, scope: str) -> str:
    kid, key = next(iter(keys.items()))
    payload = _b64(f"{customer_id}\x1f{scope}".encode())
    mac = hmac.new(key, f"{kid}.{payload}".encode(), hashlib.sha256).digest()[:20]
    return f"{kid}.{payload}.{_b64(mac)}"


def verify(keys: dict[str, bytes], token: str) -> tuple[str, str] | None:
    """(customer id, scope) for a genuine token, None for a tampered or foreign one."""
    try:
        kid, payload, signature = token.split(".")
        key = keys[kid]
        expected = hmac.new(key, f"{kid}.{payload}".encode(), hashlib.sha256).digest()[:20]
        if not hmac.compare_digest(expected, _unb64(signature)):
            return None
        customer_id, _, scope = _unb64(payload).decode().partition("\x1f")
    except (ValueError, KeyError, UnicodeDecodeError):
        return None
    return customer_id, scope
