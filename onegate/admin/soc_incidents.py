"""``/api/soc/v1/incidents``: list, read (with a timeline) and work the SOC's incidents.

=====  ====================================  ==============================================
GET    /incidents                            newest first; real ones unless ``drill`` /
                                             ``drills`` say otherwise
GET    /incidents/{id}                       the incident, its alerts, its history and a
                                             timeline (``ETag``: its version)
POST   /incidents/{id}/status                ``{status, note?}``: open / contained / resolved
POST   /incidents/{id}/assign                ``{assignee}`` (null: unassign)
POST   /incidents/{id}/comment               ``{text}``
POST   /incidents/{id}/link                  ``{alert_id}``: move an alert into it
POST   /incidents/{id}/unlink                ``{alert_id}``
POST   /incidents/{id}/merge                 ``{incidents: [...]}``: fold those into this one
=====  ====================================  ==============================================

The timeline puts in time order the incident's alerts (when raised), the alerts' and the
incident's history entries, the response actions run for it or its alerts, and the raw events of
the alerts' evidence (read from the event store), at most :data:`MAX_TIMELINE` entries (the
earliest; ``timeline_truncated`` says when some were left out).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from starlette.responses import Response

from core.eventstore import EventStore
from onegate.admin.api import ApiRequest, Endpoint, json_response
from onegate.admin.soc_alerts import fetch_events
from onegate.admin.soc_common import (
    IF_MATCH,
    NULLABLE_TIME,
    TEXT,
    TIME,
    Body,
    answer,
    etag,
    expected_version,
    guarded,
    invalid,
    operation,
    parameter,
    query_bool,
    query_list,
    query_text,
    ref,
    refuse_unknown_parameters,
)
from soc.alerts import AlertStore
from soc.alerts.sla import iso_utc
from soc.incidents.models import STATUSES
from soc.incidents.services import Incident, IncidentStore
from soc.response.services import Response as ResponseRun
from soc.response.services import ResponseService

__all__ = ["MAX_TIMELINE", "IncidentEndpoints", "openapi_paths", "openapi_schemas"]

MAX_TIMELINE = 1000
MAX_DETAIL_ALERTS = 200  # alerts shown (and followed into the timeline) per incident
MAX_TIMELINE_EVENTS = 500  # raw evidence events in a timeline
_MAX_MERGE = 100
_SETTABLE = ("open", "contained", "resolved")


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _incident_response(incident: Incident) -> Response:
    return json_response(incident.as_dict(), headers={"etag": etag(incident.version)})


class IncidentEndpoints:
    def __init__(
        self, incidents: IncidentStore, alerts: AlertStore, responses: ResponseService, store: EventStore
    ) -> None:
        self._incidents = incidents
        self._alerts = alerts
        self._responses = responses
        self._store = store

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("GET", "/incidents", guarded(self.list_incidents)),
            Endpoint("GET", "/incidents/{incident_id}", guarded(self.read)),
            Endpoint("POST", "/incidents/{incident_id}/status", guarded(self._change(self._status))),
            Endpoint("POST", "/incidents/{incident_id}/assign", guarded(self._change(self._assign))),
            Endpoint("POST", "/incidents/{incident_id}/comment", guarded(self._change(self._comment))),
            Endpoint("POST", "/incidents/{incident_id}/link", guarded(self._change(self._link))),
            Endpoint("POST", "/incidents/{incident_id}/unlink", guarded(self._change(self._unlink))),
            Endpoint("POST", "/incidents/{incident_id}/merge", guarded(self._change(self._merge))),
        ]

    async def list_incidents(self, call: ApiRequest) -> Response:
        refuse_unknown_parameters(call, ("status", "drill", "drills", "limit"))
        incidents = await self._incidents.list(
            status=query_list(call, "status", STATUSES),
            drill_id=query_text(call, "drill", max_length=64),
            drills=bool(query_bool(call, "drills")),
            size=call.query_int("limit", 50, low=1, high=500),
        )
        return json_response({"incidents": [incident.as_dict() for incident in incidents]})

    async def read(self, call: ApiRequest) -> Response:
        incident_id = call.params["incident_id"]
        incident = await self._incidents.get(incident_id)
        history = await self._incidents.history(incident_id)
        page = await self._alerts.list(incident_id=incident_id, limit=MAX_DETAIL_ALERTS)
        alerts = list(reversed(page.alerts))  # oldest first, as they joined
        entries: list[tuple[datetime, int, dict[str, Any]]] = []

        def add(at: datetime, entry: dict[str, Any]) -> None:
            entries.append((at, len(entries), entry))

        runs: dict[str, ResponseRun] = {
            r.id: r for r in await self._responses.history(incident_id=incident_id)
        }
        evidence: dict[str, list[str]] = {}  # event id -> the alerts holding it
        dropped = page.total > len(alerts)
        for alert in alerts:
            add(
                alert.created_at,
                {
                    "at": iso_utc(alert.created_at),
                    "kind": "alert",
                    "alert_id": alert.id,
                    "rule_id": alert.rule_id,
                    "title": alert.rule_name.as_dict(),
                    "severity": alert.severity.value,
                    "reason": alert.reason.as_dict(),
                },
            )
            for change in await self._alerts.history(alert.id):
                if change.action.value != "created":  # the alert's own entry says it
                    add(change.at, {"kind": "alert-change", **change.as_dict()})
            runs.update((r.id, r) for r in await self._responses.history(alert_id=alert.id))
            for event_id in await self._alerts.evidence(alert.id):
                if event_id in evidence or len(evidence) < MAX_TIMELINE_EVENTS:
                    evidence.setdefault(event_id, []).append(alert.id)
                else:
                    dropped = True
        for item in history:
            add(_at(item["at"]), {"kind": "incident-change", **item})
        for run in runs.values():
            add(run.at, {"kind": "response", **run.as_dict()})
        found = await fetch_events(self._store, list(evidence))
        for event_id, holders in evidence.items():
            event = found.get(event_id)
            stamp = event.get("@timestamp") if event else None
            if isinstance(stamp, str):
                add(_at(stamp), {"at": stamp, "kind": "event", "alert_ids": holders, "event": event})
        entries.sort(key=lambda e: (e[0], e[1]))
        body = {
            "incident": incident.as_dict(),
            "alerts": [alert.as_dict() for alert in alerts],
            "alerts_total": page.total,
            "history": history,
            "timeline": [entry for _, _, entry in entries[:MAX_TIMELINE]],
            "timeline_truncated": dropped or len(entries) > MAX_TIMELINE,
        }
        return json_response(body, headers={"etag": etag(incident.version)})

    # -- changes ---------------------------------------------------------------------------------

    def _change(
        self, apply: Callable[[str, Body, str, int | None], Awaitable[Incident]]
    ) -> Callable[[ApiRequest], Awaitable[Response]]:
        async def change(call: ApiRequest) -> Response:
            expected = expected_version(call)
            body = await Body.of(call)
            return _incident_response(await apply(call.params["incident_id"], body, call.actor, expected))

        return change

    async def _status(self, incident_id: str, body: Body, actor: str, expected: int | None) -> Incident:
        status = body.text("status", required=True, max_length=16) or ""
        if status not in _SETTABLE:
            raise invalid("status", f"one of {', '.join(_SETTABLE)}", f"须为 {'、'.join(_SETTABLE)} 之一")
        note = body.text("note")
        body.done()
        return await self._incidents.set_status(
            incident_id, status, actor=actor, note=note, expected_version=expected
        )

    async def _assign(self, incident_id: str, body: Body, actor: str, expected: int | None) -> Incident:
        assignee = body.username("assignee")
        body.done()
        return await self._incidents.assign(incident_id, assignee, actor=actor, expected_version=expected)

    async def _comment(self, incident_id: str, body: Body, actor: str, expected: int | None) -> Incident:
        text = body.text("text", required=True) or ""
        body.done()
        return await self._incidents.comment(incident_id, text, actor=actor, expected_version=expected)

    async def _link(self, incident_id: str, body: Body, actor: str, expected: int | None) -> Incident:
        alert_id = body.text("alert_id", required=True, max_length=64) or ""
        body.done()
        return await self._incidents.link(incident_id, alert_id, actor=actor, expected_version=expected)

    async def _unlink(self, incident_id: str, body: Body, actor: str, expected: int | None) -> Incident:
        alert_id = body.text("alert_id", required=True, max_length=64) or ""
        body.done()
        return await self._incidents.unlink(incident_id, alert_id, actor=actor, expected_version=expected)

    async def _merge(self, incident_id: str, body: Body, actor: str, expected: int | None) -> Incident:
        others = body.strings("incidents", max_items=_MAX_MERGE, max_length=64)
        if not others:
            raise invalid("incidents", "the ids of the incidents to fold in", "须列出要合并进来的事件编号")
        body.done()
        return await self._incidents.merge(incident_id, others, actor=actor, expected_version=expected)


# -- the OpenAPI description ---------------------------------------------------------------------

_ID = parameter("incident_id", {"type": "string"}, "The incident's id.", where="path")


def openapi_paths() -> dict[str, Any]:
    changed = {"200": answer("Incident", "The incident as it is now; ETag is its new version.")}

    def change(name: str, summary: str, body: str) -> dict[str, Any]:
        return {
            "parameters": [_ID],
            "post": operation(
                name,
                summary,
                "incidents",
                changed,
                parameters=[IF_MATCH],
                body=body,
                errors=("NotFound", "Conflict", "Stale"),
            ),
        }

    return {
        "/incidents": {
            "get": operation(
                "listIncidents",
                "Incidents, newest first (real ones unless a drill is named or drills=true)",
                "incidents",
                {
                    "200": answer(
                        {
                            "type": "object",
                            "properties": {
                                "incidents": {"type": "array", "items": ref("schemas", "Incident")}
                            },
                        },
                        "The incidents.",
                    )
                },
                parameters=[
                    parameter(
                        "status",
                        {"type": "array", "items": {"enum": list(STATUSES)}},
                        "Any of these (repeated or comma-separated).",
                    ),
                    parameter("drill", {"type": "string"}, "Only this drill's incidents."),
                    parameter("drills", {"type": "boolean"}, "Drill incidents too."),
                    parameter(
                        "limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}, "At most."
                    ),
                ],
            )
        },
        "/incidents/{incident_id}": {
            "parameters": [_ID],
            "get": operation(
                "getIncident",
                "One incident with its alerts, history and timeline",
                "incidents",
                {"200": answer("IncidentDetail", "The incident; ETag is its version.")},
                errors=("NotFound",),
            ),
        },
        "/incidents/{incident_id}/status": change(
            "setIncidentStatus", "open -> contained -> resolved (and back to open)", "IncidentStatus"
        ),
        "/incidents/{incident_id}/assign": change(
            "assignIncident", "Give the incident to an analyst (null: unassign)", "IncidentAssign"
        ),
        "/incidents/{incident_id}/comment": change("commentIncident", "Add a comment", "IncidentComment"),
        "/incidents/{incident_id}/link": change(
            "linkAlertToIncident", "Move an alert into this incident", "IncidentAlert"
        ),
        "/incidents/{incident_id}/unlink": change(
            "unlinkAlertFromIncident", "Take an alert out of this incident", "IncidentAlert"
        ),
        "/incidents/{incident_id}/merge": change(
            "mergeIncidents", "Fold other incidents into this one", "IncidentMerge"
        ),
    }


def _body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "required": required, "properties": properties}


def openapi_schemas() -> dict[str, Any]:
    seconds = {"type": ["number", "null"]}
    text = {"type": "string", "minLength": 1, "maxLength": 4000}
    return {
        "Incident": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "title": TEXT,
                "status": {"type": "string", "enum": list(STATUSES)},
                "severity": {"type": "string"},
                "risk_score": {"type": "integer"},
                "assignee": {"type": ["string", "null"]},
                "drill_id": {"type": ["string", "null"]},
                "merged_into": {"type": ["string", "null"]},
                "first_seen": TIME,
                "last_seen": TIME,
                "created_at": TIME,
                "detected_at": TIME,
                "responded_at": NULLABLE_TIME,
                "resolved_at": NULLABLE_TIME,
                "alert_count": {"type": "integer"},
                "entities": {"type": "array", "items": {"type": "string"}, "description": "`user.name=...`"},
                "time_to_detect_s": seconds,
                "time_to_respond_s": seconds,
                "time_to_resolve_s": seconds,
                "version": {"type": "integer", "description": "Counts the changes; the ETag."},
            },
        },
        "IncidentDetail": {
            "type": "object",
            "properties": {
                "incident": ref("schemas", "Incident"),
                "alerts": {"type": "array", "items": ref("schemas", "Alert")},
                "alerts_total": {"type": "integer"},
                "history": {"type": "array", "items": {"type": "object"}},
                "timeline": {
                    "type": "array",
                    "description": f"In time order, at most {MAX_TIMELINE} entries (the earliest).",
                    "items": {
                        "type": "object",
                        "required": ["at", "kind"],
                        "properties": {
                            "at": TIME,
                            "kind": {
                                "type": "string",
                                "enum": ["alert", "alert-change", "incident-change", "response", "event"],
                            },
                            "event": {"type": "object", "description": "For `event`: the flat ECS event."},
                        },
                    },
                },
                "timeline_truncated": {"type": "boolean"},
            },
        },
        "IncidentStatus": _body(
            {"status": {"type": "string", "enum": list(_SETTABLE)}, "note": {"type": "string"}}, ["status"]
        ),
        "IncidentAssign": _body({"assignee": {"type": ["string", "null"]}}, ["assignee"]),
        "IncidentComment": _body({"text": text}, ["text"]),
        "IncidentAlert": _body({"alert_id": {"type": "string"}}, ["alert_id"]),
        "IncidentMerge": _body(
            {
                "incidents": {
                    "type": "array",
                    "items": {"type": "string"},
                    "minItems": 1,
                    "maxItems": _MAX_MERGE,
                }
            },
            ["incidents"],
        ),
    }
