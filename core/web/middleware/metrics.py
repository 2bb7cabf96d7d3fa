"""Prometheus HTTP metrics: requests by method / route template / status class, latency, in-flight.

Collectors live in a per-app ``CollectorRegistry`` (``HTTPMetrics(registry)``), never the
global one, so several apps in one process do not clash. The ``route`` label is the matched
route's template (``/users/{user_id}``) or ``unmatched`` — never the raw path, whose
cardinality an attacker controls. Unknown methods are counted as ``OTHER`` for the same reason.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["HTTPMetrics", "MetricsMiddleware", "route_template"]

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class HTTPMetrics:
    """The HTTP collectors, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry, *, namespace: str = "onegate") -> None:
        self.registry = registry
        self.requests = Counter(
            "http_requests",
            "HTTP requests served.",
            ["method", "route", "status"],
            namespace=namespace,
            registry=registry,
        )
        self.duration = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency in seconds.",
            ["method", "route"],
            namespace=namespace,
            registry=registry,
            buckets=_BUCKETS,
        )
        self.in_flight = Gauge(
            "http_requests_in_flight", "HTTP requests being served.", namespace=namespace, registry=registry
        )


def route_template(scope: Scope, base_root_path: str = "") -> str:
    """The template of the route that handled ``scope`` (after routing), or ``unmatched``."""
    route = scope.get("route")
    if route is None:
        return "unmatched"
    root = str(scope.get("root_path", ""))
    prefix = root[len(base_root_path) :] if root.startswith(base_root_path) else root
    if isinstance(route, Mount):  # a mounted non-router app (static files): the mount itself
        return f"{prefix.rstrip('/')}/{{path}}"
    path_format = getattr(route, "path_format", None)
    if not isinstance(path_format, str):
        return "unmatched"
    return f"{prefix.rstrip('/')}{path_format}" or "/"


class MetricsMiddleware:
    """See the module docstring."""

    def __init__(self, app: ASGIApp, *, metrics: HTTPMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        base_root_path = str(scope.get("root_path", ""))
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        status = 500  # if the app raises before starting a response, the client gets a 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        start = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            self.metrics.in_flight.dec()
            route = route_template(scope, base_root_path)
            self.metrics.duration.labels(method, route).observe(time.perf_counter() - start)
            self.metrics.requests.labels(method, route, f"{status // 100}xx").inc()
