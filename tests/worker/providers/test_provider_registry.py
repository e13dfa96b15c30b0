"""The provider registry: one declaration per provider drives selection, settings,
the start-time check, webhook routing and the README's provider table.

Before the registry, a missing credential was a bare ``ValueError`` and every list of
providers was written out by hand in four places; these tests pin the replacement.
"""

from __future__ import annotations

import hmac
import json
import operator
import re
import string
import sys
import threading
import types
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from functools import reduce
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, ClassVar, Union, get_args, get_origin

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError
from sqlalchemy import select
from starlette.testclient import TestClient

import worker.providers.base as base
from tests.support.factories import TUESDAY_MORNING, customer_block, make_settings, purchase
from triggers.addresses import lookup_key
from triggers.events import validate_event
from worker.core.settings import Settings
from worker.providers import check_provider, make_provider
from worker.providers.base import (
    ConfigurationError,
    DeliveryError,
    DeliveryResult,
    HandOver,
    OutgoingEmail,
    Provider,
    no_hand_over,
)
from worker.providers.http import CredentialsRefused
from worker.providers.registry import (
    ProviderSettings,
    ProviderSpec,
    Webhook,
    builtin,
    lookup,
    markdown_table,
    names,
    register,
    unregister,
)
from worker.webhooks.events import TrackingEvent, WebhookRejected, load_json

ROOT = Path(__file__).resolve().parents[3]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PROVIDERS_DIR = ROOT / "worker" / "providers"
# The variable values that make each built-in provider buildable; each required one is
# then removed or blanked in turn.
COMPLETE: dict[str, dict[str, str]] = {
    "file": {},
    "smtp": {},
    "postmark": {"postmark_server_token": "pm-token"},
    "sendgrid": {"sendgrid_api_key": "sg-key"},
    "mailgun": {"mailgun_api_key": "mg-key", "mailgun_domain": "mg.shop.example"},
    "ses": {
        "ses_region": "eu-west-1",
        "ses_access_key_id": "AKIDEXAMPLE",
        "ses_secret_access_key": "ses-secret",
    },
}


def _variable(field_name: str) -> str:
    return "CROSSSELL_" + field_name.upper()


def _required(name: str) -> list[str]:
    return [key for key, info in lookup(name).settings.model_fields.items() if info.is_required()]


# --- which providers exist ---------------------------------------------------------------


def test_every_provider_module_is_registered_under_its_own_name() -> None:
    """Brute force over the package's files, independent of the registry's discovery:
    a module declaring ``PROVIDER =`` is a provider named after the file."""
    declared = sorted(
        path.stem
        for path in PROVIDERS_DIR.glob("*.py")
        if re.search(r"^PROVIDER = ProviderSpec\(", path.read_text(encoding="utf-8"), re.M)
    )
    assert declared == [spec.name for spec in builtin()]
    assert declared == sorted(COMPLETE)
    assert set(declared) <= set(names())


@pytest.mark.parametrize("name", sorted(COMPLETE))
def test_each_provider_builds_a_sender_reporting_its_name(tmp_path: Path, name: str) -> None:
    made = make_provider(make_settings(tmp_path, email_provider=name, **COMPLETE[name]))
    try:
        assert isinstance(made, Provider) and made.name == name
    finally:
        made.close()


@given(
    st.one_of(
        st.sampled_from(sorted(COMPLETE)),
        st.text(alphabet=string.ascii_lowercase + string.digits + "_-./ ", max_size=12),
    )
)
@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_provider_setting_accepts_exactly_the_registered_names(
    tmp_path: Path, name: str
) -> None:
    if name in names():
        assert make_settings(tmp_path, email_provider=name).email_provider == name
        return
    with pytest.raises(ValidationError, match="CROSSSELL_EMAIL_PROVIDER"):
        make_settings(tmp_path, email_provider=name)


@pytest.mark.parametrize("module", ["base", "http", "registry", "__init__"])
def test_helper_modules_are_no_providers(tmp_path: Path, module: str) -> None:
    with pytest.raises(ValidationError, match="CROSSSELL_EMAIL_PROVIDER"):
        make_settings(tmp_path, email_provider=module)


# --- configuration errors --------------------------------------------------------------


