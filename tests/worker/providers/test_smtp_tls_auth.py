"""STARTTLS, implicit TLS, AUTH and DKIM against a real TLS-speaking SMTP server on
loopback, one message at a time and in pipelined batches."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.support.factories import make_settings
from tests.support.smtp_sink import SmtpSink
from worker.providers import make_provider
from worker.providers.base import DeliveryResult, OutgoingEmail, TransientDeliveryError

USER, PASSWORD = "mailer", "s3cret-p4ss"


def _authenticator(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (
        auth_data.login.decode(),
        auth_data.password.decode(),
    ) == (USER, PASSWORD)
    return AuthResult(success=ok, handled=False)


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


def _server_context(authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    return context


def _email() -> OutgoingEmail:
    data = b"From: a@example.com\r\nTo: b@example.ro\r\nSubject: tls\r\n\r\nhi\r\n"
    return OutgoingEmail(1, "<send-1@test>", "a@example.com", "b@example.ro", data)


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_tls_and_auth(tmp_path: Path, authority: trustme.CA, security: str) -> None:
    options: dict[str, Any] = {"authenticator": _authenticator, "auth_require_tls": True}
    if security == "starttls":
        options |= {"tls_context": _server_context(authority), "require_starttls": True}
    else:
        # aiosmtpd does not see implicit TLS as TLS for AUTH; the socket is TLS all along.
        options |= {"ssl_context": _server_context(authority), "auth_require_tls": False}
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    with SmtpSink(**options) as sink:
        settings = make_settings(
            tmp_path,
            email_provider="smtp",
            smtp_port=sink.port,
            smtp_security=security,
            smtp_username=USER,
            smtp_password=PASSWORD,
            smtp_ca_file=ca_file,
        )
        provider = make_provider(settings)
        try:
            provider.send(_email())
        finally:
            provider.close()
        assert len(sink.handler.messages) == 1


def test_wrong_password_keeps_the_send_for_a_retry(tmp_path: Path, authority: trustme.CA) -> None:
    options = {
        "authenticator": _authenticator,
        "tls_context": _server_context(authority),
        "require_starttls": True,
    }
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    with SmtpSink(**options) as sink:
        settings = make_settings(
            tmp_path,
            email_provider="smtp",
            smtp_port=sink.port,
            smtp_security="starttls",
            smtp_username=USER,
            smtp_password="wrong",
            smtp_ca_file=ca_file,
            smtp_timeout=5,
        )
        provider = make_provider(settings)
        try:
            with pytest.raises(TransientDeliveryError, match="authentication failed"):
                provider.send(_email())
        finally:
            provider.close()
        assert sink.handler.messages == []


def test_untrusted_certificate_is_refused(tmp_path: Path, authority: trustme.CA) -> None:
    with SmtpSink(tls_context=_server_context(authority), require_starttls=True) as sink:
        settings = make_settings(
            tmp_path, email_provider="smtp", smtp_port=sink.port, smtp_security="starttls"
        )
        provider = make_provider(settings)
        try:
            with pytest.raises(TransientDeliveryError):
                provider.send(_email())
        finally:
            provider.close()
        assert sink.handler.messages == []


def _dkim_key() -> tuple[str, bytes]:
    """A fresh RSA key: its PEM for the settings and its DNS TXT record for verifying."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    public_der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public_der)


def _signed_message(n: int) -> OutgoingEmail:
    data = (
        b"From: Shop <offers@shop.example>\r\nTo: ana@example.ro\r\nSubject: Hi\r\n"
        b"Date: Tue, 17 Nov 2026 10:30:00 +0000\r\n"
        + f"Message-ID: <send-{n}@shop.example>\r\n".encode()
        + b"List-Unsubscribe: <https://shop.example/u/t>, <mailto:u@shop.example>\r\n"
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\nhello\r\n"
    )
    message_id = f"<send-{n}@shop.example>"
    return OutgoingEmail(n, message_id, "offers@shop.example", "ana@example.ro", data)


