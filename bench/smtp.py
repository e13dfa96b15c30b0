"""SMTP messages per second over one connection: the provider against the raw floor.

    python -m bench.smtp [--count 2000] [--runs 5] [--latency-ms 0]

A minimal SMTP sink runs in its own process on loopback (plain sockets, replies to a
pipelined group written together, as Postfix does); ``--latency-ms`` makes it wait that
long before each write of replies, a stand-in for the round trip to a relay on another
machine. The same message (a demo-sized multipart email built by ``worker.email.mime``) is
sent ``--count`` times over one connection by:

* the floor: ``smtplib.SMTP.sendmail`` in a loop (MAIL, RCPT, DATA, content: no hand-over,
  no classification, never pipelined);
* ``SMTPProvider.send`` in a loop and ``SMTPProvider.send_many`` over the whole batch,
  each against the sink without PIPELINING (one command a round trip) and with it
  (RFC 2920: MAIL, RCPT and DATA in one round trip).

Every variant of a run meets the same sink process, in an order that rotates from run
to run; each figure is printed next to the floor measured in that run, with this
process's CPU time per message (steadier than the wall clock on a shared machine), and
medians and ranges over ``--runs`` runs at the end. The sink counts what it accepted,
and a run whose count is short fails loudly.
"""

from __future__ import annotations

import argparse
import multiprocessing
import smtplib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.context import SpawnProcess
from multiprocessing.sharedctypes import Synchronized
from statistics import median

from worker.email.mime import Envelope, build_email, message_id_for
from worker.email.rendering import RenderedEmail
from worker.providers.base import OutgoingEmail
from worker.providers.smtp import SMTPProvider

FLOOR = "floor: smtplib sendmail loop"
VARIANTS = (
    FLOOR,
    "send() loop, no PIPELINING",
    "send_many, no PIPELINING",
    "send() loop, PIPELINING",
    "send_many, PIPELINING",
)


# --- the sink, in its own process -------------------------------------------------------


def _serve_connection(
    connection: socket.socket, pipelining: bool, latency: float, accepted: Synchronized[int]
) -> None:
    """One SMTP session: every complete command line in what was read is answered, and
    the replies of one read go out in one write (after ``latency`` seconds)."""
    buffer = b""
    in_data = False
    connection.sendall(b"220 bench ESMTP\r\n")
    while chunk := connection.recv(262144):
        buffer += chunk
        replies: list[bytes] = []
        while True:
            if in_data:
                end = buffer.find(b"\r\n.\r\n")
                if end < 0:
                    break
                buffer = buffer[end + 5 :]
                in_data = False
                with accepted.get_lock():
                    accepted.value += 1
                replies.append(b"250 2.0.0 queued\r\n")
                continue
            line_end = buffer.find(b"\r\n")
            if line_end < 0:
                break
            command = buffer[:4].upper()
            buffer = buffer[line_end + 2 :]
            if command == b"EHLO":
                offer = b"250-PIPELINING\r\n" if pipelining else b""
                replies.append(b"250-bench\r\n" + offer + b"250-8BITMIME\r\n250 SMTPUTF8\r\n")
            elif command == b"DATA":
                replies.append(b"354 go ahead\r\n")
                # The content starts after CRLF: a lone ".\r\n" ends an empty message.
                buffer = b"\r\n" + buffer
                in_data = True
            elif command == b"QUIT":
                connection.sendall(b"".join(replies) + b"221 bye\r\n")
                return
            else:  # MAIL, RCPT, RSET, NOOP
                replies.append(b"250 OK\r\n")
        if replies:
            if latency:
                time.sleep(latency)
            connection.sendall(b"".join(replies))


def _sink(
    listener: socket.socket, pipelining: bool, latency: float, accepted: Synchronized[int]
) -> None:
    while True:
        connection, _ = listener.accept()
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(
            target=_serve_connection,
            args=(connection, pipelining, latency, accepted),
            daemon=True,
        ).start()


class Sink:
    """The sink process, one port with PIPELINING and one without."""

    def __init__(self, latency: float) -> None:
        context = multiprocessing.get_context("spawn")
        self.accepted: Synchronized[int] = context.Value("q", 0)
        self.ports: dict[bool, int] = {}
        self.processes: list[SpawnProcess] = []
        for pipelining in (False, True):
            listener = socket.create_server(("127.0.0.1", 0))
            self.ports[pipelining] = int(listener.getsockname()[1])
            process = context.Process(
                target=_sink, args=(listener, pipelining, latency, self.accepted), daemon=True
            )
            process.start()
            listener.close()  # the child has its own copy
            self.processes.append(process)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
            process.join(5)


# --- the clients ------------------------------------------------------------------------


