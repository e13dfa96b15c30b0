"""Everything one worker process shares, built lazily on first use (never at import)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from triggers.decide import Policy
from worker.core.clock import Clock, SystemClock
from worker.core.settings import Settings, get_settings
from worker.decide.rules import RuleStore, load_complements

if TYPE_CHECKING:
    from worker.email.rendering import Renderer
    from worker.process.rate_limit import RateLimiter
    from worker.providers.base import Provider


@dataclass
class Runtime:
    settings: Settings
    clock: Clock = field(default_factory=SystemClock)
    consumer: Any = None

    @cached_property
    def rules(self) -> RuleStore:
        store = RuleStore(self.settings)
        store.load()
        return store

    @cached_property
    def policy(self) -> Policy:
        return self.settings.policy()

    @cached_property
    def complements(self) -> dict[str, list[str]]:
        return load_complements(self.settings.complements_file)

    @cached_property
    def unsubscribe_keys(self) -> dict[str, bytes]:
        from worker.email.tokens import load_keys

        secret = self.settings.unsubscribe_keys
        return load_keys(secret.get_secret_value() if secret else None, self.settings.var_dir)

    @property
    def renderer(self) -> Renderer:
        """The renderer whose templates were validated with the rules now in force."""
        return self.rules.snapshot().renderer

    @cached_property
    def provider(self) -> Provider:
        from worker.providers import make_provider

        return make_provider(self.settings)

    @cached_property
    def rate_limiter(self) -> RateLimiter | None:
        from worker.process.rate_limit import make_rate_limiter

        return make_rate_limiter(self.settings, self.settings.email_provider)

    def close(self) -> None:
        """Release the provider's and the rate limiter's connections, if ever used."""
        provider = self.__dict__.get("provider")
        if provider is not None:
            provider.close()
        limiter = self.__dict__.get("rate_limiter")
        if limiter is not None:
            limiter.close()


_lock = threading.Lock()
_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    """The process's runtime, created from the environment's settings on first use."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime(get_settings())
        return _runtime


def set_runtime(runtime: Runtime | None) -> None:
    """Install a runtime (the demo's shifted clock, a test's settings) for this process."""
    global _runtime
    with _lock:
        _runtime = runtime
