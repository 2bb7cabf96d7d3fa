"""Where a detection's signal goes: an alert, the incident it belongs to, and any automatic
response the site configured for its rule.

:class:`Triage` is the sink the streaming engine and the scheduled rules hand their signals to.
Automatic response (``auto``: rule id -> actions) runs only for a new alert of a real attack,
never for a drill's (the red team's accounts are not to be locked mid-exercise), with the
alert's entity as the target (``user.name`` or ``source.ip``, as the action needs) and
``automatic`` set on the record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from core.logging import get_logger
from soc.alerts import AlertStore
from soc.alerts.alert import Alert
from soc.detections.model import Signal
from soc.incidents.services import IncidentStore
from soc.response.services import TARGETS, Action, ResponseService

__all__ = ["Triage"]

_log = get_logger("onegate.soc.triage")


class Triage:
    def __init__(
        self,
        alerts: AlertStore,
        incidents: IncidentStore,
        *,
        responses: ResponseService | None = None,
        auto: Mapping[str, Sequence[Action | str]] | None = None,
    ) -> None:
        self.alerts = alerts
        self.incidents = incidents
        self.responses = responses
        self._auto = {rule: [Action(a) for a in actions] for rule, actions in (auto or {}).items()}
        if self._auto and responses is None:
            raise ValueError("automatic responses need a response service")

    async def raise_signal(self, signal: Signal, *, drill_id: str | None = None) -> Alert:
        alert, created = await self.alerts.raise_signal(signal, drill_id=drill_id)
        incident_id = alert.incident_id
        if incident_id is None:
            incident_id = (await self.incidents.attach(alert)).id
        if created and drill_id is None and self.responses is not None:
            for action in self._auto.get(signal.rule.id, ()):
                target = alert.entity.get(TARGETS[action])
                if not target:
                    _log.warning(
                        "automatic response without a target", rule=signal.rule.id, action=action.value
                    )
                    continue
                await self.responses.execute(
                    action,
                    target,
                    actor="soc:auto",
                    reason=f"{signal.rule.id}: {signal.reason.en}",
                    alert_id=alert.id,
                    incident_id=incident_id,
                    automatic=True,
                )
        return alert
