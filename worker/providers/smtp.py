"""The ``smtp`` provider: a pool of persistent connections (``CROSSSELL_SMTP_POOL_SIZE``,
one per sending thread), each reused across messages.

Replies are classified by their basic and enhanced status codes (RFC 3463): 4xx and
454 throttling are transient; 5xx are permanent, 5.1.x recipient failures are hard
bounces, 5.7.x policy refusals are operator problems rather than bad addresses.

A message with a UTF-8 local part (``OutgoingEmail.needs_smtputf8``) is sent with
``MAIL FROM:<…> SMTPUTF8`` (RFC 6531) when the server's EHLO offers it, and refused with
``UnsupportedAddress`` before MAIL FROM when it does not.

When the server's EHLO offers PIPELINING (RFC 2920), ``MAIL FROM``, ``RCPT TO`` and
``DATA`` go out as one group and their three replies are read together, each checked
(section 3.1): one round trip instead of three before the content. A server without it
gets the commands one at a time. ``send_many`` keeps one connection for the whole batch
and reopens it only when it was lost, abandoned or closed by a 421.
"""

from __future__ import annotations

import logging
import re
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field, SecretStr

from worker.providers.base import (
    AmbiguousDeliveryError,
    BatchHandOver,
    ConfigurationError,
    DeliveryError,
    DeliveryResult,
    HandOver,
    OutgoingEmail,
    PermanentDeliveryError,
    Provider,
    TransientDeliveryError,
    UnsupportedAddress,
    no_hand_over,
)
from worker.providers.dkim_signing import DkimSigner
from worker.providers.registry import ProviderSettings, ProviderSpec

log = logging.getLogger(__name__)
T = TypeVar("T")
_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
IDLE_CHECK_SECONDS = 30.0


def _text(message: bytes | str) -> str:
    return message.decode("utf-8", "replace") if isinstance(message, bytes) else message


END_OF_DATA = b".\r\n"


_LINE_END = re.compile(rb"\r\n|\r|\n")
# An addr-spec with nothing RFC 5322 would have to parse (no quotes, brackets, comments).
_PLAIN_ADDRESS = re.compile(r"[^\s<>()\[\]\",;:\\@]+@[^\s<>()\[\]\",;:\\@]+")


def _dot_stuffed(data: bytes) -> bytes:
    """The DATA payload (RFC 5321 4.5.2) up to the terminating dot line: CRLF line ends,
    leading dots doubled. Built messages already end lines with CRLF, so the line-end
    rewrite is skipped when there is nothing to rewrite.

    Once every line ends in CRLF, a line starts with a dot exactly where ``\\n.`` occurs
    (or at the start), so ``bytes.replace`` doubles them in one pass of C, where
    smtplib runs a multi-line ``^\\.`` substitution (docs/performance.md,
    "Dot-stuffing without a regular expression")."""
    crlf = data.count(b"\r\n")
    if data.count(b"\r") != crlf or data.count(b"\n") != crlf:  # a bare CR or LF
        data = _LINE_END.sub(b"\r\n", data)
    data = data.replace(b"\n.", b"\n..")
    if data.startswith(b"."):
        data = b"." + data
    return data if data.endswith(b"\r\n") else data + b"\r\n"


_ACCEPTED = ((250,), (250, 251), (354,))
"""The replies that let MAIL FROM, RCPT TO and DATA go on (RFC 5321 section 4.3.2)."""


def _envelope_commands(
    email: OutgoingEmail, options: tuple[str, ...]
) -> tuple[tuple[str, str, str], str]:
    """MAIL FROM (with ``options``), RCPT TO and DATA, and the encoding to write them in:
    UTF-8 only for a message that needs SMTPUTF8 (RFC 6531 section 3.4). ValueError for
    an address with a line break (it would end the command early)."""
    mail = f"MAIL FROM:{_angle_address(email.sender)}"
    if options:
        mail += " " + " ".join(options)
    lines = (mail, f"RCPT TO:{_angle_address(email.recipient)}", "DATA")
    if any("\r" in line or "\n" in line for line in lines):
        raise ValueError("an envelope address contains a line break")
    return lines, "utf-8" if email.needs_smtputf8 else "ascii"


def _angle_address(address: str) -> str:
    """``<address>`` for MAIL FROM and RCPT TO; smtplib's ``quoteaddr`` (a full RFC 5322
    parse, tens of microseconds) only for what is not a plain addr-spec."""
    return f"<{address}>" if _PLAIN_ADDRESS.fullmatch(address) else smtplib.quoteaddr(address)


