"""Route requests by host name, so one public port serves every role (idp.*, soc.*, ...)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from core.web.fastpath import FastPath, FastRequest

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
        self._default_fast: FastPath | None = getattr(default, "fast_path", None)
        # Offered to the HTTP front (onegate/front.py) when the default app offers one.
        self.fast_path: FastPath | None = self._fast_path if self._default_fast is not None else None

    def _fast_path(self, request: FastRequest) -> bool:
        """The default app's fast path, for the requests routed to it."""
        fast = self._default_fast
        if fast is None or (self._apps and host_label({"headers": request.headers}) in self._apps):
            return False
        return fast(request)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            if self._lifespan is not None:
                await self._lifespan(scope, receive, send)
            return
        if self._apps:
            await self._apps.get(host_label(scope), self._default)(scope, receive, send)
        else:
            await self._default(scope, receive, send)
