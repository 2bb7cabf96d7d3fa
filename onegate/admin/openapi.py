"""The OpenAPI 3.1 document of the admin API, served at ``/api/admin/v1/openapi.json``.

Each endpoint group gives its ``paths`` and ``components.schemas``; the shared parts (the bearer
scheme, the error body and the error responses) are here, in :func:`base_document`, which the
SOC API's document (onegate.admin.soc_openapi) shares. A test checks that every endpoint the
API serves is described, and every described operation is served.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.settings import GatewayRoute
from onegate import __version__
from onegate.admin import gateway_routes
from onegate.admin.api import MAX_BODY_BYTES, PREFIX

__all__ = ["base_document", "document", "error_response"]


def error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


_RESPONSES: Mapping[str, dict[str, Any]] = {
    "BadRequest": error_response("Malformed JSON or query (`bad_json`, `bad_request`)."),
    "Unauthenticated": {
        **error_response("No admin API key, or one that is unknown, revoked or expired (`unauthenticated`)."),
        "headers": {
            "WWW-Authenticate": {"schema": {"type": "string"}, "description": "`Bearer` (RFC 6750)."}
        },
    },
    "NotFound": error_response("No such route or endpoint (`route_not_found`, `not_found`)."),
    "PayloadTooLarge": error_response(
        f"The body is larger than {MAX_BODY_BYTES} bytes (`payload_too_large`)."
    ),
    "UnsupportedMediaType": error_response("The body is not `application/json` (`unsupported_media_type`)."),
    "Invalid": error_response("A value does not validate (`invalid_route`); `field` names it."),
    "Unavailable": error_response("The database or the KV store is away (`unavailable`); try again."),
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


def base_document(
    *,
    title: str,
    description: str,
    prefix: str,
    tags: list[dict[str, str]],
    paths: Mapping[str, Any],
    schemas: Mapping[str, Any],
    responses: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A document of an API served by :class:`~onegate.admin.api.AdminApi` at ``prefix``: the
    bearer scheme, the error body, the shared error responses (``responses`` adds to them or
    replaces some) and ``/openapi.json`` itself around the endpoint groups' ``paths`` and
    ``schemas``."""
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": f"1 ({__version__})", "description": description},
        "servers": [{"url": prefix}],
        "security": [{"adminKey": []}],
        "tags": tags,
        "paths": {
            **paths,
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
            "responses": {**_RESPONSES, **(responses or {})},
            "schemas": {"Error": _ERROR_SCHEMA, **schemas},
        },
    }


def document() -> dict[str, Any]:
    """The whole document (a fresh dict each call)."""
    return base_document(
        title="OneGate admin API",
        description="Administration of a OneGate deployment. Authenticate with an admin API key "
        "(`onegate admin api-keys create`) as `Authorization: Bearer oga_...`. Errors are JSON "
        '`{"error": code, "message": {"zh": ..., "en": ...}}`.',
        prefix=PREFIX,
        tags=[{"name": "gateway", "description": "The gateway's routes."}],
        paths=gateway_routes.openapi_paths(),
        schemas=gateway_routes.openapi_schemas(GatewayRoute.model_json_schema()),
    )
