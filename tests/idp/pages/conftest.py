"""A real IdpContext and the pages' web app, driven over ASGI with httpx.

Real parts throughout: a migrated SQLite database in ``tmp_path``, ``MemoryKV``, a keyvault in
``tmp_path``, the web core's middleware (CSRF, locale ...). Time is a fake clock shared by the
KV store, the session store and the context, so lockouts and throttling windows end when the
test advances it. Password hashing is argon2id with tiny parameters (speed), counting calls.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pyotp
import pytest
from sqlalchemy import select, update
from starlette.applications import Starlette

from core.db import create_engine, migrate, session_factory
from core.events import Event, RecordingEmitter
from core.kv import MemoryKV
from core.settings import IdpSettings, MfaSettings
from core.web import create_web_app
from idp.clients.models import AuthMethod, Client, ClientType
from idp.context import IdpContext
from idp.directory.models import Department, User
from idp.directory.passwords import PasswordHashing
from idp.directory.policy import PasswordPolicy
from idp.directory.services import Directory
from idp.pages import LOCALE_DIR, TEMPLATE_DIR
from idp.pages.routes import routes
from idp.pending import PendingAuthorization, PendingStore
from idp.sessions import SessionStore, SSOSession
from keyvault import init_keyvault
from mfa.services import MfaServices
from onegate.runtime import MIGRATIONS

PASSWORD = "correct horse battery staple"
_CSRF = re.compile(r'(?:name="csrf_token" value|data-csrf)="([^"]+)"')


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingPasswords(PasswordHashing):
    """argon2id with the smallest parameters, counting every verify."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost_kib=64, parallelism=1)
        self.verifies = 0

    def verify(self, stored_hash: str | None, password: str) -> bool:
        self.verifies += 1
        return super().verify(stored_hash, password)


@dataclass
class Idp:
    ctx: IdpContext
    app: Starlette
    clock: Clock
    events: RecordingEmitter
    passwords: CountingPasswords
    ended: list[tuple[str, str]] = field(default_factory=list)  # (sid, reason) seen by the listener
    _clients: list[httpx.AsyncClient] = field(default_factory=list)

    def client(self, ip: str = "10.0.0.1", *, user_agent: str | None = None) -> httpx.AsyncClient:
        scheme = "https" if self.ctx.https else "http"
        headers = {"accept": "text/html"}
        if user_agent is not None:
            headers["user-agent"] = user_agent
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, client=(ip, 50000)),
            base_url=f"{scheme}://idp.example.test",
            headers=headers,
        )
        self._clients.append(client)
        return client

    async def add_user(
        self,
        username: str = "zhangwei",
        display_name: str = "张伟",
        password: str | None = PASSWORD,
        groups: tuple[str, ...] = (),
        **columns: Any,
    ) -> User:
        for group in groups:
            await self.ctx.directory.ensure_group(group)
        user = await self.ctx.directory.add_user(
            username=username,
            display_name=display_name,
            password_hash=self.passwords.hash(password) if password is not None else None,
            groups=groups,
        )
        if columns:
            await self.set_user(username, **columns)
        return user

    async def set_user(self, who: str, /, **columns: Any) -> None:
        async with self.ctx.db() as s, s.begin():
            await s.execute(update(User).where(User.username == who).values(**columns))

    async def user(self, username: str) -> User:
        async with self.ctx.db() as s:
            user: User = (await s.execute(select(User).where(User.username == username))).scalar_one()
            return user

    async def add_department(self, code: str, name: str, name_en: str | None = None) -> int:
        async with self.ctx.db() as s, s.begin():
            department = Department(code=code, name=name, name_en=name_en)
            s.add(department)
            await s.flush()
            return department.id

    async def add_client(
        self, client_id: str = "oa", name: str = "协同办公系统", name_en: str | None = "Office Automation"
    ) -> Client:
        async with self.ctx.db() as s, s.begin():
            client = Client(
                client_id=client_id,
                name=name,
                name_en=name_en,
                client_type=ClientType.CONFIDENTIAL,
                token_endpoint_auth_method=AuthMethod.CLIENT_SECRET_BASIC,
                redirect_uris=[f"https://{client_id}.example.test/callback"],
                grant_types=["authorization_code"],
                scopes=["openid", "profile", "email", "groups"],
            )
            s.add(client)
            await s.flush()
            return client

    async def pending(
        self,
        client: Client,
        *,
        scopes: tuple[str, ...] = ("openid", "profile"),
        login_hint: str | None = None,
        ui_locales: str | None = None,
        acr: str | None = None,
    ) -> PendingAuthorization:
        pending = PendingAuthorization(
            id=self.ctx.pending.new_id(),
            client_id=client.client_id,
            client_name=client.name,
            client_name_en=client.name_en,
            params=(("response_type", "code"), ("client_id", client.client_id), ("scope", " ".join(scopes))),
            scopes=scopes,
            prompt=(),
            login_hint=login_hint,
            max_age=None,
            acr_values=(),
            ui_locales=ui_locales,
            created_at=self.clock(),
            acr=acr,
        )
        await self.ctx.pending.put(pending)
        return pending

    async def enrol_totp(self, username: str = "zhangwei", name: str = "手机") -> str:
        """Bind an authenticator app to the user through the service (its enrolment code uses the
        current time step, so the clock moves on one step); the base32 secret."""
        user = await self.user(username)
        enrolment = await self.ctx.mfa.totp.begin_enrolment(user.id, user.username)
        assert await self.ctx.mfa.totp.confirm_enrolment(
            user.id, self.code(enrolment.secret_base32), name=name
        )
        self.clock.advance(30)
        return enrolment.secret_base32

    def code(self, secret: str, *, steps: int = 0) -> str:
        """The TOTP code of ``secret`` now, or ``steps`` time steps away (RFC 6238, 30 s)."""
        return str(pyotp.TOTP(secret).at(self.clock.now + 30 * steps))

    def events_of(self, action: str) -> list[Event]:
        return [event for event in self.events.events if event.action == action]


