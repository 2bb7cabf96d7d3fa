"""Unit checks of the proxy's pieces that the end-to-end tests do not isolate."""

from __future__ import annotations

import json
import time
from pathlib import Path

from core.events import Event
from gateway.app import Verdict, _Access
from gateway.routes import Route, RouteTable, host_of
from gateway.sessions import GatewaySession
from gateway.upstream import Origin
from policy.model import Decision, Effect, Reason


def _session() -> GatewaySession:
    return GatewaySession(
        sid="s1",
        host="hr.example.gov",
        sub="sub-1",
        username="zhangwei",
        name="张伟",
        groups=("hr-staff",),
        department="hrss",
        departments=("hrss", "city"),
        roles=("clerk",),
        acr="urn:onegate:acr:mfa",
        amr=("pwd", "otp"),
        auth_time=time.time() - 30,
        idp_sid="i1",
        id_token="-",
        created_at=time.time(),
        last_seen=time.time(),
        expires_at=time.time() + 60,
        secret_hash="0" * 64,
    )


ROUTE = Route(app="hr", hosts=("hr.example.gov",), origin=Origin.parse("http://127.0.0.1:9"), path_prefix="/")


def _access(session: GatewaySession | None, kind: str = "http") -> _Access:
    decision = Decision(Effect.ALLOW, Reason.ALLOWED, ("hr-staff",))
    verdict = Verdict(
        "abcd", "10.1.2.3", route=ROUTE, session=session, decision=decision, path="/people", risk=10
    )
    headers = [(b"user-agent", b"Mozilla/5.0")]
    access = _Access(verdict, time.perf_counter(), "POST", headers, kind == "websocket")
    access.status, access.bytes = 201, 512
    return access


def test_the_access_event_passes_the_checking_constructor() -> None:
    """The request path builds its event unchecked; the same fields must pass the checks."""
    for access in (_access(_session()), _access(None), _access(_session(), "websocket")):
        event = access.event()
        checked = Event(event.action, event.category, event.outcome, fields=dict(event.fields))
        assert checked.fields == event.fields
    fields = _access(_session()).event().fields
    assert fields["user.name"] == "zhangwei" and fields["onegate.rule_ids"] == ["hr-staff"]
    assert fields["http.response.status_code"] == 201 and fields["source.ip"] == "10.1.2.3"
    assert 25 <= fields["onegate.auth_age"] <= 60 and fields["onegate.departments"] == ["hrss", "city"]
    assert "user.name" not in _access(None).event().fields


def test_hosts_are_read_strictly() -> None:
    assert host_of(b"HR.Example.gov:8443") == "hr.example.gov"
    assert host_of(b"[::1]:80") == "[::1]"
    for bad in (b"", b"a b", b"evil@hr.example.gov", b"hr.example.gov:x", b"[::1", b"hr/x", None):
        assert host_of(bad) is None, bad


def test_the_longest_prefix_wins_and_unknown_hosts_match_nothing() -> None:
    api = Route(app="hr-api", hosts=("hr.example.gov",), origin=ROUTE.origin, path_prefix="/api")
    table = RouteTable([ROUTE, api])
    assert table.match("hr.example.gov", "/api/x") is api
    assert table.match("hr.example.gov", "/apix") is ROUTE
    assert table.match("other.example.gov", "/") is None
    assert sorted(r.app for r in table.all()) == ["hr", "hr-api"]


async def test_a_session_store_outage_is_a_503_page_not_a_500(tmp_path: Path) -> None:
    """Redis gone (a port nobody listens on): the gateway's pages say "unavailable" (503)."""
    import httpx

    from core.kv import RedisKV
    from core.settings import load_settings
    from onegate.bootstrap import initialise
    from onegate.gateway_app import build_gateway_app
    from onegate.runtime import open_runtime

    routes = '[{"app": "hr", "hosts": ["hr.example.gov"], "upstream": "http://127.0.0.1:9"}]'
    settings = load_settings(
        None, overrides={"data_dir": tmp_path, "gateway": {"routes": json.loads(routes)}}
    )
    await initialise(settings)
    runtime = await open_runtime(settings)
    dead = RedisKV("redis://127.0.0.1:1/0", prefix="x:", connect_timeout=0.5)
    try:
        built = build_gateway_app(runtime, issuer="http://idp.example.gov", port=443)
        built.gateway.sessions._kv = dead  # the store every request reads
        built.context.kv = dead
        transport = httpx.ASGITransport(app=built.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hr.example.gov") as client:
            page = await client.get(
                "/people", headers={"cookie": "onegate_gw=abc.def", "accept": "text/html"}
            )
            assert page.status_code == 503 and "服务暂不可用" in page.text
            assert "Traceback" not in page.text
            logout = await client.get("/.onegate/logout", headers={"cookie": "onegate_gw=abc.def"})
            assert logout.status_code == 503 and "服务暂不可用" in logout.text
    finally:
        await dead.close()
        await runtime.close()
