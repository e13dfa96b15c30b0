"""The SNS signer the SES tests share: one RSA key per module (generating it is slow)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.worker.webhooks.signed import SnsSigner, self_signed_certificate


@pytest.fixture(scope="module")
def sns_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def sns(sns_key: rsa.RSAPrivateKey) -> SnsSigner:
    return SnsSigner(sns_key, self_signed_certificate(sns_key))