async def csrf_token(client: httpx.AsyncClient, path: str = "/login") -> str:
    """The CSRF token of a form (or of the script's ``data-csrf``) on ``path`` (the GET also sets
    the CSRF cookie)."""
    page = await client.get(path)
    match = _CSRF.search(page.text)
    assert match is not None, f"no CSRF field on {path}: {page.status_code} {page.text[:300]}"
    return match.group(1)


async def sign_in(
    client: httpx.AsyncClient,
    username: str = "zhangwei",
    password: str = PASSWORD,
    *,
    req: str | None = None,
) -> httpx.Response:
    path = "/login" if req is None else f"/login?req={req}"
    token = await csrf_token(client, path)
    return await client.post(path, data={"csrf_token": token, "username": username, "password": password})


async def post_form(browser: httpx.AsyncClient, page: str, action: str, /, **data: str) -> httpx.Response:
    """Submit a form of ``page`` to ``action`` with that page's CSRF token."""
    return await browser.post(action, data={"csrf_token": await csrf_token(browser, page), **data})


async def post_json(
    browser: httpx.AsyncClient, page: str, action: str, body: dict[str, Any] | None = None
) -> httpx.Response:
    """What the pages' script does: POST JSON to ``action`` with ``page``'s CSRF token in the
    ``X-CSRF-Token`` header."""
    token = await csrf_token(browser, page)
    return await browser.post(
        action,
        json=body or {},
        headers={"x-csrf-token": token, "accept": "application/json", "origin": str(browser.base_url)},
    )


def cookie_of(browser: httpx.AsyncClient, name: str) -> str | None:
    """The value of one of the browser's cookies (None when it has none)."""
    return browser.cookies.get(name)


IdpFactory = Callable[..., Awaitable[Idp]]


@pytest.fixture
async def make_idp(tmp_path: Any) -> AsyncIterator[IdpFactory]:
    """Build an Idp; keyword arguments override IdpSettings; ``https=True`` for the https case;
    ``mfa_settings`` replaces the default MfaSettings."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'idp.db'}")
    await migrate(engine, MIGRATIONS)
    db = session_factory(engine)
    vault = init_keyvault(tmp_path / "data", prepublish_seconds=0, retire_after_seconds=3600, environ={})
    built: list[Idp] = []

    async def build(*, https: bool = False, mfa_settings: MfaSettings | None = None, **overrides: Any) -> Idp:
        clock = Clock()
        settings = IdpSettings(
            **{
                "lockout_threshold": 3,
                "lockout_seconds": 60,
                "lockout_max_seconds": 600,
                "ip_throttle_limit": 20,
                "ip_throttle_window": 300,
                **overrides,
            }
        )
        kv = MemoryKV(clock=clock)
        events = RecordingEmitter()
        passwords = CountingPasswords()
        ended: list[tuple[str, str]] = []

        async def listener(session: SSOSession, reason: str) -> None:
            ended.append((session.sid, reason))

        ctx = IdpContext(
            settings=settings,
            issuer="https://idp.example.test" if https else "http://idp.example.test",
            https=https,
            kv=kv,
            db=db,
            sessions=SessionStore(
                kv,
                idle_timeout=settings.session_idle_timeout,
                absolute_timeout=settings.session_absolute_timeout,
                clock=clock,
            ),
            pending=PendingStore(kv, clock=clock),
            # The directory hashes with the context's PasswordHashing: one object, as assembled.
            directory=Directory(
                db,
                hashing=passwords,
                policy=PasswordPolicy(min_length=settings.password_min_length),
                clock=clock,
            ),
            passwords=passwords,
            signing=vault.signing,
            secrets=vault.secrets,
            events=events,
            mfa=MfaServices.build(
                mfa_settings or MfaSettings(),
                issuer="https://idp.example.test" if https else "http://idp.example.test",
                db=db,
                kv=kv,
                envelope=vault.envelope,
                hasher=passwords,
                events=events,
                clock=clock,
            ),
            clock=clock,
            session_listeners=(listener,),
        )
        app = create_web_app(
            name="idp",
            routes=routes(ctx),
            csrf_secret=secrets.token_bytes(32),
            template_dirs=[TEMPLATE_DIR],
            locale_dirs=[LOCALE_DIR],
            https=https,
        )
        idp = Idp(ctx=ctx, app=app, clock=clock, events=events, passwords=passwords, ended=ended)
        built.append(idp)
        return idp

    yield build
    for idp in built:
        for client in idp._clients:
            await client.aclose()
    await engine.dispose()


@pytest.fixture
async def idp(make_idp: IdpFactory) -> Idp:
    return await make_idp()


def utc(value: datetime | None) -> datetime | None:
    """A datetime read back from SQLite (naive, written in UTC) made aware."""
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)
