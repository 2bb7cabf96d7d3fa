"""The streaming detection engine: every ingested document through every rule that wants it.

Rules keep their state in the key-value store (sliding windows over *event* time, see
:meth:`core.kv.KV.window_add`), so several SOC processes on one Redis share it and a restart
loses nothing that Redis kept. Windows count event ids or entity values, so evaluating a
document twice (a batch replayed after a crash) changes no count; the alert store joins a
replayed signal to the alert it already made.

A rule is a small class: ``info`` (:class:`~soc.detections.model.RuleInfo`), ``wants(doc)`` (a
cheap test on the flat ECS document) and ``check(doc, ctx)`` (the windows, and a
:class:`~soc.detections.model.Signal` when it matches). Thresholds come from ``info.params``
and can be overridden per site (:class:`Detector`'s ``params``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from core.kv import KV, KVError, WindowCount
from core.logging import get_logger
from soc.detections.model import RuleInfo, Signal
from soc.detections.places import Places

__all__ = ["Context", "Detector", "SignalSink", "StreamingRule", "event_time"]

_log = get_logger("onegate.soc.detections")


class StreamingRule(Protocol):
    info: RuleInfo

    def wants(self, doc: Mapping[str, Any]) -> bool:
        """Whether ``doc`` concerns this rule (no I/O: called for every document)."""
        ...

    async def check(self, doc: Mapping[str, Any], ctx: Context) -> Signal | None:
        """Update the rule's windows with ``doc``; a signal when the rule matches."""
        ...


class SignalSink(Protocol):
    async def raise_signal(self, signal: Signal, *, drill_id: str | None = None) -> Any:
        """Turn ``signal`` into an alert (or add it to the one its suppression key has open)."""
        ...


def event_time(doc: Mapping[str, Any]) -> float:
    """``@timestamp`` of a normalised document, as epoch seconds."""
    stamp = doc.get("@timestamp")
    if isinstance(stamp, str):
        return _epoch_seconds(stamp)
    return time.time()


@functools.lru_cache(maxsize=256)  # several rules ask for the time of the same document
def _epoch_seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True, slots=True)
class Context:
    """What a rule's ``check`` may use: its parameters, windows and small state in the KV,
    and the site's table of network places."""

    kv: KV
    places: Places
    rule: RuleInfo
    rules: Mapping[str, RuleInfo]
    prefix: str = "soc:d:"

    def param(self, name: str) -> Any:
        return self.rule.params[name]

    def params_of(self, rule: RuleInfo) -> Mapping[str, Any]:
        """Another rule's parameters as this site set them (its defaults when it is not run)."""
        return self.rules.get(rule.id, rule).params

    def _key(self, name: str, key: str) -> str:
        return f"{self.prefix}{self.rule.id}:{name}:{key}"

    async def window(self, name: str, key: str, member: str | None, *, at: float, span: float) -> WindowCount:
        """The rule's window ``name`` for ``key`` (an account, an address ...): add ``member``."""
        return await self.kv.window_add(self._key(name, key), member, at=at, span=span)

    async def total(self, name: str, key: str, amount: int, *, at: float, span: float) -> int:
        """The rule's summing window ``name`` for ``key``: add ``amount``, the sum over the span."""
        return await self.kv.window_sum(self._key(name, key), amount, at=at, span=span)

    async def evidence(
        self, name: str, key: str, completing: str, *, at: float, span: float, limit: int = 50
    ) -> tuple[str, ...]:
        """The event ids of the rule's window ``name`` for ``key`` (a window whose members are
        event ids), oldest first, ``completing`` last: what the alert lists as its evidence."""
        members = await self.kv.window_members(self._key(name, key), at=at, span=span, limit=limit)
        return (*(m for m in members if m != completing), completing)

    async def window_of(self, rule_id: str, name: str, key: str, *, at: float, span: float) -> WindowCount:
        """Read (without adding) another rule's window: "success after an attack" reads the
        windows of the attack rules."""
        return await self.kv.window_add(f"{self.prefix}{rule_id}:{name}:{key}", None, at=at, span=span)

    async def remember(self, name: str, key: str, value: bytes, *, ttl: float) -> bytes | None:
        """Store ``value`` under the rule's ``name``/``key``; the value it replaces (or None)."""
        full = self._key(name, key)
        previous = await self.kv.get(full)
        await self.kv.set(full, value, ttl=ttl)
        return previous


class Detector:
    """Runs streaming rules over documents in ingest order and hands signals to ``sink``.

    ``params`` overrides rule parameters per site: ``{"onegate.brute-force": {"threshold": 20}}``.
    ``drill_of`` tells which drill (if any) a document belongs to, so its alerts are tagged and
    kept out of real incidents (by default its ``onegate.drill_id``, which ingest sets).
    ``enabled`` (rule ids) limits the rules run; None runs all."""

    def __init__(
        self,
        rules: Iterable[StreamingRule],
        *,
        kv: KV,
        sink: SignalSink,
        places: Places | None = None,
        params: Mapping[str, Mapping[str, Any]] | None = None,
        enabled: Iterable[str] | None = None,
        drill_of: Callable[[Mapping[str, Any]], str | None] | None = None,
        on_signal: Callable[[Signal], Awaitable[None]] | None = None,
    ) -> None:
        chosen = list(rules)
        known = {rule.info.id for rule in chosen}
        overrides = dict(params or {})
        unknown = (set(overrides) | set(enabled or ())) - known
        if unknown:
            raise ValueError(f"unknown detection rules: {', '.join(sorted(unknown))}")
        if enabled is not None:
            wanted = set(enabled)
            chosen = [rule for rule in chosen if rule.info.id in wanted]
        self._places = places or Places()
        infos: dict[str, RuleInfo] = {}
        for rule in chosen:
            info = rule.info
            if info.id in overrides:
                extra = set(overrides[info.id]) - set(info.params)
                if extra:
                    raise ValueError(f"{info.id}: unknown parameters {', '.join(sorted(extra))}")
                info = replace(info, params={**info.params, **overrides[info.id]})
                rule.info = info
            infos[info.id] = info
        self._contexts = [(rule, Context(kv, self._places, rule.info, infos)) for rule in chosen]
        self._sink = sink
        self._drill_of = drill_of
        self._on_signal = on_signal
        self.signals = 0
        self.errors = 0

    @property
    def rules(self) -> list[RuleInfo]:
        return [rule.info for rule, _ in self._contexts]

    async def process(self, documents: Sequence[Mapping[str, Any]]) -> list[Signal]:
        """Every document through every rule that wants it, in order; the signals raised."""
        raised: list[Signal] = []
        for doc in documents:
            for rule, ctx in self._contexts:
                if not rule.wants(doc):
                    continue
                try:
                    signal = await rule.check(doc, ctx)
                except (KVError, OSError):
                    raise  # the KV is down: the caller retries the batch later
                except Exception as e:  # one rule's fault must not stop the others
                    self.errors += 1
                    _log.error(
                        "detection rule failed on a document",
                        rule=rule.info.id,
                        event_id=doc.get("event.id"),
                        error=f"{type(e).__name__}: {str(e)[:200]}",
                    )
                    continue
                if signal is None:
                    continue
                if self._drill_of is not None:
                    drill = self._drill_of(doc)
                else:  # ingest tags drill events (soc.drills.DrillTagger)
                    tagged = doc.get("onegate.drill_id")
                    drill = tagged if isinstance(tagged, str) else None
                await self._sink.raise_signal(signal, drill_id=drill)
                self.signals += 1
                raised.append(signal)
                if self._on_signal is not None:
                    await self._on_signal(signal)
        return raised
