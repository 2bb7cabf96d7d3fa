"""One contract suite for every KV implementation: MemoryKV and RedisKV on the local server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from core.kv import KV, KVUnavailable, MemoryKV, RedisKV, WindowCount, open_kv
from core.settings import KVSettings


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
async def kv(request: pytest.FixtureRequest, redis_url: str, redis_prefix: str) -> AsyncIterator[KV]:
    store: KV = MemoryKV() if request.param == "memory" else RedisKV(redis_url, prefix=redis_prefix)
    yield store
    await store.close()


async def test_get_set_delete(kv: KV) -> None:
    assert await kv.get("a") is None
    assert await kv.set("a", b"1") is True
    assert await kv.get("a") == b"1"
    assert await kv.set("a", b"2", only_if_absent=True) is False
    assert await kv.get("a") == b"1"
    assert await kv.delete("a", "missing") == 1
    assert await kv.get("a") is None
    assert await kv.delete() == 0


async def test_values_must_be_bytes(kv: KV) -> None:
    with pytest.raises(TypeError):
        await kv.set("a", "text")  # type: ignore[arg-type]


async def test_set_with_ttl_expires(kv: KV) -> None:
    await kv.set("t", b"x", ttl=0.2)
    remaining = await kv.ttl("t")
    assert remaining is not None and 0 < remaining <= 0.2
    await asyncio.sleep(0.3)
    assert await kv.get("t") is None
    assert await kv.ttl("t") is None
    await kv.set("forever", b"x")
    assert await kv.ttl("forever") is None


async def test_ttl_must_be_positive(kv: KV) -> None:
    with pytest.raises(ValueError, match="ttl"):
        await kv.set("a", b"x", ttl=0)


async def test_incr_starts_a_fixed_window(kv: KV) -> None:
    assert await kv.incr("c", ttl=0.3) == 1
    first = await kv.ttl("c")
    await asyncio.sleep(0.1)
    assert await kv.incr("c", 5, ttl=10) == 6
    later = await kv.ttl("c")
    # The second increment did not extend the window to 10 s.
    assert first is not None and later is not None and later < first
    await asyncio.sleep(0.3)
    assert await kv.get("c") is None
    assert await kv.incr("c") == 1
    assert await kv.ttl("c") is None


async def test_get_and_delete_is_single_use_under_concurrency(kv: KV) -> None:
    await kv.set("code", b"secret-code", ttl=60)
    results = await asyncio.gather(*(kv.get_and_delete("code") for _ in range(20)))
    assert [r for r in results if r is not None] == [b"secret-code"]
    assert await kv.get("code") is None


async def test_compare_and_set(kv: KV) -> None:
    assert await kv.compare_and_set("k", None, b"v1") is True
    assert await kv.compare_and_set("k", None, b"v2") is False
    assert await kv.compare_and_set("k", b"wrong", b"v2") is False
    assert await kv.get("k") == b"v1"
    assert await kv.compare_and_set("k", b"v1", b"v2", ttl=30) is True
    assert await kv.get("k") == b"v2"
    remaining = await kv.ttl("k")
    assert remaining is not None and 29 < remaining <= 30
    assert await kv.compare_and_set("k", b"v2", None) is True
    assert await kv.get("k") is None


async def test_compare_and_set_lets_one_of_many_win(kv: KV) -> None:
    await kv.set("family", b"gen-0")
    outcomes = await asyncio.gather(
        *(kv.compare_and_set("family", b"gen-0", f"gen-{i}".encode()) for i in range(1, 11))
    )
    assert outcomes.count(True) == 1


async def test_publish_subscribe(kv: KV) -> None:
    async with kv.subscribe("policy", "revocations") as sub:
        assert await kv.publish("policy", b"v2") == 1
        await kv.publish("other", b"ignored")
        await kv.publish("revocations", b"sid-1")
        assert await sub.get(timeout=2) == ("policy", b"v2")
        assert await sub.get(timeout=2) == ("revocations", b"sid-1")
        assert await sub.get(timeout=0.1) is None
    assert await kv.publish("policy", b"after") == 0


async def test_subscription_iterates(kv: KV) -> None:
    async with kv.subscribe("ch") as sub:
        for i in range(3):
            await kv.publish("ch", str(i).encode())
        got = []
        async for _channel, message in sub:
            got.append(message)
            if len(got) == 3:
                break
    assert got == [b"0", b"1", b"2"]


async def test_ping(kv: KV) -> None:
    await kv.ping()


def test_memory_kv_expiry_follows_injected_clock() -> None:
    clock = FakeClock()
    kv = MemoryKV(clock=clock)

    async def scenario() -> None:
        await kv.set("s", b"x", ttl=30)
        clock.now += 29.9
        assert await kv.get("s") == b"x"
        clock.now += 0.2
        assert await kv.get("s") is None

    asyncio.run(scenario())


async def test_redis_prefix_isolates_deployments(redis_url: str, redis_prefix: str) -> None:
    a = RedisKV(redis_url, prefix=redis_prefix + "a:")
    b = RedisKV(redis_url, prefix=redis_prefix + "b:")
    try:
        await a.set("k", b"from-a")
        assert await b.get("k") is None
        assert await a.get("k") == b"from-a"
    finally:
        await a.close()
        await b.close()


async def test_unreachable_redis_is_a_clear_error() -> None:
    kv = open_kv(KVSettings(backend="redis", url="redis://:hunter2@127.0.0.1:1/0", connect_timeout=0.5))
    with pytest.raises(KVUnavailable, match="127.0.0.1:1") as info:
        await kv.ping()
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in repr(kv)
    await kv.close()


# -- sliding windows over event time (detections) ------------------------------------------------


async def test_window_add_counts_distinct_members_and_forgets_old_ones(kv: KV) -> None:
    t = 1_800_000_000.25
    assert await kv.window_add("w", "alice", at=t, span=60) == WindowCount(1, True)
    assert await kv.window_add("w", "bob", at=t + 1, span=60) == WindowCount(2, True)
    # The same member again is not new and is not counted twice.
    assert await kv.window_add("w", "alice", at=t + 2, span=60) == WindowCount(2, False)
    # At t+61.5 bob (t+1) has left the window; alice (moved to t+2) has not.
    assert await kv.window_add("w", "carol", at=t + 61.5, span=60) == WindowCount(2, True)
    assert await kv.window_add("w", None, at=t + 61.5, span=60) == WindowCount(2, False)
    # bob is new again (his last time left the window); by t+63 alice has left too.
    assert await kv.window_add("w", "bob", at=t + 63, span=60) == WindowCount(2, True)
    assert await kv.window_add("w", None, at=t + 200, span=60) == WindowCount(0, False)


async def test_window_keeps_the_later_time_of_a_member(kv: KV) -> None:
    t = 1_800_000_000.0
    await kv.window_add("w", "a", at=t + 50, span=60)
    await kv.window_add("w", "a", at=t, span=60)  # an older, out-of-order sighting
    assert (await kv.window_add("w", None, at=t + 100, span=60)).count == 1


async def test_window_members_are_the_evidence_most_recent_last(kv: KV) -> None:
    t = 1_800_000_000.0
    for n in range(5):
        await kv.window_add("w", f"event-{n}", at=t + n, span=60)
    assert await kv.window_members("w", at=t + 4, span=60) == [f"event-{n}" for n in range(5)]
    assert await kv.window_members("w", at=t + 4, span=60, limit=2) == ["event-3", "event-4"]
    assert await kv.window_members("w", at=t + 62.5, span=60) == ["event-3", "event-4"]
    assert await kv.window_members("w", at=t + 2, span=1) == ["event-1", "event-2"]
    assert await kv.window_members("none", at=t, span=60) == []
    assert await kv.window_members("w", at=t + 4, span=60, limit=0) == []


async def test_window_count_alone_creates_nothing(kv: KV) -> None:
    assert await kv.window_add("empty", None, at=1_800_000_000.0, span=60) == WindowCount(0, False)
    assert await kv.ttl("empty") is None


async def test_window_rejects_an_empty_member_and_a_non_positive_span(kv: KV) -> None:
    with pytest.raises(ValueError):
        await kv.window_add("w", "", at=1.0, span=60)
    with pytest.raises(ValueError):
        await kv.window_add("w", "a", at=1.0, span=0)


async def test_window_sum_adds_amounts_within_the_span(kv: KV) -> None:
    t = 1_800_000_000.0  # a multiple of the bucket width (60 / 16 s)
    assert await kv.window_sum("bytes", 100, at=t, span=60) == 100
    assert await kv.window_sum("bytes", 50, at=t + 30, span=60) == 150
    assert await kv.window_sum("bytes", 0, at=t + 30, span=60) == 150
    # At t + 65 the first bucket [t, t + 3.75) has left the window.
    assert await kv.window_sum("bytes", 1, at=t + 65, span=60) == 51
    assert await kv.window_sum("bytes", 0, at=t + 1000, span=60) == 0


async def test_windows_expire_after_their_span(kv: KV) -> None:
    await kv.window_add("w", "a", at=1_800_000_000.0, span=0.2)
    await kv.window_sum("s", 5, at=1_800_000_000.0, span=0.2)
    await asyncio.sleep(0.3)
    # Event time says "still in the window", but the keys themselves are gone.
    assert (await kv.window_add("w", None, at=1_800_000_000.0, span=0.2)).count == 0
    assert await kv.window_sum("s", 0, at=1_800_000_000.0, span=0.2) == 0