def test_a_configuration_error_is_no_delivery_error() -> None:
    """Whatever catches delivery errors (to retry or fail a send) cannot swallow it."""
    delivery_errors = [
        value
        for value in vars(base).values()
        if isinstance(value, type) and issubclass(value, DeliveryError)
    ]
    assert len(delivery_errors) >= 5
    for kind in delivery_errors:
        assert not issubclass(ConfigurationError, kind)
        assert not issubclass(kind, ConfigurationError)
    with pytest.raises(ConfigurationError):
        try:
            raise ConfigurationError("CROSSSELL_X is not set", ("CROSSSELL_X",))
        except DeliveryError:  # pragma: no cover - the point is that this never matches
            pytest.fail("a delivery-error handler caught a configuration error")
    assert "ConfigurationError" in (base.__doc__ or "")


@pytest.mark.parametrize("name", [name for name in sorted(COMPLETE) if _required(name)])
@given(data=st.data())
@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_missing_or_blank_required_settings_name_exactly_those_variables(
    tmp_path: Path, name: str, data: st.DataObject
) -> None:
    """Any non-empty subset of a provider's required variables, each left unset or set to
    blanks, is reported as a ConfigurationError naming exactly that subset."""
    required = _required(name)
    removed = data.draw(st.sets(st.sampled_from(required), min_size=1), label="removed")
    values: dict[str, Any] = dict(COMPLETE[name])
    for key in removed:
        blank = data.draw(st.one_of(st.none(), st.text(alphabet=" \t", max_size=3)), label=key)
        if blank is None or key == "ses_region":  # a blank region fails Settings' pattern
            values.pop(key)
        else:
            values[key] = blank
    configured = make_settings(tmp_path, email_provider=name, **values)
    with pytest.raises(ConfigurationError) as caught:
        make_provider(configured)
    expected = {_variable(key) for key in removed}
    assert set(caught.value.variables) == expected
    for variable in expected:
        assert f"{variable} is not set" in str(caught.value)
    assert not isinstance(caught.value, DeliveryError)


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("postmark", {"postmark_base_url": "ftp://api.postmarkapp.com"}),
        ("sendgrid", {"sendgrid_base_url": "api.sendgrid.com"}),
        ("mailgun", {"mailgun_base_url": "file:///etc/passwd"}),
        ("ses", {"ses_base_url": "//email.eu-west-1.amazonaws.com"}),
    ],
)
def test_an_invalid_value_names_its_variable_and_not_the_secret(
    tmp_path: Path, name: str, bad: dict[str, str]
) -> None:
    configured = make_settings(tmp_path, email_provider=name, **COMPLETE[name], **bad)
    with pytest.raises(ConfigurationError) as caught:
        make_provider(configured)
    (key,) = bad
    assert caught.value.variables == (_variable(key),)
    assert "base URL" in str(caught.value)
    for secret in COMPLETE[name].values():
        assert secret not in str(caught.value)


@pytest.mark.parametrize(
    "content", [None, b"not a certificate\n", b""], ids=["absent", "junk", "empty"]
)
def test_an_unusable_smtp_ca_file_names_its_variable(tmp_path: Path, content: bytes | None) -> None:
    ca_file = tmp_path / "ca.pem"
    if content is not None:
        ca_file.write_bytes(content)
    configured = make_settings(tmp_path, email_provider="smtp", smtp_ca_file=ca_file)
    with pytest.raises(ConfigurationError) as caught:
        make_provider(configured)
    assert caught.value.variables == ("CROSSSELL_SMTP_CA_FILE",)


