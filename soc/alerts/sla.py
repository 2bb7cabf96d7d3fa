"""Response targets per severity, and where an alert stands against them.

An alert is *acknowledged* by its first response: an acknowledgement, or a close without one
(the alert was looked at either way); reopening it does not undo that. It is *closed* while its
status is closed; reopening makes the close pending again, measured from creation as before.
Both clocks start at ``created_at`` (when the store raised the alert, not event time: an alert
raised late for old events is still new to the analysts).

The defaults follow common SOC practice (critical: acknowledge in 15 minutes, close in 4 hours;
high 1 h / 24 h; medium 4 h / 72 h; low 24 h / 7 days); a site sets its own through
:class:`SlaTargets`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from soc.detections.model import Severity

__all__ = ["DEFAULT_SLA", "Sla", "SlaTargets", "iso_utc"]

_MINUTE, _HOUR, _DAY = 60.0, 3600.0, 86400.0


def _targets(name: str, given: Mapping[Any, float]) -> dict[Severity, float]:
    try:
        targets = {Severity(key): float(value) for key, value in given.items()}
    except ValueError as e:
        raise ValueError(f"sla.{name}: {e}") from None
    missing = [s.value for s in Severity if s not in targets]
    if missing:
        raise ValueError(f"sla.{name}: no target for {', '.join(missing)}")
    if any(not value > 0 for value in targets.values()):
        raise ValueError(f"sla.{name}: targets are positive numbers of seconds")
    return targets


@dataclass(frozen=True, slots=True)
class SlaTargets:
    """Seconds from creation to the first response (``acknowledge``) and to the close
    (``close``), for every severity."""

    acknowledge: Mapping[Severity, float]
    close: Mapping[Severity, float]

    def __post_init__(self) -> None:
        acknowledge = _targets("acknowledge", self.acknowledge)
        close = _targets("close", self.close)
        wrong = [s.value for s in Severity if close[s] < acknowledge[s]]
        if wrong:
            raise ValueError(
                f"sla: the close target is shorter than the acknowledge one for {', '.join(wrong)}"
            )
        object.__setattr__(self, "acknowledge", acknowledge)
        object.__setattr__(self, "close", close)

    def of(
        self,
        severity: Severity,
        created_at: datetime,
        acknowledged_at: datetime | None,
        closed_at: datetime | None,
        now: datetime,
    ) -> Sla:
        """Where an alert of ``severity`` stands at ``now``."""
        acknowledge_due = created_at + timedelta(seconds=self.acknowledge[severity])
        close_due = created_at + timedelta(seconds=self.close[severity])
        return Sla(
            time_to_acknowledge=_seconds(created_at, acknowledged_at),
            time_to_close=_seconds(created_at, closed_at),
            acknowledge_due=acknowledge_due,
            close_due=close_due,
            acknowledge_overdue=acknowledged_at is None and now > acknowledge_due,
            close_overdue=closed_at is None and now > close_due,
        )


def _seconds(start: datetime, end: datetime | None) -> float | None:
    return None if end is None else max(0.0, (end - start).total_seconds())


DEFAULT_SLA = SlaTargets(
    acknowledge={
        Severity.CRITICAL: 15 * _MINUTE,
        Severity.HIGH: 1 * _HOUR,
        Severity.MEDIUM: 4 * _HOUR,
        Severity.LOW: 24 * _HOUR,
    },
    close={
        Severity.CRITICAL: 4 * _HOUR,
        Severity.HIGH: 24 * _HOUR,
        Severity.MEDIUM: 72 * _HOUR,
        Severity.LOW: 7 * _DAY,
    },
)


@dataclass(frozen=True, slots=True)
class Sla:
    """An alert against its targets. The times are None while pending; the ``*_overdue`` flags
    say a pending step is past its due time."""

    time_to_acknowledge: float | None
    time_to_close: float | None
    acknowledge_due: datetime
    close_due: datetime
    acknowledge_overdue: bool
    close_overdue: bool

    @property
    def overdue(self) -> bool:
        return self.acknowledge_overdue or self.close_overdue

    def as_dict(self) -> dict[str, Any]:
        return {
            "time_to_acknowledge": self.time_to_acknowledge,
            "time_to_close": self.time_to_close,
            "acknowledge_due": iso_utc(self.acknowledge_due),
            "close_due": iso_utc(self.close_due),
            "acknowledge_overdue": self.acknowledge_overdue,
            "close_overdue": self.close_overdue,
            "overdue": self.overdue,
        }


def iso_utc(value: datetime) -> str:
    """ISO 8601 in UTC with microseconds and a ``Z`` (as the events' ``@timestamp``)."""
    return value.isoformat(timespec="microseconds").replace("+00:00", "Z")
