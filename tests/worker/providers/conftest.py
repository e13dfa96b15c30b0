"""Fixtures of the provider tests: the local email API server and opened providers,
closed after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.email_api import EmailApiServer
from tests.worker.providers.helpers import provider_for
from worker.providers.http import HTTPProvider


@pytest.fixture
def api() -> Iterator[EmailApiServer]:
    with EmailApiServer() as server:
        yield server


@pytest.fixture
def opened() -> Iterator[Callable[..., HTTPProvider]]:
    providers: list[HTTPProvider] = []

    def open_provider(kind: str, api: EmailApiServer, **overrides: Any) -> HTTPProvider:
        provider = provider_for(kind, api, **overrides)
        providers.append(provider)
        return provider

    yield open_provider
    for provider in providers:
        provider.close()
