"""A real HTTP server on loopback that speaks four email APIs: Postmark, SendGrid,
Mailgun and SES v2.

Postmark's ``POST /email/batch`` is served too: per-message results in one ``200``
answer, ``422`` for a malformed request (not an array, more than 500 messages).

Each endpoint checks what the real one checks first — the credentials (Postmark's token
header, SendGrid's Bearer key, Mailgun's Basic ``api:<key>``, a SigV4 signature verified
in full) — then the body's shape, and refuses with that provider's own error body when
something is wrong. Accepted messages are recorded by their Message-ID; every request
that reaches the message stage is recorded as an :class:`Attempt` with its time.

Faults are planned per recipient (``plan``) or drawn by a function (``fault_source``)
and are applied to valid requests only: an answer with a status (the provider's error
body shape, ``Retry-After`` as given), or, after the whole body was read, ``hang``
(answer nothing until the client gives up) or ``close`` (drop the connection).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import secrets
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import getaddresses, parseaddr
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from tests.support.sigv4 import SignatureError, verify

# SendGrid refuses these in "headers" (its Mail Send reference).
SENDGRID_RESERVED = frozenset(
    {
        "x-sg-id",
        "x-sg-eid",
        "received",
        "dkim-signature",
        "content-type",
        "content-transfer-encoding",
        "to",
        "from",
        "subject",
        "reply-to",
        "cc",
        "bcc",
    }
)
Provider = Literal["postmark", "sendgrid", "mailgun", "ses"]
POSTMARK_BATCH_LIMIT = 500  # messages per POST /email/batch (Postmark's batch guide)


@dataclass
class Fault:
    """One scripted answer. ``error`` is the provider's code: a Postmark ErrorCode, a
    SendGrid error field, an AWS error type; ``message`` its human text."""

    status: int = 503
    error: str | int | None = None
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    action: Literal["answer", "hang", "close"] = "answer"
    hang_seconds: float = 5.0


@dataclass(frozen=True)
class Attempt:
    provider: str
    message_id: str | None
    recipient: str
    arrived: float  # time.monotonic() when the request line was read
    answered: float  # time.monotonic() after the answer was written
    status: int | None  # None: hung up or closed without an answer
    retry_after: str | None
    peer: int  # the client's port: the same port means the same (pooled) connection


@dataclass(frozen=True)
class Accepted:
    provider: str
    message_id: str | None
    provider_message_id: str
    recipient: str
    payload: dict[str, Any] | None  # the JSON body (Postmark, SendGrid, SES)
    mime: bytes | None  # the raw message (Mailgun, SES)


def valid_address(value: object) -> bool:
    """An address the APIs would take: one mailbox, local part and a dotted domain."""
    if not isinstance(value, str) or not value or "\r" in value or "\n" in value:
        return False
    pairs = getaddresses([value])
    if len(pairs) != 1:
        return False
    local, _, domain = pairs[0][1].rpartition("@")
    return bool(local) and "." in domain and " " not in pairs[0][1]


def decoded_name(value: str) -> str:
    """The display name of ``Name <address>``, RFC 2047 words decoded."""
    return str(make_header(decode_header(parseaddr(value)[0])))


def _multipart(content_type: str, body: bytes) -> dict[str, bytes]:
    """form-data fields by name (enough of RFC 7578 for what httpx2 sends)."""
    boundary = ""
    for part in content_type.split(";")[1:]:
        key, _, given = part.strip().partition("=")
        if key.lower() == "boundary":
            boundary = given.strip('"')
    if not content_type.lower().startswith("multipart/form-data") or not boundary:
        return {}
    fields: dict[str, bytes] = {}
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, value = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        name = ""
        for line in head.decode("utf-8", "replace").split("\r\n"):
            if line.lower().startswith("content-disposition:"):
                for item in line.split(";")[1:]:
                    key, _, raw = item.strip().partition("=")
                    if key == "name":
                        name = raw.strip('"')
        if name:
            fields[name] = value.removesuffix(b"\r\n")
    return fields


class _Answer(Exception):
    """Raised inside a handler to send one response and stop."""

    def __init__(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


class _Refused(Exception):
    """One Postmark message refused: its ErrorCode and text (a 422, or a batch entry)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