def test_settings_values_win_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A built-in provider's model takes what ``Settings`` holds (which read the
    environment already, or was given in code), never a second reading of it."""
    monkeypatch.setenv("CROSSSELL_POSTMARK_SERVER_TOKEN", "from-the-environment")
    made = make_provider(
        make_settings(tmp_path, email_provider="postmark", postmark_server_token="given")
    )
    assert getattr(made, "server_token", None) == "given"
    made.close()
    with pytest.raises(ConfigurationError, match="CROSSSELL_POSTMARK_SERVER_TOKEN is not set"):
        make_provider(
            make_settings(tmp_path, email_provider="postmark", postmark_server_token=None)
        )


def test_check_provider_raises_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as missing:
        check_provider(make_settings(tmp_path, email_provider="sendgrid", postal_address="1 St"))
    assert missing.value.variables == ("CROSSSELL_SENDGRID_API_KEY",)
    with pytest.raises(ConfigurationError) as no_address:
        check_provider(make_settings(tmp_path, email_provider="sendgrid", sendgrid_api_key="k"))
    assert no_address.value.variables == ("CROSSSELL_POSTAL_ADDRESS",)


# --- the registry and the rest of the house agree ----------------------------------------


def _plain(annotation: Any) -> Any:
    """The type without ``Annotated`` validators, inside unions too."""
    if get_origin(annotation) is Annotated:
        return _plain(get_args(annotation)[0])
    if get_origin(annotation) in (Union, UnionType):
        return reduce(operator.or_, (_plain(arg) for arg in get_args(annotation)))
    return annotation


@pytest.mark.parametrize("spec", builtin(), ids=lambda spec: spec.name)
def test_provider_models_match_the_flat_settings_they_read(spec: ProviderSpec[Any]) -> None:
    """A built-in provider's variable is also a ``Settings`` field (so ``Settings`` reads
    it and the README's settings table lists it); both must agree on type and default."""
    models: list[type[ProviderSettings]] = [spec.settings]
    if spec.webhook is not None:
        models.append(spec.webhook.settings)
    for model in models:
        for name, info in model.model_fields.items():
            assert name in Settings.model_fields, name
            flat = Settings.model_fields[name]
            if info.is_required():  # Settings may leave unset what the provider needs
                own = _plain(info.annotation)
                assert _plain(flat.annotation) in (own, own | None), name
            else:
                own_field = (_plain(info.annotation), info.default)
                assert own_field == (_plain(flat.annotation), flat.default), name


def test_every_provider_variable_is_in_the_readme_settings_table() -> None:
    for spec in builtin():
        models = [spec.settings] + ([spec.webhook.settings] if spec.webhook else [])
        for model in models:
            for variable in model.variables():
                assert f"| `{variable}` |" in README, variable


def test_the_readme_provider_table_is_the_registrys() -> None:
    found = re.search(r"<!-- providers:start -->\n(.*?)<!-- providers:end -->", README, flags=re.S)
    assert found, "README.md lost its provider table markers"
    assert found.group(1) == markdown_table(builtin()), (
        "regenerate it: python -m worker.providers.readme_table"
    )
    for spec in builtin():  # and the table says what an operator sets, in their words
        assert f"| `{spec.name}` |" in found.group(1)


def test_names_must_be_module_and_path_safe_and_unique() -> None:
    for bad in ("Toy", "to-y", "../x", "", "1toy"):
        with pytest.raises(ValueError, match="must match"):
            ProviderSpec(bad, ToySettings, ToyProvider.from_settings, "x")
    with pytest.raises(ValueError, match="already registered"):
        register(ProviderSpec("smtp", ToySettings, ToyProvider.from_settings, "x"))


# --- a provider added from outside: one declaration, nothing else changed -------------------


SENT: list[OutgoingEmail] = []


class ToySettings(ProviderSettings):
    """Read from CROSSSELL_TOY_* by the model itself: ``Settings`` knows nothing of it."""

    toy_api_key: SecretStr
    toy_region: str = "eu"


class ToyWebhookSettings(ProviderSettings):
    toy_webhook_token: SecretStr | None = None


class ToyProvider(Provider):
    """Keeps what it is given in ``SENT``; its id names the region, to show the settings
    reached it."""

    name = "toy"

    def __init__(self, api_key: str, region: str) -> None:
        self.api_key, self.region = api_key, region

    @classmethod
    def from_settings(cls, settings: ToySettings) -> ToyProvider:
        return cls(settings.toy_api_key.get_secret_value(), settings.toy_region)

    def send(self, email: OutgoingEmail, hand_over: HandOver = no_hand_over) -> DeliveryResult:
        hand_over()
        SENT.append(email)
        return DeliveryResult(self.name, f"toy-{self.region}-{email.send_id}")


