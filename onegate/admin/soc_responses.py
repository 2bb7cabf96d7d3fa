"""``/api/soc/v1/responses``: run response actions and read what was run.

=====  ======================  ==========================================================
POST   /responses              ``{action, target?, params?, reason, alert_id?, incident_id?}``
                               -> 201 with the record of the run (``status`` done or failed)
GET    /responses              runs, oldest first (``alert_id``, ``incident_id``, ``target``)
GET    /responses/actions      the actions this deployment can run, with their names
=====  ======================  ==========================================================

Without ``target``, the target comes from the alert's entity — or, when only an incident is named,
the incident's — the field the action acts on (``user.name`` or ``source.ip``,
:data:`soc.response.services.TARGETS`); 422 when there is none, or when the incident names several
(an alert never borrows its incident's entities: a response acts on what the analyst named). A run
for an alert of an incident counts as a response to that incident too (its ``responded_at``). A run
whose responder fails is still recorded: 201 with ``status: failed`` and the reason in ``detail``.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from onegate.admin.api import ApiError, ApiRequest, Endpoint, json_response
from onegate.admin.soc_common import (
    TEXT,
    TIME,
    Body,
    answer,
    guarded,
    invalid,
    operation,
    parameter,
    query_text,
    ref,
    refuse_unknown_parameters,
)
from soc.alerts import AlertStore
from soc.incidents.services import IncidentStore
from soc.response.services import NAMES, TARGETS, Action, ResponseService

__all__ = ["ResponseEndpoints", "openapi_paths", "openapi_schemas"]

# The parameters each action takes: their bounds and defaults, as ResponseService checks them.
PARAMS: dict[Action, dict[str, dict[str, Any]]] = {
    Action.BLOCK_ADDRESS: {
        "seconds": {"type": "integer", "minimum": 60, "maximum": 90 * 86400, "default": 3600},
    },
    Action.RAISE_RISK: {
        "score": {"type": "integer", "minimum": 1, "maximum": 100, "default": 80},
        "seconds": {"type": "integer", "minimum": 60, "maximum": 90 * 86400, "default": 86400},
    },
}


class ResponseEndpoints:
    def __init__(self, responses: ResponseService, alerts: AlertStore, incidents: IncidentStore) -> None:
        self._responses = responses
        self._alerts = alerts
        self._incidents = incidents

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("POST", "/responses", guarded(self.run)),
            Endpoint("GET", "/responses", guarded(self.list_runs)),
            Endpoint("GET", "/responses/actions", guarded(self.actions)),
        ]

    async def run(self, call: ApiRequest) -> Response:
        body = await Body.of(call)
        name = body.text("action", required=True, max_length=64) or ""
        try:
            action = Action(name)
        except ValueError:
            raise ApiError(
                422,
                "unknown_action",
                f"no response action {name[:40]!r} (one of {', '.join(Action)})",
                f"没有响应动作“{name[:40]}”（可用：{'、'.join(Action)}）",
                field="action",
            ) from None
        target = body.text("target", max_length=200)
        params = body.mapping("params") or {}
        reason = body.text("reason", required=True, max_length=1000) or ""
        alert_id = body.text("alert_id", max_length=64)
        incident_id = body.text("incident_id", max_length=64)
        body.done()
        field = TARGETS[action]
        alert = await self._alerts.get(alert_id) if alert_id is not None else None
        if incident_id is None and alert is not None:
            incident_id = alert.incident_id
        incident = await self._incidents.get(incident_id) if incident_id is not None else None
        if incident is not None and incident.merged_into is not None:
            incident = await self._incidents.get(incident.merged_into)  # its alerts live there now
        if target is None and alert is not None:
            target = alert.entity.get(field)
        if target is None and alert is None and incident is not None:
            named = [key.split("=", 1)[1] for key in incident.entities if key.startswith(f"{field}=")]
            if len(named) > 1:
                raise invalid(
                    "target",
                    f"the incident names several {field} ({', '.join(named[:5])}); say which",
                    f"该事件涉及多个 {field}（{'、'.join(named[:5])}），请指定目标",
                )
            target = named[0] if named else None
        if target is None:
            raise invalid(
                "target",
                f"required: the alert or incident names no {field}",
                f"必填：所给告警或事件中没有 {field}",
            )
        run = await self._responses.execute(
            action,
            target,
            actor=call.actor,
            reason=reason,
            params=params,
            alert_id=alert.id if alert is not None else None,
            incident_id=incident.id if incident is not None else None,
        )
        return json_response(run.as_dict(), 201)

    async def list_runs(self, call: ApiRequest) -> Response:
        refuse_unknown_parameters(call, ("alert_id", "incident_id", "target"))
        runs = await self._responses.history(
            alert_id=query_text(call, "alert_id", max_length=64),
            incident_id=query_text(call, "incident_id", max_length=64),
            target=query_text(call, "target"),
        )
        return json_response({"responses": [run.as_dict() for run in runs]})

    async def actions(self, call: ApiRequest) -> Response:
        return json_response(
            {
                "actions": [
                    {
                        "action": action.value,
                        "name": NAMES[action].as_dict(),
                        "target": TARGETS[action],
                        "params": PARAMS.get(action, {}),
                    }
                    for action in self._responses.available
                ]
            }
        )


# -- the OpenAPI description ---------------------------------------------------------------------


def openapi_paths() -> dict[str, Any]:
    strings = {"type": "string"}
    return {
        "/responses": {
            "post": operation(
                "runResponse",
                "Run a response action (revoke sessions, lock an account, block an address ...)",
                "responses",
                {"201": answer("ResponseRun", "The record of the run: done, or failed with the reason.")},
                body="ResponseRequest",
                errors=("NotFound", "Conflict"),
            ),
            "get": operation(
                "listResponses",
                "Runs, oldest first (at most 1,000)",
                "responses",
                {
                    "200": answer(
                        {
                            "type": "object",
                            "properties": {
                                "responses": {"type": "array", "items": ref("schemas", "ResponseRun")}
                            },
                        },
                        "The runs.",
                    )
                },
                parameters=[
                    parameter("alert_id", strings, "For this alert."),
                    parameter("incident_id", strings, "For this incident."),
                    parameter("target", strings, "On this user name or address."),
                ],
            ),
        },
        "/responses/actions": {
            "get": operation(
                "listResponseActions",
                "The actions this deployment can run",
                "responses",
                {
                    "200": answer(
                        {
                            "type": "object",
                            "properties": {
                                "actions": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "action": strings,
                                            "name": TEXT,
                                            "target": {"type": "string", "enum": ["user.name", "source.ip"]},
                                            "params": {"type": "object"},
                                        },
                                    },
                                }
                            },
                        },
                        "The actions.",
                    )
                },
            )
        },
    }


def openapi_schemas() -> dict[str, Any]:
    return {
        "ResponseRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["action", "reason"],
            "properties": {
                "action": {"type": "string", "enum": [a.value for a in Action]},
                "target": {
                    "type": "string",
                    "description": "A user name or an address / network; from the alert's or incident's "
                    "entity when omitted.",
                },
                "params": {
                    "type": "object",
                    "description": "block-address: `seconds`; raise-risk: `score`, `seconds`.",
                },
                "reason": {"type": "string", "minLength": 1, "maxLength": 1000},
                "alert_id": {"type": "string"},
                "incident_id": {"type": "string"},
            },
        },
        "ResponseRun": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "action": {"type": "string"},
                "target": {"type": "string"},
                "params": {"type": "object"},
                "actor": {"type": "string"},
                "reason": {"type": "string"},
                "automatic": {"type": "boolean"},
                "alert_id": {"type": ["string", "null"]},
                "incident_id": {"type": ["string", "null"]},
                "status": {"type": "string", "enum": ["done", "failed"]},
                "detail": TEXT,
                "at": TIME,
            },
        },
    }
