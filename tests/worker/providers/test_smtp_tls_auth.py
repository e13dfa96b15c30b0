"""STARTTLS, implicit TLS and AUTH against a real TLS-speaking SMTP server on loopback."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.support.factories import make_settings
from tests.support.smtp_sink import SmtpSink
from worker.providers import make_provider
from worker.providers.base import OutgoingEmail, TransientDeliveryError

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


def test_dkim_signature_covers_the_unsubscribe_headers_and_verifies(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    import base64

    import dkim
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
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public_der)
    settings = make_settings(
        tmp_path,
        email_provider="smtp",
        smtp_port=smtp_sink.port,
        dkim_domain="shop.example",
        dkim_selector="cs1",
        dkim_private_key=private_pem,
    )
    data = (
        b"From: Shop <offers@shop.example>\r\nTo: ana@example.ro\r\nSubject: Hi\r\n"
        b"Date: Tue, 17 Nov 2026 10:30:00 +0000\r\nMessage-ID: <send-1@shop.example>\r\n"
        b"List-Unsubscribe: <https://shop.example/u/t>, <mailto:u@shop.example>\r\n"
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\nhello\r\n"
    )
    provider = make_provider(settings)
    try:
        provider.send(
            OutgoingEmail(1, "<send-1@shop.example>", "offers@shop.example", "ana@example.ro", data)
        )
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
