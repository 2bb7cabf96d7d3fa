"""What every part of the IdP is built from: one immutable bundle, made at assembly time."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker
from starlette.requests import HTTPConnection
from starlette.responses import Response

from core.events import EventEmitter
from core.kv import KV
from core.net import TrustedProxies, client_address
from core.settings import IdpSettings
from idp.directory.passwords import PasswordHashing
from idp.directory.services import Directory
from idp.pending import PendingStore
from idp.sessions import COOKIE_NAME, SessionStore, SSOSession
from keyvault import SecretStore, SigningKeyring

__all__ = ["IdpContext"]


@dataclass(frozen=True)
class IdpContext:
    settings: IdpSettings
    issuer: str  # no trailing slash
    https: bool
    kv: KV
    db: async_sessionmaker[Any]
    sessions: SessionStore
    pending: PendingStore
    directory: Directory
    passwords: PasswordHashing
    signing: SigningKeyring
    secrets: SecretStore
    events: EventEmitter
    trusted_proxies: TrustedProxies = field(default_factory=TrustedProxies)
    clock: Callable[[], float] = time.time

    # -- the SSO cookie: host-only (no Domain), HttpOnly, SameSite=Lax, Secure on https ----------

    @property
    def cookie_name(self) -> str:
        # The __Host- prefix makes browsers refuse the cookie unless Secure, host-only and Path=/.
        return f"__Host-{COOKIE_NAME}" if self.https else COOKIE_NAME

    def set_session_cookie(self, response: Response, value: str) -> None:
        response.set_cookie(
            self.cookie_name,
            value,
            max_age=self.settings.session_absolute_timeout,
            path="/",
            secure=self.https,
            httponly=True,
            samesite="lax",
        )

    def clear_session_cookie(self, response: Response) -> None:
        response.delete_cookie(self.cookie_name, path="/", secure=self.https, httponly=True, samesite="lax")

    async def current_session(self, connection: HTTPConnection, *, touch: bool = True) -> SSOSession | None:
        """The browser's live SSO session, or None."""
        return await self.sessions.from_cookie(connection.cookies.get(self.cookie_name), touch=touch)

    def client_ip(self, connection: HTTPConnection) -> str:
        return client_address(connection.scope, self.trusted_proxies)
