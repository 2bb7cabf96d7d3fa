"""Replay recorded traffic against a proposed bundle: who would gain or lose access to what.

Each recorded access event (the fields listed in :mod:`core.access_log`) becomes a
:class:`policy.model.Request` and is decided by the baseline (normally the active bundle) and by
the proposal. A request with the same effect both times is unchanged (even if other rules decided
it); the others fall into three sets:

- **gains**: not allowed before (deny or step_up), allowed now;
- **losses**: allowed before, not now (denied, or asked for a stronger or fresher sign-in);
- **changes**: deny <-> step_up (refused either way, but differently);

each with the number of requests, the transitions (``allow->deny``, ...), the counts per
application and per (user, application), the distinct users, and a few examples. The replay is
exact and deterministic: every event of the window is decided by both engines, nothing is sampled,
and the examples are the first change of each (user, application, transition), in event order.

Events that cannot be rebuilt into a request are skipped and counted by reason: ``path_<reason>``
for a path that cannot be canonicalised (:class:`policy.normalize.PathReason`), and
``malformed:<field>`` for a field of the wrong type.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from core.access_log import AccessEventSource
from core.events import Event
from policy.model import Decision, Effect, Request, acr_rank, client_address
from policy.normalize import PathRejected

if TYPE_CHECKING:
    from policy.engine import PolicyEngine

__all__ = [
    "ANONYMOUS",
    "EXAMPLES",
    "Change",
    "ChangeSet",
    "EventRejected",
    "SimulationReport",
    "request_from_event",
    "simulate",
]

EXAMPLES = 5
ANONYMOUS = "(anonymous)"  # the user of a request with no signed-in user, in the report
PROGRESS_STEP = 500  # events per progress call


class EventRejected(ValueError):
    """An access event that cannot be rebuilt into a request; ``reason`` is the skip reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _strings(fields: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = fields.get(name)
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise EventRejected(f"malformed:{name}")


def _text(fields: Mapping[str, Any], name: str, default: str | None = None) -> str | None:
    value = fields.get(name)
    if value is None or value == "":
        return default
    if not isinstance(value, str):
        raise EventRejected(f"malformed:{name}")
    return value


def _number(fields: Mapping[str, Any], name: str) -> float | None:
    value = fields.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise EventRejected(f"malformed:{name}")
    return float(value)


def _as_sent(path: str) -> str:
    # A path recorded decoded ("/人事") is percent-encoded as a browser would have sent it.
    if path.isascii():
        return path
    return "".join(c if c.isascii() else "".join(f"%{b:02X}" for b in c.encode()) for c in path)


def request_from_event(event: Event) -> Request:
    """The request an access event records, at the time it was made. Raises
    :class:`policy.normalize.PathRejected` for a path that cannot be canonicalised and
    :class:`EventRejected` for a field of the wrong type."""
    now = event.timestamp.timestamp()
    fields = event.fields  # every field but the event.* ones, by dotted name (one lookup each)
    app = _text(fields, "onegate.app")
    if app is None:
        raise EventRejected("malformed:onegate.app")
    acr = _text(fields, "onegate.acr")
    if acr is not None and not acr_rank(acr):
        raise EventRejected("malformed:onegate.acr")
    risk = _number(fields, "onegate.risk")
    if risk is not None and (risk > 100 or risk != int(risk)):
        raise EventRejected("malformed:onegate.risk")
    age = _number(fields, "onegate.auth_age")
    ip = _text(fields, "source.ip")
    try:
        address = client_address(ip) if ip is not None else None
    except ValueError:
        raise EventRejected("malformed:source.ip") from None
    path = _as_sent(_text(fields, "url.path", "/") or "/")
    method = _text(fields, "http.request.method", "GET") or "GET"
    return Request.of(
        app=app,
        path=path,
        method=method,
        user=_text(fields, "user.name"),
        groups=_strings(fields, "onegate.groups"),
        departments=_strings(fields, "onegate.departments"),
        roles=_strings(fields, "user.roles"),
        acr=acr,
        auth_time=None if age is None else now - age,
        ip=address,
        now=now,
        risk=int(risk or 0),
    )


@dataclass(frozen=True, slots=True)
class Change:
    """One request decided differently: when, who, what, and both decisions."""

    time: datetime
    user: str | None
    app: str
    method: str
    path: str
    before: Decision
    after: Decision

    @property
    def transition(self) -> str:
        return f"{self.before.effect.value}->{self.after.effect.value}"

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
class ChangeSet:
    """The requests of one kind of change (gains, losses or changes)."""

    requests: int = 0
    transitions: Counter[str] = field(default_factory=Counter)
    by_app: Counter[str] = field(default_factory=Counter)
    by_user_app: Counter[tuple[str, str]] = field(default_factory=Counter)
    anonymous: int = 0  # requests with no signed-in user among them
    examples: list[Change] = field(default_factory=list)
    _shown: set[tuple[str, str, str]] = field(default_factory=set, repr=False)

    def add(self, change: Change) -> None:
        user = change.user or ANONYMOUS
        self.requests += 1
        self.transitions[change.transition] += 1
        self.by_app[change.app] += 1
        self.by_user_app[(user, change.app)] += 1
        if change.user is None:
            self.anonymous += 1
        key = (user, change.app, change.transition)
        if len(self.examples) < EXAMPLES and key not in self._shown:
            self._shown.add(key)
            self.examples.append(change)

    @property
    def users(self) -> list[str]:
        """The distinct signed-in users, sorted."""
        return sorted({user for user, _ in self.by_user_app if user != ANONYMOUS})

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "users": len(self.users),
            "anonymous_requests": self.anonymous,
            "transitions": dict(sorted(self.transitions.items())),
            "by_app": dict(sorted(self.by_app.items())),
            "by_user_app": [
                {"user": user, "app": app, "requests": n}
                for (user, app), n in sorted(self.by_user_app.items())
            ],
            "examples": [c.as_dict() for c in self.examples],
        }


