"""The unsubscribe keys setting, ``kid1:secret1,kid2:secret2``, parsed and checked.

In the core because the settings check it at start (every command refuses a malformed
one instead of failing every send); :mod:`worker.email.tokens` signs and verifies with
the keys it returns.
"""

from __future__ import annotations

import re

# HMAC-SHA256 keys shorter than this are guessable offline from one token; 16 bytes is
# 128 bits, the least NIST SP 800-107 allows for an HMAC key's security strength.
MIN_SECRET_BYTES = 16
_KID = re.compile(r"^[A-Za-z0-9_-]+$")


def parse_keys(spec: str) -> dict[str, bytes]:
    """Keys from ``kid1:secret1,kid2:secret2``, the first signs; :class:`ValueError` for a
    malformed item, a key id outside ``[A-Za-z0-9_-]`` (it is the token's first field,
    before a ``.``), a repeated id or a secret shorter than :data:`MIN_SECRET_BYTES`."""
    keys: dict[str, bytes] = {}
    for item in spec.split(","):
        kid, _, secret = item.strip().partition(":")
        if not kid or not secret:
            raise ValueError("unsubscribe keys look like 'k1:secret,k0:oldsecret'")
        if not _KID.match(kid):
            raise ValueError(f"key id {kid!r} may use only letters, digits, '-' and '_'")
        if kid in keys:
            raise ValueError(f"key id {kid!r} appears twice")
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(
                f"the secret of key {kid!r} is {len(secret.encode())} bytes; "
                f"use at least {MIN_SECRET_BYTES}"
            )
        keys[kid] = secret.encode()
    return keys
