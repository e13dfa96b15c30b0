"""Check an AWS Signature Version 4 the way AWS does, for the local SES server.

Written from the AWS documentation ("Create a signed AWS API request"), independently of
botocore, which the provider uses to sign: if the two disagree the test fails.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, ?SignedHeaders=(?P<signed>[a-z0-9;-]+), ?"
    r"Signature=(?P<signature>[0-9a-f]{64})$"
)
MAX_SKEW = timedelta(minutes=5)


class SignatureError(Exception):
    """What AWS would answer: ``kind`` is its error type."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def _canonical_uri(path: str) -> str:
    return "/".join(quote(segment, safe="-_.~") for segment in path.split("/")) or "/"


def _canonical_query(query: str) -> str:
    pairs = [part.partition("=") for part in query.split("&") if part]
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, _, v in sorted(pairs))


def verify(
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    access_key_id: str,
    secret_access_key: str,
    region: str,
    service: str,
    session_token: str | None = None,
    now: datetime | None = None,
) -> None:
    """Raise :class:`SignatureError` unless the request is signed by these credentials."""
    lowered = {name.lower(): value for name, value in headers.items()}
    match = _AUTHORIZATION.match(lowered.get("authorization", ""))
    if match is None:
        raise SignatureError("IncompleteSignatureException", "Authorization header malformed")
    if match["key"] != access_key_id:
        raise SignatureError(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    amz_date = lowered.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError as exc:
        raise SignatureError("IncompleteSignatureException", "X-Amz-Date missing") from exc
    if abs((now or datetime.now(UTC)) - signed_at) > MAX_SKEW:
        raise SignatureError("InvalidSignatureException", "Signature expired")
    if (match["date"], match["region"], match["service"]) != (amz_date[:8], region, service):
        raise SignatureError("InvalidSignatureException", "Credential should be scoped correctly")
    signed = match["signed"].split(";")
    required = {"host", "x-amz-date"} | ({"x-amz-security-token"} if session_token else set())
    if not required <= set(signed) or signed != sorted(signed):
        raise SignatureError("InvalidSignatureException", f"SignedHeaders lack {required}")
    if session_token is not None and lowered.get("x-amz-security-token") != session_token:
        raise SignatureError("UnrecognizedClientException", "The security token is invalid.")
    canonical_headers = "".join(
        f"{name}:{' '.join(lowered.get(name, '').split())}\n" for name in signed
    )
    canonical_request = "\n".join(
        [
            method,
            _canonical_uri(path),
            _canonical_query(query),
            canonical_headers,
            match["signed"],
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = f"{match['date']}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        [ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    key = _hmac(f"AWS4{secret_access_key}".encode(), match["date"])
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, match["signature"]):
        raise SignatureError(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided.",
        )