@dataclass
class SimulationReport:
    """The outcome of one replay. ``events``: access events read from the window; ``replayed``:
    those decided (the rest are ``skipped``, by reason); ``recorded_differs``: events whose
    recorded decision (``onegate.decision``) is not what the baseline decides now - non-zero when
    the baseline is not the policy that was active then, or the user's groups were recorded
    differently."""

    since: datetime
    until: datetime | None = None
    events: int = 0
    replayed: int = 0
    unchanged: int = 0
    recorded_differs: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    gains: ChangeSet = field(default_factory=ChangeSet)
    losses: ChangeSet = field(default_factory=ChangeSet)
    changes: ChangeSet = field(default_factory=ChangeSet)

    @property
    def changed(self) -> int:
        return self.gains.requests + self.losses.requests + self.changes.requests

    def add(self, change: Change) -> None:
        before, after = change.before.effect, change.after.effect
        if after is Effect.ALLOW:
            self.gains.add(change)
        elif before is Effect.ALLOW:
            self.losses.add(change)
        else:
            self.changes.add(change)

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat() if self.until else None,
            "events": self.events,
            "replayed": self.replayed,
            "unchanged": self.unchanged,
            "changed": self.changed,
            "recorded_differs": self.recorded_differs,
            "skipped": dict(sorted(self.skipped.items())),
            "gains": self.gains.as_dict(),
            "losses": self.losses.as_dict(),
            "changes": self.changes.as_dict(),
        }


def _recorded(event: Event) -> Effect | None:
    value = event.fields.get("onegate.decision")
    try:
        return Effect(value) if isinstance(value, str) else None
    except ValueError:
        return None


async def simulate(
    baseline: PolicyEngine,
    proposed: PolicyEngine,
    source: AccessEventSource,
    since: datetime,
    until: datetime | None = None,
    *,
    progress: Callable[[int], None] | None = None,
) -> SimulationReport:
    """Replay the access events of ``source`` in ``[since, until)`` against both engines.

    ``progress`` is called with the number of events read since its last call (every few hundred
    events, and once at the end)."""
    report = SimulationReport(since=since, until=until)
    pending = 0
    async for event in source.access_events(since, until):
        report.events += 1
        pending += 1
        if progress is not None and pending >= PROGRESS_STEP:
            progress(pending)
            pending = 0
        try:
            request = request_from_event(event)
        except PathRejected as e:
            report.skipped[f"path_{e.reason.value}"] += 1
            continue
        except EventRejected as e:
            report.skipped[e.reason] += 1
            continue
        except ValueError:  # a path that is not Latin-1 text, a bad method ...
            report.skipped["malformed"] += 1
            continue
        report.replayed += 1
        before, after = baseline.decide(request), proposed.decide(request)
        recorded = _recorded(event)
        if recorded is not None and recorded is not before.effect:
            report.recorded_differs += 1
        if before.effect is after.effect:
            report.unchanged += 1
            continue
        report.add(
            Change(
                time=event.timestamp,
                user=request.user,
                app=request.app,
                method=request.method,
                path=str(event.fields.get("url.path") or "/"),
                before=before,
                after=after,
            )
        )
    if progress is not None and pending:
        progress(pending)
    return report
