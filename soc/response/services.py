"""Response actions, run through the component that owns what they change.

The SOC decides and records; the IdP and the gateway act. At assembly (``onegate``) each action
gets its :class:`Responder`: revoke a user's sessions (IdP + every gateway), lock the account
(directory), block a source address at the gateway (with an expiry), raise the user's risk score
(the policy engine then asks for a step-up or denies), force MFA re-enrolment. The SOC imports
none of them: the dependency points from ``onegate`` to ``soc`` (docs/soc.md).

Every run is recorded (``soc_responses``: who, what, on what, why, for which alert or incident,
done or failed and what came of it) and emits ``response-executed`` or ``response-failed``.
A responder that raises does not lose the request: the record says it failed and why.
"""

from __future__ import annotations

import builtins
import ipaddress
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db import session_factory
from core.events import Category, Event, EventEmitter, Outcome, new_event_id
from core.logging import get_logger
from soc.alerts.alert import utc
from soc.detections.model import Text
from soc.response.models import ResponseRecord

__all__ = ["TARGETS", "Action", "Responder", "Response", "ResponseError", "ResponseService"]

_log = get_logger("onegate.soc.response")


class Action(StrEnum):
    REVOKE_SESSIONS = "revoke-sessions"
    LOCK_ACCOUNT = "lock-account"
    BLOCK_ADDRESS = "block-address"
    RAISE_RISK = "raise-risk"
    FORCE_MFA_REENROLMENT = "force-mfa-reenrolment"


# What each action acts on: the entity field its target comes from.
TARGETS: Mapping[Action, str] = {
    Action.REVOKE_SESSIONS: "user.name",
    Action.LOCK_ACCOUNT: "user.name",
    Action.BLOCK_ADDRESS: "source.ip",
    Action.RAISE_RISK: "user.name",
    Action.FORCE_MFA_REENROLMENT: "user.name",
}
NAMES: Mapping[Action, Text] = {
    Action.REVOKE_SESSIONS: Text("Revoke sessions", "撤销会话"),
    Action.LOCK_ACCOUNT: Text("Lock account", "锁定账号"),
    Action.BLOCK_ADDRESS: Text("Block address", "封禁地址"),
    Action.RAISE_RISK: Text("Raise risk score", "提高风险评分"),
    Action.FORCE_MFA_REENROLMENT: Text("Force MFA re-enrolment", "强制重新注册第二重验证"),
}
_DEFAULTS: Mapping[Action, Mapping[str, Any]] = {
    Action.BLOCK_ADDRESS: {"seconds": 3600},
    Action.RAISE_RISK: {"score": 80, "seconds": 86400},
}
_USERNAME = re.compile(r"[^\s\x00-\x1f]{1,128}")


class ResponseError(ValueError):
    """A response that cannot be run as asked; ``code`` for the API, the message in en and ``zh``."""

    def __init__(self, code: str, en: str, zh: str) -> None:
        super().__init__(en)
        self.code = code
        self.zh = zh


class Responder(Protocol):
    async def __call__(self, target: str, params: Mapping[str, Any], *, actor: str, reason: str) -> Text:
        """Do it; what was done, in both languages ("3 sessions ended")."""
        ...


@dataclass(frozen=True, slots=True)
class Response:
    id: str
    action: Action
    target: str
    params: Mapping[str, Any]
    actor: str
    reason: str
    automatic: bool
    alert_id: str | None
    incident_id: str | None
    done: bool
    detail: Text
    at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "action": self.action.value,
            "target": self.target,
            "params": dict(self.params),
            "actor": self.actor,
            "reason": self.reason,
            "automatic": self.automatic,
            "alert_id": self.alert_id,
            "incident_id": self.incident_id,
            "status": "done" if self.done else "failed",
            "detail": self.detail.as_dict(),
            "at": self.at.isoformat().replace("+00:00", "Z"),
        }


def _response(row: ResponseRecord) -> Response:
    return Response(
        id=row.id,
        action=Action(row.action),
        target=row.target,
        params=dict(row.params),
        actor=row.actor,
        reason=row.reason,
        automatic=row.automatic,
        alert_id=row.alert_id,
        incident_id=row.incident_id,
        done=row.status == "done",
        detail=Text(row.detail_en, row.detail_zh),
        at=utc(row.at),
    )


