"""soc.sources.syslog: RFC 5424 over real TCP (and TLS) sockets into a real spool and SQLite store,
both RFC 6587 framings, structured data, garbage, split and packed packets, refused peers."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from soc.sources.syslog import PARSE_ERROR, TRUNCATED, SyslogServer, _Framer, parse
from tests.soc.sources_support import Pipeline, Recording, eventually
from tests.tls import self_signed

SSH = (
    b"<38>1 2026-11-02T17:00:00.123+08:00 fw-01.example.gov sshd 4123 AUTHFAIL "
    b'[origin ip="10.1.2.3" software="fw\\"os\\]" x="\\q"][meta@32473 tag="a" tag="b"] '
    b"\xef\xbb\xbfFailed password for root from 203.0.113.7"
)


def octets(message: bytes) -> bytes:
    return str(len(message)).encode() + b" " + message


@pytest.fixture
async def pipeline(tmp_path: Path) -> AsyncIterator[Pipeline]:
    running = await Pipeline(tmp_path).start()
    yield running
    await running.stop()


async def send(port: int, data: bytes | list[bytes], *, pause: float = 0.0, tls: Any = None) -> None:
    _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    for piece in [data] if isinstance(data, bytes) else data:
        writer.write(piece)
        await writer.drain()
        if pause:
            await asyncio.sleep(pause)
    writer.close()
    await writer.wait_closed()


async def by_message(pipeline: Pipeline, count: int) -> dict[str, dict[str, Any]]:
    await pipeline.wait_stored(count)
    return {d.get("message", d.get("event.original")): d for d in await pipeline.stored()}


def test_a_message_is_parsed_to_ecs_fields() -> None:
    fields = parse(SSH)
    assert fields == {
        "@timestamp": "2026-11-02T09:00:00.123000Z",
        "log.syslog.priority": 38,
        "log.syslog.facility.code": 4,
        "log.syslog.facility.name": "auth",
        "log.syslog.severity.code": 6,
        "log.syslog.severity.name": "informational",
        "log.level": "informational",
        "log.syslog.version": "1",
        "host.hostname": "fw-01.example.gov",
        "log.syslog.hostname": "fw-01.example.gov",
        "process.name": "sshd",
        "log.syslog.appname": "sshd",
        "log.syslog.procid": "4123",
        "process.pid": 4123,
        "log.syslog.msgid": "AUTHFAIL",
        "log.syslog.structured_data.origin.ip": "10.1.2.3",
        "log.syslog.structured_data.origin.software": 'fw"os]',
        "log.syslog.structured_data.origin.x": "\\q",  # an unknown escape stays as it is
        "log.syslog.structured_data.meta@32473.tag": ["a", "b"],
        "message": "Failed password for root from 203.0.113.7",
    }


def test_nil_values_and_no_message() -> None:
    assert parse(b"<13>1 - - - - - -") == {
        "log.syslog.priority": 13,
        "log.syslog.facility.code": 1,
        "log.syslog.facility.name": "user",
        "log.syslog.severity.code": 5,
        "log.syslog.severity.name": "notice",
        "log.level": "notice",
        "log.syslog.version": "1",
    }
    fields = parse(b'<165>1 2026-11-02T09:00:00Z host app - ID47 [a/b:c d+e="1"] hi')
    assert fields["log.syslog.structured_data.a_b_c.d_e"] == "1" and fields["message"] == "hi"


@pytest.mark.parametrize(
    ("message", "reason", "priority"),
    [
        (b"hello there", "not an RFC 5424 header", None),
        (b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed", "not an RFC 5424 header", 34),
        (b"<200>1 - - - - - -", "above 191", None),
        (b"<13>2 - - - - - -", "VERSION 2", 13),
        (b"<13>1 2026-13-02T09:00:00Z h a - - -", "month must be", 13),
        (b"<13>1 yesterday h a - - -", "not RFC 3339", 13),
        (b'<13>1 - h a - - [x a="1 msg', "not closed", 13),
        (b"<13>1 - h a - - [x a=1]", "'=\"' expected", 13),
        (b"<13>1 - h a - - nothing", "neither", 13),
        (b"<13>1 - h a - - [x]msg", "a space expected", 13),
    ],
)
def test_what_is_not_rfc_5424_says_why(message: bytes, reason: str, priority: int | None) -> None:
    with pytest.raises(ValueError, match=reason) as caught:
        parse(message)
    assert caught.value.fields.get("log.syslog.priority") == priority  # type: ignore[attr-defined]


def test_frames_are_cut_at_the_limit_and_the_rest_skipped() -> None:
    framer = _Framer(16)
    frames = framer.feed(octets(b"a" * 40) + b"<1>1 - - - - - -\n" + b"b" * 30)
    assert frames == [(b"a" * 16, True), (b"<1>1 - - - - - -", False), (b"b" * 16, True)]
    assert framer.feed(b"bbb\n" + b"14 <1>1 - - - ") == []  # the rest of the long line is dropped
    assert framer.feed(b"- -") == [(b"<1>1 - - - - -", False)]
    assert framer.feed(b"30 <1>1 truncated") == [] and framer.finish() == [(b"<1>1 truncated", True)]


async def test_both_framings_reach_the_store(pipeline: Pipeline) -> None:
    async with SyslogServer(pipeline.ingest, host="127.0.0.1", port=0) as server:
        await send(server.port, octets(SSH) + octets(b"<14>1 - web01 app - - - octet\nwith LF inside"))
        await send(server.port, b"<14>1 - web02 app - - - line one\r\n<14>1 - web02 app - - - line two\n")
        await send(server.port, b"<14>1 - web03 app - - - no final LF")
        stored = await by_message(pipeline, 5)
    ssh = stored["Failed password for root from 203.0.113.7"]
    assert ssh["@timestamp"] == "2026-11-02T09:00:00.123000Z" and ssh["host.hostname"] == "fw-01.example.gov"
    assert ssh["log.syslog.structured_data.meta@32473.tag"] == ["a", "b"]
    assert ssh["event.module"] == "syslog" and ssh["log.source.address"].startswith("127.0.0.1:")
    assert "event.original" not in ssh
    assert stored["octet\nwith LF inside"]["host.hostname"] == "web01"
    assert stored["line one"]["host.hostname"] == stored["line two"]["host.hostname"] == "web02"
    assert stored["no final LF"]["host.hostname"] == "web03"
    assert server.messages == 5 and server.parse_errors == 0


async def test_a_malformed_message_is_kept_with_an_error_tag(pipeline: Pipeline) -> None:
    async with SyslogServer(pipeline.ingest, host="127.0.0.1", port=0) as server:
        await send(
            server.port,
            b"<34>Oct 11 22:14:15 mymachine su: failed\n\x00\xff garbage \xfe\n<14>1 - h a - - - ok\n",
        )
        stored = await by_message(pipeline, 3)
    legacy = stored["<34>Oct 11 22:14:15 mymachine su: failed"]
    assert legacy["tags"] == [PARSE_ERROR] and "RFC 5424" in legacy["error.message"]
    assert legacy["log.syslog.severity.name"] == "critical" and "message" not in legacy
    garbage = stored["\x00\ufffd garbage \ufffd"]
    assert garbage["tags"] == [PARSE_ERROR] and "log.syslog.priority" not in garbage
    assert stored["ok"].get("tags") is None and server.parse_errors == 2


async def test_a_message_split_across_packets_is_one_message(pipeline: Pipeline) -> None:
    message = octets(b'<14>1 2026-11-02T09:00:00Z host app - - [s k="v"] split up')
    pieces = [message[i : i + 3] for i in range(0, len(message), 3)]
    async with SyslogServer(pipeline.ingest, host="127.0.0.1", port=0) as server:
        await send(server.port, pieces, pause=0.002)
        stored = await by_message(pipeline, 1)
    assert stored["split up"]["log.syslog.structured_data.s.k"] == "v"


async def test_many_messages_in_one_packet_are_one_batch(pipeline: Pipeline) -> None:
    recording = Recording(pipeline.ingest)
    packet = b"".join(octets(f"<14>1 - host app - - - message {i}".encode()) for i in range(300))
    assert len(packet) < 64 * 1024
    async with SyslogServer(recording, host="127.0.0.1", port=0) as server:
        await send(server.port, packet)
        stored = await by_message(pipeline, 300)
    assert set(stored) == {f"message {i}" for i in range(300)}
    assert recording.calls <= 3  # what arrived together was spooled together
    assert len(recording.accepted) == len(set(recording.accepted)) == 300


async def test_identical_messages_are_each_kept(pipeline: Pipeline) -> None:
    async with SyslogServer(pipeline.ingest, host="127.0.0.1", port=0) as server:
        await send(server.port, b"<14>1 2026-11-02T09:00:00Z h sshd - - - Failed password\n" * 3)
        ids = await pipeline.wait_stored(3)
    assert len(set(ids)) == 3  # a brute force sends the same line again and again


async def test_an_overlong_message_is_cut_and_tagged(pipeline: Pipeline) -> None:
    long = b"<14>1 - host app - - - " + b"x" * 5000
    async with SyslogServer(pipeline.ingest, host="127.0.0.1", port=0, max_message_bytes=1024) as server:
        await send(server.port, octets(long) + octets(b"<14>1 - host app - - - after"))
        await pipeline.wait_stored(2)
    documents = await pipeline.stored()
    cut = next(d for d in documents if d.get("tags"))
    assert cut["tags"] == [TRUNCATED] and len(cut["message"]) == 1024 - len(b"<14>1 - host app - - - ")
    assert any(d.get("message") == "after" for d in documents)


async def test_a_peer_not_allowed_is_disconnected(pipeline: Pipeline) -> None:
    async with SyslogServer(
        pipeline.ingest, host="127.0.0.1", port=0, allowed=["10.0.0.0/8"], events=pipeline.emitted
    ) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        writer.close()
        await writer.wait_closed()
    assert server.refused_peers == 1
    refused = [e for e in pipeline.emitted.events if e.action == "syslog-peer-refused"]
    assert len(refused) == 1 and refused[0].fields["source.ip"] == "127.0.0.1"
    assert await pipeline.stored_ids() == []


async def test_allowed_peers_and_tls(pipeline: Pipeline, tmp_path: Path) -> None:
    certificate, key = self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(certificate, key)
    client_context = ssl.create_default_context(cafile=str(certificate))
    async with SyslogServer(
        pipeline.ingest, host="127.0.0.1", port=0, ssl=server_context, allowed=["127.0.0.0/8", "::1"]
    ) as server:
        await send(server.port, octets(b"<14>1 - host app - - - over TLS"), tls=client_context)
        stored = await by_message(pipeline, 1)
    assert stored["over TLS"]["host.hostname"] == "host"


async def test_a_full_spool_holds_the_connection_back(tmp_path: Path) -> None:
    stalled = await Pipeline(tmp_path, max_bytes=256 * 1024).start(writer=False)
    try:
        async with SyslogServer(
            stalled.ingest, host="127.0.0.1", port=0, max_pause=0.1, read_size=8192
        ) as server:
            lines = b"".join(f"<14>1 - h a - - - {i} {'x' * 300}\n".encode() for i in range(2000))
            sender = asyncio.create_task(
                send(server.port, [lines[i : i + 4096] for i in range(0, len(lines), 4096)])
            )
            await eventually(lambda: server.spool_full_waits > 0, what="the full spool")
            spooled = stalled.spool.backlog_documents
            stalled.writer = asyncio.create_task(stalled.ingest.run())  # room again
            await sender
            await stalled.wait_stored(2000)
        assert spooled < 2000
    finally:
        await stalled.stop()
