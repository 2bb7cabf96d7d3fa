"""Helpers for detection tests: real events from the emitters' own constructors, at chosen
event times, through a real :class:`~soc.detections.engine.Detector`."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from core.events import Event
from core.kv import KV, MemoryKV
from idp.events import auth_event
from mfa.events import mfa_event
from soc.detections.engine import Detector, StreamingRule
from soc.detections.model import Signal
from soc.detections.places import Places
from soc.ingest import normalise

__all__ = ["T0", "Lab", "login", "mfa_failure"]

T0 = datetime(2026, 11, 30, 1, 0, tzinfo=UTC)  # 09:00 in Shanghai, a Monday


def at(event: Event, seconds: float) -> Event:
    """``event`` happening ``seconds`` after :data:`T0`."""
    return dataclasses.replace(event, timestamp=T0 + timedelta(seconds=seconds))


def login(
    user: str, *, ok: bool, ip: str = "10.1.2.3", reason: str | None = None, t: float = 0, **extra: Any
) -> Event:
    """An IdP ``user-login`` event as the login page emits it."""
    if not ok and reason is None:
        reason = "bad_password"
    return at(
        auth_event(
            "user-login",
            success=ok,
            reason=reason,
            username=user,
            source_ip=ip,
            user_agent=extra.pop("user_agent", "Mozilla/5.0 (Windows NT 10.0) Chrome/130"),
            session_id=extra.pop("session_id", None if not ok else f"s-{user}"),
            **extra,
        ),
        t,
    )


def mfa_failure(user_id: int, *, t: float = 0, method: str = "totp", replayed: bool = False) -> Event:
    return at(
        mfa_event(
            "mfa-replayed" if replayed else "mfa-failed", success=False, user_id=user_id, method=method
        ),
        t,
    )


class Sink:
    """Keeps what the detector raised, as the alert store would receive it."""

    def __init__(self) -> None:
        self.signals: list[tuple[Signal, str | None]] = []

    async def raise_signal(self, signal: Signal, *, drill_id: str | None = None) -> None:
        self.signals.append((signal, drill_id))


class Lab:
    """One detector over the given rules, a KV (in memory unless given) and a sink."""

    def __init__(
        self,
        rules: Iterable[StreamingRule],
        *,
        kv: KV | None = None,
        params: Mapping[str, Mapping[str, Any]] | None = None,
        places: Places | None = None,
    ) -> None:
        self.sink = Sink()
        self.detector = Detector(rules, kv=kv or MemoryKV(), sink=self.sink, params=params, places=places)

    async def feed(self, *events: Event | Mapping[str, Any]) -> list[Signal]:
        docs = [normalise(e.flat() if isinstance(e, Event) else e) for e in events]
        return await self.detector.process(docs)

    def fired(self, rule_id: str | None = None) -> list[Signal]:
        return [s for s, _ in self.sink.signals if rule_id is None or s.rule.id == rule_id]
