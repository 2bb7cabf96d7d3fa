"""``/api/admin/v1/gateway/routes``: the gateway's routes, read and changed over the admin API.

=========  ==================================  ==============================================
GET        /gateway/routes                     every route: configured ones (``source: config``,
                                               read-only) and added ones (``source: api``)
POST       /gateway/routes                     add a route (201, ``Location``, ``ETag``)
GET        /gateway/routes/{app}               one route (``ETag``: its revision)
PUT        /gateway/routes/{app}               replace an added route's settings (``If-Match``)
DELETE     /gateway/routes/{app}               remove an added route (204; ``If-Match``)
GET        /gateway/routes/{app}/history       its changes, newest first
GET        /gateway/route-changes              every change, newest first
=========  ==================================  ==============================================

The store (gateway.route_store) validates and records; this module maps its errors to statuses:
a value that does not validate 422, a conflict (with a configured route, another added route, an
existing one) 409, an unknown application 404, a stale ``If-Match`` 412. Every change names the
key that made it (``updated_by``: ``api-key:<name>``; ``labels.actor`` and
``onegate.admin.key_id`` in its event).
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from gateway.route_records import (
    APP_NAME,
    FIELDS,
    MAX_HOSTS,
    RouteConflict,
    RouteError,
    RouteInvalid,
    RouteNotFound,
    RouteStale,
    StoredRoute,
    config_route_dict,
)
from gateway.route_store import RouteStore
from onegate.admin.api import PREFIX, ApiError, ApiRequest, Endpoint, json_response

__all__ = ["RouteEndpoints"]

_STATUS: dict[type[RouteError], int] = {
    RouteInvalid: 422,
    RouteConflict: 409,
    RouteNotFound: 404,
    RouteStale: 412,
}
_MAX_COMMENT = 1000


def _api_error(error: RouteError) -> ApiError:
    status = next((code for kind, code in _STATUS.items() if isinstance(error, kind)), 422)
    return ApiError(status, error.code, error.message_en, error.message_zh, field=error.field)


def _etag(route: StoredRoute) -> str:
    return f'"{route.revision}"'


def _expected_revision(call: ApiRequest) -> int | None:
    """The revision ``If-Match`` names (None: no condition). A value that names no revision
    cannot match: 412, as RFC 9110 §13.1.1 says for a condition that fails."""
    value = call.request.headers.get("if-match")
    if value is None or value.strip() == "*":
        return None
    tag = value.strip()
    if len(tag) >= 3 and tag[0] == tag[-1] == '"' and tag[1:-1].isdigit():
        return int(tag[1:-1])
    return -1


def _comment(body: dict[str, Any]) -> str:
    comment = body.pop("comment", "")
    if not isinstance(comment, str) or len(comment) > _MAX_COMMENT:
        raise ApiError(
            422,
            "invalid_route",
            f"comment: text of at most {_MAX_COMMENT} characters",
            f"comment：最多 {_MAX_COMMENT} 个字符的文本",
            field="comment",
        )
    return comment


class RouteEndpoints:
    """The endpoints of the gateway's routes, on ``store``."""

    def __init__(self, store: RouteStore) -> None:
        self._store = store

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("GET", "/gateway/routes", self.list_routes),
            Endpoint("POST", "/gateway/routes", self.create),
            Endpoint("GET", "/gateway/routes/{app}", self.read),
            Endpoint("PUT", "/gateway/routes/{app}", self.replace),
            Endpoint("DELETE", "/gateway/routes/{app}", self.remove),
            Endpoint("GET", "/gateway/routes/{app}/history", self.history),
            Endpoint("GET", "/gateway/route-changes", self.changes),
        ]

    async def list_routes(self, call: ApiRequest) -> Response:
        revision = await self._store.revision()
        added = await self._store.routes()
        configured = [config_route_dict(route) for route in self._store.config]
        return json_response({"revision": revision, "routes": configured + [r.as_dict() for r in added]})

    async def read(self, call: ApiRequest) -> Response:
        app = call.params["app"]
        try:
            route = await self._store.get(app)
        except RouteNotFound as e:
            configured = next((r for r in self._store.config if r.app == app), None)
            if configured is not None:
                return json_response(config_route_dict(configured))
            raise _api_error(e) from None
        return json_response(route.as_dict(), headers={"etag": _etag(route)})

    async def create(self, call: ApiRequest) -> Response:
        body = await call.json()
        comment = _comment(body)
        app = body.pop("app", None)
        if not isinstance(app, str):
            raise ApiError(
                422, "invalid_route", "app: required, a string", "app：必填，须为字符串", field="app"
            )
        try:
            route = await self._store.create(
                app, body, actor=call.actor, comment=comment, context=call.context()
            )
        except RouteError as e:
            raise _api_error(e) from None
        headers = {"location": f"{PREFIX}/gateway/routes/{route.app}", "etag": _etag(route)}
        return json_response(route.as_dict(), 201, headers)

    async def replace(self, call: ApiRequest) -> Response:
        app = call.params["app"]
        body = await call.json()
        comment = _comment(body)
        named = body.pop("app", app)
        if named != app:
            raise ApiError(
                422,
                "invalid_route",
                f"app: the body names {named!r}, the address {app!r}; an application is not renamed",
                "app：请求体与地址中的应用名不一致；应用不能改名",
                field="app",
            )
        try:
            route = await self._store.update(
                app,
                body,
                actor=call.actor,
                comment=comment,
                expect_revision=_expected_revision(call),
                context=call.context(),
            )
        except RouteError as e:
            raise _api_error(e) from None
        return json_response(route.as_dict(), headers={"etag": _etag(route)})

    async def remove(self, call: ApiRequest) -> Response:
        comment = call.request.query_params.get("comment", "")[:_MAX_COMMENT]
        try:
            await self._store.remove(
                call.params["app"],
                actor=call.actor,
                comment=comment,
                expect_revision=_expected_revision(call),
                context=call.context(),
            )
        except RouteError as e:
            raise _api_error(e) from None
        return Response(status_code=204, headers={"cache-control": "no-store"})

    async def history(self, call: ApiRequest) -> Response:
        limit = call.query_int("limit", 50, low=1, high=500)
        changes = await self._store.history(call.params["app"], limit)
        return json_response({"changes": [c.as_dict() for c in changes]})

    async def changes(self, call: ApiRequest) -> Response:
        limit = call.query_int("limit", 50, low=1, high=500)
        return json_response({"changes": [c.as_dict() for c in await self._store.history(None, limit)]})


