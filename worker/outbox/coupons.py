"""Coupon codes: one per send, unguessable without the secret, the same on every retry.

The code is an HMAC of the send id (so a retry derives the same code) and is stored
with the send the first time it is rendered, together with its expiry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def coupon_code(secret: bytes, send_id: int, prefix: str = "") -> str:
    digest = hmac.new(secret, f"coupon\x1f{send_id}".encode(), hashlib.sha256).digest()
    body = base64.b32encode(digest).decode("ascii")[:10]
    code = f"{body[:5]}-{body[5:]}"
    return f"{prefix}-{code}" if prefix else code