def sample_email(send_id: int) -> OutgoingEmail:
    """A demo-sized multipart message (about 6 KB), built as the worker builds it."""
    paragraph = "<p>Bună, Ioana: am pregătit ceva pentru tine, cu livrare gratuită.</p>"
    rendered = RenderedEmail(
        "Ioana, ți-am pregătit: șnur, țintă, câștig",
        "<html><body>" + paragraph * 40 + "</body></html>",
        "Bună, Ioana: am pregătit ceva pentru tine.\n" * 20,
    )
    envelope = Envelope(
        send_id=send_id,
        sender_name="Magazinul Ștefăniță",
        sender_address="shop@example.ro",
        recipient_name="Ioana Țurcanu",
        recipient_address="ioana@example.ro",
        reply_to=None,
        date=datetime(2026, 11, 17, 10, 30, tzinfo=UTC),
        message_id=message_id_for(send_id, "example.ro", b"k" * 32),
        unsubscribe_url="https://shop.example/u/k1.payload.signature",
        unsubscribe_mailto="unsubscribe@example.ro",
        feedback_id="a1b2c3d4e5:cross-sell:crosssell",
    )
    return build_email(envelope, rendered)


def floor(port: int, emails: list[OutgoingEmail]) -> None:
    connection = smtplib.SMTP("127.0.0.1", port)
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
    connection.ehlo()
    for email in emails:
        connection.sendmail(email.sender, [email.recipient], email.data)
    connection.quit()


def send_loop(port: int, emails: list[OutgoingEmail]) -> None:
    provider = SMTPProvider("127.0.0.1", port, pool_size=1)
    try:
        for email in emails:
            provider.send(email)
    finally:
        provider.close()


def send_many(port: int, emails: list[OutgoingEmail]) -> None:
    provider = SMTPProvider("127.0.0.1", port, pool_size=1)
    try:
        for entry in provider.send_many(emails, lambda index: None):
            if isinstance(entry, Exception):
                raise entry
    finally:
        provider.close()


@dataclass(frozen=True, slots=True)
class Figure:
    rate: float  # messages per second, wall clock
    cpu_us: float  # this process's CPU per message, microseconds (the sink not included)


def _timed(sink: Sink, send: Callable[[], None], count: int) -> Figure:
    before = sink.accepted.value
    cpu = time.process_time()
    started = time.perf_counter()
    send()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    got = sink.accepted.value - before
    if got != count:
        raise SystemExit(f"the sink accepted {got} of {count} messages")
    return Figure(count / elapsed, cpu / count * 1e6)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.smtp", description=__doc__)
    parser.add_argument("--count", type=int, default=2000, help="messages per variant")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="sink's wait before each reply write"
    )
    args = parser.parse_args(argv)
    emails = [sample_email(n) for n in range(args.count)]
    sink = Sink(args.latency_ms / 1000)
    plain, pipelined = sink.ports[False], sink.ports[True]
    variants: dict[str, Callable[[], None]] = {
        VARIANTS[0]: lambda: floor(plain, emails),
        VARIANTS[1]: lambda: send_loop(plain, emails),
        VARIANTS[2]: lambda: send_many(plain, emails),
        VARIANTS[3]: lambda: send_loop(pipelined, emails),
        VARIANTS[4]: lambda: send_many(pipelined, emails),
    }
    print(
        f"bench.smtp: {args.count} messages of {len(emails[0].data)} bytes per variant over "
        f"one connection, sink in its own process, reply latency {args.latency_ms} ms, "
        f"{args.runs} runs (variants in a rotating order)"
    )
    figures: dict[str, list[Figure]] = {name: [] for name in VARIANTS}
    ratios: dict[str, list[float]] = {name: [] for name in VARIANTS}
    try:
        variants[FLOOR]()  # warm-up: imports, first connection
        for run in range(args.runs):
            order = VARIANTS[run % len(VARIANTS) :] + VARIANTS[: run % len(VARIANTS)]
            measured = {name: _timed(sink, variants[name], args.count) for name in order}
            base = measured[FLOOR]
            print(f"run {run + 1}:")
            for name in VARIANTS:
                figure = measured[name]
                figures[name].append(figure)
                ratios[name].append(figure.rate / base.rate)
                print(
                    f"  {name:<28} {figure.rate:6.0f} msg/s {figure.cpu_us:6.0f} us CPU/msg"
                    f"  {figure.rate / base.rate:4.2f} x floor ({base.rate:.0f} msg/s)"
                )
    finally:
        sink.stop()
    print("over the runs: msg/s median (range); client CPU per message median (range);")
    print("ratio to the floor measured in the same run, median (range)")
    for name in VARIANTS:
        rates = [f.rate for f in figures[name]]
        cpus = [f.cpu_us for f in figures[name]]
        print(
            f"  {name:<28} {median(rates):6.0f} ({min(rates):.0f}-{max(rates):.0f}) msg/s"
            f"  {median(cpus):4.0f} ({min(cpus):.0f}-{max(cpus):.0f}) us"
            f"  {median(ratios[name]):4.2f} ({min(ratios[name]):.2f}-{max(ratios[name]):.2f})"
            " x floor"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
