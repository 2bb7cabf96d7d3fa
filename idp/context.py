"""What every part of the IdP is built from: one immutable bundle, made at assembly time."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker
from starlette.requests import HTTPConnection
from starlette.responses import Response

from core.events import EventEmitter
from core.kv import KV
from core.net import TrustedProxies, client_address
from core.settings import IdpSettings
from idp.assurance import user_requirement
from idp.directory.models import User
from idp.directory.passwords import PasswordHashing
from idp.directory.services import Directory
from idp.events import auth_event
from idp.pending import PendingStore
from idp.sessions import COOKIE_NAME, SessionStore, SSOSession
from keyvault import SecretStore, SigningKeyring
from mfa.services import MfaServices

__all__ = ["IdpContext", "SessionListener"]

SessionListener = Callable[[SSOSession, str], Awaitable[None]]
"""Called with each session that ends and the reason (``logout``, ``revoked``, ``everywhere``)."""


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
    mfa: MfaServices
    trusted_proxies: TrustedProxies = field(default_factory=TrustedProxies)
    clock: Callable[[], float] = time.time
    # Registered at assembly: back-channel logout is one (idp.logout).
    session_listeners: tuple[SessionListener, ...] = ()

    async def mfa_requirement(self, user: User) -> str | None:
        """The authentication class every sign-in of ``user`` needs (``idp.assurance``)."""
        return user_requirement(
            everyone=self.mfa.settings.required,
            enrol_required=user.mfa_enrol_required,
            group_required=await self.directory.mfa_required_by_group(user.id),
        )

    async def end_session(self, sid: str, *, reason: str, actor: str | None = None) -> SSOSession | None:
        """Revoke one SSO session, tell the listeners, emit ``session-revoked``; None if already over."""
        session = await self.sessions.revoke(sid)
        if session is None:
            return None
        for listener in self.session_listeners:
            await listener(session, reason)
        self.events.emit(
            auth_event(
                "session-revoked",
                success=True,
                reason=reason,
                username=session.username,
                user_id=session.user_id,
                session_id=session.sid,
                **({"labels__actor": actor} if actor else {}),
            )
        )
        return session

    async def end_user_sessions(
        self, user_id: int, *, reason: str, actor: str | None = None
    ) -> list[SSOSession]:
        """Revoke every SSO session of a user (sign out everywhere, lock, the SOC's response)."""
        ended = []
        for session in await self.sessions.list_for_user(user_id):
            if (gone := await self.end_session(session.sid, reason=reason, actor=actor)) is not None:
                ended.append(gone)
        return ended

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