def _check(action: Action, target: str, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    if TARGETS[action] == "source.ip":
        try:
            target = str(ipaddress.ip_address(target.strip()))
        except ValueError:
            try:
                target = str(ipaddress.ip_network(target.strip(), strict=False))
            except ValueError:
                raise ResponseError(
                    "invalid_target", f"{target[:60]!r} is not an address", f"“{target[:60]}”不是有效地址"
                ) from None
    elif not _USERNAME.fullmatch(target):
        raise ResponseError("invalid_target", "a user name is needed", "需要有效的用户名")
    merged = {**_DEFAULTS.get(action, {}), **params}
    unknown = set(merged) - set(_DEFAULTS.get(action, {}))
    if unknown:
        raise ResponseError(
            "invalid_params",
            f"{action.value} takes no parameter {', '.join(sorted(unknown))}",
            f"{action.value} 不接受参数 {', '.join(sorted(unknown))}",
        )
    seconds = merged.get("seconds")
    if seconds is not None and (not isinstance(seconds, int | float) or not 60 <= seconds <= 90 * 86400):
        raise ResponseError("invalid_params", "seconds is 60 to 7776000", "时长（秒）应在 60 到 7776000 之间")
    score = merged.get("score")
    if score is not None and (not isinstance(score, int) or not 1 <= score <= 100):
        raise ResponseError("invalid_params", "score is 1 to 100", "风险评分应在 1 到 100 之间")
    return target, merged


class ResponseService:
    """Runs response actions through the registered responders and records each run.

    ``on_incident``: called with (incident id, actor, note) after a run for an incident, so the
    incident's "first response" time is set (the incident store's ``responded``)."""

    def __init__(
        self,
        engine: AsyncEngine,
        responders: Mapping[Action, Responder],
        *,
        events: EventEmitter | None = None,
        clock: Callable[[], float] = time.time,
        on_incident: Callable[[str, str, str], Awaitable[Any]] | None = None,
    ) -> None:
        self._sessions = session_factory(engine)
        self._responders = dict(responders)
        self._events = events
        self._clock = clock
        self._on_incident = on_incident

    @property
    def available(self) -> builtins.list[Action]:
        return [action for action in Action if action in self._responders]

    async def execute(
        self,
        action: Action | str,
        target: str,
        *,
        actor: str,
        reason: str,
        params: Mapping[str, Any] | None = None,
        alert_id: str | None = None,
        incident_id: str | None = None,
        automatic: bool = False,
    ) -> Response:
        """Run ``action`` on ``target``; the record of the run (done or failed)."""
        try:
            chosen = Action(action)
        except ValueError:
            raise ResponseError(
                "unknown_action",
                f"no response action {str(action)[:40]!r}",
                f"没有响应动作“{str(action)[:40]}”",
            ) from None
        responder = self._responders.get(chosen)
        if responder is None:
            raise ResponseError(
                "unavailable",
                f"{chosen.value} is not available in this deployment",
                f"本部署未提供响应动作 {chosen.value}",
            )
        target, merged = _check(chosen, target, params or {})
        reason = reason.strip()[:1000] or "-"
        done = True
        try:
            detail = await responder(target, merged, actor=actor, reason=reason)
        except Exception as e:  # the run failed: record why, never lose the request
            done = False
            message = getattr(e, "zh", None)
            detail = Text(f"failed: {str(e)[:300]}", f"执行失败：{(message or str(e))[:300]}")
            _log.warning(
                "response action failed", action=chosen.value, error=f"{type(e).__name__}: {str(e)[:200]}"
            )
        row = ResponseRecord(
            id=new_event_id(),  # in time order
            action=chosen.value,
            target=target,
            params=merged,
            actor=actor[:200],
            reason=reason,
            automatic=automatic,
            alert_id=alert_id,
            incident_id=incident_id,
            status="done" if done else "failed",
            detail_en=detail.en,
            detail_zh=detail.zh,
            at=datetime.fromtimestamp(self._clock(), UTC),
        )
        async with self._sessions() as s, s.begin():
            s.add(row)
        response = _response(row)
        self._emit(response)
        if incident_id is not None and self._on_incident is not None and done:
            await self._on_incident(incident_id, actor, f"{chosen.value} {target}: {detail.en}")
        return response

    async def history(
        self, *, alert_id: str | None = None, incident_id: str | None = None, target: str | None = None
    ) -> builtins.list[Response]:
        """Runs, oldest first, for an alert, an incident or a target."""
        query = select(ResponseRecord).order_by(ResponseRecord.at, ResponseRecord.id)
        if alert_id is not None:
            query = query.where(ResponseRecord.alert_id == alert_id)
        if incident_id is not None:
            query = query.where(ResponseRecord.incident_id == incident_id)
        if target is not None:
            query = query.where(ResponseRecord.target == target)
        async with self._sessions() as s:
            return [_response(row) for row in await s.scalars(query.limit(1000))]

    def _emit(self, response: Response) -> None:
        if self._events is None:
            return
        fields: dict[str, Any] = {
            "onegate.response.action": response.action.value,
            "onegate.response.target": response.target,
            "onegate.response.automatic": response.automatic,
            "onegate.actor": response.actor,
            "onegate.reason": response.detail.en[:500],
        }
        if TARGETS[response.action] == "user.name":
            fields["user.name"] = response.target
        if response.alert_id:
            fields["onegate.alert_id"] = response.alert_id
        if response.incident_id:
            fields["onegate.incident_id"] = response.incident_id
        self._events.emit(
            Event(
                action="response-executed" if response.done else "response-failed",
                category=Category.INTRUSION_DETECTION,
                outcome=Outcome.SUCCESS if response.done else Outcome.FAILURE,
                dataset="onegate.soc",
                fields=fields,
            )
        )