class EmailApiServer:
    def __init__(
        self,
        *,
        postmark_token: str = "pm-server-token",
        postmark_streams: frozenset[str] = frozenset({"outbound", "broadcast"}),
        sendgrid_key: str = "SG.test-key",
        mailgun_key: str = "key-mailgun-test",
        mailgun_domain: str = "mg.shop.example",
        aws_access_key_id: str = "AKIDEXAMPLE",
        aws_secret_access_key: str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        aws_region: str = "eu-west-1",
        aws_session_token: str | None = None,
    ) -> None:
        self.postmark_token = postmark_token
        self.postmark_streams = postmark_streams
        self.sendgrid_key = sendgrid_key
        self.mailgun_key = mailgun_key
        self.mailgun_domain = mailgun_domain
        self.aws_access_key_id = aws_access_key_id
        self.aws_secret_access_key = aws_secret_access_key
        self.aws_region = aws_region
        self.aws_session_token = aws_session_token
        self.inactive: set[str] = set()
        self.planned: dict[str, deque[Fault]] = {}
        self.fault_source: Callable[[str, str | None], Fault | None] | None = None
        self.accepted: list[Accepted] = []
        self.attempts: list[Attempt] = []
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._connections: set[socket.socket] = set()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> EmailApiServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        with self.lock:
            open_connections, self._connections = list(self._connections), set()
        for connection in open_connections:  # idle keep-alive connections of clients
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def plan(self, recipient: str, *faults: Fault) -> None:
        """The next requests for this recipient get these faults, in order."""
        with self.lock:
            self.planned.setdefault(recipient.lower(), deque()).extend(faults)

    def by_message_id(self) -> dict[str | None, list[Accepted]]:
        with self.lock:
            found: dict[str | None, list[Accepted]] = {}
            for item in self.accepted:
                found.setdefault(item.message_id, []).append(item)
            return found

    def _fault_for(self, recipient: str, message_id: str | None) -> Fault | None:
        with self.lock:
            queue = self.planned.get(recipient.lower())
            if queue:
                return queue.popleft()
        if self.fault_source is not None:
            return self.fault_source(recipient, message_id)
        return None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with api.lock:
                    api._connections.add(self.connection)

            def finish(self) -> None:
                with api.lock:
                    api._connections.discard(self.connection)
                super().finish()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: pytest shows failures, not every request."""

            def do_POST(self) -> None:
                arrived = time.monotonic()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                path = urlsplit(self.path)
                route: Callable[..., None] | None = None
                if path.path == "/email":
                    route = api._postmark
                elif path.path == "/email/batch":
                    route = api._postmark_batch
                elif path.path == "/v3/mail/send":
                    route = api._sendgrid
                elif path.path.startswith("/v3/") and path.path.endswith("/messages.mime"):
                    route = api._mailgun
                elif path.path == "/v2/email/outbound-emails":
                    route = api._ses
                try:
                    if route is None:
                        raise _Answer(404, {"message": "not found"})
                    route(self, path.path, path.query, body, arrived)
                except _Answer as answer:
                    self.answer(answer.status, answer.body, answer.headers)

            def answer(self, status: int, body: object, headers: dict[str, str]) -> None:
                if isinstance(body, bytes):
                    data, kind = body, "text/html"
                elif isinstance(body, str):
                    data, kind = body.encode(), "text/plain"
                else:
                    data, kind = json.dumps(body).encode(), "application/json"
                self.send_response(status)
                self.send_header("Content-Type", headers.pop("Content-Type", kind))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()

        return Handler

    # --- the stage every valid request reaches ------------------------------------------

    def _deliver(
        self,
        handler: Any,
        provider: Provider,
        recipient: str,
        message_id: str | None,
        arrived: float,
        error_body: Callable[[Fault], tuple[object, dict[str, str]]],
        accept: Callable[[], tuple[int, object, dict[str, str], Accepted]],
    ) -> None:
        fault = self._fault_for(recipient, message_id)
        peer = int(handler.client_address[1])
        if fault is not None and fault.action != "answer":
            # Recorded first: the client may give up before the hang is over.
            self._record(
                Attempt(provider, message_id, recipient, arrived, arrived, None, None, peer)
            )
            if fault.action == "hang":
                time.sleep(fault.hang_seconds)
            handler.close_connection = True
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)
            return
        retry_after: str | None = None
        if fault is not None:
            body, headers = error_body(fault)
            headers = {**headers, **fault.headers}
            retry_after = headers.get("Retry-After")
            status = fault.status
        else:
            status, body, headers, accepted = accept()
            with self.lock:
                self.accepted.append(accepted)
        handler.answer(status, body, headers)
        self._record(
            Attempt(
                provider,
                message_id,
                recipient,
                arrived,
                time.monotonic(),
                status,
                retry_after,
                peer,
            )
        )

    def _record(self, attempt: Attempt) -> None:
        with self.lock:
            self.attempts.append(attempt)

    @staticmethod
    def _json(body: bytes) -> Any:
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None

    # --- Postmark ---------------------------------------------------------------------

    def _postmark_request(self, handler: Any, body: bytes) -> Any:
        """The checks Postmark makes on the request before its messages: token, JSON."""
        if handler.headers.get("X-Postmark-Server-Token") != self.postmark_token:
            raise _Answer(
                401, {"ErrorCode": 10, "Message": "Request does not contain a valid Server token."}
            )
        if not str(handler.headers.get("Content-Type", "")).startswith("application/json"):
            raise _Answer(422, {"ErrorCode": 409, "Message": "JSON required"})
        payload = self._json(body)
        if payload is None:
            raise _Answer(422, {"ErrorCode": 402, "Message": "Received invalid JSON input."})
        return payload

    def _postmark_message(self, payload: object) -> tuple[str, str | None]:
        """One message object checked as Postmark checks it: its recipient and our
        Message-ID, or :class:`_Refused` with Postmark's ErrorCode and text."""
        if not isinstance(payload, dict):
            raise _Refused(402, "Received invalid JSON input.")
        if not valid_address(payload.get("From")):
            raise _Refused(300, f"Invalid 'From' address: '{payload.get('From')}'.")
        to = payload.get("To")
        if not valid_address(to):
            raise _Refused(300, f"Invalid 'To' address: '{to}'.")
        if "ReplyTo" in payload and not valid_address(payload["ReplyTo"]):
            raise _Refused(300, f"Invalid 'ReplyTo' address: '{payload['ReplyTo']}'.")
        if not payload.get("TextBody") and not payload.get("HtmlBody"):
            raise _Refused(300, "Provide either email TextBody or HtmlBody or both.")
        headers = payload.get("Headers", [])
        if not isinstance(headers, list) or not all(
            isinstance(h, dict)
            and isinstance(h.get("Name"), str)
            and isinstance(h.get("Value"), str)
            for h in headers
        ):
            raise _Refused(300, "Headers must be a list of {Name, Value} objects.")
        if payload.get("MessageStream", "outbound") not in self.postmark_streams:
            raise _Refused(1235, "The 'MessageStream' provided does not exist on this server.")
        recipient = parseaddr(str(to))[1].lower()
        if recipient in self.inactive:
            raise _Refused(
                406,
                "You tried to send to recipient(s) that have been marked as inactive. "
                f"Found inactive addresses: {recipient}.",
            )
        message_id = next((h["Value"] for h in headers if h["Name"].lower() == "message-id"), None)
        return recipient, message_id

    @staticmethod
    def _postmark_error_body(fault: Fault) -> tuple[object, dict[str, str]]:
        if fault.error is None and fault.status >= 500:
            return b"<html><body>Service Unavailable</body></html>", {}
        return {"ErrorCode": fault.error or fault.status, "Message": fault.message}, {}

    def _postmark_accepted(
        self, payload: dict[str, Any], recipient: str, message_id: str | None
    ) -> tuple[dict[str, object], Accepted]:
        postmark_id = str(uuid.uuid4())
        answer = {
            "To": payload.get("To"),
            "SubmittedAt": datetime.now(UTC).isoformat(),
            "MessageID": postmark_id,
            "ErrorCode": 0,
            "Message": "OK",
        }
        return answer, Accepted("postmark", message_id, postmark_id, recipient, payload, None)

    def _postmark(self, handler: Any, path: str, query: str, body: bytes, arrived: float) -> None:
        payload = self._postmark_request(handler, body)
        try:
            recipient, message_id = self._postmark_message(payload)
        except _Refused as refused:
            raise _Answer(422, {"ErrorCode": refused.code, "Message": refused.text}) from None

        def accept() -> tuple[int, object, dict[str, str], Accepted]:
            answer, accepted = self._postmark_accepted(payload, recipient, message_id)
            return 200, answer, {}, accepted

        self._deliver(
            handler, "postmark", recipient, message_id, arrived, self._postmark_error_body, accept
        )

    def _postmark_batch(
        self, handler: Any, path: str, query: str, body: bytes, arrived: float
    ) -> None:
        """``POST /email/batch``: an array of up to 500 message objects, answered ``200``
        with one result per message in order, even when some are refused.

        Faults are drawn for every valid message; an answer fault with a status below
        500 other than 429 refuses that message in its result (``ErrorCode`` = the
        fault's ``error``); a 429/5xx, ``hang`` or ``close`` answers for the whole request.
        """
        payload = self._postmark_request(handler, body)
        if not isinstance(payload, list):
            raise _Answer(422, {"ErrorCode": 402, "Message": "Received invalid JSON input."})
        if len(payload) > POSTMARK_BATCH_LIMIT:
            raise _Answer(
                422,
                {
                    "ErrorCode": 410,
                    "Message": f"Too many batch messages ({len(payload)}); "
                    f"at most {POSTMARK_BATCH_LIMIT} may be sent at once.",
                },
            )
        peer = int(handler.client_address[1])
        checked: list[tuple[str, str | None] | _Refused] = []
        for message in payload:
            try:
                checked.append(self._postmark_message(message))
            except _Refused as refused:
                checked.append(refused)
        faults = [
            None if isinstance(item, _Refused) else self._fault_for(item[0], item[1])
            for item in checked
        ]
        whole = next(
            (
                f
                for f in faults
                if f is not None and (f.action != "answer" or f.status == 429 or f.status >= 500)
            ),
            None,
        )
        addressed = [item for item in checked if not isinstance(item, _Refused)]
        if whole is not None:
            status = None if whole.action != "answer" else whole.status
            for recipient, message_id in addressed:
                self._record(
                    Attempt("postmark", message_id, recipient, arrived, arrived, status, None, peer)
                )
            if whole.action != "answer":
                if whole.action == "hang":
                    time.sleep(whole.hang_seconds)
                handler.close_connection = True
                with contextlib.suppress(OSError):
                    handler.connection.shutdown(socket.SHUT_RDWR)
                return
            error, headers = self._postmark_error_body(whole)
            raise _Answer(whole.status, error, {**headers, **whole.headers})
        results: list[object] = []
        accepted: list[Accepted] = []
        for message, item, fault in zip(payload, checked, faults, strict=True):
            if isinstance(item, _Refused):
                results.append({"ErrorCode": item.code, "Message": item.text})
            elif fault is not None:
                results.append({"ErrorCode": fault.error or fault.status, "Message": fault.message})
            else:
                answer, record = self._postmark_accepted(message, *item)
                results.append(answer)
                accepted.append(record)
        with self.lock:
            self.accepted.extend(accepted)
        # Recorded before the answer is written, so a client that has it sees the attempts.
        answered = time.monotonic()
        for recipient, message_id in addressed:
            self._record(
                Attempt("postmark", message_id, recipient, arrived, answered, 200, None, peer)
            )
        handler.answer(200, results, {})

    # --- SendGrid ---------------------------------------------------------------------

    def _sendgrid(self, handler: Any, path: str, query: str, body: bytes, arrived: float) -> None:
        def refuse(status: int, *errors: tuple[str | None, str]) -> _Answer:
            return _Answer(
                status,
                {"errors": [{"message": m, "field": f, "help": None} for f, m in errors]},
            )

        if handler.headers.get("Authorization") != f"Bearer {self.sendgrid_key}":
            raise refuse(
                401, (None, "The provided authorization grant is invalid, expired, or revoked")
            )
        payload = self._json(body)
        if not isinstance(payload, dict):
            raise refuse(400, (None, "Bad Request"))
        problems: list[tuple[str | None, str]] = []
        personalizations = payload.get("personalizations")
        recipient = ""
        if not isinstance(personalizations, list) or not personalizations:
            problems.append(("personalizations", "You must have at least one personalization."))
        else:
            for n, item in enumerate(personalizations):
                to = item.get("to") if isinstance(item, dict) else None
                if not isinstance(to, list) or not to:
                    problems.append((f"personalizations.{n}.to", "The to array is required."))
                    continue
                for m, address in enumerate(to):
                    email = address.get("email") if isinstance(address, dict) else None
                    if not valid_address(email):
                        problems.append(
                            (
                                f"personalizations.{n}.to.{m}.email",
                                "Does not contain a valid address.",
                            )
                        )
                    elif not recipient:
                        recipient = str(email).lower()
        sender = payload.get("from")
        if not isinstance(sender, dict) or not valid_address(sender.get("email")):
            problems.append(("from.email", "The from object must be provided for every email."))
        reply_to = payload.get("reply_to")
        if reply_to is not None and (
            not isinstance(reply_to, dict) or not valid_address(reply_to.get("email"))
        ):
            problems.append(("reply_to.email", "Does not contain a valid address."))
        if not isinstance(payload.get("subject"), str) or not payload["subject"]:
            problems.append(("subject", "The subject is required."))
        content = payload.get("content")
        if (
            not isinstance(content, list)
            or not content
            or not all(
                isinstance(c, dict) and isinstance(c.get("type"), str) and c.get("value")
                for c in content
            )
        ):
            problems.append(
                (
                    "content",
                    "Unless a valid template_id is provided, the content parameter is required.",
                )
            )
        else:
            types = [c["type"] for c in content]
            if "text/plain" in types and types[0] != "text/plain":
                problems.append(("content", "If present, text/plain must be first."))
        headers = payload.get("headers", {})
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            problems.append(("headers", "Invalid type. Expected: object, given: array."))
        elif any(k.lower() in SENDGRID_RESERVED for k in headers):
            problems.append(("headers", "You may not use the reserved headers."))
        if problems:
            raise refuse(400, *problems)
        message_id = next((v for k, v in headers.items() if k.lower() == "message-id"), None)

        def error_body(fault: Fault) -> tuple[object, dict[str, str]]:
            field_name = None if fault.error is None else str(fault.error)
            return {"errors": [{"message": fault.message, "field": field_name, "help": None}]}, {}

        def accept() -> tuple[int, object, dict[str, str], Accepted]:
            sendgrid_id = secrets.token_urlsafe(16)[:22]
            return (
                202,
                b"",
                {"X-Message-Id": sendgrid_id, "Content-Type": "text/plain"},
                Accepted("sendgrid", message_id, sendgrid_id, recipient, payload, None),
            )

        self._deliver(handler, "sendgrid", recipient, message_id, arrived, error_body, accept)

    # --- Mailgun ----------------------------------------------------------------------

    def _mailgun(self, handler: Any, path: str, query: str, body: bytes, arrived: float) -> None:
        expected = base64.b64encode(f"api:{self.mailgun_key}".encode()).decode()
        if handler.headers.get("Authorization") != f"Basic {expected}":
            raise _Answer(401, "Forbidden")
        domain = unquote(path.removeprefix("/v3/").removesuffix("/messages.mime"))
        if domain != self.mailgun_domain:
            raise _Answer(404, {"message": f"Domain not found: {domain}"})
        fields = _multipart(str(handler.headers.get("Content-Type", "")), body)
        if "to" not in fields:
            raise _Answer(400, {"message": "to parameter is missing"})
        if "message" not in fields:
            raise _Answer(400, {"message": "message parameter is missing"})
        recipient = fields["to"].decode("utf-8", "replace")
        if not valid_address(recipient):
            raise _Answer(
                400, {"message": "to parameter is not a valid address. please check documentation"}
            )
        mime = fields["message"]
        parsed: EmailMessage = message_from_bytes(mime, policy=policy.default)
        if parsed["From"] is None:
            raise _Answer(400, {"message": "from parameter is missing"})
        message_id = str(parsed["Message-ID"]) if parsed["Message-ID"] else None

        def error_body(fault: Fault) -> tuple[object, dict[str, str]]:
            return {"message": fault.message}, {}

        def accept() -> tuple[int, object, dict[str, str], Accepted]:
            mailgun_id = message_id or f"<{uuid.uuid4().hex}@{self.mailgun_domain}>"
            answer = {"id": mailgun_id, "message": "Queued. Thank you."}
            return (
                200,
                answer,
                {},
                Accepted("mailgun", message_id, mailgun_id, recipient.lower(), None, mime),
            )

        self._deliver(
            handler, "mailgun", recipient.lower(), message_id, arrived, error_body, accept
        )

    # --- SES v2 -----------------------------------------------------------------------

    def _ses(self, handler: Any, path: str, query: str, body: bytes, arrived: float) -> None:
        def refuse(status: int, kind: str, message: str) -> _Answer:
            return _Answer(
                status,
                {"message": message},
                {"x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazon.sesv2/"},
            )

        try:
            verify(
                "POST",
                path,
                query,
                dict(handler.headers.items()),
                body,
                access_key_id=self.aws_access_key_id,
                secret_access_key=self.aws_secret_access_key,
                region=self.aws_region,
                service="ses",
                session_token=self.aws_session_token,
            )
        except SignatureError as exc:
            raise refuse(403, exc.kind, str(exc)) from exc
        payload = self._json(body)
        if not isinstance(payload, dict):
            raise refuse(400, "SerializationException", "Could not parse the request body.")
        raw = (
            payload.get("Content", {}).get("Raw", {})
            if isinstance(payload.get("Content"), dict)
            else {}
        )
        data = raw.get("Data") if isinstance(raw, dict) else None
        try:
            mime = base64.b64decode(str(data), validate=True) if data else b""
        except (binascii.Error, ValueError):
            mime = b""
        if not mime:
            raise refuse(400, "BadRequestException", "Content.Raw.Data must be base64 MIME.")
        parsed: EmailMessage = message_from_bytes(mime, policy=policy.default)
        if parsed["From"] is None:
            raise refuse(400, "BadRequestException", "Missing 'From' header in the raw message.")
        destination = payload.get("Destination", {})
        to = destination.get("ToAddresses") if isinstance(destination, dict) else None
        if not isinstance(to, list) or not to or not all(valid_address(a) for a in to):
            raise refuse(400, "BadRequestException", "Illegal address in Destination.")
        if "FromEmailAddress" in payload and not valid_address(payload["FromEmailAddress"]):
            raise refuse(400, "BadRequestException", "Illegal FromEmailAddress.")
        recipient = str(to[0]).lower()
        message_id = str(parsed["Message-ID"]) if parsed["Message-ID"] else None

        def error_body(fault: Fault) -> tuple[object, dict[str, str]]:
            kind = str(fault.error or "InternalFailure")
            return {"message": fault.message}, {
                "x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazon.sesv2/"
            }

        def accept() -> tuple[int, object, dict[str, str], Accepted]:
            ses_id = f"0102{secrets.token_hex(8)}-{uuid.uuid4()}-000000"
            return (
                200,
                {"MessageId": ses_id},
                {},
                Accepted("ses", message_id, ses_id, recipient, payload, mime),
            )

        self._deliver(handler, "ses", recipient, message_id, arrived, error_body, accept)


def closed_port() -> int:
    """A loopback port nothing listens on (connecting to it is refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def iter_attempts(server: EmailApiServer, message_id: str) -> Iterator[Attempt]:
    with server.lock:
        found = [a for a in server.attempts if a.message_id == message_id]
    yield from sorted(found, key=lambda a: a.arrived)
