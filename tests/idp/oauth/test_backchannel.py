"""Back-Channel Logout 1.0: a real HTTP receiver gets a logout token it can verify with the JWKS."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from jose import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.idp.oauth.conftest import ISSUER, OP, b64_json

EVENT = "http://schemas.openid.net/event/backchannel-logout"


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # leave the test runner's signal handlers alone
        yield


@dataclass
class Receiver:
    base: str
    received: list[tuple[str, str]] = field(default_factory=list)  # (path, logout_token)
    delay: float = 0.0


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    state = Receiver(base=f"http://127.0.0.1:{sock.getsockname()[1]}")

    async def endpoint(request: Request) -> Response:
        form = await request.form()
        state.received.append((request.url.path, str(form.get("logout_token"))))
        await asyncio.sleep(state.delay)
        status = {"/ok": 200, "/broken": 500, "/refuses": 400}[request.url.path]
        return Response(status_code=status, headers={"cache-control": "no-store"})

    app = Starlette(
        routes=[Route(path, endpoint, methods=["POST"]) for path in ("/ok", "/broken", "/refuses")]
    )
    server = _QuietServer(uvicorn.Config(app, lifespan="off", log_config=None, access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
        await asyncio.sleep(0.01)
    yield state
    server.should_exit = True
    await task
    sock.close()


async def _session_with_clients(
    op: OP, receiver: Receiver, paths: dict[str, str]
) -> tuple[Any, Any, dict[str, Any]]:
    user = await op.add_user()
    browser = op.browser()
    session = await op.sign_in(browser, user)
    tokens: dict[str, Any] = {}
    for client_id, path in paths.items():
        _, secret = await op.add_client(client_id, backchannel_logout_uri=f"{receiver.base}{path}")
        tokens = await op.login_tokens(browser, secret, client_id=client_id)
    return user, session, tokens


async def test_each_client_of_the_session_receives_a_verifiable_logout_token(
    op: OP, receiver: Receiver
) -> None:
    user, session, tokens = await _session_with_clients(op, receiver, {"oa-app": "/ok", "hr-app": "/ok"})
    browser = op.browser()
    await op.ctx.end_user_sessions(user.id, reason="revoked", actor="soc")
    await op.backchannel.drain()

    assert sorted(path for path, _ in receiver.received) == ["/ok", "/ok"]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=op.app), base_url=ISSUER) as rp:
        jwks = (await rp.get("/jwks.json")).json()
    profile = await op.ctx.directory.profile(user.id)
    assert profile is not None
    audiences = set()
    for _, token in receiver.received:
        header = b64_json(token.split(".")[0])
        assert header["typ"] == "logout+jwt"
        key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
        audience = b64_json(token.split(".")[1])["aud"]
        claims = jwt.decode(token, key, algorithms=["ES256"], audience=audience, issuer=ISSUER)
        audiences.add(audience)
        assert claims["sub"] == profile.sub and claims["sid"] == session.sid
        assert claims["events"] == {EVENT: {}} and "nonce" not in claims
        assert claims["exp"] - claims["iat"] <= 120 and claims["jti"]
    assert audiences == {"oa-app", "hr-app"}
    delivered = op.events_of("backchannel-logout")
    assert len(delivered) == 2 and all(e.outcome == "success" for e in delivered)
    assert {e.get("onegate.client_id") for e in delivered} == {"oa-app", "hr-app"}
    assert all(e.get("session.id") == session.sid for e in delivered)
    await browser.aclose()
    assert tokens


async def test_the_logout_response_does_not_wait_for_deliveries(op: OP, receiver: Receiver) -> None:
    user = await op.add_user()
    _, secret = await op.add_client(backchannel_logout_uri=f"{receiver.base}/ok")
    browser = op.browser()
    await op.sign_in(browser, user)
    tokens = await op.login_tokens(browser, secret)
    receiver.delay = 0.5  # a slow relying party
    started = time.monotonic()
    response = await browser.get("/logout", params={"id_token_hint": tokens["id_token"]})
    elapsed = time.monotonic() - started
    assert response.status_code == 200 and "您已退出登录。" in response.text
    assert elapsed < 0.4
    assert op.events_of("backchannel-logout") == []  # still under way
    await op.backchannel.drain()
    assert len(receiver.received) == 1 and op.events_of("backchannel-logout")[0].outcome == "success"


async def test_a_failing_receiver_is_retried_and_the_failure_reported(op: OP, receiver: Receiver) -> None:
    user, session, _ = await _session_with_clients(op, receiver, {"oa-app": "/broken", "hr-app": "/refuses"})
    await op.ctx.end_session(session.sid, reason="logout")
    await op.backchannel.drain()
    assert [p for p, _ in receiver.received].count("/broken") == 2  # attempts=2 in the fixture
    assert [p for p, _ in receiver.received].count("/refuses") == 1  # a 4xx is not retried
    outcomes = {e.get("onegate.client_id"): e for e in op.events_of("backchannel-logout")}
    assert outcomes["oa-app"].outcome == "failure" and outcomes["oa-app"].get("onegate.reason") == "http_500"
    assert outcomes["oa-app"].get("labels.attempts") == 2
    assert outcomes["hr-app"].get("http.response.status_code") == 400
    assert user


async def test_an_unreachable_receiver_is_reported(op: OP) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    dead = Receiver(base=f"http://127.0.0.1:{port}")
    _, session, _ = await _session_with_clients(op, dead, {"oa-app": "/ok"})
    await op.ctx.end_session(session.sid, reason="logout")
    await op.backchannel.drain()
    event = op.events_of("backchannel-logout")[0]
    assert event.outcome == "failure" and event.get("onegate.reason") == "clientconnectorerror"


async def test_clients_without_a_backchannel_uri_are_skipped(op: OP) -> None:
    user = await op.add_user()
    _, secret = await op.add_client()
    browser = op.browser()
    session = await op.sign_in(browser, user)
    await op.login_tokens(browser, secret)
    await op.ctx.end_session(session.sid, reason="logout")
    await op.backchannel.drain()
    assert op.events_of("backchannel-logout") == []
