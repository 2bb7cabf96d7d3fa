"""``/api/soc/v1/drills``: plan attack-defence drills, record their test cases, read the score.

=====  =========================================  ===========================================
GET    /drills                                    every drill, latest window first
POST   /drills                                    plan one (201, ``Location``)
GET    /drills/{id}                               one drill with its test cases
POST   /drills/{id}/cases                         add a test case (201)
POST   /drills/{id}/cases/{seq}/executed          the red team ran it (``{at?}``, now by default)
POST   /drills/{id}/cases/{seq}/override          an analyst's outcome (``{outcome, note?}``;
                                                  null clears it)
GET    /drills/{id}/score                         every case's outcome and the coverage
=====  =========================================  ===========================================

A new drill is handed to ingest's tagger at once (not at its next refresh), so the red team's
events are tagged from the first one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.responses import Response

from core.eventstore import EventStore
from onegate.admin.api import ApiError, ApiRequest, Endpoint, json_response
from onegate.admin.soc_common import (
    PREFIX,
    TIME,
    Body,
    answer,
    guarded,
    invalid,
    operation,
    parameter,
    ref,
)
from soc.alerts.sla import iso_utc
from soc.drills.models import OUTCOMES
from soc.drills.services import Case, Drill, DrillStore

__all__ = ["DrillEndpoints", "case_dict", "drill_dict", "openapi_paths", "openapi_schemas"]

_MAX_RED_TEAM = 256


def case_dict(case: Case) -> dict[str, Any]:
    return {
        "seq": case.seq,
        "technique": case.technique,
        "action": case.action,
        "source": case.source,
        "account": case.account,
        "executed_at": None if case.executed_at is None else iso_utc(case.executed_at),
        "override": case.override,
        "override_note": case.override_note,
        "override_by": case.override_by,
    }


def drill_dict(drill: Drill) -> dict[str, Any]:
    return {
        "id": drill.id,
        "name": drill.name,
        "description": drill.description,
        "starts_at": iso_utc(drill.starts_at),
        "ends_at": iso_utc(drill.ends_at),
        "sources": list(drill.sources),
        "accounts": list(drill.accounts),
        "detect_within_s": drill.detect_within_s,
        "cases": [case_dict(case) for case in drill.cases],
    }


def _seq(call: ApiRequest) -> int:
    raw = call.params["seq"]
    if not raw.isdigit() or len(raw) > 9:
        drill_id = call.params["drill_id"][:64]
        raise ApiError(
            404,
            "no_case",
            f"no test case {raw[:20]} in drill {drill_id}",
            f"演练 {drill_id} 中没有用例 {raw[:20]}",
        )
    return int(raw)


class DrillEndpoints:
    """``on_change``: called after a drill is planned (ingest's tagger refresh)."""

    def __init__(
        self, drills: DrillStore, store: EventStore, on_change: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self._drills = drills
        self._store = store
        self._on_change = on_change

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("GET", "/drills", guarded(self.list_drills)),
            Endpoint("POST", "/drills", guarded(self.create)),
            Endpoint("GET", "/drills/{drill_id}", guarded(self.read)),
            Endpoint("POST", "/drills/{drill_id}/cases", guarded(self.add_case)),
            Endpoint("POST", "/drills/{drill_id}/cases/{seq}/executed", guarded(self.executed)),
            Endpoint("POST", "/drills/{drill_id}/cases/{seq}/override", guarded(self.override)),
            Endpoint("GET", "/drills/{drill_id}/score", guarded(self.score)),
        ]

    async def list_drills(self, call: ApiRequest) -> Response:
        return json_response({"drills": [drill_dict(drill) for drill in await self._drills.list()]})

    async def create(self, call: ApiRequest) -> Response:
        body = await Body.of(call)
        drill_id = body.text("id", required=True, max_length=64) or ""
        name = body.text("name", required=True, max_length=300) or ""
        starts_at = body.time("starts_at", required=True)
        ends_at = body.time("ends_at", required=True)
        sources = body.strings("sources", max_items=_MAX_RED_TEAM, max_length=64) or []
        accounts = body.strings("accounts", max_items=_MAX_RED_TEAM) or []
        within = body.integer("detect_within_s", low=60, high=86400)
        description = body.text("description") or ""
        body.done()
        if starts_at is None or ends_at is None:  # required above; for the type checker
            raise invalid("starts_at", "required", "必填")
        drill = await self._drills.create(
            drill_id,
            name,
            starts_at=starts_at,
            ends_at=ends_at,
            sources=sources,
            accounts=accounts,
            detect_within_s=within if within is not None else 900,
            description=description,
            actor=call.actor,
        )
        if self._on_change is not None:
            await self._on_change()
        return json_response(drill_dict(drill), 201, {"location": f"{PREFIX}/drills/{drill.id}"})

    async def read(self, call: ApiRequest) -> Response:
        return json_response(drill_dict(await self._drills.get(call.params["drill_id"])))

    async def add_case(self, call: ApiRequest) -> Response:
        body = await Body.of(call)
        technique = body.text("technique", required=True, max_length=16) or ""
        action = body.text("action", required=True) or ""
        source = body.text("source", max_length=64)
        account = body.text("account", max_length=200)
        body.done()
        case = await self._drills.add_case(
            call.params["drill_id"],
            technique=technique,
            action=action,
            source=source,
            account=account,
            actor=call.actor,
        )
        return json_response(case_dict(case), 201)

    async def executed(self, call: ApiRequest) -> Response:
        seq = _seq(call)
        body = await Body.of(call)
        at = body.time("at")
        body.done()
        case = await self._drills.executed(call.params["drill_id"], seq, at=at, actor=call.actor)
        return json_response(case_dict(case))

    async def override(self, call: ApiRequest) -> Response:
        seq = _seq(call)
        body = await Body.of(call)
        if not body.has("outcome"):
            raise invalid("outcome", f"required: one of {', '.join(OUTCOMES)}, or null", "必填")
        outcome = body.text("outcome", max_length=16)
        note = body.text("note") or ""
        body.done()
        case = await self._drills.override(call.params["drill_id"], seq, outcome, note=note, actor=call.actor)
        return json_response(case_dict(case))

    async def score(self, call: ApiRequest) -> Response:
        card = await self._drills.score(call.params["drill_id"], events=self._store)
        return json_response(card.as_dict())


# -- the OpenAPI description ---------------------------------------------------------------------

_ID = parameter(
    "drill_id", {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,63}$"}, "The drill's id.", where="path"
)
_SEQ = parameter("seq", {"type": "integer", "minimum": 1}, "The test case's number.", where="path")


def openapi_paths() -> dict[str, Any]:
    case = {"200": answer("DrillCase", "The test case as it is now.")}
    return {
        "/drills": {
            "get": operation(
                "listDrills",
                "Every drill, latest window first",
                "drills",
                {
                    "200": answer(
                        {
                            "type": "object",
                            "properties": {"drills": {"type": "array", "items": ref("schemas", "Drill")}},
                        },
                        "The drills.",
                    )
                },
            ),
            "post": operation(
                "createDrill",
                "Plan a drill: its window and the red team's sources and accounts",
                "drills",
                {"201": answer("Drill", "Planned; Location names it.")},
                body="DrillCreate",
                errors=("Conflict",),
            ),
        },
        "/drills/{drill_id}": {
            "parameters": [_ID],
            "get": operation(
                "getDrill",
                "One drill with its test cases",
                "drills",
                {"200": answer("Drill", "The drill.")},
                errors=("NotFound",),
            ),
        },
        "/drills/{drill_id}/cases": {
            "parameters": [_ID],
            "post": operation(
                "addDrillCase",
                "Add a test case (an ATT&CK technique and the planned action)",
                "drills",
                {"201": answer("DrillCase", "Added.")},
                body="DrillCaseCreate",
                errors=("NotFound",),
            ),
        },
        "/drills/{drill_id}/cases/{seq}/executed": {
            "parameters": [_ID, _SEQ],
            "post": operation(
                "markDrillCaseExecuted",
                "The red team ran the case (at `at`, now by default)",
                "drills",
                case,
                body="DrillCaseExecuted",
                errors=("NotFound",),
            ),
        },
        "/drills/{drill_id}/cases/{seq}/override": {
            "parameters": [_ID, _SEQ],
            "post": operation(
                "overrideDrillCase",
                "An analyst's outcome for the case (null clears it)",
                "drills",
                case,
                body="DrillCaseOverride",
                errors=("NotFound",),
            ),
        },
        "/drills/{drill_id}/score": {
            "parameters": [_ID],
            "get": operation(
                "scoreDrill",
                "Every case's outcome from the data (blocked, alerted, logged, none) and the coverage",
                "drills",
                {"200": answer("Scorecard", "The scorecard.")},
                errors=("NotFound",),
            ),
        },
    }


def openapi_schemas() -> dict[str, Any]:
    nullable = {"type": ["string", "null"]}
    coverage = {
        "type": "object",
        "properties": {
            "cases": {"type": "integer"},
            "executed": {"type": "integer"},
            "outcomes": {"type": "object", "additionalProperties": {"type": "integer"}},
            "share_alerted_or_better": {"type": ["number", "null"]},
            "mean_time_to_detect_s": {"type": ["number", "null"]},
        },
    }
    return {
        "DrillCase": {
            "type": "object",
            "properties": {
                "seq": {"type": "integer"},
                "technique": {"type": "string"},
                "action": {"type": "string"},
                "source": nullable,
                "account": nullable,
                "executed_at": {"type": ["string", "null"], "format": "date-time"},
                "override": {"type": ["string", "null"], "enum": [*OUTCOMES, None]},
                "override_note": nullable,
                "override_by": nullable,
            },
        },
        "Drill": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string"},
                "description": {"type": "string"},
                "starts_at": TIME,
                "ends_at": TIME,
                "sources": {"type": "array", "items": {"type": "string"}},
                "accounts": {"type": "array", "items": {"type": "string"}},
                "detect_within_s": {"type": "integer"},
                "cases": {"type": "array", "items": ref("schemas", "DrillCase")},
            },
        },
        "DrillCreate": {
            "type": "object",
            "additionalProperties": False,
            "required": ["id", "name", "starts_at", "ends_at"],
            "properties": {
                "id": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,63}$"},
                "name": {"type": "string", "maxLength": 300},
                "description": {"type": "string", "maxLength": 4000},
                "starts_at": TIME,
                "ends_at": TIME,
                "sources": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "The red team's addresses or networks (CIDR).",
                },
                "accounts": {"type": "array", "items": {"type": "string"}},
                "detect_within_s": {"type": "integer", "minimum": 60, "maximum": 86400, "default": 900},
            },
        },
        "DrillCaseCreate": {
            "type": "object",
            "additionalProperties": False,
            "required": ["technique", "action"],
            "properties": {
                "technique": {"type": "string", "pattern": r"^T\d{4}(\.\d{3})?$"},
                "action": {"type": "string"},
                "source": {"type": "string", "description": "The address it will come from."},
                "account": {"type": "string", "description": "The account it targets or uses."},
            },
        },
        "DrillCaseExecuted": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"at": TIME},
        },
        "DrillCaseOverride": {
            "type": "object",
            "additionalProperties": False,
            "required": ["outcome"],
            "properties": {
                "outcome": {"type": ["string", "null"], "enum": [*OUTCOMES, None]},
                "note": {"type": "string"},
            },
        },
        "Scorecard": {
            "type": "object",
            "properties": {
                "drill": {"type": "string"},
                "cases": {"type": "array", "items": {"type": "object"}},
                "overall": coverage,
                "by_technique": {"type": "object", "additionalProperties": coverage},
            },
        },
    }
