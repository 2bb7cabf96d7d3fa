"""Assemble the admin API from the runtime (mounted in the IdP role app at ``/api/admin/v1``)."""

from __future__ import annotations

from collections.abc import Collection

from starlette.responses import Response

from core.net import TrustedProxies
from gateway.route_store import RouteStore
from onegate.admin.api import AdminApi, ApiRequest, Endpoint, json_response
from onegate.admin.gateway_routes import RouteEndpoints
from onegate.admin.keys import AdminKeys
from onegate.admin.openapi import document
from onegate.runtime import Runtime

__all__ = ["admin_keys", "build_admin_api", "route_store"]


def admin_keys(runtime: Runtime) -> AdminKeys:
    return AdminKeys(runtime.sessions, runtime.vault.secrets, runtime.bus)


def route_store(runtime: Runtime, *, reserved_hosts: Collection[str] = ()) -> RouteStore:
    """The gateway's added routes, checked against this deployment's configured ones."""
    return RouteStore(
        runtime.sessions,
        runtime.kv,
        runtime.bus,
        config=runtime.settings.gateway.routes,
        reserved_hosts=reserved_hosts,
    )


async def _openapi(_call: ApiRequest) -> Response:
    return json_response(document())


def build_admin_api(runtime: Runtime, *, reserved_hosts: Collection[str] = ()) -> AdminApi:
    """The admin API; ``reserved_hosts``: host names no gateway route may claim (the IdP's)."""
    endpoints = [
        Endpoint("GET", "/openapi.json", _openapi, public=True),
        *RouteEndpoints(route_store(runtime, reserved_hosts=reserved_hosts)).endpoints(),
    ]
    return AdminApi(
        keys=admin_keys(runtime),
        events=runtime.bus,
        trusted_proxies=TrustedProxies(runtime.settings.server.trusted_proxies),
        endpoints=endpoints,
    )
