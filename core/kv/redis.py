"""The production key-value store on Redis (redis.asyncio), for several processes or hosts.

Every key and channel is prefixed, so several deployments (or test runs) can share a
server. Multi-step operations run as Lua scripts, which Redis executes atomically.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.kv.interfaces import WINDOW_BUCKETS, KVError, KVUnavailable, Message, WindowCount

__all__ = ["RedisKV"]

# INCRBY, then set the window's expiry only if the key has none yet (PTTL -1).
_INCR_WITH_TTL = """
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if ARGV[2] ~= '' and redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return value
"""

# ARGV: has_expected ('0'/'1'), expected, has_new ('0'/'1'), new, ttl_ms ('' for none).
_COMPARE_AND_SET = """
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '0' then
  if current then return 0 end
elseif current ~= ARGV[2] then
  return 0
end
if ARGV[3] == '0' then
  redis.call('DEL', KEYS[1])
elseif ARGV[5] ~= '' then
  redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
else
  redis.call('SET', KEYS[1], ARGV[4])
end
return 1
"""


# A sorted set of members scored by event time. ARGV: member ('' to only count), at, start
# (at - span, exact as text), ttl_ms. Returns {count, new}.
_WINDOW_ADD = """
local new = 0
if ARGV[1] ~= '' then
  local seen = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if (not seen) or tonumber(seen) < tonumber(ARGV[3]) then new = 1 end
  redis.call('ZADD', KEYS[1], 'GT', ARGV[2], ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
return {redis.call('ZCARD', KEYS[1]), new}
"""

# A hash of bucket -> amount. ARGV: amount, bucket, first bucket in the window, ttl_ms.
_WINDOW_SUM = """
local amount = tonumber(ARGV[1])
local bucket = tonumber(ARGV[2])
if amount ~= 0 then
  redis.call('HINCRBY', KEYS[1], ARGV[2], amount)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
local first = tonumber(ARGV[3])
local total = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local b = tonumber(fields[i])
  if b < first then
    redis.call('HDEL', KEYS[1], fields[i])
  elseif b <= bucket then
    total = total + tonumber(fields[i + 1])
  end
end
return total
"""


def _ms(ttl: float | None) -> int | None:
    if ttl is None:
        return None
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    return max(1, math.ceil(ttl * 1000))


class _PubSubSubscription:
    def __init__(self, pubsub: Any, prefix: str) -> None:
        self._pubsub = pubsub
        self._prefix = prefix

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        while True:
            message = await self.get(timeout=None)
            if message is not None:
                yield message

    async def get(self, timeout: float | None = None) -> Message | None:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                raw = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=remaining)
            except (RedisConnectionError, RedisTimeoutError, OSError) as e:
                raise KVUnavailable(f"redis pub/sub connection lost: {e}") from e
            if raw is not None and raw["type"] == "message":
                channel = raw["channel"].decode()
                return channel.removeprefix(self._prefix), raw["data"]
            if deadline is not None and loop.time() >= deadline:
                return None


class RedisKV:
    """Redis implementation of :class:`core.kv.KV`."""

    def __init__(self, url: str, *, prefix: str = "onegate:", connect_timeout: float = 5.0) -> None:
        self._prefix = prefix
        self._url = url
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout,
            socket_timeout=connect_timeout,
            health_check_interval=30,
        )
        self._incr = self._client.register_script(_INCR_WITH_TTL)
        self._cas = self._client.register_script(_COMPARE_AND_SET)
        self._window_add = self._client.register_script(_WINDOW_ADD)
        self._window_sum = self._client.register_script(_WINDOW_SUM)

    def __repr__(self) -> str:
        # The URL may carry a password: show the host part only.
        host = self._url.rpartition("@")[2]
        return f"RedisKV({host!r}, prefix={self._prefix!r})"

    def _k(self, key: str) -> str:
        return self._prefix + key

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            raise KVUnavailable(f"redis at {self._url.rpartition('@')[2]} is unreachable: {e}") from e
        except RedisError as e:
            raise KVError(str(e)) from e

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._call(self._client.get(self._k(key)))
        return value

    async def set(
        self, key: str, value: bytes, *, ttl: float | None = None, only_if_absent: bool = False
    ) -> bool:
        if not isinstance(value, bytes):
            raise TypeError("values are bytes")
        stored = await self._call(self._client.set(self._k(key), value, px=_ms(ttl), nx=only_if_absent))
        return bool(stored)

    async def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        ms = _ms(ttl)
        value = await self._call(self._incr(keys=[self._k(key)], args=[amount, "" if ms is None else ms]))
        return int(value)

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        return int(await self._call(self._client.delete(*(self._k(k) for k in keys))))

    async def get_and_delete(self, key: str) -> bytes | None:
        value: bytes | None = await self._call(self._client.getdel(self._k(key)))
        return value

    async def compare_and_set(
        self, key: str, expected: bytes | None, new: bytes | None, *, ttl: float | None = None
    ) -> bool:
        ms = _ms(ttl)
        args = [
            "0" if expected is None else "1",
            expected or b"",
            "0" if new is None else "1",
            new or b"",
            "" if ms is None else ms,
        ]
        return bool(await self._call(self._cas(keys=[self._k(key)], args=args)))

    async def ttl(self, key: str) -> float | None:
        ms = int(await self._call(self._client.pttl(self._k(key))))
        return None if ms < 0 else ms / 1000

    async def window_add(self, key: str, member: str | None, *, at: float, span: float) -> WindowCount:
        if member == "":
            raise ValueError("a window member is a non-empty string")
        args: list[str | int] = [member or "", repr(float(at)), repr(float(at - span)), _ms(span) or 1]
        count, new = await self._call(self._window_add(keys=[self._k(key)], args=args))
        return WindowCount(int(count), bool(new))

    async def window_members(self, key: str, *, at: float, span: float, limit: int = 100) -> list[str]:
        if limit < 1:
            return []
        newest = await self._call(
            self._client.zrevrangebyscore(
                self._k(key), repr(float(at)), repr(float(at - span)), start=0, num=limit
            )
        )
        return [member.decode() for member in reversed(newest)]

    async def window_sum(self, key: str, amount: int, *, at: float, span: float) -> int:
        width = span / WINDOW_BUCKETS
        args = [int(amount), int(at // width), int((at - span) // width), _ms(span) or 1]
        return int(await self._call(self._window_sum(keys=[self._k(key)], args=args)))

    async def publish(self, channel: str, message: bytes) -> int:
        return int(await self._call(self._client.publish(self._k(channel), message)))

    @asynccontextmanager
    async def subscribe(self, *channels: str) -> AsyncIterator[_PubSubSubscription]:
        pubsub = self._client.pubsub()
        try:
            await self._call(pubsub.subscribe(*(self._k(c) for c in channels)))
            # Wait for the server's confirmations: after this, no publication can be missed.
            confirmed = 0
            while confirmed < len(channels):
                raw = await self._call(pubsub.get_message(timeout=5.0))
                if raw is None:
                    raise KVUnavailable("redis did not confirm the subscription")
                if raw["type"] == "subscribe":
                    confirmed += 1
            yield _PubSubSubscription(pubsub, self._prefix)
        finally:
            try:
                await pubsub.unsubscribe()
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def ping(self) -> None:
        await self._call(self._client.ping())

    async def close(self) -> None:
        await self._client.aclose()
