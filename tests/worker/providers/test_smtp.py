"""The SMTP provider against a real SMTP server on loopback."""

from __future__ import annotations

import pytest

from tests.support.smtp_sink import SmtpSink
from worker.providers.base import OutgoingEmail, PermanentDeliveryError, TransientDeliveryError
from worker.providers.smtp import SMTPProvider, classify


def _email(send_id: int, recipient: str = "ana@example.ro") -> OutgoingEmail:
    data = (
        f"From: shop@example.com\r\nTo: {recipient}\r\nSubject: test {send_id}\r\n"
        f"Message-ID: <send-{send_id}@test>\r\n\r\nhello\r\n"
    ).encode()
    return OutgoingEmail(send_id, f"<send-{send_id}@test>", "shop@example.com", recipient, data)


def test_one_connection_is_reused_for_many_messages(smtp_sink: SmtpSink) -> None:
    provider = SMTPProvider("127.0.0.1", smtp_sink.port)
    try:
        results = [provider.send(_email(n)) for n in range(5)]
    finally:
        provider.close()
    assert provider.connections_opened == 1
    assert [r.provider_message_id for r in results] == [f"<send-{n}@test>" for n in range(5)]
    assert len(smtp_sink.handler.messages) == 5


def test_reconnects_after_the_server_drops_the_connection(smtp_sink: SmtpSink) -> None:
    provider = SMTPProvider("127.0.0.1", smtp_sink.port)
    try:
        provider.send(_email(1))
        smtp_sink.restart()  # the pooled connection is now dead
        provider.send(_email(2))
    finally:
        provider.close()
    assert provider.connections_opened == 2
    assert len(smtp_sink.handler.messages) == 2


def test_refused_recipient_is_a_permanent_hard_bounce(smtp_sink: SmtpSink) -> None:
    smtp_sink.handler.recipient_faults["gone@example.ro"] = "550 5.1.1 User unknown"
    provider = SMTPProvider("127.0.0.1", smtp_sink.port)
    try:
        with pytest.raises(PermanentDeliveryError) as refused:
            provider.send(_email(1, "gone@example.ro"))
        provider.send(_email(2))  # the connection is still usable afterwards
    finally:
        provider.close()
    assert refused.value.hard_bounce and not refused.value.policy
    assert refused.value.code == 550 and refused.value.enhanced == "5.1.1"
    assert len(smtp_sink.handler.messages) == 1


def test_temporary_data_refusal_is_transient(smtp_sink: SmtpSink) -> None:
    smtp_sink.handler.data_faults["busy@example.ro"] = ["451 4.3.0 Mailbox busy"]
    provider = SMTPProvider("127.0.0.1", smtp_sink.port)
    try:
        with pytest.raises(TransientDeliveryError) as busy:
            provider.send(_email(1, "busy@example.ro"))
        provider.send(_email(1, "busy@example.ro"))  # the retry goes through
    finally:
        provider.close()
    assert busy.value.code == 451
    assert len(smtp_sink.handler.messages) == 1


def test_unreachable_server_is_transient() -> None:
    from tests.support.smtp_sink import free_port

    provider = SMTPProvider("127.0.0.1", free_port(), timeout=2)
    with pytest.raises(TransientDeliveryError):
        provider.send(_email(1))


@pytest.mark.parametrize(
    ("code", "text", "kind", "hard", "policy"),
    [
        (421, "4.7.0 Try again later", TransientDeliveryError, False, False),
        (
            454,
            "4.7.0 Throttling failure: Maximum sending rate exceeded",
            TransientDeliveryError,
            False,
            False,
        ),
        (550, "5.1.1 Bad destination mailbox", PermanentDeliveryError, True, False),
        (550, "5.7.1 Message rejected by policy", PermanentDeliveryError, False, True),
        (552, "5.3.4 Message too big", PermanentDeliveryError, False, False),
        (550, "No such user here", PermanentDeliveryError, True, False),
    ],
)
def test_replies_are_classified_by_basic_and_enhanced_codes(
    code: int, text: str, kind: type[Exception], hard: bool, policy: bool
) -> None:
    error = classify(code, text.encode())
    assert isinstance(error, kind)
    if isinstance(error, PermanentDeliveryError):
        assert (error.hard_bounce, error.policy) == (hard, policy)


def test_romanian_and_italian_headers_survive_the_trip_through_an_smtp_server(
    smtp_sink: SmtpSink,
) -> None:
    from datetime import UTC, datetime

    from worker.email.mime import Envelope, build_message, message_id_for
    from worker.email.rendering import RenderedEmail

    cases = [
        ("Magazinul Ștefăniță", "Ioana Țurcanu", "Ioana, ți-am pregătit: șnur, țintă, câștig"),
        ("Negozio Forlì", "Nicolò Cantù", "Nicolò, più città: à è ì ò ù"),
    ]
    provider = SMTPProvider("127.0.0.1", smtp_sink.port)
    try:
        for n, (sender, recipient, subject) in enumerate(cases, start=1):
            envelope = Envelope(
                send_id=n,
                sender_name=sender,
                sender_address="shop@example.ro",
                recipient_name=recipient,
                recipient_address=f"r{n}@example.it",
                reply_to=None,
                date=datetime(2026, 11, 17, 10, 30, tzinfo=UTC),
                message_id=message_id_for(n, "example.ro", b"k" * 32),
                unsubscribe_url="https://shop.example/u/t",
                unsubscribe_mailto="u@example.ro",
                feedback_id="c0c0c0c0c0:cross-sell:crosssell",
            )
            data = build_message(envelope, RenderedEmail(subject, f"<p>{subject}</p>", subject))
            provider.send(
                OutgoingEmail(n, envelope.message_id, "shop@example.ro", f"r{n}@example.it", data)
            )
    finally:
        provider.close()
    received = smtp_sink.handler.parsed()
    for message, (sender, recipient, subject) in zip(received, cases, strict=True):
        assert message["Subject"] == subject
        assert message["From"].addresses[0].display_name == sender
        assert message["To"].addresses[0].display_name == recipient
        body = message.get_body(("plain",))
        assert body is not None and body.get_content().strip() == subject


def test_concurrent_senders_get_a_connection_each_up_to_the_pool_size() -> None:
    """A slow server must not serialise the worker's threads on one connection."""
    import asyncio
    import threading

    from tests.support.smtp_sink import SinkHandler

    class SlowHandler(SinkHandler):
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            await asyncio.sleep(0.3)
            return await super().handle_DATA(server, session, envelope)

    with SmtpSink() as sink:
        sink.controller.stop()
        sink.handler = SlowHandler()
        sink.controller = sink._controller()
        sink.controller.start()
        provider = SMTPProvider("127.0.0.1", sink.port, pool_size=3)
        start = threading.Barrier(6)

        def send(n: int) -> None:
            start.wait()
            provider.send(_email(n))

        threads = [threading.Thread(target=send, args=(n,)) for n in range(6)]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
        finally:
            provider.close()
        assert len(sink.handler.messages) == 6
        assert provider.connections_opened == 3, "one per thread at once, never more than 3"
