"""Amazon SES (worker/providers/ses.py) against the local server speaking its API: the
signed request, temporary credentials, the id its notifications name and its settings.
The shared HTTP flow and the classification of every provider's refusals are in
tests/worker/providers/test_http.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import ValidationError

from tests.support.email_api import EmailApiServer, Fault
from tests.support.factories import make_settings
from tests.worker.providers.helpers import SENDER, sample_email
from tests.worker.webhooks.signed import (
    NOW,
    TOPIC,
    SnsSigner,
    self_signed_certificate,
    ses_bounce,
    sns_notification,
)
from worker.providers.http import CredentialsRefused, HTTPProvider
from worker.providers.ses import SESProvider
from worker.webhooks import ses


def test_ses_sends_the_envelope_and_configuration_set(api: EmailApiServer) -> None:
    provider = SESProvider(
        api.aws_region,
        api.aws_access_key_id,
        api.aws_secret_access_key,
        configuration_set="crosssell-events",
        base_url=api.url,
    )
    try:
        provider.send(sample_email())
    finally:
        provider.close()
    payload = api.accepted[0].payload
    assert payload is not None
    assert payload["FromEmailAddress"] == SENDER[1]
    assert payload["Destination"] == {"ToAddresses": ["ioana@example.ro"]}
    assert payload["ConfigurationSetName"] == "crosssell-events"


def test_ses_temporary_credentials_sign_the_session_token() -> None:
    with EmailApiServer(aws_session_token="session-token-1") as api:
        provider = SESProvider(
            api.aws_region,
            api.aws_access_key_id,
            api.aws_secret_access_key,
            session_token="session-token-1",
            base_url=api.url,
        )
        try:
            provider.send(sample_email())
            # Without the token the same keys are refused: the server does check it.
            bare = SESProvider(
                api.aws_region, api.aws_access_key_id, api.aws_secret_access_key, base_url=api.url
            )
            with pytest.raises(CredentialsRefused):
                bare.send(sample_email(2))
            bare.close()
        finally:
            provider.close()
    assert len(api.accepted) == 1


def test_ses_notification_names_the_id_we_stored(
    api: EmailApiServer, opened: Callable[..., HTTPProvider]
) -> None:
    email = sample_email()
    result = opened("ses", api).send(email)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sns = SnsSigner(key, self_signed_certificate(key))
    message = ses_bounce(
        "Permanent", [{"emailAddress": "ioana@example.ro", "status": "5.1.1"}], email.message_id
    )
    message["mail"]["messageId"] = api.accepted[0].provider_message_id
    events = ses.parse(
        {"x-amz-sns-message-type": "Notification"},
        json.dumps(sns.sign(sns_notification(message))).encode(),
        allowed_topic_arns={TOPIC},
        now=NOW,
        fetch_certificate=sns.fetch,
    )
    assert isinstance(events, list)
    assert [e.provider_message_id for e in events] == [result.provider_message_id]
    assert [e.message_id for e in events] == [email.message_id]


def test_ses_missing_configuration_set_is_our_settings(
    api: EmailApiServer, opened: Callable[..., HTTPProvider]
) -> None:
    api.plan("ioana@example.ro", Fault(404, "NotFoundException", "Configuration set not found"))
    with pytest.raises(CredentialsRefused):
        opened("ses", api).send(sample_email())


@pytest.mark.parametrize("region", ["eu-west-1.evil.example/", "EU-WEST-1", "us-east"])
def test_ses_region_must_look_like_one(tmp_path: Any, region: str) -> None:
    with pytest.raises(ValidationError):
        make_settings(tmp_path, ses_region=region)
