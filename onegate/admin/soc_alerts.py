"""``/api/soc/v1/alerts``: list, read and triage the SOC's alerts.

=====  ===============================  ===================================================
GET    /alerts                          newest first, filtered, paged by ``cursor``
POST   /alerts/bulk                     one change to up to 1,000 alerts (mixed results)
GET    /alerts/{id}                     one alert (``ETag``: its version)
GET    /alerts/{id}/evidence            its events, read from the event store
GET    /alerts/{id}/history             its changes, oldest first
POST   /alerts/{id}/acknowledge         ``{note?}``
POST   /alerts/{id}/close               ``{reason, note?}``
POST   /alerts/{id}/reopen              ``{note?}``
POST   /alerts/{id}/assign              ``{assignee}`` (null: unassign)
POST   /alerts/{id}/comment             ``{text}``
=====  ===============================  ===================================================

A change takes ``If-Match`` (the ETag read) as the store's ``expected_version``: 412 when the
alert changed since. The analyst recorded is the key's actor (``api-key:<name>``); the store
writes the history entry and emits the ``alert-*`` event.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.responses import Response

from core.eventstore import EventStore, Query
from onegate.admin.api import ApiRequest, Endpoint, json_response
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
    query_time,
    ref,
    refuse_unknown_parameters,
)
from soc.alerts import ACTIONS, MAX_BULK, MAX_COMMENT, Alert, AlertStore, CloseReason, Status
from soc.detections.model import Severity

__all__ = ["AlertEndpoints", "fetch_events", "openapi_paths", "openapi_schemas"]

# The entity fields an alert list may be filtered by (the fields incidents link by).
ENTITY_FILTERS = ("user.name", "user.id", "source.ip", "session.id")
_LIST_PARAMETERS = (
    "status",
    "severity",
    "rule_id",
    "assignee",
    *ENTITY_FILTERS,
    "incident_id",
    "drill_id",
    "since",
    "until",
    "overdue",
    "limit",
    "cursor",
)
MAX_EVIDENCE_PAGE = 1000
_FETCH_CHUNK = 200


async def fetch_events(store: EventStore, ids: list[str]) -> dict[str, dict[str, Any]]:
    """The stored events of ``ids`` by id (an id the store no longer holds is absent)."""
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), _FETCH_CHUNK):
        chunk = ids[start : start + _FETCH_CHUNK]
        result = await store.search(Query(filters={"event.id": chunk}, size=len(chunk), ascending=True))
        for hit in result.hits:
            found[str(hit.get("event.id"))] = hit
    return found


def _alert_response(alert: Alert, status: int = 200) -> Response:
    return json_response(alert.as_dict(), status, {"etag": etag(alert.version)})


class AlertEndpoints:
    """The alert endpoints, on the alert store and the event store (for the evidence)."""

    def __init__(self, alerts: AlertStore, store: EventStore) -> None:
        self._alerts = alerts
        self._store = store

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("GET", "/alerts", guarded(self.list_alerts)),
            Endpoint("POST", "/alerts/bulk", guarded(self.bulk)),
            Endpoint("GET", "/alerts/{alert_id}", guarded(self.read)),
            Endpoint("GET", "/alerts/{alert_id}/evidence", guarded(self.evidence)),
            Endpoint("GET", "/alerts/{alert_id}/history", guarded(self.history)),
            Endpoint("POST", "/alerts/{alert_id}/acknowledge", guarded(self._change(self._acknowledge))),
            Endpoint("POST", "/alerts/{alert_id}/close", guarded(self._change(self._close))),
            Endpoint("POST", "/alerts/{alert_id}/reopen", guarded(self._change(self._reopen))),
            Endpoint("POST", "/alerts/{alert_id}/assign", guarded(self._change(self._assign))),
            Endpoint("POST", "/alerts/{alert_id}/comment", guarded(self._change(self._comment))),
        ]

    async def list_alerts(self, call: ApiRequest) -> Response:
        refuse_unknown_parameters(call, _LIST_PARAMETERS)
        entity = {name: value for name in ENTITY_FILTERS if (value := query_text(call, name)) is not None}
        page = await self._alerts.list(
            status=query_list(call, "status", [s.value for s in Status]),
            severity=query_list(call, "severity", [s.value for s in Severity]),
            rule_id=query_text(call, "rule_id"),
            assignee=query_text(call, "assignee"),
            entity=entity or None,
            incident_id=query_text(call, "incident_id", max_length=64),
            drill_id=query_text(call, "drill_id", max_length=64),
            since=query_time(call, "since"),
            until=query_time(call, "until"),
            overdue=bool(query_bool(call, "overdue")),
            limit=call.query_int("limit", 50, low=1, high=500),
            cursor=query_text(call, "cursor", max_length=500),
        )
        return json_response(page.as_dict())

    async def read(self, call: ApiRequest) -> Response:
        return _alert_response(await self._alerts.get(call.params["alert_id"]))

    async def history(self, call: ApiRequest) -> Response:
        entries = await self._alerts.history(call.params["alert_id"])
        return json_response({"history": [entry.as_dict() for entry in entries]})

    async def evidence(self, call: ApiRequest) -> Response:
        """The alert's events in the order they came in, ``limit`` from ``offset``; ``missing``
        names the ids the event store does not hold (past retention, or not yet written)."""
        ids = await self._alerts.evidence(call.params["alert_id"])
        offset = call.query_int("offset", 0, low=0, high=10**9)
        limit = call.query_int("limit", 100, low=1, high=MAX_EVIDENCE_PAGE)
        wanted = ids[offset : offset + limit]
        found = await fetch_events(self._store, wanted)
        return json_response(
            {
                "total": len(ids),
                "offset": offset,
                "event_ids": wanted,
                "events": [found[i] for i in wanted if i in found],
                "missing": [i for i in wanted if i not in found],
            }
        )

    # -- changes ---------------------------------------------------------------------------------

    def _change(
        self, apply: Callable[[str, Body, str, int | None], Awaitable[Alert]]
    ) -> Callable[[ApiRequest], Awaitable[Response]]:
        async def change(call: ApiRequest) -> Response:
            expected = expected_version(call)
            body = await Body.of(call)
            return _alert_response(await apply(call.params["alert_id"], body, call.actor, expected))

        return change

    async def _acknowledge(self, alert_id: str, body: Body, actor: str, expected: int | None) -> Alert:
        note = body.text("note", max_length=MAX_COMMENT)
        body.done()
        return await self._alerts.acknowledge(alert_id, actor=actor, expected_version=expected, note=note)

    async def _close(self, alert_id: str, body: Body, actor: str, expected: int | None) -> Alert:
        reason = body.text("reason", max_length=64)
        note = body.text("note", max_length=MAX_COMMENT)
        body.done()
        return await self._alerts.close(alert_id, reason, actor=actor, note=note, expected_version=expected)

    async def _reopen(self, alert_id: str, body: Body, actor: str, expected: int | None) -> Alert:
        note = body.text("note", max_length=MAX_COMMENT)
        body.done()
        return await self._alerts.reopen(alert_id, actor=actor, expected_version=expected, note=note)

    async def _assign(self, alert_id: str, body: Body, actor: str, expected: int | None) -> Alert:
        assignee = body.username("assignee")
        body.done()
        return await self._alerts.assign(alert_id, assignee, actor=actor, expected_version=expected)

    async def _comment(self, alert_id: str, body: Body, actor: str, expected: int | None) -> Alert:
        text = body.text("text", max_length=MAX_COMMENT) or ""
        body.done()
        return await self._alerts.comment(alert_id, text, actor=actor, expected_version=expected)

    async def bulk(self, call: ApiRequest) -> Response:
        body = await Body.of(call)
        ids = body.strings("ids", max_items=MAX_BULK, max_length=64)
        if not ids:
            raise invalid("ids", f"1 to {MAX_BULK} alert ids", f"须为 1 至 {MAX_BULK} 个告警编号")
        action = body.text("action", required=True, max_length=32) or ""
        versions = body.mapping("versions") or {}
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in versions.values()):
            raise invalid("versions", "alert id -> the version read", "须为 告警编号 -> 读取时的版本号")
        reason = body.text("reason", max_length=64)
        note = body.text("note", max_length=MAX_COMMENT)
        text = body.text("text", max_length=MAX_COMMENT)
        assignee = body.username("assignee") if body.has("assignee") or action == "assign" else None
        body.done()
        result = await self._alerts.bulk(
            ids,
            action,
            actor=call.actor,
            reason=reason,
            note=note,
            assignee=assignee,
            text=text,
            expected_versions=versions,
        )
        return json_response(result.as_dict())


# -- the OpenAPI description ---------------------------------------------------------------------

_ID = parameter("alert_id", {"type": "string", "pattern": "^[0-9a-f]{32}$"}, "The alert's id.", where="path")


def _note_body(extra: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": required,
        "properties": extra,
    }


def openapi_paths() -> dict[str, Any]:
    changed = {"200": answer("Alert", "The alert as it is now; ETag is its new version.")}
    change_errors = ("NotFound", "Conflict", "Stale")

    def change(name: str, summary: str, body: str) -> dict[str, Any]:
        return {
            "parameters": [_ID],
            "post": operation(
                f"{name}Alert",
                summary,
                "alerts",
                changed,
                parameters=[IF_MATCH],
                body=body,
                errors=change_errors,
            ),
        }

    strings = {"type": "string"}
    return {
        "/alerts": {
            "get": operation(
                "listAlerts",
                "Alerts, newest first, with the total of every match and a cursor for the next page",
                "alerts",
                {"200": answer("AlertPage", "One page.")},
                errors=("Invalid",),
                parameters=[
                    parameter(
                        "status",
                        {"type": "array", "items": {"enum": [s.value for s in Status]}},
                        "Any of these (repeated or comma-separated).",
                    ),
                    parameter(
                        "severity",
                        {"type": "array", "items": {"enum": [s.value for s in Severity]}},
                        "Any of these (repeated or comma-separated).",
                    ),
                    parameter("rule_id", strings, "The rule that raised it."),
                    parameter("assignee", strings, "A user name, or `unassigned`."),
                    *(parameter(name, strings, "The alert is about this value.") for name in ENTITY_FILTERS),
                    parameter("incident_id", strings, "In this incident."),
                    parameter("drill_id", strings, "Of this drill, or `none` for real alerts only."),
                    parameter("since", {"type": "string", "format": "date-time"}, "Raised at or after."),
                    parameter("until", {"type": "string", "format": "date-time"}, "Raised before."),
                    parameter("overdue", {"type": "boolean"}, "Only alerts past a pending response target."),
                    parameter(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
                        "Page size.",
                    ),
                    parameter("cursor", strings, "The previous page's `cursor`."),
                ],
            )
        },
        "/alerts/bulk": {
            "post": operation(
                "bulkChangeAlerts",
                "One change to up to 1,000 alerts in one transaction; the ones it does not apply to are "
                "listed with the reason",
                "alerts",
                {"200": answer("BulkResult", "What changed and what was refused.")},
                body="AlertBulk",
            )
        },
        "/alerts/{alert_id}": {
            "parameters": [_ID],
            "get": operation(
                "getAlert",
                "One alert",
                "alerts",
                {"200": answer("Alert", "The alert; ETag is its version.")},
                errors=("NotFound",),
            ),
        },
        "/alerts/{alert_id}/evidence": {
            "parameters": [_ID],
            "get": operation(
                "getAlertEvidence",
                "The alert's events, read from the event store, in the order they joined it",
                "alerts",
                {"200": answer("AlertEvidence", "A page of the evidence.")},
                errors=("NotFound",),
                parameters=[
                    parameter("offset", {"type": "integer", "minimum": 0, "default": 0}, "Skip this many."),
                    parameter(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": MAX_EVIDENCE_PAGE, "default": 100},
                        "At most this many.",
                    ),
                ],
            ),
        },
        "/alerts/{alert_id}/history": {
            "parameters": [_ID],
            "get": operation(
                "getAlertHistory",
                "Every change of the alert, oldest first",
                "alerts",
                {"200": answer("AlertHistory", "The changes.")},
                errors=("NotFound",),
            ),
        },
        "/alerts/{alert_id}/acknowledge": change("acknowledge", "open -> acknowledged", "AlertNote"),
        "/alerts/{alert_id}/close": change(
            "close", "open or acknowledged -> closed, for a reason", "AlertClose"
        ),
        "/alerts/{alert_id}/reopen": change("reopen", "acknowledged or closed -> open", "AlertNote"),
        "/alerts/{alert_id}/assign": change(
            "assign", "Give the alert to an analyst (null: unassign)", "AlertAssign"
        ),
        "/alerts/{alert_id}/comment": change(
            "comment", "Add a comment to the alert's history", "AlertComment"
        ),
    }


def openapi_schemas() -> dict[str, Any]:
    note = {"type": "string", "maxLength": MAX_COMMENT}
    reason = {"type": "string", "enum": [r.value for r in CloseReason]}
    assignee = {"type": ["string", "null"], "maxLength": 200, "description": "A user name; null unassigns."}
    history_entry = {
        "type": "object",
        "properties": {
            "alert_id": {"type": "string"},
            "seq": {"type": "integer", "description": "The alert's version after this change."},
            "at": TIME,
            "actor": {"type": "string"},
            "action": {"type": "string"},
            "from_status": {"type": ["string", "null"]},
            "to_status": {"type": ["string", "null"]},
            "close_reason": {"type": ["string", "null"]},
            "assignee": {"type": ["string", "null"]},
            "note": {"type": ["string", "null"]},
        },
    }
    return {
        "Alert": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "rule": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "name": TEXT,
                        "technique": {"type": "string"},
                        "tactic": {"type": "string"},
                    },
                },
                "severity": {"type": "string", "enum": [s.value for s in Severity]},
                "severity_score": {"type": "integer"},
                "risk_score": {"type": "integer"},
                "status": {"type": "string", "enum": [s.value for s in Status]},
                "close_reason": {"type": ["string", "null"]},
                "assignee": {"type": ["string", "null"]},
                "entity": {"type": "object", "additionalProperties": {"type": "string"}},
                "reason": TEXT,
                "values": {"type": "object"},
                "first_seen": TIME,
                "last_seen": TIME,
                "created_at": TIME,
                "updated_at": TIME,
                "acknowledged_at": NULLABLE_TIME,
                "closed_at": NULLABLE_TIME,
                "event_count": {"type": "integer"},
                "signal_count": {"type": "integer"},
                "incident_id": {"type": ["string", "null"]},
                "drill_id": {"type": ["string", "null"]},
                "version": {"type": "integer", "description": "Counts the changes; the ETag."},
                "sla": {
                    "type": "object",
                    "description": "Times to acknowledge and close, due times, overdue.",
                },
            },
        },
        "AlertPage": {
            "type": "object",
            "properties": {
                "alerts": {"type": "array", "items": ref("schemas", "Alert")},
                "total": {"type": "integer", "description": "Every match, not only this page."},
                "cursor": {"type": ["string", "null"], "description": "For the next page; null on the last."},
            },
        },
        "AlertHistory": {
            "type": "object",
            "properties": {"history": {"type": "array", "items": history_entry}},
        },
        "AlertEvidence": {
            "type": "object",
            "properties": {
                "total": {"type": "integer", "description": "How many events the alert holds."},
                "offset": {"type": "integer"},
                "event_ids": {"type": "array", "items": {"type": "string"}},
                "events": {"type": "array", "items": {"type": "object", "description": "A flat ECS event."}},
                "missing": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Ids the event store does not hold (retention, or not yet written).",
                },
            },
        },
        "AlertNote": _note_body({"note": note}, []),
        "AlertClose": _note_body({"reason": reason, "note": note}, ["reason"]),
        "AlertAssign": _note_body({"assignee": assignee}, ["assignee"]),
        "AlertComment": _note_body({"text": {**note, "minLength": 1}}, ["text"]),
        "AlertBulk": _note_body(
            {
                "ids": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": MAX_BULK},
                "action": {"type": "string", "enum": list(ACTIONS)},
                "reason": reason,
                "note": note,
                "assignee": assignee,
                "text": note,
                "versions": {
                    "type": "object",
                    "additionalProperties": {"type": "integer"},
                    "description": "Alert id -> the version read (If-Match per alert).",
                },
            },
            ["ids", "action"],
        ),
        "BulkResult": {
            "type": "object",
            "properties": {
                "changed": {"type": "array", "items": ref("schemas", "Alert")},
                "refused": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "id": {"type": "string"},
                            "code": {"type": "string"},
                            "en": {"type": "string"},
                            "zh": {"type": "string"},
                        },
                    },
                },
            },
        },
    }
