"""Where a detection's signal goes: an alert, the incident it belongs to, and any automatic
response the site configured for its rule.

:class:`Triage` is the sink the streaming engine and the scheduled rules hand their signals to.
Automatic response (``auto``: rule id -> actions) runs only for a new alert of a real attack,
never for a drill's (the red team's accounts are not to be locked mid-exercise), with the
alert's entity as the target (``user.name`` or ``source.ip``, as the action needs) and
``automatic`` set on the record.

Raising the alert, linking its incident and running the responses are separate transactions,
so a crash (or the database going away) between them leaves the work half done: an alert in no
incident, or an automatic response never run. :meth:`Triage.repair`, which the SOC runs every
minute, finishes it: it links every alert older than :data:`GRACE_SECONDS` that has no incident,
and runs the automatic actions that have no record yet for the open alerts of the last
:data:`CATCH_UP_SECONDS` (an account is not locked a day late). Work in progress in this process
is left to finish on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from core.logging import get_logger
from soc.alerts import AlertStore
from soc.alerts.alert import NO_DRILL, Alert
from soc.alerts.listing import MAX_PAGE
from soc.detections.model import Signal
from soc.incidents.services import IncidentStore
from soc.response.services import TARGETS, Action, ResponseService

__all__ = ["CATCH_UP_SECONDS", "GRACE_SECONDS", "Repaired", "Triage"]

_log = get_logger("onegate.soc.triage")
GRACE_SECONDS = 60.0  # an alert younger than this may still be on its way: repair leaves it
CATCH_UP_SECONDS = 3600.0  # automatic responses are run late for alerts at most this old


@dataclass(frozen=True)
class Repaired:
    linked: int  # alerts put into their incident
    responded: int  # automatic actions run


class Triage:
    def __init__(
        self,
        alerts: AlertStore,
        incidents: IncidentStore,
        *,
        responses: ResponseService | None = None,
        auto: Mapping[str, Sequence[Action | str]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.alerts = alerts
        self.incidents = incidents
        self.responses = responses
        self._auto = {rule: [Action(a) for a in actions] for rule, actions in (auto or {}).items()}
        if self._auto and responses is None:
            raise ValueError("automatic responses need a response service")
        self._clock = clock
        self._busy: set[str] = set()  # alerts whose triage runs now in this process

    async def raise_signal(self, signal: Signal, *, drill_id: str | None = None) -> Alert:
        alert, created = await self.alerts.raise_signal(signal, drill_id=drill_id)
        self._busy.add(alert.id)
        try:
            incident_id = alert.incident_id
            if incident_id is None:
                incident_id = (await self.incidents.attach(alert)).id
            if created and drill_id is None:
                for action, target in self._targets(alert, self._auto.get(signal.rule.id, ())):
                    await self._respond(alert, action, target, incident_id)
        finally:
            self._busy.discard(alert.id)
        return alert

    async def repair(self) -> Repaired:
        """Link the alerts a crash left without an incident and run the automatic actions it left
        unrun (module docstring)."""
        now = datetime.fromtimestamp(self._clock(), UTC)
        before = now - timedelta(seconds=GRACE_SECONDS)
        linked = responded = 0
        for alert in await self.alerts.unlinked(before=before):
            if alert.id not in self._busy:
                await self.incidents.attach(alert)
                linked += 1
        if self.responses is not None:
            since = now - timedelta(seconds=CATCH_UP_SECONDS)
            for rule_id, actions in self._auto.items():
                page = await self.alerts.list(
                    rule_id=rule_id,
                    drill_id=NO_DRILL,
                    status=("open", "acknowledged"),
                    since=since,
                    until=before,
                    limit=MAX_PAGE,
                )
                for alert in page.alerts:
                    if alert.id in self._busy:
                        continue
                    history = await self.responses.history(alert_id=alert.id)
                    ran = {run.action for run in history if run.automatic}
                    missing = [action for action in actions if action not in ran]
                    for action, target in self._targets(alert, missing, quiet=True):
                        await self._respond(alert, action, target, alert.incident_id)
                        responded += 1
        if linked or responded:
            _log.warning("triage repaired", linked=linked, responded=responded)
        return Repaired(linked, responded)

    def _targets(
        self, alert: Alert, actions: Sequence[Action], *, quiet: bool = False
    ) -> list[tuple[Action, str]]:
        found = []
        for action in actions:
            target = alert.entity.get(TARGETS[action])
            if target:
                found.append((action, target))
            elif not quiet:
                _log.warning("automatic response without a target", rule=alert.rule_id, action=action.value)
        return found

    async def _respond(self, alert: Alert, action: Action, target: str, incident_id: str | None) -> None:
        if self.responses is None:  # automatic actions are refused without one (__init__)
            return
        await self.responses.execute(
            action,
            target,
            actor="soc:auto",
            reason=f"{alert.rule_id}: {alert.reason.en}",
            alert_id=alert.id,
            incident_id=incident_id,
            automatic=True,
        )
