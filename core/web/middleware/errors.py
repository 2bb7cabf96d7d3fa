"""The outermost middleware: no exception ever reaches the client as a traceback.

An ``HTTPProblem`` or Starlette ``HTTPException`` raised by a middleware is rendered like
one raised by an endpoint. Any other exception is logged with its traceback (and the request
id) and answered with ``internal_error`` (500) carrying only the request id. Because this
response is produced outside the rest of the stack, it gets the security headers and the
``X-Request-ID`` header here. If the response had already started, the exception is logged
and re-raised so the server aborts the connection instead of sending a corrupt body.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.logging import get_logger
from core.web.errors import HTTPProblem, ProblemRenderer
from core.web.middleware.security_headers import apply_security_headers

__all__ = ["ErrorsMiddleware"]

_log = get_logger("onegate.errors")


class ErrorsMiddleware:
    """See the module docstring. ``security_headers`` is the static set to apply."""

    def __init__(
        self, app: ASGIApp, *, renderer: ProblemRenderer, security_headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        self.app = app
        self.renderer = renderer
        self.security_headers = tuple(security_headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception as exc:
            state = scope.setdefault("state", {})
            request_id = state.get("request_id")
            problem = self.renderer.problem_for(exc)
            if started or (not isinstance(exc, HTTPProblem) and problem.status >= 500):
                _log.exception(
                    "unhandled_exception",
                    request_id=request_id,
                    method=scope.get("method"),
                    path=str(scope.get("path", ""))[:256],
                    exc_type=type(exc).__name__,
                )
            if started:
                raise
            response = self.renderer.response(Request(scope, receive), problem)
            apply_security_headers(response.headers, self.security_headers)
            if request_id:
                response.headers["x-request-id"] = str(request_id)
            await response(scope, receive, send)
