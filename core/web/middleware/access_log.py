"""Access log: one structured line per HTTP request.

Fields: ``method``, ``path`` (the raw path only — never the query string, which may carry
codes or tokens — truncated), ``status``, ``duration_ms``, ``client_ip``, ``user_agent``
(truncated) and, from the logging context, ``request_id``. No request header other than
User-Agent is logged (never Authorization or Cookie). Probe paths (``quiet_paths``) log at
debug level so health checks do not drown the log.
"""

from __future__ import annotations

import time
from collections.abc import Collection

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.logging import get_logger

__all__ = ["AccessLogMiddleware"]

_MAX_PATH = 256
_MAX_USER_AGENT = 256


class AccessLogMiddleware:
    """See the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        logger_name: str = "onegate.access",
        quiet_paths: Collection[str] = ("/healthz", "/readyz", "/metrics"),
    ) -> None:
        self.app = app
        self.log = get_logger(logger_name)
        self.quiet_paths = frozenset(quiet_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # if the app raises before starting a response, the client gets a 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            raw = scope.get("raw_path") or str(scope.get("path", "")).encode("utf-8", "replace")
            path = bytes(raw).split(b"?", 1)[0].decode("utf-8", "replace")[:_MAX_PATH]
            client = scope.get("client")
            log = self.log.debug if scope.get("path") in self.quiet_paths else self.log.info
            log(
                "request",
                method=scope["method"],
                path=path,
                status=status,
                duration_ms=round((time.perf_counter() - start) * 1000, 2),
                client_ip=client[0] if client else None,
                user_agent=Headers(scope=scope).get("user-agent", "")[:_MAX_USER_AGENT],
            )