def _toy_parse(
    settings: ToyWebhookSettings, headers: Mapping[str, str], body: bytes, now: datetime
) -> list[TrackingEvent]:
    token = settings.toy_webhook_token
    given_token = headers.get("x-toy-token", "")
    if token is None or not hmac.compare_digest(given_token, token.get_secret_value()):
        raise WebhookRejected("wrong X-Toy-Token")
    record = load_json(body)
    return [
        TrackingEvent(
            provider="toy",
            event_id=str(record["id"]),
            kind="bounced",
            recipient=str(record["to"]),
            timestamp=now,
            bounce_type="hard",
            provider_message_id=str(record["message"]),
        )
    ]


TOY = ProviderSpec(
    name="toy",
    settings=ToySettings,
    sender=ToyProvider.from_settings,
    summary="a test's provider",
    webhook=Webhook(
        settings=ToyWebhookSettings,
        configured=lambda settings: settings.toy_webhook_token is not None,
        parse=_toy_parse,
    ),
)


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> Iterator[ProviderSpec[Any]]:
    SENT.clear()
    monkeypatch.setenv("CROSSSELL_TOY_API_KEY", "toy-key")
    monkeypatch.setenv("CROSSSELL_TOY_WEBHOOK_TOKEN", "hook-secret")
    register(TOY)
    try:
        yield TOY
    finally:
        unregister("toy")


def test_a_registered_provider_is_unknown_once_unregistered(tmp_path: Path) -> None:
    assert "toy" not in names()
    with pytest.raises(ValidationError, match="CROSSSELL_EMAIL_PROVIDER"):
        make_settings(tmp_path, email_provider="toy")


