"""A real OpenID Provider for the protocol tests, driven over ASGI with httpx.

Real parts: a migrated SQLite database in ``tmp_path``, ``MemoryKV``, a keyvault in
``tmp_path`` (ES256 keys), the client registry, the consent store, the directory and the web
core's middleware stack (CSRF, locale ...). One fake clock, starting now, drives the KV
store, the keyring, sessions and tokens, so tests advance time instead of sleeping (and
JWTs stay valid for libraries that read the real clock).

Signing in is simulated with ``SessionStore.create`` plus the cookie (the login page is
another engineer's, tested there); consents through ``ConsentStore.grant``.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import update
from starlette.applications import Starlette

from core.db import create_engine, migrate, session_factory
from core.events import Event, RecordingEmitter
from core.kv import MemoryKV
from core.settings import IdpSettings, MfaSettings
from core.web import create_web_app
from idp.clients.services import ClientRegistry, RegisteredClient
from idp.consents import ConsentStore
from idp.context import IdpContext
from idp.directory.models import User
from idp.directory.passwords import PasswordHashing
from idp.directory.services import Directory
from idp.endpoints.routes import CSRF_EXEMPT_PATHS, LOCALE_DIR, TEMPLATE_DIR, provider_routes
from idp.logout import BackChannelLogout
from idp.pending import PendingStore
from idp.server import Provider
from idp.sessions import SessionStore, SSOSession
from idp.tokens import TokenService
from keyvault import Keyvault, init_keyvault
from mfa.services import MfaServices
from onegate.runtime import MIGRATIONS

ISSUER = "http://idp.test"
RP = "https://oa.example.gov.cn"
REDIRECT = f"{RP}/callback"
ACR_PWD = "urn:onegate:acr:pwd"


class Clock:
    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def query(location: str) -> dict[str, str]:
    """The parameters of a redirect (one value each)."""
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query, keep_blank_values=True).items()}


def b64_json(segment: str) -> dict[str, Any]:
    import json

    return dict(json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))))


@dataclass
class OP:
    ctx: IdpContext
    provider: Provider
    app: Starlette
    clock: Clock
    events: RecordingEmitter
    registry: ClientRegistry
    consents: ConsentStore
    backchannel: BackChannelLogout
    vault: Keyvault
    _browsers: list[httpx.AsyncClient] = field(default_factory=list)

    @property
    def tokens(self) -> TokenService:
        return self.provider.tokens

    def browser(self, ip: str = "10.1.2.3") -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, client=(ip, 40000)), base_url=ISSUER
        )
        self._browsers.append(client)
        return client

    # -- directory, clients, sessions ------------------------------------------------------------

    async def add_user(self, username: str = "zhangwei", display_name: str = "张伟", **kw: Any) -> User:
        for group in kw.get("groups", ()):
            await self.ctx.directory.ensure_group(group)
        if (department := kw.get("department")) is not None:
            await self.ctx.directory.add_department(
                department, kw.pop("department_name", "市人力资源和社会保障局")
            )
        return await self.ctx.directory.add_user(
            username=username, display_name=display_name, password_hash=None, **kw
        )

    async def set_user(self, user_id: int, **columns: Any) -> None:
        async with self.ctx.db() as s, s.begin():
            await s.execute(update(User).where(User.id == user_id).values(**columns))

    async def add_client(self, client_id: str = "oa-app", **kw: Any) -> tuple[RegisteredClient, str | None]:
        defaults: dict[str, Any] = {
            "name": "协同办公系统",
            "name_en": "Office Automation",
            "redirect_uris": [REDIRECT],
            "post_logout_redirect_uris": [f"{RP}/bye"],
            "grant_types": ["authorization_code", "refresh_token"],
            "scopes": ["openid", "profile", "email", "phone", "groups", "department", "offline_access"],
            "first_party": True,
        }
        defaults.update(kw)
        return await self.registry.add(client_id=client_id, **defaults)

    async def sign_in(self, browser: httpx.AsyncClient, user: User, *, acr: str = ACR_PWD) -> SSOSession:
        session, cookie = await self.ctx.sessions.create(
            user_id=user.id, username=user.username, amr=("pwd",), acr=acr, ip="10.1.2.3"
        )
        browser.cookies.set(self.ctx.cookie_name, cookie, domain="idp.test")
        return session

    # -- protocol steps ----------------------------------------------------------------------------

    async def authorize(self, browser: httpx.AsyncClient, **params: str) -> httpx.Response:
        return await browser.get("/authorize", params=params)

    async def code(
        self,
        browser: httpx.AsyncClient,
        *,
        client_id: str = "oa-app",
        scope: str = "openid profile",
        redirect_uri: str = REDIRECT,
        **extra: str,
    ) -> tuple[str, str]:
        """Run /authorize to a code; returns (code, verifier)."""
        verifier, challenge = pkce()
        response = await self.authorize(
            browser,
            response_type="code",
            client_id=client_id,
            redirect_uri=redirect_uri,
            scope=scope,
            state="st-1",
            nonce="n-1",
            code_challenge=challenge,
            code_challenge_method="S256",
            **extra,
        )
        assert response.status_code == 302, response.text[:500]
        params = query(response.headers["location"])
        assert params["state"] == "st-1" and params["iss"] == ISSUER, params
        return params["code"], verifier

    async def token(self, data: dict[str, str], auth: tuple[str, str] | None = None) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=ISSUER) as rp:
            return await rp.post("/token", data=data, auth=auth)

    async def post(
        self, path: str, data: dict[str, str], auth: tuple[str, str] | None = None
    ) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=ISSUER) as rp:
            return await rp.post(path, data=data, auth=auth)

    async def userinfo(self, access_token: str) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=ISSUER) as rp:
            return await rp.get("/userinfo", headers={"Authorization": f"Bearer {access_token}"})

    async def redeem(
        self,
        code: str,
        verifier: str,
        secret: str | None,
        *,
        client_id: str = "oa-app",
        redirect_uri: str = REDIRECT,
    ) -> httpx.Response:
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        if secret is None:
            data["client_id"] = client_id
            return await self.token(data)
        return await self.token(data, auth=(client_id, secret))

    async def login_tokens(
        self,
        browser: httpx.AsyncClient,
        secret: str | None,
        *,
        client_id: str = "oa-app",
        scope: str = "openid profile",
        **extra: str,
    ) -> dict[str, Any]:
        code, verifier = await self.code(browser, client_id=client_id, scope=scope, **extra)
        response = await self.redeem(code, verifier, secret, client_id=client_id)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def introspect(self, token: str, client_id: str, secret: str) -> dict[str, Any]:
        response = await self.post("/introspect", {"token": token}, auth=(client_id, secret))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def events_of(self, action: str) -> list[Event]:
        return [e for e in self.events.events if e.action == action]

    async def close(self) -> None:
        for browser in self._browsers:
            await browser.aclose()
        await self.backchannel.drain()


@pytest.fixture
async def op(tmp_path: Any) -> AsyncIterator[OP]:
    clock = Clock()
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'idp.db'}")
    await migrate(engine, MIGRATIONS)
    db = session_factory(engine)
    kv = MemoryKV(clock=clock)
    vault = init_keyvault(
        tmp_path, prepublish_seconds=3600, retire_after_seconds=86400, clock=clock, environ={}
    )
    settings = IdpSettings(issuer=ISSUER)
    events = RecordingEmitter()
    registry = ClientRegistry(db, vault.secrets, cache_ttl=0.0)
    consents = ConsentStore(db, clock=clock)
    directory = Directory(db, clock=clock)
    tokens = TokenService(issuer=ISSUER, kv=kv, signing=vault.signing, settings=settings, clock=clock)
    backchannel = BackChannelLogout(
        tokens=tokens,
        clients=registry,
        profiles=directory.profile,
        events=events,
        timeout=1.0,
        attempts=2,
        backoff=0.05,
    )
    ctx = IdpContext(
        settings=settings,
        issuer=ISSUER,
        https=False,
        kv=kv,
        db=db,
        sessions=SessionStore(
            kv,
            idle_timeout=settings.session_idle_timeout,
            absolute_timeout=settings.session_absolute_timeout,
            clock=clock,
        ),
        pending=PendingStore(kv, clock=clock),
        directory=directory,
        passwords=PasswordHashing(time_cost=1, memory_cost_kib=64),
        signing=vault.signing,
        secrets=vault.secrets,
        events=events,
        mfa=MfaServices.build(
            MfaSettings(),
            issuer=ISSUER,
            db=db,
            kv=kv,
            envelope=vault.envelope,
            hasher=PasswordHashing(time_cost=1, memory_cost_kib=64),
            events=events,
            clock=clock,
        ),
        clock=clock,
        session_listeners=(backchannel,),
    )
    provider = Provider.create(ctx, registry, consents, jwks_max_age=900)
    app = create_web_app(
        name="idp",
        routes=provider_routes(provider),
        csrf_secret=vault.secrets.get_or_create("csrf-key"),
        template_dirs=[TEMPLATE_DIR],
        locale_dirs=[LOCALE_DIR],
        csrf_exempt_paths=CSRF_EXEMPT_PATHS,
    )
    server = OP(ctx, provider, app, clock, events, registry, consents, backchannel, vault)
    yield server
    await server.close()
    await engine.dispose()


def stored(op: OP, prefix: str) -> list[str]:
    """Keys of the in-memory KV store under ``prefix`` (test-only introspection)."""
    return [key for key in op.ctx.kv._data if key.startswith(prefix)]  # type: ignore[attr-defined]
