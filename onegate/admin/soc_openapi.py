"""The OpenAPI 3.1 document of the SOC API, served at ``/api/soc/v1/openapi.json``.

The shared parts (the bearer scheme, the error body, the error responses, this document's own
path) come from :func:`onegate.admin.openapi.base_document`; each endpoint group gives its
``paths`` and ``components.schemas``. A test checks that every endpoint the API serves is
described, and every described operation is served.
"""

from __future__ import annotations

from typing import Any

from onegate.admin import soc_alerts, soc_drills, soc_events, soc_incidents, soc_responses, soc_rules
from onegate.admin.openapi import base_document, error_response
from onegate.admin.soc_common import PREFIX

__all__ = ["document"]

_GROUPS = (soc_alerts, soc_incidents, soc_responses, soc_drills, soc_rules, soc_events)

_TAGS = [
    {"name": "alerts", "description": "Alerts raised by the detections: triage, evidence, history."},
    {"name": "incidents", "description": "Alerts linked by entity: status, assignee, timeline, merging."},
    {"name": "responses", "description": "Response actions: revoke sessions, lock, block, raise risk."},
    {"name": "drills", "description": "Attack-defence drills: plan, test cases, score."},
    {"name": "rules", "description": "The detection rules in effect."},
    {"name": "events", "description": "Search of the stored events, for investigation."},
]

_RESPONSES = {
    "BadRequest": error_response(
        "Malformed JSON, a bad query parameter (`bad_json`, `bad_request`), or a query the event "
        "store's language does not describe (`bad_query`, with the position)."
    ),
    "NotFound": error_response(
        "No such alert, incident, drill or test case (`alert_not_found`, `no_incident`, `no_alert`, "
        "`no_drill`, `no_case`), or no such endpoint (`not_found`)."
    ),
    "Conflict": error_response(
        "The change does not apply to the object as it is (`already_acknowledged`, `already_closed`, "
        "`closed`, `already_open`, `already_assigned`, `not_assigned`, `invalid_status`, `merged`, "
        "`drill_mismatch`, `not_linked`, `exists`, `concurrent_change`); the message says why in "
        "both languages."
    ),
    "Stale": error_response(
        "The object changed since it was read: If-Match names an older version "
        "(`version_mismatch`, `version_conflict`). Read it again."
    ),
    "Invalid": error_response(
        "A value does not validate (`invalid_value` and the services' own codes such as "
        "`close_reason_required`, `comment_empty`, `invalid_target`, `invalid_technique`); `field` "
        "names it when known."
    ),
    "Unavailable": error_response("The database, the KV store or the event store is away (`unavailable`)."),
}


def document() -> dict[str, Any]:
    """The whole document (a fresh dict each call)."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for group in _GROUPS:
        paths.update(group.openapi_paths())
        schemas.update(group.openapi_schemas())
    return base_document(
        title="OneGate SOC API",
        description="The security operations centre: alerts, incidents, response actions, drills, "
        "detection rules and event search. Authenticate with an admin API key "
        "(`onegate admin api-keys create`) as `Authorization: Bearer oga_...`; changes are recorded "
        'as made by `api-key:<name>`. Errors are JSON `{"error": code, "message": {"zh": ..., '
        '"en": ...}}`. Changes of an alert or incident take `If-Match` with the ETag read.',
        prefix=PREFIX,
        tags=_TAGS,
        paths=paths,
        schemas=schemas,
        responses=_RESPONSES,
    )
