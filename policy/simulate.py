"""Replay recorded traffic against a proposed bundle: who would gain or lose access to what.

Each recorded access event becomes a :class:`policy.model.Request` (the fields listed in
:mod:`core.access_log`) and is decided by the baseline (normally the active bundle) and by the
proposal. Requests with the same effect both times count as unchanged (even if other rules
decided them); the others are sorted into

- **gains**: not allowed before, allowed now;
- **losses**: allowed before, denied now;
- **step-ups**: allowed before, now asking for a stronger or fresher sign-in;
- **other changes**: deny <-> step_up;

with counts per application and per (user, application) and a few examples of each.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from core.access_log import AccessEventSource
from core.events import Event
from policy.engine import PolicyEngine
from policy.model import Decision, Effect, Request
from policy.normalize import PathRejected

__all__ = ["Change", "SimulationReport", "request_from_event", "simulate"]

EXAMPLES = 5


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


def request_from_event(event: Event) -> Request:
    """The request an access event records (ValueError / PathRejected when it cannot be rebuilt)."""
    age = event.get("onegate.auth_age")
    now = event.timestamp.timestamp()
    return Request.of(
        app=str(event.get("onegate.app")),
        path=str(event.get("url.path") or "/"),
        method=str(event.get("http.request.method") or "GET"),
        user=event.get("user.name"),
        groups=_strings(event.get("onegate.groups")),
        departments=_strings(event.get("onegate.departments")),
        roles=_strings(event.get("user.roles")),
        acr=event.get("onegate.acr"),
        auth_time=None if age is None else now - float(age),
        ip=event.get("source.ip"),
        now=now,
        risk=int(event.get("onegate.risk") or 0),
    )


@dataclass(frozen=True, slots=True)
class Change:
    """One request decided differently."""

    time: datetime
    user: str
    app: str
    method: str
    path: str
    before: Decision
    after: Decision

    def as_dict(self) -> dict[str, Any]:
        return {
            "time": self.time.isoformat(),
            "user": self.user,
            "app": self.app,
            "method": self.method,
            "path": self.path,
            "before": self.before.effect.value,
            "before_rules": list(self.before.rule_ids),
            "after": self.after.effect.value,
            "after_rules": list(self.after.rule_ids),
        }


@dataclass
class _Kind:
    count: int = 0
    apps: Counter[str] = field(default_factory=Counter)
    user_apps: Counter[tuple[str, str]] = field(default_factory=Counter)
    examples: list[Change] = field(default_factory=list)

    def add(self, change: Change) -> None:
        self.count += 1
        self.apps[change.app] += 1
        self.user_apps[(change.user, change.app)] += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(change)

    @property
    def users(self) -> set[str]:
        return {user for user, _ in self.user_apps}

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.count,
            "users": len(self.users),
            "by_app": dict(sorted(self.apps.items())),
            "by_user_app": [
                {"user": user, "app": app, "requests": n} for (user, app), n in sorted(self.user_apps.items())
            ],
            "examples": [c.as_dict() for c in self.examples],
        }


@dataclass
class SimulationReport:
    events: int = 0
    unchanged: int = 0
    gains: _Kind = field(default_factory=_Kind)
    losses: _Kind = field(default_factory=_Kind)
    step_ups: _Kind = field(default_factory=_Kind)
    other: _Kind = field(default_factory=_Kind)
    skipped: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "unchanged": self.unchanged,
            "gains": self.gains.as_dict(),
            "losses": self.losses.as_dict(),
            "step_ups": self.step_ups.as_dict(),
            "other_changes": self.other.as_dict(),
            "skipped": dict(self.skipped),
        }


def _classify(before: Effect, after: Effect) -> str:
    if before is not Effect.ALLOW and after is Effect.ALLOW:
        return "gains"
    if before is Effect.ALLOW and after is Effect.DENY:
        return "losses"
    if before is Effect.ALLOW and after is Effect.STEP_UP:
        return "step_ups"
    return "other"


async def simulate(
    baseline: PolicyEngine,
    proposed: PolicyEngine,
    source: AccessEventSource,
    *,
    since: datetime,
    until: datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> SimulationReport:
    """Replay the access events of ``source`` in ``[since, until)`` against both engines."""
    report = SimulationReport()
    async for event in source.access_events(since, until):
        report.events += 1
        if progress is not None:
            progress(1)
        try:
            request = request_from_event(event)
        except PathRejected as e:
            report.skipped[f"path_{e.reason.value}"] += 1
            continue
        except (ValueError, TypeError):
            report.skipped["malformed"] += 1
            continue
        before, after = baseline.decide(request), proposed.decide(request)
        if before.effect is after.effect:
            report.unchanged += 1
            continue
        change = Change(
            event.timestamp,
            request.user or "-",
            request.app,
            request.method,
            str(event.get("url.path")),
            before,
            after,
        )
        getattr(report, _classify(before.effect, after.effect)).add(change)
    return report
