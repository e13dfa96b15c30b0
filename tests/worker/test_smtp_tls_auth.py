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
