"""The provider registry: the one place that knows which email providers exist.

A provider is one module ``worker/providers/<name>.py`` that declares
``PROVIDER = ProviderSpec(...)``: its name (the value of ``CROSSSELL_EMAIL_PROVIDER``
and of the ``/webhooks/<name>`` path), its settings model, the factory that builds its
sender from those settings, and its webhook (if it has one). Everything that used to
repeat the list of providers asks the registry instead: settings validation of
``CROSSSELL_EMAIL_PROVIDER``, :func:`make_provider`, the start-time
:func:`check_provider`, webhook routing (``worker.web.web.parse_webhook``) and the README's
provider table (:func:`markdown_table`, checked by a test).

A module is imported only when its provider is asked for, so choosing ``file`` never
imports botocore. A provider living outside this package (a plug-in, a test's toy) is
added with :func:`register`.

Settings stay the flat ``CROSSSELL_*`` environment variables users already set. A
provider's settings model (:class:`ProviderSettings`) names its fields after those
variables without the prefix (``postmark_server_token`` is
``CROSSSELL_POSTMARK_SERVER_TOKEN``); :meth:`ProviderSettings.from_settings` takes each
value from :class:`worker.core.settings.Settings` when it declares the field (the built-in
providers), else reads the environment itself (pydantic-settings), so a new provider
needs no change to ``Settings``. A missing or invalid value is a
:class:`~worker.providers.base.ConfigurationError` naming the variable.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, TypeVar

from pydantic import SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.providers.base import ConfigurationError, Provider

if TYPE_CHECKING:
    from worker.core.settings import Settings
    from worker.webhooks.events import TrackingEvent
    from worker.webhooks.ses import SubscriptionConfirmation

ENV_PREFIX = "CROSSSELL_"
# A provider name is a Python module name and a URL path segment at once.
NAME = re.compile(r"^[a-z][a-z0-9_]*$")
PACKAGE = "worker.providers"


def variable(field: str) -> str:
    """The environment variable of a settings field: ``smtp_host`` -> ``CROSSSELL_SMTP_HOST``."""
    return f"{ENV_PREFIX}{field.upper()}"


class ProviderSettings(BaseSettings):
    """Base of every provider's settings model; field names are the variables' names
    without ``CROSSSELL_`` (lower case). A None or blank value of a required field counts
    as unset, as an empty ``export CROSSSELL_POSTMARK_SERVER_TOKEN=`` means."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_is_unset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {
            key: value
            for key, value in data.items()
            if not (
                key in cls.model_fields and cls.model_fields[key].is_required() and _blank(value)
            )
        }

    @classmethod
    def variables(cls) -> tuple[str, ...]:
        """Every ``CROSSSELL_*`` variable this model reads, in declaration order."""
        return tuple(variable(name) for name in cls.model_fields)

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """This model's values: from ``settings`` where it declares the field (it read
        the environment already), else from the environment. Raises ConfigurationError
        naming each bad variable."""
        declared = type(settings).model_fields
        given = {name: getattr(settings, name) for name in cls.model_fields if name in declared}
        try:
            return cls(**given)
        except ValidationError as exc:
            raise configuration_error(exc) from None