def classify(code: int, message: bytes | str) -> TransientDeliveryError | PermanentDeliveryError:
    """Map an SMTP reply to the provider-neutral error type."""
    text = _text(message)
    match = _ENHANCED.match(text)
    enhanced = ".".join(match.groups()) if match else None
    summary = f"{code} {text}".strip()[:500]
    if 400 <= code < 500:
        return TransientDeliveryError(summary, code, enhanced)
    policy = enhanced is not None and enhanced.startswith("5.7.")
    hard = (enhanced is not None and enhanced.startswith("5.1.")) or (
        enhanced is None and code in (550, 551, 553)
    )
    return PermanentDeliveryError(
        summary, code, enhanced, hard_bounce=hard and not policy, policy=policy
    )


class SMTPSettings(ProviderSettings):
    """The ``CROSSSELL_SMTP_*`` relay and the optional ``CROSSSELL_DKIM_*`` signing key."""

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_security: Literal["none", "starttls", "ssl"] = "none"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_timeout: float = 30.0
    smtp_pool_size: int = Field(4, ge=1)
    smtp_ca_file: Path | None = None
    dkim_domain: str | None = None
    dkim_selector: str | None = None
    dkim_private_key: SecretStr | None = None


class SMTPProvider(Provider):
    """A pool of persistent SMTP connections: each sending thread takes one of its own,
    up to ``pool_size``, so a slow server round trip does not serialise the workers."""

    name = "smtp"

    def __init__(
        self,
        host: str,
        port: int,
        security: str = "none",
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        signer: DkimSigner | None = None,
        pool_size: int = 4,
    ) -> None:
        self.host, self.port, self.security = host, port, security
        self.username, self.password, self.timeout = username, password, timeout
        self.ssl_context = ssl_context or ssl.create_default_context()
        self.signer = signer
        self.pool_size = max(pool_size, 1)
        self._available = threading.Condition()
        self._idle: list[_PooledConnection] = []
        self._created = 0
        self.connections_opened = 0

    @classmethod
    def from_settings(cls, settings: SMTPSettings) -> SMTPProvider:
        """The pool ``settings`` describe: system CAs plus ``CROSSSELL_SMTP_CA_FILE``,
        DKIM signing when domain, selector and key are all set."""
        context = ssl.create_default_context()
        if settings.smtp_ca_file is not None:
            try:
                context.load_verify_locations(cafile=str(settings.smtp_ca_file))
            except (OSError, ssl.SSLError) as exc:  # missing, unreadable or not PEM
                variable = "CROSSSELL_SMTP_CA_FILE"
                raise ConfigurationError(
                    f"{variable}: cannot load {settings.smtp_ca_file}: {exc}", (variable,)
                ) from None
        signer = None
        if settings.dkim_domain and settings.dkim_selector and settings.dkim_private_key:
            signer = DkimSigner(
                settings.dkim_selector,
                settings.dkim_domain,
                settings.dkim_private_key.get_secret_value().encode(),
            )
        password = settings.smtp_password
        return cls(
            settings.smtp_host,
            settings.smtp_port,
            settings.smtp_security,
            settings.smtp_username,
            password.get_secret_value() if password is not None else None,
            settings.smtp_timeout,
            context,
            signer,
            settings.smtp_pool_size,
        )

    def send(self, email: OutgoingEmail, hand_over: HandOver = no_hand_over) -> DeliveryResult:
        pooled = self._checkout()
        try:
            return pooled.send(email, hand_over)
        finally:
            self._checkin(pooled)

    def send_many(
        self, emails: Sequence[OutgoingEmail], hand_over: BatchHandOver
    ) -> list[DeliveryResult | Exception]:
        """The batch over one pooled connection, in order, one entry per message.

        Each message goes exactly as :meth:`send` sends it (pipelined where offered),
        so its entry is classified the same way. The connection is reopened when a
        message left it unusable (a 421, a hand-over that raised, a lost connection). If
        opening a connection fails, the messages not yet tried get that same error
        without being tried: the server is unreachable or refusing us, and trying each
        in turn would only multiply the connect timeout.
        """
        pooled = self._checkout()
        try:
            return pooled.send_many(emails, hand_over)
        finally:
            self._checkin(pooled)

    def _checkout(self) -> _PooledConnection:
        with self._available:
            while not self._idle and self._created >= self.pool_size:
                self._available.wait()
            if self._idle:
                return self._idle.pop()  # the most recently used: likely still open
            self._created += 1
        return _PooledConnection(self)

    def _checkin(self, pooled: _PooledConnection) -> None:
        with self._available:
            self._idle.append(pooled)
            self._available.notify()

    def open_connection(self) -> smtplib.SMTP:
        connection: smtplib.SMTP
        if self.security == "ssl":
            connection = smtplib.SMTP_SSL(
                self.host, self.port, timeout=self.timeout, context=self.ssl_context
            )
        else:
            connection = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            # The final dot goes out alone after the hand-over: without TCP_NODELAY it
            # would wait for the server's delayed ACK (Nagle), up to 40 ms a message.
            if connection.sock is not None:
                connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection.ehlo()
            if self.security == "starttls":
                connection.starttls(context=self.ssl_context)
                connection.ehlo()
            if self.username:
                connection.login(self.username, self.password or "")
        except BaseException:
            connection.close()
            raise
        with self._available:
            self.connections_opened += 1
        return connection

    def signed(self, email: OutgoingEmail) -> bytes:
        return self.signer.sign(email.data) if self.signer else email.data

    def close(self) -> None:
        """Close the idle connections (a connection in use is closed when it returns)."""
        with self._available:
            idle = list(self._idle)
        for pooled in idle:
            pooled.close()


