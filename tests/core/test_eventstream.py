"""core.eventstream: events onto a real Redis stream, its layout and trimming, and a clear failure
(handed to the bus's on_failure) when Redis is away."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from core.events import Category, Event, EventBus, Outcome
from core.eventstream import FallbackFile, StreamPublisher, StreamUnavailable
from core.kv import KVUnavailable
from tests.redis_server import PrivateRedis


def access(i: int) -> Event:
    return Event(
        action="access", category=Category.WEB, outcome=Outcome.SUCCESS, fields={"user.name": f"u{i}"}
    )


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_events_are_appended_in_order_as_flat_json(client: aioredis.Redis, redis_prefix: str) -> None:
    publisher = StreamPublisher(client, prefix=redis_prefix)
    assert publisher.key == f"{redis_prefix}onegate:events"
    sent = [access(i) for i in range(30)]
    await publisher.publish(sent[:10])
    await publisher.publish(sent[10:])
    await publisher.publish([])
    entries = await client.xrange(publisher.key)
    assert [json.loads(fields[b"event"]) for _id, fields in entries] == [e.flat() for e in sent]
    assert all(list(fields) == [b"event"] for _id, fields in entries)
    assert publisher.published == 30


async def test_a_url_publisher_owns_its_connection(redis_url: str, redis_prefix: str) -> None:
    publisher = StreamPublisher(redis_url, prefix=redis_prefix, stream="other")
    try:
        await publisher.ping()
        ids = await publisher.publish_documents([{"@timestamp": "2026-11-02T09:00:00Z", "message": "custom"}])
        assert len(ids) == 1 and ids[0].split("-")[0].isdigit()
    finally:
        await publisher.close()


async def test_the_stream_is_trimmed_to_about_maxlen(client: aioredis.Redis, redis_prefix: str) -> None:
    publisher = StreamPublisher(client, prefix=redis_prefix, maxlen=100)
    for start in range(0, 2000, 200):
        await publisher.publish([access(i) for i in range(start, start + 200)])
    length = await client.xlen(publisher.key)
    assert 100 <= length < 2000  # approximate trimming: whole nodes, never below maxlen


async def test_redis_away_is_a_clear_error_and_the_bus_keeps_the_events() -> None:
    url = f"redis://:s3cret@127.0.0.1:{closed_port()}/0"
    publisher = StreamPublisher(url, connect_timeout=0.5)
    try:
        with pytest.raises(StreamUnavailable) as caught:
            await publisher.publish([access(0)])
        assert isinstance(caught.value, KVUnavailable)
        assert "127.0.0.1" in str(caught.value) and "s3cret" not in str(caught.value)
        assert "s3cret" not in repr(publisher)
        with pytest.raises(StreamUnavailable):
            await publisher.ping()

        undelivered: list[tuple[str, str]] = []
        bus = EventBus(on_failure=lambda name, event, _error: undelivered.append((name, event.id)))
        bus.subscribe_batch("stream", publisher.publish)
        await bus.start()
        sent = [access(i) for i in range(5)]
        for e in sent:
            bus.emit(e)
        await bus.drain()
        await bus.stop()
        assert undelivered == [("stream", e.id) for e in sent]  # after the bus's one retry
        assert publisher.failures >= 2
    finally:
        await publisher.close()


def test_maxlen_must_be_positive(redis_url: str) -> None:
    with pytest.raises(ValueError, match="maxlen"):
        StreamPublisher(redis_url, maxlen=0)


async def test_events_redis_could_not_take_wait_on_disk_and_go_out_when_it_is_back(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path / "redis")
    (tmp_path / "redis").mkdir()
    server.start()
    server.stop()  # Redis away from the start
    publisher = StreamPublisher(server.url, connect_timeout=0.3)
    fallback = FallbackFile(tmp_path / "data" / "events-undelivered.ndjson")
    bus = EventBus(on_failure=lambda _name, event, _error: fallback.keep(event))
    bus.subscribe_batch("soc-stream", publisher.publish)
    await bus.start()
    sent = [access(i) for i in range(3)]
    for event in sent:
        bus.emit(event)
    await bus.stop()
    assert fallback.kept == 3 and fallback.pending
    with pytest.raises(StreamUnavailable):
        await fallback.replay(publisher)  # still away: the events stay
    with fallback.path.open("ab") as out:  # and one more, cut short by a crash while kept
        out.write(b'{"event.id": "torn')
    late = access(3)
    fallback.keep(late)  # kept after the torn line: on a line of its own
    server.start()
    try:
        assert await fallback.replay(publisher) == 4
        assert not fallback.pending and await fallback.replay(publisher) == 0
        client = aioredis.Redis.from_url(server.url)
        entries = await client.xrange(publisher.key)
        published = [json.loads(fields[b"event"])["event.id"] for _, fields in entries]
        assert published == [e.id for e in [*sent, late]]
        await client.aclose()
    finally:
        await publisher.close()
        server.stop()