def test_a_toy_provider_is_checked_at_start_like_the_built_in_ones(
    tmp_path: Path, toy: ProviderSpec[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "toy" in names()
    configured = make_settings(tmp_path, email_provider="toy", postal_address="1 Main St")
    check_provider(configured)
    monkeypatch.delenv("CROSSSELL_TOY_API_KEY")
    with pytest.raises(ConfigurationError) as caught:
        check_provider(configured)
    assert caught.value.variables == ("CROSSSELL_TOY_API_KEY",)
    monkeypatch.setenv("CROSSSELL_TOY_API_KEY", "toy-key")
    with pytest.raises(ConfigurationError, match="CROSSSELL_POSTAL_ADDRESS"):
        check_provider(make_settings(tmp_path, email_provider="toy"))


def test_the_startup_line_names_a_registered_provider(
    tmp_path: Path, toy: ProviderSpec[Any]
) -> None:
    from worker.process.startup import provider_description

    assert provider_description(make_settings(tmp_path, email_provider="toy")) == "toy"


def test_a_toy_provider_sends_and_receives_its_webhook(
    tmp_path: Path, sqlite_url: str, toy: ProviderSpec[Any]
) -> None:
    """Registered from this test alone: a real send goes through it, and a bounce posted
    to ``/webhooks/toy`` fails that send and suppresses the address."""
    from worker.commands.demo import seed_catalog
    from worker.core.clock import ShiftedClock
    from worker.core.db import transaction
    from worker.core.models import Send, Suppression
    from worker.intake.ingest import ingest_event
    from worker.outbox.delivery import deliver_send
    from worker.outbox.dispatcher import dispatch_once
    from worker.process.runtime import Runtime
    from worker.web.web import create_app

    configured = make_settings(
        tmp_path, database_url=sqlite_url, email_provider="toy", postal_address="1 Main St"
    )
    runtime = Runtime(configured, clock=ShiftedClock(TUESDAY_MORNING))
    seed_catalog(configured, TUESDAY_MORNING)
    for n in range(5):  # one or two may fall in the campaign's holdout
        with transaction(sqlite_url) as session:
            event = validate_event(purchase(customer=customer_block(f"C-toy-{n}")))
            ingest_event(
                session, event, runtime.rules.current(), runtime.policy, runtime.clock.now()
            )
    runtime.clock = ShiftedClock(TUESDAY_MORNING + timedelta(hours=3))
    queued: list[int] = []
    dispatch_once(runtime, queued.extend)
    assert queued
    assert deliver_send(runtime, queued[0]) == "sent"
    assert isinstance(runtime.provider, ToyProvider) and runtime.provider.api_key == "toy-key"
    (email,) = SENT
    assert email.send_id == queued[0]
    with transaction(sqlite_url) as session:
        send = session.scalars(select(Send).where(Send.id == queued[0])).one()
        assert send.provider_message_id == f"toy-eu-{queued[0]}"

    bounce = json.dumps({"id": "ev-1", "to": email.recipient, "message": f"toy-eu-{queued[0]}"})
    with TestClient(create_app(runtime)) as client:
        refused = client.post("/webhooks/toy", content=bounce, headers={"X-Toy-Token": "not-it"})
        accepted = client.post(
            "/webhooks/toy", content=bounce, headers={"X-Toy-Token": "hook-secret"}
        )
    runtime.close()
    assert refused.status_code == 401
    assert accepted.status_code == 200 and accepted.json()["applied"] == 1
    with transaction(sqlite_url) as session:
        send = session.scalars(select(Send).where(Send.id == queued[0])).one()
        assert (send.status, send.reason) == ("failed", "hard_bounce")
        assert session.get(Suppression, lookup_key(email.recipient)) is not None


@pytest.mark.parametrize(
    "path", ["smtp", "file", "base", "http", "registry", "nope", "toy"], ids=str
)
def test_webhooks_route_only_to_configured_providers_with_a_webhook(
    tmp_path: Path, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """404 for a provider without a webhook, a helper module, an unknown name, and a
    registered provider whose webhook secret is unset (the toy, here)."""
    from worker.process.runtime import Runtime
    from worker.web.web import create_app

    register(TOY)
    monkeypatch.delenv("CROSSSELL_TOY_WEBHOOK_TOKEN", raising=False)
    try:
        with TestClient(create_app(Runtime(make_settings(tmp_path)))) as client:
            answer = client.post(f"/webhooks/{path}", content=b"{}")
    finally:
        unregister("toy")
    assert answer.status_code == 404


# --- the example of docs/delivery.md, run as written ------------------------------------


def _documented_module() -> str:
    text = (ROOT / "docs" / "delivery.md").read_text(encoding="utf-8")
    section = text.split("\n## Adding a provider\n", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert found, "docs/delivery.md lost its example provider module"
    return found.group(1)


class _AcmeApi(BaseHTTPRequestHandler):
    """Acme's documented send: Bearer key, MIME body, ``200 {"id"}`` or ``401``."""

    received: ClassVar[list[tuple[str, str, bytes]]] = []
    key: ClassVar[str] = "acme-key"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Authorization") != f"Bearer {self.key}":
            self._answer(401, {"error": "bad key"})
            return
        self.received.append((self.path, self.headers.get("Content-Type", ""), body))
        self._answer(200, {"id": f"acme-{len(self.received)}"})

    def _answer(self, status: int, payload: dict[str, str]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        del format, args


@pytest.fixture
def acme_api() -> Iterator[str]:
    _AcmeApi.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AcmeApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_documented_example_provider_works_as_written(
    tmp_path: Path, acme_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = types.ModuleType("acme_docs_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(_documented_module(), "docs/delivery.md", "exec"), module.__dict__)
    monkeypatch.setenv("CROSSSELL_ACME_BASE_URL", acme_api)
    register(module.PROVIDER)
    try:
        configured = make_settings(tmp_path, email_provider="acme", postal_address="1 Main St")
        monkeypatch.delenv("CROSSSELL_ACME_API_KEY", raising=False)
        with pytest.raises(ConfigurationError, match="CROSSSELL_ACME_API_KEY is not set"):
            check_provider(configured)
        monkeypatch.setenv("CROSSSELL_ACME_API_KEY", "acme-key")
        check_provider(configured)
        provider = make_provider(configured)
        email = OutgoingEmail(
            7,
            "<7@shop.example>",
            "offers@shop.example",
            "ana@example.ro",
            b"Subject: x\r\n\r\nhi\r\n",
        )
        try:
            result = provider.send(email)
        finally:
            provider.close()
        assert (result.provider, result.provider_message_id) == ("acme", "acme-1")
        assert _AcmeApi.received == [
            ("/v1/messages?to=ana%40example.ro", "message/rfc822", email.data)
        ]
        monkeypatch.setenv("CROSSSELL_ACME_API_KEY", "rotated-away")
        refused = make_provider(configured)
        try:
            with pytest.raises(CredentialsRefused):  # transient: the operator fixes the key
                refused.send(email)
        finally:
            refused.close()
    finally:
        unregister("acme")
