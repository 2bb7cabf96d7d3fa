"""The fast-path contract between the HTTP front (``onegate.front``) and an app that offers one.

An ASGI app may also offer ``fast_path(request) -> bool``: the front hands it each plain
body-less request it parsed, before any ASGI scope exists. The app either declines (False: the
request takes the ASGI path as usual) or takes it (True) and then answers with
:meth:`FastRequest.respond` + :meth:`FastRequest.done`, or hands it to an ASGI app part-way with
:meth:`FastRequest.hand_over`, or gives up with :meth:`FastRequest.fail`. The gateway offers one
(``gateway.app.Gateway.fast_path``); the protocol lives here so that neither side imports the
other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from starlette.types import ASGIApp

__all__ = ["FastPath", "FastRequest"]


class FastRequest(Protocol):
    """A body-less ``GET`` / ``HEAD`` request as the front parsed it."""

    method: str
    raw_path: bytes  # percent-encoded, without the query
    query: bytes
    headers: list[tuple[bytes, bytes]]  # lower-case names, trimmed values, exactly one host
    close: bool  # the client asked to close after it
    fields: bytes  # the header section as received: the same bytes give the same headers

    @property
    def client(self) -> tuple[str, int] | None: ...

    @property
    def scheme(self) -> str: ...

    def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, *, checked: bool) -> None:
        """Write the whole response (byte for byte what the ASGI path would); then :meth:`done`."""
        ...

    def done(self) -> None:
        """The request is over; the connection goes on to the next."""
        ...

    def hand_over(self, app: ASGIApp) -> None:
        """Answer through the ASGI ``app`` after all, with the scope the ASGI path would have had."""
        ...

    def fail(self, error: Exception) -> None:
        """The fast path failed: a 500 when nothing was written yet, else the connection cut."""
        ...


FastPath = Callable[[FastRequest], bool]
