"""Authorization requests waiting for the user (sign-in, consent), kept in the KV store.

``/authorize`` validates a request, stores it here and sends the browser to ``/login?req=<id>``
or ``/consent?req=<id>``; those pages read it (client name, login_hint, scopes ...) and send
the browser back to ``/authorize/resume?req=<id>``. Only the id travels through the browser,
so no page can be turned into an open redirect, and the request cannot be altered on the way.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from core.kv import KV

__all__ = ["PendingAuthorization", "PendingStore"]

PENDING_TTL = 600.0


@dataclass(frozen=True)
class PendingAuthorization:
    id: str
    client_id: str
    client_name: str
    client_name_en: str | None
    # The validated authorize request, as (name, value) pairs in their original order.
    params: tuple[tuple[str, str], ...]
    scopes: tuple[str, ...]
    prompt: tuple[str, ...]
    login_hint: str | None
    max_age: int | None
    acr_values: tuple[str, ...]
    ui_locales: str | None
    created_at: float
    # The authentication class the request itself needs (client minimum, acr_values, essential
    # acr claim: idp.assurance.request_requirement); the user's own requirement is added to it.
    acr: str | None = None

    def param(self, name: str) -> str | None:
        return next((value for key, value in self.params if key == name), None)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> PendingAuthorization:
        data = json.loads(raw)
        data["params"] = tuple(tuple(pair) for pair in data["params"])
        for name in ("scopes", "prompt", "acr_values"):
            data[name] = tuple(data[name])
        return cls(**data)


class PendingStore:
    def __init__(
        self,
        kv: KV,
        *,
        clock: Callable[[], float] = time.time,
        token_urlsafe: Callable[[int], str] = secrets.token_urlsafe,
    ) -> None:
        self._kv = kv
        self._clock = clock
        self._token = token_urlsafe

    def new_id(self) -> str:
        return self._token(24)

    async def put(self, pending: PendingAuthorization) -> None:
        await self._kv.set(f"authz-req:{pending.id}", pending.to_json(), ttl=PENDING_TTL)

    async def get(self, request_id: str | None) -> PendingAuthorization | None:
        if not request_id or len(request_id) > 64:
            return None
        raw = await self._kv.get(f"authz-req:{request_id}")
        return None if raw is None else PendingAuthorization.from_json(raw)

    async def delete(self, request_id: str) -> None:
        await self._kv.delete(f"authz-req:{request_id}")