class _PooledConnection:
    """One SMTP connection, used by one thread at a time; reopened when it was lost."""

    def __init__(self, provider: SMTPProvider) -> None:
        self.provider = provider
        self._connection: smtplib.SMTP | None = None
        self._last_used = 0.0
        #: whether the last attempt to open a connection failed (``send_many`` stops there)
        self.open_failed = False

    def _live_connection(self) -> smtplib.SMTP:
        connection = self._connection
        if connection is not None and time.monotonic() - self._last_used > IDLE_CHECK_SECONDS:
            try:
                if connection.noop()[0] != 250:
                    raise smtplib.SMTPServerDisconnected("noop failed")
            except (smtplib.SMTPException, OSError):
                self._drop()
                connection = None
        if connection is None:
            try:
                connection = self._connection = self.provider.open_connection()
            except BaseException:
                self.open_failed = True
                raise
            self.open_failed = False
        return connection

    def _abandon(self) -> None:
        """Close the socket mid-transaction, without QUIT (it would become message text)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.quit()
            except (smtplib.SMTPException, OSError):
                connection.close()

    def send_many(
        self, emails: Sequence[OutgoingEmail], hand_over: BatchHandOver
    ) -> list[DeliveryResult | Exception]:
        results: list[DeliveryResult | Exception] = []
        for index, email in enumerate(emails):
            self.open_failed = False
            try:
                results.append(self.send(email, partial(hand_over, index)))
            except Exception as exc:  # one message's fault never stops the batch
                results.append(exc)
                if self.open_failed and isinstance(exc, DeliveryError):
                    # Nothing of the rest was tried: no hand-over, nothing left.
                    results.extend(exc for _ in emails[index + 1 :])
                    break
        return results

    def send(self, email: OutgoingEmail, hand_over: HandOver) -> DeliveryResult:
        for attempt in (1, 2):
            try:
                return self._send_once(email, hand_over)
            except smtplib.SMTPServerDisconnected as exc:
                # A pooled connection the server closed meanwhile: reconnect once.
                self._drop()
                if attempt == 2:
                    raise TransientDeliveryError(f"server disconnected: {exc}") from exc
        raise AssertionError("unreachable")

    def _send_once(self, email: OutgoingEmail, hand_over: HandOver) -> DeliveryResult:
        """MAIL, RCPT and DATA step by step, so a failure is known to fall before or
        after the message was handed over; only the reply to the final dot is ambiguous."""
        connection = self._guarded(lambda: self._open_transaction(email))
        # The whole message but the final dot goes first: a server keeps nothing without
        # the dot, so a failure up to here is safe to retry, and the hand-over below is
        # followed by three bytes instead of the whole message.
        self._guarded(lambda: connection.send(_dot_stuffed(self.provider.signed(email))))
        try:
            hand_over()
        except BaseException:
            self._abandon()  # without the final dot the server discards the message
            raise
        # A failed write of the dot did not deliver it: still safe to retry.
        self._guarded(lambda: connection.send(END_OF_DATA))
        try:
            code, reply = connection.getreply()
        except (smtplib.SMTPException, OSError) as exc:
            self._drop()
            raise AmbiguousDeliveryError(
                f"no reply after the message was sent: {exc.__class__.__name__}: {exc}"
            ) from exc
        if code != 250:
            self._after_refusal(code)
            raise classify(code, reply)
        self._last_used = time.monotonic()
        return DeliveryResult(self.provider.name, email.message_id)

    def _open_transaction(self, email: OutgoingEmail) -> smtplib.SMTP:
        """MAIL FROM, RCPT TO and DATA up to the server's 354 go-ahead."""
        connection = self._live_connection()
        options: tuple[str, ...] = ()
        if email.needs_smtputf8:
            # RFC 6531 section 3.4: a UTF-8 address or header needs the server's SMTPUTF8;
            # there is no downgrade, so without it the message cannot go out through here.
            if not connection.has_extn("smtputf8"):
                raise UnsupportedAddress(
                    "the SMTP server does not offer SMTPUTF8, needed for a UTF-8 local part"
                )
            options = (
                ("SMTPUTF8", "BODY=8BITMIME") if connection.has_extn("8bitmime") else ("SMTPUTF8",)
            )
        lines, encoding = _envelope_commands(email, options)
        if connection.has_extn("pipelining"):
            self._pipelined_commands(connection, lines, encoding)
            return connection
        # Step by step: each command written as the pipelined group writes it. smtplib's
        # ``mail``/``rcpt`` would parse each address again (``quoteaddr``: 5 % of the
        # worker's CPU in ``python -m bench.delivery``, docs/performance.md).
        for line, accepted in zip(lines, _ACCEPTED, strict=True):
            connection.send(f"{line}\r\n".encode(encoding))
            self._expect(connection, connection.getreply(), accepted)
        return connection

    def _pipelined_commands(
        self, connection: smtplib.SMTP, lines: tuple[str, str, str], encoding: str
    ) -> None:
        """MAIL FROM, RCPT TO and DATA written as one group, then their three replies
        (RFC 2920 section 3.1: every reply is read and checked, in order).

        The first refusal decides the error, as it would step by step: a refused RCPT
        is answered by the server's 503/554 to DATA, and the transaction is reset. A
        server that says 354 although MAIL or RCPT was refused is waiting for content
        we will not send: the connection is abandoned. A lost connection while reading
        the replies is ``SMTPServerDisconnected``, before any content: ``send`` retries.
        """
        connection.send("".join(f"{line}\r\n" for line in lines).encode(encoding))
        replies: list[tuple[int, bytes]] = []
        for _ in lines:
            replies.append(connection.getreply())
            if replies[-1][0] == 421:
                break  # the server is closing: the replies after it may never come
        refusal = next(
            (reply for reply, ok in zip(replies, _ACCEPTED, strict=False) if reply[0] not in ok),
            None,
        )
        if refusal is None:
            return
        code, message = refusal
        if code != 421 and len(replies) == len(lines) and replies[-1][0] == 354:
            self._abandon()  # in DATA mode with nothing to send: the server must not keep it
        else:
            self._after_refusal(code)
        raise classify(code, message)

    def _guarded(self, step: Callable[[], T]) -> T:
        """Run an SMTP step that comes before the final dot, mapping its failures."""
        try:
            return step()
        except (smtplib.SMTPServerDisconnected, DeliveryError):
            raise
        except smtplib.SMTPAuthenticationError as exc:
            # Our credentials, not the customer: keep the send and retry later.
            self._drop()
            log.error("SMTP authentication failed; check the SMTP username and password")
            raise TransientDeliveryError(f"authentication failed: {exc.smtp_code}") from exc
        except smtplib.SMTPResponseException as exc:
            self._reset()
            raise classify(exc.smtp_code, exc.smtp_error) from exc
        except smtplib.SMTPException as exc:
            self._drop()
            raise TransientDeliveryError(f"SMTP error: {exc}") from exc
        except OSError as exc:
            self._drop()
            raise TransientDeliveryError(f"connection failed: {exc}") from exc

    def _expect(
        self, connection: smtplib.SMTP, answer: tuple[int, bytes], accepted: tuple[int, ...]
    ) -> None:
        code, reply = answer
        if code not in accepted:
            self._after_refusal(code)
            raise classify(code, reply)

    def _after_refusal(self, code: int) -> None:
        """421 means the server is closing the connection; anything else keeps it."""
        if code == 421:
            self._drop()
        else:
            self._reset()

    def _reset(self) -> None:
        if self._connection is None:
            return
        try:
            self._connection.rset()
            self._last_used = time.monotonic()
        except (smtplib.SMTPException, OSError):
            self._drop()

    def close(self) -> None:
        self._drop()


PROVIDER = ProviderSpec(
    name="smtp",
    settings=SMTPSettings,
    sender=SMTPProvider.from_settings,
    summary=(
        "any SMTP relay: pooled connections, PIPELINING where offered, STARTTLS or implicit "
        "TLS, AUTH, DKIM signing"
    ),
)
