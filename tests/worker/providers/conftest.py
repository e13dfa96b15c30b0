"""The local email API server and provider fixtures, shared with
tests/worker/test_http_providers.py (one test module per provider here)."""

from tests.worker.test_http_providers import api, opened

__all__ = ["api", "opened"]
