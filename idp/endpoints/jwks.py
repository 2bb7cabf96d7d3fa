"""The JWK Set (RFC 7517 §5): ``GET /jwks.json``, the public keys that verify our tokens.

Cache lifetime: a relying party must learn a rotated-in key before it signs, so the
``max-age`` is well below the keyring's pre-publication time (:func:`jwks_max_age`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

if TYPE_CHECKING:
    from idp.server import Provider

__all__ = ["jwks_endpoint", "jwks_max_age"]


def jwks_max_age(prepublish_seconds: int) -> int:
    """A quarter of ``keyvault.prepublish_seconds``, at most an hour: caches then refresh
    several times while a new key is published but not yet signing."""
    return max(0, min(3600, prepublish_seconds // 4))


def jwks_endpoint(provider: Provider) -> Callable[[Request], Awaitable[Response]]:
    async def jwks(request: Request) -> Response:
        return JSONResponse(
            provider.idp.signing.jwks(),
            headers={"Cache-Control": f"public, max-age={provider.jwks_max_age}"},
        )

    return jwks
