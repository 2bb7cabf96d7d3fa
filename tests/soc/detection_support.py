"""Helpers for detection tests: real events from the emitters' own constructors, at chosen
event times, through a real :class:`~soc.detections.engine.Detector`."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from core.events import Category, Event, Outcome
from core.kv import KV, MemoryKV
from idp.events import auth_event
from mfa.events import mfa_event
from soc.detections.engine import Detector, StreamingRule
from soc.detections.model import Signal
from soc.detections.places import Places
from soc.ingest import normalise

__all__ = ["T0", "Lab", "access", "group_added", "login", "mfa_failure", "refresh_reused"]

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


def access(
    user: str | None,
    *,
    t: float = 0,
    ip: str = "10.1.2.3",
    app: str = "hr",
    path: str = "/people",
    method: str = "GET",
    decision: str = "allow",
    status: int | None = None,
    size: int = 2048,
    groups: tuple[str, ...] = ("hr-staff",),
    session_id: str | None = None,
    user_agent: str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/130.0 Safari/537.36",
) -> Event:
    """A gateway ``access`` event with the fields of ``gateway.app._Access.event`` (through the
    checking constructor, as the gateway's own test does); ``user`` None: no session."""
    fields: dict[str, Any] = {
        "onegate.app": app,
        "url.path": path,
        "http.request.method": method,
        "http.response.status_code": status if status is not None else (200 if decision == "allow" else 403),
        "http.response.body.bytes": size if decision == "allow" else 0,
        "event.duration": 1_000_000,
        "onegate.decision": decision,
        "onegate.rule_ids": ["hr-staff"] if decision == "allow" else [],
        "onegate.reason": "allowed" if decision == "allow" else "no_matching_rule",
        "onegate.risk": 0,
        "trace.id": f"trace-{t}",
        "user_agent.original": user_agent,
        "source.ip": ip,
    }
    if user is not None:
        fields.update(
            {
                "user.name": user,
                "user.id": f"sub-{user}",
                "session.id": session_id or f"gw-{user}",
                "onegate.groups": list(groups),
                "onegate.departments": ["hrss"],
                "onegate.acr": "urn:onegate:acr:mfa",
                "onegate.auth_age": 60,
            }
        )
    outcome = Outcome.SUCCESS if decision == "allow" else Outcome.FAILURE
    return at(Event("access", Category.WEB, outcome, fields=fields), t)


def group_added(user: str, group: str, *, t: float = 0, user_id: int = 7, actor: str = "root") -> Event:
    """``group-member-added`` as ``onegate groups add-member`` emits it (onegate.cli_users)."""
    from idp.directory.models import User
    from onegate.cli_common import iam_event

    event = iam_event(
        "group-member-added",
        User(id=user_id, username=user),
        types=("group", "change"),
        user__group__name=group.strip().lower(),
    )
    fields = {**event.fields, "labels.actor": actor}  # the operating-system account varies
    return at(dataclasses.replace(event, fields=fields), t)


def refresh_reused(
    user: str | None, *, client: str = "oa-app", t: float = 0, ip: str = "198.51.100.20", **labels: Any
) -> Event:
    """``refresh-token-reused`` as the token endpoint emits it (idp.grants.refresh_token)."""
    return at(
        auth_event(
            "refresh-token-reused",
            success=False,
            reason="refresh_token_reused",
            client_id=client,
            source_ip=ip,
            user_id=42 if user is not None else None,
            username=user,
            session_id=f"s-{user}" if user is not None else None,
            labels__presented_by=labels.pop("presented_by", client),
            labels__grant_revoked=user is not None,
            **labels,
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
