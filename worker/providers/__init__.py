"""Email providers, one module each, behind :class:`worker.providers.base.Provider`."""

from __future__ import annotations

from worker.providers.base import Provider
from worker.settings import Settings


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
        )
    from worker.providers.file import FileProvider

    return FileProvider(settings.resolved_outbox_dir)
