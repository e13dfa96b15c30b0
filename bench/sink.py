"""A fast SMTP sink for the benchmarks, run in its own process on loopback.

    python -m bench.sink --port PORT --log FILE

It speaks just enough SMTP (RFC 5321) for a client that sends mail: EHLO/HELO, MAIL,
RCPT, DATA, RSET, NOOP, QUIT, and it advertises PIPELINING (RFC 2920), so a client may
send MAIL, RCPT and DATA without waiting for each reply. Every message is accepted with
``250``; nothing is parsed but the ``Message-ID`` header. For each message it appends one
line ``<unix time of acceptance>\\t<Message-ID>`` to ``--log`` (flushed every 0.2 s and at
SIGTERM), which the harness reads to count messages, lost and duplicates, and latency.

It is an asyncio server on one thread rather than aiosmtpd (which the tests use for its
fault hooks) so that the sink costs little CPU per message; ``measure_capacity`` shows
what it takes with a raw smtplib client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import re
import signal
import smtplib
import time
from pathlib import Path
from typing import Any, TextIO

_MESSAGE_ID = re.compile(rb"(?im)^message-id:[ \t]*(<[^>\r\n]+>)")
_END_OF_DATA = b"\r\n.\r\n"
_EHLO = b"250-bench-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 52428800\r\n"


def message_id_in(data: bytes) -> str:
    """The Message-ID of a message's header block, or ``-`` when it has none."""
    head = data.split(b"\r\n\r\n", 1)[0]
    match = _MESSAGE_ID.search(head)
    return match.group(1).decode("ascii", "replace") if match else "-"


class Recorder:
    """Buffers ``time\\tmessage-id`` lines and writes them out in batches."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.pending: list[str] = []

    def accepted(self, data: bytes) -> None:
        self.pending.append(f"{time.time():.6f}\t{message_id_in(data)}\n")

    def flush(self) -> None:
        if self.pending:
            self.out.write("".join(self.pending))
            self.out.flush()
            self.pending.clear()


async def _session(
    recorder: Recorder, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    writer.write(b"220 bench-sink ESMTP\r\n")
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            verb = line[:4].upper()
            if verb == b"EHLO":
                writer.write(_EHLO)
            elif verb == b"DATA":
                writer.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                await writer.drain()
                data = await reader.readuntil(_END_OF_DATA)
                recorder.accepted(data)
                writer.write(b"250 2.0.0 OK queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 Bye\r\n")
                break
            elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP", b"HELO"):
                writer.write(b"250 2.0.0 OK\r\n")
            else:
                writer.write(b"502 5.5.2 Command not implemented\r\n")
            # Replies to pipelined commands go out together, when no more input waits.
            if not reader._buffer:  # type: ignore[attr-defined]
                await writer.drain()
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def serve(port: int, log: Path) -> None:
    with log.open("a", encoding="ascii") as out:
        recorder = Recorder(out)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        server = await asyncio.start_server(
            lambda r, w: _session(recorder, r, w), "127.0.0.1", port, limit=64 * 1024 * 1024
        )
        async with server:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.2)
                recorder.flush()
        recorder.flush()


def read_log(log: Path) -> list[tuple[float, str]]:
    """Every (acceptance time, Message-ID) the sink has written so far."""
    records: list[tuple[float, str]] = []
    if not log.exists():
        return records
    for line in log.read_text(encoding="ascii").splitlines():
        stamp, _, message_id = line.partition("\t")
        records.append((float(stamp), message_id))
    return records


def count_lines(log: Path) -> int:
    if not log.exists():
        return 0
    with log.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def _sample_message(n: int, size: int) -> bytes:
    body = ("The quick brown fox jumps over the lazy dog. " * (size // 46 + 1))[:size]
    return (
        f"From: bench <bench@shop.example>\r\nTo: <c{n}@shop.example>\r\n"
        f"Subject: capacity {n}\r\nMessage-ID: <sinkcap-{n}@bench>\r\n"
        f"Content-Type: text/plain; charset=us-ascii\r\n\r\n{body}\r\n"
    ).encode("ascii")


def _client(port: int, count: int, size: int, offset: int, ready: Any, took: Any) -> None:
    messages = [_sample_message(offset + n, size) for n in range(count)]
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        smtp.ehlo()
        ready.wait()  # everyone connected and built: the clock starts now
        started = time.perf_counter()
        for n, message in enumerate(messages):
            smtp.sendmail("bench@shop.example", [f"c{offset + n}@shop.example"], message)
        took.put(time.perf_counter() - started)


def measure_capacity(port: int, count: int, size: int, clients: int) -> float:
    """Messages per second the sink accepts from ``clients`` smtplib processes, each over
    one persistent connection, ``count`` messages of ``size`` bytes in all. Their
    Message-IDs start with ``<sinkcap-`` so the harness can leave them out."""
    per = max(1, count // clients)
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(clients)
    took = context.Queue()
    workers = [
        context.Process(target=_client, args=(port, per, size, k * per, ready, took))
        for k in range(clients)
    ]
    for worker in workers:
        worker.start()
    # The slowest client's time, from the common start to its last answer.
    slowest = max(float(took.get(timeout=600)) for _ in workers)
    for worker in workers:
        worker.join()
    return per * clients / slowest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path, required=True)
    options = parser.parse_args(argv)
    asyncio.run(serve(options.port, options.log))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
