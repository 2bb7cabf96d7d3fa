"""Scheduled Sigma rules: each runs every ``interval_s`` over the last ``lookback_s`` seconds.

:class:`ScheduledRunner` keeps, per rule, the end of its last run and the ids of the events it
already reported, in the key-value store (``soc:sigma:<rule id>``), so that:

* a run after a pause (a restart, an outage) starts at the last run's end when that is earlier
  than ``now - lookback_s`` (at most ``max_catch_up`` seconds back): no gap is skipped;
* look-backs overlap (they are longer than the interval, so late events are still seen), yet an
  event reported once is not reported again: runs leave out the ids they remember. The state is
  saved after the signals are raised; a crash in between raises them again, and the alert store
  joins a repeated signal to its alert by the completing event id.

A detection rule's matches become one signal per entity (the rule's ``suppress_by`` values) per
run, its events as the evidence, the last one completing; a correlation's each window that met the
condition becomes one signal about its group-by values.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from core.eventstore import EventStore
from core.kv import KV, MemoryKV
from core.logging import get_logger
from soc.detections.engine import SignalSink, event_time
from soc.detections.model import Signal, Text
from soc.sigma.correlate import Match
from soc.sigma.rules import SigmaRule

__all__ = ["MAX_EVIDENCE", "ScheduledRunner"]

MAX_EVIDENCE = 100  # event ids a signal carries (the latest, the completing one last)
_ENTITY = ("user.name", "source.ip")  # named in every signal's entity when the events have them

_log = get_logger("onegate.soc.sigma")


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, list | dict):
        return None
    return str(value)


class ScheduledRunner:
    """Runs the standalone rules of ``rules`` on ``store`` and hands signals to ``sink``.

    ``clock`` gives the wall-clock time (epoch seconds); ``kv`` keeps each rule's last run end and
    reported event ids (a :class:`~core.kv.MemoryKV` when None: nothing survives a restart then).
    """

    def __init__(
        self,
        rules: Iterable[SigmaRule],
        store: EventStore,
        sink: SignalSink,
        clock: Callable[[], float] = time.time,
        *,
        kv: KV | None = None,
        max_catch_up: float = 86_400.0,
        prefix: str = "soc:sigma:",
    ) -> None:
        self.rules = [rule for rule in rules if rule.standalone]
        self._store = store
        self._sink = sink
        self._clock = clock
        self._kv: KV = kv if kv is not None else MemoryKV()
        self._max_catch_up = max_catch_up
        self._prefix = prefix
        self.errors = 0

    # -- state ----------------------------------------------------------------------------------

    async def _load(self, rule: SigmaRule) -> tuple[float | None, dict[str, float]]:
        raw = await self._kv.get(self._prefix + rule.info.id)
        if raw is None:
            return None, {}
        state = json.loads(raw)
        return float(state["end"]), {str(k): float(v) for k, v in state.get("seen", {}).items()}

    async def _save(self, rule: SigmaRule, end: float, seen: Mapping[str, float]) -> None:
        state = json.dumps({"end": end, "seen": dict(seen)}, separators=(",", ":"))
        await self._kv.set(self._prefix + rule.info.id, state.encode())

    async def last_end(self, rule_id: str) -> float | None:
        """When the rule's last run ended (epoch seconds), or None before its first run."""
        for rule in self.rules:
            if rule.info.id == rule_id:
                return (await self._load(rule))[0]
        raise KeyError(rule_id)

    # -- running --------------------------------------------------------------------------------

    async def run_due(self) -> list[Signal]:
        """Run every rule whose interval has passed since its last run; the signals raised. One
        rule's failure (logged, counted in ``errors``) does not stop the others."""
        now = self._clock()
        raised: list[Signal] = []
        for rule in self.rules:
            end, _ = await self._load(rule)
            if end is not None and now < end + float(rule.info.params["interval_s"]):
                continue
            try:
                raised += await self.run_rule(rule, now=now)
            except Exception as e:  # one rule's fault must not stop the others
                self.errors += 1
                _log.error("scheduled sigma rule failed", rule=rule.info.id, error=f"{type(e).__name__}: {e}")
        return raised

    async def run_rule(self, rule: SigmaRule, *, now: float | None = None) -> list[Signal]:
        """One run of ``rule`` ending at ``now`` (the clock's time when None)."""
        now = self._clock() if now is None else now
        last_end, seen = await self._load(rule)
        start = now - float(rule.info.params["lookback_s"])
        if last_end is not None:
            start = max(min(start, last_end), now - self._max_catch_up)
        seen = {event_id: at for event_id, at in seen.items() if at >= start}
        matches = await rule.test(
            self._store,
            datetime.fromtimestamp(start, UTC),
            datetime.fromtimestamp(now, UTC),
            exclude=seen.keys(),
        )
        signals = self._signals(rule, matches, start, now)
        for signal in signals:
            await self._sink.raise_signal(signal)
        for match in matches:
            for doc in match.events:
                seen[str(doc.get("event.id"))] = event_time(doc)
        await self._save(rule, now, seen)
        return signals

    # -- signals --------------------------------------------------------------------------------

    def _signals(self, rule: SigmaRule, matches: Sequence[Match], start: float, end: float) -> list[Signal]:
        window = {"window_start": start, "window_end": end}
        if rule.correlation is None:
            by_entity: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for match in matches:
                doc = match.completing
                key = tuple(_text(doc.get(name)) or "-" for name in rule.info.suppress_by)
                by_entity.setdefault(key, []).append(doc)
            signals = []
            for key, docs in by_entity.items():
                entity = dict(zip(rule.info.suppress_by, key, strict=True))
                reason = Text(
                    en=f"Sigma rule “{rule.info.name.en}” matched {len(docs)} event(s)",
                    zh=f"Sigma 规则“{rule.info.name.zh}”匹配了 {len(docs)} 个事件",
                )
                signals.append(self._signal(rule, entity, docs, reason, {"count": len(docs), **window}))
            return signals
        correlation = rule.correlation
        signals = []
        for match in matches:
            entity = {name: match.group.get(name) or "-" for name in rule.info.suppress_by}
            about = ", ".join(f"{k}={v}" for k, v in match.group.items()) or "all events"
            measured = {
                "event_count": ("matching events", "个匹配事件"),
                "value_count": (f"distinct {correlation.field}", f"个不同的 {correlation.field}"),
                "temporal": ("of the rules matched", "条规则匹配"),
                "temporal_ordered": ("of the rules matched in order", "条规则依次匹配"),
            }[correlation.kind]
            reason = Text(
                en=f"{match.count} {measured[0]} for {about} within {correlation.timespan_s} s "
                f"({correlation.op} {correlation.count})",
                zh=f"{about} 在 {correlation.timespan_s} 秒内有 {match.count} {measured[1]}"
                f"（条件 {correlation.op} {correlation.count}）",
            )
            values = {
                "count": match.count,
                "threshold": correlation.count,
                "window_s": correlation.timespan_s,
                **window,
            }
            signals.append(self._signal(rule, {**entity, **match.group}, list(match.events), reason, values))
        return signals

    @staticmethod
    def _signal(
        rule: SigmaRule,
        entity: dict[str, str],
        docs: list[dict[str, Any]],
        reason: Text,
        values: dict[str, Any],
    ) -> Signal:
        last = docs[-1]
        for name in _ENTITY:
            value = _text(last.get(name))
            if value and name not in entity:
                entity[name] = value
        ids = tuple(str(doc.get("event.id")) for doc in docs)[-MAX_EVIDENCE:]
        return Signal(
            rule=rule.info, at=event_time(last), entity=entity, events=ids, reason=reason, values=values
        )
