"""Route requests by host name, so one public port serves every role (idp.*, soc.*, ...)."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["HostRouter", "host_label"]


def host_label(scope: Scope) -> str:
    """The first label of the request's Host header, lower-cased (``idp`` for ``idp.localhost:8000``)."""
    for name, value in scope.get("headers", ()):
        if name == b"host":
            host = value.decode("latin-1").strip().lower()
            if host.startswith("["):  # an IPv6 literal is not a service name
                return ""
            host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
            label, dot, _rest = host.partition(".")
            return label if dot and not label.isdigit() else ""
    return ""


class HostRouter:
    """Send each HTTP / WebSocket request to the app named by its host's first label.

    Lifespan events go to ``on_lifespan`` only: the role apps share one runtime, which
    the process opens and closes once.
    """

    def __init__(
        self, apps: Mapping[str, ASGIApp], *, default: ASGIApp, lifespan: ASGIApp | None = None
    ) -> None:
        self._apps = dict(apps)
        self._default = default
        self._lifespan = lifespan

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            if self._lifespan is not None:
                await self._lifespan(scope, receive, send)
            return
        if self._apps:
            await self._apps.get(host_label(scope), self._default)(scope, receive, send)
        else:
            await self._default(scope, receive, send)