# -- the OpenAPI description ---------------------------------------------------------------------

_ERRORS = {
    "400": {"$ref": "#/components/responses/BadRequest"},
    "401": {"$ref": "#/components/responses/Unauthenticated"},
    "503": {"$ref": "#/components/responses/Unavailable"},
}
_BODY_ERRORS = {
    "413": {"$ref": "#/components/responses/PayloadTooLarge"},
    "415": {"$ref": "#/components/responses/UnsupportedMediaType"},
    "422": {"$ref": "#/components/responses/Invalid"},
}
_APP = {
    "name": "app",
    "in": "path",
    "required": True,
    "description": "The application's name in the access policy.",
    "schema": {"$ref": "#/components/schemas/AppName"},
}
_IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "description": 'Change only if the route is still at this revision (its ETag, e.g. `"3"`).',
    "schema": {"type": "string"},
}
_LIMIT = {
    "name": "limit",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
}


def _json(schema: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def openapi_paths() -> dict[str, Any]:
    """The ``paths`` of the OpenAPI document for these endpoints."""
    conflict = _json("Error", "Conflicts with a configured route, another added route, or an existing one.")
    not_found = {"$ref": "#/components/responses/NotFound"}
    stale = _json("Error", "The route is no longer at the revision If-Match names.")
    return {
        "/gateway/routes": {
            "get": {
                "operationId": "listGatewayRoutes",
                "summary": "Every route: configured (read-only) and added ones",
                "tags": ["gateway"],
                "responses": {
                    "200": _json("RouteList", "The routes and the revision of the set."),
                    **_ERRORS,
                },
            },
            "post": {
                "operationId": "createGatewayRoute",
                "summary": "Add a route; every gateway process serves it within a second",
                "tags": ["gateway"],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RouteCreate"}}},
                },
                "responses": {
                    "201": _json("Route", "Added."),
                    "409": conflict,
                    **_ERRORS,
                    **_BODY_ERRORS,
                },
            },
        },
        "/gateway/routes/{app}": {
            "parameters": [_APP],
            "get": {
                "operationId": "getGatewayRoute",
                "summary": "One route",
                "tags": ["gateway"],
                "responses": {
                    "200": _json("Route", "The route; ETag is its revision."),
                    "404": not_found,
                    **_ERRORS,
                },
            },
            "put": {
                "operationId": "replaceGatewayRoute",
                "summary": "Replace an added route's settings (missing ones take their defaults)",
                "tags": ["gateway"],
                "parameters": [_IF_MATCH],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/RouteReplace"}}
                    },
                },
                "responses": {
                    "200": _json("Route", "The route as stored now."),
                    "404": not_found,
                    "409": conflict,
                    "412": stale,
                    **_ERRORS,
                    **_BODY_ERRORS,
                },
            },
            "delete": {
                "operationId": "deleteGatewayRoute",
                "summary": "Remove an added route; its host is refused (421) within a second",
                "tags": ["gateway"],
                "parameters": [
                    _IF_MATCH,
                    {
                        "name": "comment",
                        "in": "query",
                        "required": False,
                        "description": "Why, kept in the history.",
                        "schema": {"type": "string", "maxLength": _MAX_COMMENT},
                    },
                ],
                "responses": {
                    "204": {"description": "Removed."},
                    "404": not_found,
                    "409": conflict,
                    "412": stale,
                    **_ERRORS,
                },
            },
        },
        "/gateway/routes/{app}/history": {
            "parameters": [_APP],
            "get": {
                "operationId": "getGatewayRouteHistory",
                "summary": "The changes of one application's route, newest first",
                "tags": ["gateway"],
                "parameters": [_LIMIT],
                "responses": {"200": _json("RouteChanges", "The changes."), **_ERRORS},
            },
        },
        "/gateway/route-changes": {
            "get": {
                "operationId": "listGatewayRouteChanges",
                "summary": "Every change of the routes, newest first",
                "tags": ["gateway"],
                "parameters": [_LIMIT],
                "responses": {"200": _json("RouteChanges", "The changes."), **_ERRORS},
            },
        },
    }


