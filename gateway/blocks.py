"""Source addresses the gateway refuses: the SOC's "block this address" response, with an expiry.

The list lives in KV under one key (a JSON array of blocks), so every gateway process sees a
block on a request within :data:`CACHE_SECONDS` of it being set. Each process keeps the list it
read last: a store that cannot be read keeps the last known list (logged) rather than refusing
everyone — a KV outage already refuses every signed-in request through the session check.
A block names an address or a network (CIDR) and ends by itself at its expiry.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from core.flight import SingleFlight
from core.kv import KV, KVError
from core.logging import get_logger
from policy.model import client_address

__all__ = ["CACHE_SECONDS", "MAX_BLOCKS", "MAX_SECONDS", "AddressBlocks", "Block", "BlockError"]

_log = get_logger("onegate.gateway.blocks")
_KEY = "gateway:blocks"
CACHE_SECONDS = 1.0
MAX_BLOCKS = 10_000
MAX_SECONDS = 90 * 86400


class BlockError(ValueError):
    """A block that cannot be set; the message says why (zh / en in ``zh``)."""

    def __init__(self, en: str, zh: str) -> None:
        super().__init__(en)
        self.zh = zh


@dataclass(frozen=True, slots=True)
class Block:
    network: str  # normalised: "203.0.113.7/32", "2001:db8::/48"
    until: float  # epoch seconds
    reason: str
    actor: str
    since: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise BlockError(
            f"{text[:60]!r} is not an address or a network", f"“{text[:60]}”不是地址或网段"
        ) from None
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped is not None:
        mapped = network.network_address.ipv4_mapped
        network = ipaddress.ip_network(f"{mapped}/{max(0, network.prefixlen - 96)}", strict=False)
    if network.prefixlen < (8 if network.version == 4 else 32):
        raise BlockError(
            f"{network} is too wide to block (at most a /8 for IPv4, a /32 for IPv6)",
            f"{network} 范围过大，不能封禁（IPv4 最大 /8，IPv6 最大 /32）",
        )
    return network


class AddressBlocks:
    def __init__(
        self,
        kv: KV,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kv = kv
        self._clock = clock
        self._monotonic = monotonic
        self._read_at = float("-inf")
        self._blocks: list[Block] = []
        # (version, first, last, block) of the unexpired blocks, for the per-request check.
        self._ranges: list[tuple[int, int, int, Block]] = []
        self._reads: SingleFlight[str, None] = SingleFlight()

    # -- the request path ------------------------------------------------------------------------

    def cached(self, address: str | None) -> Block | bool | None:
        """:meth:`check` from the list as last read, without waiting: the block, or False when
        none covers the address; True when the list is due a read (then call :meth:`check`)."""
        if self._monotonic() - self._read_at >= CACHE_SECONDS:
            return True
        return self._lookup(address) or False

    async def check(self, address: str | None) -> Block | None:
        """The block that covers ``address`` now, or None."""
        if self._monotonic() - self._read_at >= CACHE_SECONDS:
            await self._reads.run(_KEY, self._refresh)
        return self._lookup(address)

    def _lookup(self, address: str | None) -> Block | None:
        if not self._ranges or not address:
            return None
        try:
            ip = client_address(address)
        except ValueError:
            return None
        value, now = int(ip), self._clock()
        for version, first, last, block in self._ranges:
            if version == ip.version and first <= value <= last and block.until > now:
                return block
        return None

    async def _refresh(self) -> None:
        try:
            blocks = await self._load()
        except KVError as e:
            _log.warning("blocked addresses unreadable; keeping the last list", error=str(e))
            self._read_at = self._monotonic()
            return
        self._use(blocks)

    def _use(self, blocks: list[Block]) -> None:
        ranges: list[tuple[int, int, int, Block]] = []
        for block in blocks:
            network = ipaddress.ip_network(block.network)
            first = int(network.network_address)
            ranges.append((network.version, first, first + network.num_addresses - 1, block))
        self._blocks, self._ranges = blocks, ranges
        self._read_at = self._monotonic()

    async def _load(self) -> list[Block]:
        raw = await self._kv.get(_KEY)
        return self._parse(raw)

    def _parse(self, raw: bytes | None) -> list[Block]:
        if raw is None:
            return []
        now = self._clock()
        try:
            return [Block(**item) for item in json.loads(raw) if item["until"] > now]
        except (ValueError, TypeError, KeyError):
            _log.error("blocked addresses list is damaged; ignoring it")
            return []

    # -- administration (SOC response actions, the CLI) ------------------------------------------

    async def current(self) -> list[Block]:
        """The blocks in force, as stored now."""
        blocks = await self._load()
        self._use(blocks)
        return blocks

    async def block(self, address: str, *, seconds: float, reason: str, actor: str) -> Block:
        """Refuse ``address`` (or a network) for ``seconds``; a block of the same network is
        replaced (its expiry moves)."""
        if not 0 < seconds <= MAX_SECONDS:
            raise BlockError(
                f"a block lasts from 1 second to {MAX_SECONDS // 86400} days",
                f"封禁时长须在 1 秒至 {MAX_SECONDS // 86400} 天之间",
            )
        network = str(_network(address))
        now = self._clock()
        block = Block(network, now + seconds, reason[:500], actor[:200], now)

        def change(blocks: list[Block]) -> list[Block]:
            kept = [b for b in blocks if b.network != network]
            if len(kept) >= MAX_BLOCKS:
                raise BlockError(f"at most {MAX_BLOCKS} blocks", f"封禁条目最多 {MAX_BLOCKS} 条")
            return [*kept, block]

        await self._update(change)
        return block

    async def unblock(self, address: str) -> bool:
        """Lift the block of exactly this address or network; False when there was none."""
        network = str(_network(address))
        found = False

        def change(blocks: list[Block]) -> list[Block]:
            nonlocal found
            kept = [b for b in blocks if b.network != network]
            found = len(kept) != len(blocks)
            return kept

        await self._update(change)
        return found

    async def _update(self, change: Callable[[list[Block]], list[Block]]) -> None:
        for _ in range(50):
            raw = await self._kv.get(_KEY)
            blocks = change(self._parse(raw))
            new = json.dumps([b.as_dict() for b in blocks]).encode() if blocks else None
            longest = max((b.until for b in blocks), default=self._clock() + 1) - self._clock()
            if await self._kv.compare_and_set(_KEY, raw, new, ttl=max(1.0, longest)):
                self._use(blocks)
                return
        raise KVError("the blocked addresses list kept changing; try again")
