"""The OpenAPI 3.1 document of the admin API, served at ``/api/admin/v1/openapi.json``.

Each endpoint group gives its ``paths`` and ``components.schemas``; the shared parts (the bearer
scheme, the error body and the error responses) are here. A test checks that every endpoint the
API serves is described, and every described operation is served.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.settings import GatewayRoute
from onegate import __version__
from onegate.admin import gateway_routes
from onegate.admin.api import MAX_BODY_BYTES, PREFIX

__all__ = ["document"]


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


_RESPONSES: Mapping[str, dict[str, Any]] = {
    "BadRequest": _error("Malformed JSON or query (`bad_json`, `bad_request`)."),
    "Unauthenticated": {
        **_error("No admin API key, or one that is unknown, revoked or expired (`unauthenticated`)."),
        "headers": {
            "WWW-Authenticate": {"schema": {"type": "string"}, "description": "`Bearer` (RFC 6750)."}
        },
    },
    "NotFound": _error("No such route or endpoint (`route_not_found`, `not_found`)."),
    "PayloadTooLarge": _error(f"The body is larger than {MAX_BODY_BYTES} bytes (`payload_too_large`)."),
    "UnsupportedMediaType": _error("The body is not `application/json` (`unsupported_media_type`)."),
    "Invalid": _error("A value does not validate (`invalid_route`); `field` names it."),
    "Unavailable": _error("The database or the KV store is away (`unavailable`); try again."),
}

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "description": "A code from a closed vocabulary."},
        "message": {
            "type": "object",
            "required": ["zh", "en"],
            "properties": {"zh": {"type": "string"}, "en": {"type": "string"}},
        },
        "field": {"type": "string", "description": "The input at fault, when there is one."},
        "request_id": {"type": ["string", "null"]},
    },
}


def document() -> dict[str, Any]:
    """The whole document (a fresh dict each call)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "OneGate admin API",
            "version": f"1 ({__version__})",
            "description": "Administration of a OneGate deployment. Authenticate with an admin API key "
            "(`onegate admin api-keys create`) as `Authorization: Bearer oga_...`. Errors are JSON "
            '`{"error": code, "message": {"zh": ..., "en": ...}}`.',
        },
        "servers": [{"url": PREFIX}],
        "security": [{"adminKey": []}],
        "tags": [{"name": "gateway", "description": "The gateway's routes."}],
        "paths": {
            **gateway_routes.openapi_paths(),
            "/openapi.json": {
                "get": {
                    "operationId": "getOpenApi",
                    "summary": "This document",
                    "security": [],
                    "responses": {"200": {"description": "The OpenAPI document."}},
                }
            },
        },
        "components": {
            "securitySchemes": {
                "adminKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "oga_<id>_<secret>",
                    "description": "An admin API key; made with `onegate admin api-keys create`.",
                }
            },
            "responses": dict(_RESPONSES),
            "schemas": {
                "Error": _ERROR_SCHEMA,
                **gateway_routes.openapi_schemas(GatewayRoute.model_json_schema()),
            },
        },
    }