def _blank(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return isinstance(value, str) and not value.strip()


def configuration_error(exc: ValidationError) -> ConfigurationError:
    """One message naming every bad variable; never the values (they may be secrets)."""
    problems: list[str] = []
    names: list[str] = []
    for error in exc.errors(include_url=False, include_input=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        name = variable(field) if field else "a provider setting"
        names.append(name)
        if error["type"] == "missing":
            problems.append(f"{name} is not set")
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{name}: {message}")
    return ConfigurationError("; ".join(problems), tuple(names))


S = TypeVar("S", bound=ProviderSettings)
W = TypeVar("W", bound=ProviderSettings)


@dataclass(frozen=True, slots=True)
class Webhook(Generic[W]):
    """A provider's webhook at ``POST /webhooks/<provider>``.

    ``configured`` says whether its secrets are set (an unconfigured webhook answers
    404, as an unknown provider does); ``parse(settings, headers, body, now)``
    authenticates first and returns the neutral events (``worker.webhooks``).
    """

    settings: type[W]
    configured: Callable[[W], bool]
    parse: Callable[
        [W, Mapping[str, str], bytes, datetime],
        list[TrackingEvent] | SubscriptionConfirmation,
    ]

    def receive(
        self, settings: Settings, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> list[TrackingEvent] | SubscriptionConfirmation | None:
        """Authenticate and read one request; None when the webhook is not configured."""
        values = self.settings.from_settings(settings)
        if not self.configured(values):
            return None
        return self.parse(values, headers, body, now)


@dataclass(frozen=True, slots=True)
class ProviderSpec(Generic[S]):
    """What a provider module declares as ``PROVIDER``.

    ``sender`` builds the :class:`Provider` from validated settings (usually the
    provider class's ``from_settings``); ``reaches_inboxes`` is False only for
    providers whose mail never leaves the machine (``file``), which alone may run
    without ``CROSSSELL_POSTAL_ADDRESS``; ``summary`` is its README table cell.
    """

    name: str
    settings: type[S]
    sender: Callable[[S], Provider]
    summary: str
    webhook: Webhook[Any] | None = None
    reaches_inboxes: bool = True

    def __post_init__(self) -> None:
        if not NAME.match(self.name):
            raise ValueError(f"provider name {self.name!r} must match {NAME.pattern}")

    def build(self, settings: Settings) -> Provider:
        """The sender for ``settings``; ConfigurationError if a variable is missing."""
        return self.sender(self.settings.from_settings(settings))


class _Registry:
    """Registered specs by name; package modules are imported on first lookup."""

    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        self.specs: dict[str, ProviderSpec[Any]] = {}
        self.modules: frozenset[str] | None = None

    def module_names(self) -> frozenset[str]:
        if self.modules is None:
            package = importlib.import_module(PACKAGE)
            self.modules = frozenset(
                info.name for info in pkgutil.iter_modules(package.__path__) if not info.ispkg
            )
        return self.modules

    def from_module(self, name: str) -> ProviderSpec[Any] | None:
        if name not in self.module_names():
            return None
        module = importlib.import_module(f"{PACKAGE}.{name}")
        spec = getattr(module, "PROVIDER", None)
        if not isinstance(spec, ProviderSpec):
            return None  # a helper module (base, http, registry)
        if spec.name != name:
            raise ValueError(f"{module.__name__} declares provider {spec.name!r}, not {name!r}")
        return spec

    def get(self, name: str) -> ProviderSpec[Any] | None:
        with self._lock:
            found = self.specs.get(name)
        if found is not None or not NAME.match(name):
            return found
        spec = self.from_module(name)
        if spec is not None:
            with self._lock:
                spec = self.specs.setdefault(name, spec)
        return spec


_registry = _Registry()


def register(spec: ProviderSpec[Any]) -> ProviderSpec[Any]:
    """Add a provider that is not a module of this package; ValueError if taken."""
    if lookup_or_none(spec.name) is not None:
        raise ValueError(f"an email provider named {spec.name!r} is already registered")
    with _registry._lock:
        _registry.specs[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Forget a provider added with :func:`register` (tests, plug-in reloads)."""
    with _registry._lock:
        _registry.specs.pop(name, None)


def lookup_or_none(name: str) -> ProviderSpec[Any] | None:
    return _registry.get(name)


def lookup(name: str) -> ProviderSpec[Any]:
    """The provider called ``name``; ConfigurationError naming the variable and the
    known providers when there is none."""
    spec = _registry.get(name)
    if spec is None:
        known = ", ".join(names())
        raise ConfigurationError(
            f"{variable('email_provider')}={name!r} is no email provider; known: {known}",
            (variable("email_provider"),),
        )
    return spec


def builtin() -> list[ProviderSpec[Any]]:
    """The providers of this package, by name (imports every provider module)."""
    found = (_registry.get(name) for name in sorted(_registry.module_names()))
    return [spec for spec in found if spec is not None]


def names() -> list[str]:
    """Every known provider name: this package's and the registered ones."""
    with _registry._lock:
        extra = set(_registry.specs)
    return sorted({spec.name for spec in builtin()} | extra)


def make_provider(settings: Settings) -> Provider:
    """The sender ``CROSSSELL_EMAIL_PROVIDER`` chooses, built from its settings.

    Called once per process (``Runtime.provider``); ConfigurationError naming the
    missing variable, at startup rather than at the first send.
    """
    return lookup(settings.email_provider).build(settings)


def check_provider(settings: Settings) -> None:
    """Fail at startup, naming the variable, if the chosen provider cannot be built, or if
    a provider that reaches real inboxes has no postal address for the footers (CAN-SPAM,
    15 U.S.C. 7704(a)(5)(A)(iii); Gmail's and Yahoo's bulk sender rules)."""
    spec = lookup(settings.email_provider)
    spec.build(settings).close()
    if spec.reaches_inboxes and not (settings.postal_address or "").strip():
        raise ConfigurationError(
            f"{variable('postal_address')} is required with the {spec.name!r} provider: "
            "every email's footer shows it",
            (variable("postal_address"),),
        )


def webhook_for(name: str) -> Webhook[Any]:
    """The webhook at ``/webhooks/<name>``; LookupError if no provider has one there."""
    spec = _registry.get(name)
    if spec is None or spec.webhook is None:
        raise LookupError(name)
    return spec.webhook


def _cell(items: Iterable[str]) -> str:
    return ", ".join(f"`{item}`" for item in items) or "—"


def markdown_table(specs: Iterable[ProviderSpec[Any]]) -> str:
    """The README's provider table: one row per provider, its variables and webhook."""
    lines = [
        "| `CROSSSELL_EMAIL_PROVIDER` | sends | its variables | webhook (its variables) |",
        "|---|---|---|---|",
    ]
    for spec in specs:
        hook = (
            f"`POST /webhooks/{spec.name}` ({_cell(spec.webhook.settings.variables())})"
            if spec.webhook is not None
            else "—"
        )
        row = (spec.name, spec.summary, _cell(spec.settings.variables()), hook)
        lines.append(f"| `{row[0]}` | {row[1]} | {row[2]} | {row[3]} |")
    return "\n".join(lines) + "\n"