def test_dkim_signature_covers_the_unsubscribe_headers_and_verifies(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    import dkim

    private_pem, record = _dkim_key()
    settings = make_settings(
        tmp_path,
        email_provider="smtp",
        smtp_port=smtp_sink.port,
        dkim_domain="shop.example",
        dkim_selector="cs1",
        dkim_private_key=private_pem,
    )
    provider = make_provider(settings)
    try:
        provider.send(_signed_message(1))
    finally:
        provider.close()
    (received,) = smtp_sink.handler.messages
    assert received.startswith(b"DKIM-Signature:")
    header = received.split(b"\r\n\r\n", 1)[0]
    assert b"list-unsubscribe-post" in header.lower() and b"s=cs1" in header
    assert dkim.verify(
        received,
        dnsfunc=lambda name, timeout=5: record if name == b"cs1._domainkey.shop.example." else b"",
    )
    tampered = received.replace(b"Subject: Hi", b"Subject: Ho")
    assert not dkim.verify(tampered, dnsfunc=lambda name, timeout=5: record)


def test_every_message_of_a_pipelined_batch_is_signed(tmp_path: Path) -> None:
    import dkim

    private_pem, record = _dkim_key()
    with SmtpSink(pipelining=True) as sink:
        settings = make_settings(
            tmp_path,
            email_provider="smtp",
            smtp_port=sink.port,
            dkim_domain="shop.example",
            dkim_selector="cs1",
            dkim_private_key=private_pem,
        )
        provider = make_provider(settings)
        try:
            provider.send_many([_signed_message(1), _signed_message(2)], lambda i: None)
        finally:
            provider.close()
        received = sink.handler.messages
        assert sink.handler.pipelined == 2
    assert len(received) == 2
    for message in received:
        assert message.startswith(b"DKIM-Signature:")
        assert dkim.verify(message, dnsfunc=lambda name, timeout=5: record)


def _tls_settings(tmp_path: Path, authority: trustme.CA, port: int, password: str) -> Any:
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    return make_settings(
        tmp_path,
        email_provider="smtp",
        smtp_port=port,
        smtp_security="starttls",
        smtp_username=USER,
        smtp_password=password,
        smtp_ca_file=ca_file,
        smtp_timeout=5,
    )


def _batch(size: int) -> list[OutgoingEmail]:
    return [
        OutgoingEmail(
            n,
            f"<send-{n}@test>",
            "a@example.com",
            f"b{n}@example.ro",
            f"From: a@example.com\r\nTo: b{n}@example.ro\r\nSubject: {n}\r\n\r\nhi\r\n".encode(),
        )
        for n in range(1, size + 1)
    ]


def test_a_pipelined_batch_over_starttls_and_auth(tmp_path: Path, authority: trustme.CA) -> None:
    options = {
        "authenticator": _authenticator,
        "tls_context": _server_context(authority),
        "require_starttls": True,
    }
    with SmtpSink(pipelining=True, **options) as sink:
        provider = make_provider(_tls_settings(tmp_path, authority, sink.port, PASSWORD))
        try:
            results = provider.send_many(_batch(3), lambda i: None)
        finally:
            provider.close()
        assert all(isinstance(r, DeliveryResult) for r in results)
        assert len(sink.handler.messages) == 3
        assert (sink.handler.connections, sink.handler.pipelined) == (1, 3)


def test_a_wrong_password_fails_the_batch_once_for_a_retry(
    tmp_path: Path, authority: trustme.CA
) -> None:
    options = {
        "authenticator": _authenticator,
        "tls_context": _server_context(authority),
        "require_starttls": True,
    }
    with SmtpSink(pipelining=True, **options) as sink:
        provider = make_provider(_tls_settings(tmp_path, authority, sink.port, "wrong"))
        handed: list[int] = []
        try:
            results = provider.send_many(_batch(3), handed.append)
        finally:
            provider.close()
        assert all(
            isinstance(r, TransientDeliveryError) and "authentication failed" in str(r)
            for r in results
        )
        assert handed == [] and sink.handler.messages == []
        assert sink.handler.connections == 1, "not one login attempt per message"
