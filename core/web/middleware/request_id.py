"""Request id: accept a well-formed incoming ``X-Request-ID`` or make one, and spread it.

The id lands in ``scope["state"]["request_id"]``, in the ``X-Request-ID`` response header
and, through ``core.logging.bound_request_id``, in every log line written while the request
is served. An incoming id is accepted only if it matches ``[A-Za-z0-9._-]{8,64}``: anything
else (too short, too long, spaces, CR/LF, quotes) could forge or split log lines and is
replaced by a fresh random id.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.logging import bound_request_id

__all__ = ["REQUEST_ID_PATTERN", "RequestIdMiddleware"]

REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{8,64}")
HEADER = "x-request-id"


def _new_request_id() -> str:
    return secrets.token_hex(16)


class RequestIdMiddleware:
    """See the module docstring.

    ``trust_incoming=False`` ignores incoming ids altogether (an edge facing the internet may
    prefer that); ``generate`` is injectable for tests.
    """

    def __init__(
        self, app: ASGIApp, *, trust_incoming: bool = True, generate: Callable[[], str] = _new_request_id
    ) -> None:
        self.app = app
        self.trust_incoming = trust_incoming
        self.generate = generate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get(HEADER, "") if self.trust_incoming else ""
        request_id = incoming if REQUEST_ID_PATTERN.fullmatch(incoming) else self.generate()
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers[HEADER] = request_id  # replaces any copy an inner app set
            await send(message)

        with bound_request_id(request_id):
            await self.app(scope, receive, send_with_id)
