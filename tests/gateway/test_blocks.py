"""gateway.blocks: blocked source addresses with an expiry, shared by every gateway process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.kv import KV, MemoryKV, RedisKV
from gateway.blocks import CACHE_SECONDS, AddressBlocks, BlockError
from tests.redis_server import PrivateRedis


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
async def kv(request: pytest.FixtureRequest, redis_url: str, redis_prefix: str) -> AsyncIterator[KV]:
    store: KV = MemoryKV() if request.param == "memory" else RedisKV(redis_url, prefix=redis_prefix)
    yield store
    await store.close()


async def test_a_blocked_address_and_network_are_refused_until_the_expiry(kv: KV) -> None:
    clock, ticks = Clock(), Clock()
    blocks = AddressBlocks(kv, clock=clock, monotonic=ticks)
    assert await blocks.check("203.0.113.7") is None
    block = await blocks.block("203.0.113.7", seconds=600, reason="alert 1f2e: spraying", actor="lina")
    assert block.network == "203.0.113.7/32" and block.until == clock.now + 600
    await blocks.block("198.51.100.0/24", seconds=60, reason="drill", actor="lina")
    found = await blocks.check("203.0.113.7")
    assert found is not None and found.reason == "alert 1f2e: spraying"
    assert await blocks.check("198.51.100.200") is not None
    assert await blocks.check("::ffff:198.51.100.9") is not None  # IPv4-mapped IPv6
    assert await blocks.check("198.51.101.1") is None
    assert await blocks.check("not an address") is None
    clock.now += 61
    assert await blocks.check("198.51.100.200") is None  # that block ended
    assert await blocks.check("203.0.113.7") is not None
    assert [b.network for b in await blocks.current()] == ["203.0.113.7/32"]


async def test_another_process_sees_a_block_within_the_cache_time(kv: KV) -> None:
    ticks = Clock()
    soc = AddressBlocks(kv)
    gateway = AddressBlocks(kv, monotonic=ticks)
    assert await gateway.check("203.0.113.7") is None
    await soc.block("203.0.113.7", seconds=600, reason="r", actor="a")
    assert await gateway.check("203.0.113.7") is None  # its list is less than a second old
    ticks.now += CACHE_SECONDS
    assert await gateway.check("203.0.113.7") is not None
    assert await soc.unblock("203.0.113.7/32") is True
    assert await soc.unblock("203.0.113.7") is False
    ticks.now += CACHE_SECONDS
    assert await gateway.check("203.0.113.7") is None


async def test_blocking_again_moves_the_expiry_and_keeps_one_entry(kv: KV) -> None:
    blocks = AddressBlocks(kv)
    await blocks.block("2001:db8::1", seconds=60, reason="first", actor="a")
    await blocks.block("2001:db8::1/128", seconds=3600, reason="second", actor="b")
    [block] = await blocks.current()
    assert block.reason == "second" and block.network == "2001:db8::1/128"


@pytest.mark.parametrize(
    ("address", "seconds", "message"),
    [
        ("hello", 60, "not an address"),
        ("10.0.0.0/7", 60, "too wide"),
        ("2001::/16", 60, "too wide"),
        ("203.0.113.7", 0, "a block lasts"),
        ("203.0.113.7", 91 * 86400, "a block lasts"),
    ],
)
async def test_bad_blocks_are_refused_with_a_reason(address: str, seconds: float, message: str) -> None:
    with pytest.raises(BlockError, match=message) as caught:
        await AddressBlocks(MemoryKV()).block(address, seconds=seconds, reason="r", actor="a")
    assert caught.value.zh


async def test_an_unreadable_store_keeps_the_last_list(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path)
    server.start()
    kv = RedisKV(server.url, connect_timeout=0.3)
    try:
        ticks = Clock()
        await AddressBlocks(kv).block("203.0.113.7", seconds=600, reason="r", actor="a")
        blocks = AddressBlocks(kv, monotonic=ticks)
        assert await blocks.check("203.0.113.7") is not None
        server.stop()  # the store goes away
        ticks.now += CACHE_SECONDS
        assert await blocks.check("203.0.113.7") is not None
        assert await blocks.check("203.0.113.8") is None
    finally:
        await kv.close()
        server.stop()