def openapi_schemas(settings_schema: dict[str, Any]) -> dict[str, Any]:
    """The ``components.schemas`` of these endpoints. ``settings_schema``: the JSON schema of a
    configured route (``core.settings.GatewayRoute``), whose descriptions and bounds the API shares."""
    properties = {name: value for name, value in settings_schema["properties"].items() if name != "app"}
    properties["hosts"] = {**properties["hosts"], "maxItems": MAX_HOSTS, "uniqueItems": True}
    properties["enabled"] = {
        "type": "boolean",
        "default": True,
        "description": "A disabled route is kept but not served.",
    }
    comment = {"type": "string", "maxLength": _MAX_COMMENT, "description": "Why, kept in the history."}
    settings = {name: properties[name] for name in FIELDS}
    return {
        "AppName": {"type": "string", "pattern": f"^{APP_NAME.pattern}$"},
        "RouteCreate": {
            "type": "object",
            "required": ["app", "hosts"],
            "additionalProperties": False,
            "properties": {"app": {"$ref": "#/components/schemas/AppName"}, **settings, "comment": comment},
        },
        "RouteReplace": {
            "type": "object",
            "required": ["hosts"],
            "additionalProperties": False,
            "properties": {"app": {"$ref": "#/components/schemas/AppName"}, **settings, "comment": comment},
        },
        "Route": {
            "type": "object",
            "properties": {
                "app": {"$ref": "#/components/schemas/AppName"},
                **settings,
                "source": {"type": "string", "enum": ["config", "api"]},
                "revision": {"type": "integer", "description": "Only for added routes."},
                "created_at": {"type": "string", "format": "date-time"},
                "created_by": {"type": "string"},
                "updated_at": {"type": "string", "format": "date-time"},
                "updated_by": {"type": "string"},
            },
        },
        "RouteList": {
            "type": "object",
            "properties": {
                "revision": {"type": "integer", "description": "The number of the newest change."},
                "routes": {"type": "array", "items": {"$ref": "#/components/schemas/Route"}},
            },
        },
        "RouteChange": {
            "type": "object",
            "properties": {
                "revision": {"type": "integer"},
                "at": {"type": "string", "format": "date-time"},
                "actor": {"type": "string"},
                "action": {"type": "string", "enum": ["create", "update", "remove"]},
                "app": {"type": "string"},
                "changed": {"type": "array", "items": {"type": "string"}},
                "before": {"type": ["object", "null"]},
                "after": {"type": ["object", "null"]},
                "comment": {"type": "string"},
            },
        },
        "RouteChanges": {
            "type": "object",
            "properties": {
                "changes": {"type": "array", "items": {"$ref": "#/components/schemas/RouteChange"}}
            },
        },
    }
