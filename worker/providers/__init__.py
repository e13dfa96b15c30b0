"""Email providers, one module each, behind :class:`worker.providers.base.Provider`.

``make_provider`` is called once per process (``Runtime.provider``); a provider whose
settings are incomplete raises ``ValueError`` naming the missing variable, at startup
rather than at the first send.
"""

from __future__ import annotations

from pydantic import SecretStr

from worker.providers.base import Provider
from worker.settings import Settings


def check_provider(settings: Settings) -> None:
    """Fail at startup, naming the variable, if the chosen provider cannot be built, or if
    a provider that reaches real inboxes has no postal address for the footers (CAN-SPAM,
    15 U.S.C. 7704(a)(5)(A)(iii); Gmail's and Yahoo's bulk sender rules)."""
    make_provider(settings).close()
    if settings.email_provider != "file" and not (settings.postal_address or "").strip():
        raise ValueError(
            "CROSSSELL_POSTAL_ADDRESS is required with the "
            f"{settings.email_provider!r} provider: every email's footer shows it"
        )


def make_provider(settings: Settings) -> Provider:
    if settings.email_provider == "smtp":
        import ssl

        from worker.providers.smtp import SMTPProvider

        context = ssl.create_default_context()
        if settings.smtp_ca_file is not None:
            context.load_verify_locations(cafile=str(settings.smtp_ca_file))

        signer = None
        if settings.dkim_domain and settings.dkim_selector and settings.dkim_private_key:
            from worker.dkim_signing import DkimSigner

            signer = DkimSigner(
                settings.dkim_selector,
                settings.dkim_domain,
                settings.dkim_private_key.get_secret_value().encode(),
            )
        return SMTPProvider(
            settings.smtp_host,
            settings.smtp_port,
            settings.smtp_security,
            settings.smtp_username,
            settings.smtp_password.get_secret_value() if settings.smtp_password else None,
            settings.smtp_timeout,
            context,
            signer,
            settings.smtp_pool_size,
        )
    if settings.email_provider in ("postmark", "sendgrid", "mailgun", "ses"):
        return _http_provider(settings)
    from worker.providers.file import FileProvider

    return FileProvider(settings.resolved_outbox_dir)


def _secret(value: SecretStr | None) -> str:
    return value.get_secret_value() if value is not None else ""


def _http_provider(settings: Settings) -> Provider:
    timeout, connect = settings.http_timeout, settings.http_connect_timeout
    if settings.email_provider == "postmark":
        from worker.providers.postmark import PostmarkProvider

        return PostmarkProvider(
            _secret(settings.postmark_server_token),
            settings.postmark_message_stream,
            settings.postmark_base_url,
            timeout=timeout,
            connect_timeout=connect,
        )
    if settings.email_provider == "sendgrid":
        from worker.providers.sendgrid import SendGridProvider

        return SendGridProvider(
            _secret(settings.sendgrid_api_key),
            settings.sendgrid_base_url,
            timeout=timeout,
            connect_timeout=connect,
        )
    if settings.email_provider == "mailgun":
        from worker.providers.mailgun import MailgunProvider

        return MailgunProvider(
            _secret(settings.mailgun_api_key),
            settings.mailgun_domain or "",
            settings.mailgun_base_url,
            timeout=timeout,
            connect_timeout=connect,
        )
    from worker.providers.ses import SESProvider

    return SESProvider(
        settings.ses_region or "",
        settings.ses_access_key_id or "",
        _secret(settings.ses_secret_access_key),
        _secret(settings.ses_session_token) or None,
        settings.ses_configuration_set,
        settings.ses_base_url,
        timeout=timeout,
        connect_timeout=connect,
    )
