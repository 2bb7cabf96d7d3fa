"""The deploy/ examples in real nginx and Caddy, with a stand-in for the gateway's forward-auth.

The stand-in answers ``GET /.onegate/auth`` by the path in ``X-Forwarded-Uri`` (``/allowed``,
``/grid``: 200 with identity headers; ``/anonymous``: 200 without; ``/login``: sign in — 302,
or 401 with ``X-OneGate-Location`` for ``?mode=nginx``; anything else: 403 with a deny page) and
echoes every other ``/.onegate/`` request. This tests the proxies' configuration, not the gateway:
what reaches the application and what reaches the gateway, in which form.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp
from websockets.sync.client import connect as ws_connect

from onegate.demo_apps import grid_app
from tests.gateway.servers import (
    CADDYFILE,
    DEPLOY,
    NGINX_FORWARD_AUTH,
    NGINX_PROXY,
    CaddyServer,
    NginxServer,
    free_port,
    placeholders,
    render,
)
from tests.tls import self_signed

IDENTITY = {
    "X-OneGate-User": "zhangwei",
    "X-OneGate-Name": quote("张伟"),
    "X-OneGate-Groups": "hr-staff,hr-admins",
    "X-OneGate-Department": "hrss",
    "X-OneGate-Assertion": "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ6aGFuZ3dlaSJ9.c2ln",
}
EXPECTED = {name.lower(): [value] for name, value in IDENTITY.items()}
# A client's attempts to speak for the gateway, in several spellings.
FORGED = [
    ("X-OneGate-User", "mallory"),
    ("x-onegate-user", "mallory"),
    ("X-ONEGATE-GROUPS", "sys-admins"),
    ("X_OneGate_Department", "secret-service"),
    ("x_onegate_user", "mallory"),
    ("X-OneGate-Assertion", "forged.forged.forged"),
]
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


# -- servers -------------------------------------------------------------------------------------


class Served:
    """An ASGI app under uvicorn on 127.0.0.1 in a thread of its own (its own event loop)."""

    def __init__(self, app: ASGIApp) -> None:
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> Served:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)


async def _echo(request: Request) -> dict[str, Any]:
    digest, size = hashlib.sha256(), 0
    async for chunk in request.stream():
        digest.update(chunk)
        size += len(chunk)
    query = request.scope["query_string"].decode("latin-1")
    return {
        "method": request.method,
        "target": request.scope["raw_path"].decode("latin-1") + (f"?{query}" if query else ""),
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.scope["headers"]],
        "size": size,
        "sha256": digest.hexdigest(),
    }


@dataclass
class Recorder:
    """What a stand-in received, newest last."""

    seen: list[dict[str, Any]] = field(default_factory=list)

    def find(self, target: str, key: str = "target") -> list[dict[str, Any]]:
        return [r for r in self.seen if r.get(key) == target]


def auth_stand_in(recorder: Recorder) -> Starlette:
    async def auth(request: Request) -> Response:
        record = await _echo(request)
        record["uri"] = request.headers.get("x-forwarded-uri")
        recorder.seen.append(record)
        uri = record["uri"] or ""
        path = uri.partition("?")[0]
        if path.startswith(("/allowed", "/grid")):
            return Response(status_code=200, headers=IDENTITY)
        if path.startswith("/anonymous"):
            return Response(status_code=200)
        if path.startswith("/elsewhere"):  # a sign-in address that is not the gateway's own
            return Response(status_code=401, headers={"x-onegate-location": "//evil.example/.onegate/start"})
        if path.startswith("/login"):
            location = f"/.onegate/start?rd={quote(uri, safe='')}"
            if request.query_params.get("mode") == "nginx":
                return Response(status_code=401, headers={"x-onegate-location": location})
            return Response(status_code=302, headers={"location": location})
        return HTMLResponse("<h1>访问被拒绝 Access denied</h1><p>rule permits-hours</p>", status_code=403)

    async def control(request: Request) -> Response:
        record = await _echo(request)
        recorder.seen.append(record)
        return JSONResponse(record)

    return Starlette(
        routes=[
            Route("/.onegate/auth", auth, methods=["GET"]),
            Route("/.onegate/{rest:path}", control, methods=METHODS),
        ]
    )


def upstream_app(recorder: Recorder) -> Starlette:
    async def echo(request: Request) -> Response:
        record = await _echo(request)
        recorder.seen.append(record)
        return JSONResponse(record)

    return Starlette(
        routes=[Mount("/grid", grid_app(tick_seconds=0.05)), Route("/{path:path}", echo, methods=METHODS)]
    )


@dataclass
class Stand:
    auth: Recorder
    app: Recorder
    auth_port: int
    app_port: int


@pytest.fixture(scope="module")
def stand() -> Iterator[Stand]:
    auth, app = Recorder(), Recorder()
    with Served(auth_stand_in(auth)) as auth_server, Served(upstream_app(app)) as app_server:
        yield Stand(auth, app, auth_server.port, app_server.port)


@pytest.fixture(scope="module")
def nginx(stand: Stand) -> Iterator[NginxServer]:
    with NginxServer(
        NGINX_FORWARD_AUTH,
        SERVER_NAME="hr.localhost",
        GATEWAY=f"127.0.0.1:{stand.auth_port}",
        UPSTREAM=f"127.0.0.1:{stand.app_port}",
    ) as server:
        yield server


@pytest.fixture(scope="module")
def caddy(stand: Stand) -> Iterator[CaddyServer]:
    with CaddyServer(
        CADDYFILE, GATEWAY=f"127.0.0.1:{stand.auth_port}", UPSTREAM=f"127.0.0.1:{stand.app_port}"
    ) as server:
        yield server


@pytest.fixture(params=["nginx", "caddy"])
def proxy(request: pytest.FixtureRequest) -> NginxServer | CaddyServer:
    server: NginxServer | CaddyServer = request.getfixturevalue(request.param)
    return server


def onegate_headers(record: dict[str, Any]) -> dict[str, list[str]]:
    """Every header of a recorded request that claims to be the gateway's, by lower-case name."""
    found: dict[str, list[str]] = {}
    for name, value in record["headers"]:
        if name.lower().replace("_", "-").startswith("x-onegate-"):
            found.setdefault(name.lower(), []).append(value)
    return found


def header(record: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in record["headers"] if k.lower() == name]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def unique(path: str) -> str:
    return f"{path}?t={secrets.token_hex(6)}"


# -- forward-auth: nginx and Caddy -----------------------------------------------------------------


def test_allowed_request_reaches_the_app_with_the_gateways_identity_only(
    proxy: NginxServer | CaddyServer, stand: Stand
) -> None:
    target = unique("/allowed/page")
    host = f"hr.localhost:{proxy.port}"
    response = httpx.get(
        proxy.url(target), headers=[("host", host), ("cookie", "onegate_gw=s3ss10n; other=1"), *FORGED]
    )
    assert response.status_code == 200, response.text
    seen = response.json()
    assert seen["target"] == target
    assert onegate_headers(seen) == EXPECTED  # the forged values and spellings are all gone
    assert header(seen, "host") == [host]

    (asked,) = stand.auth.find(target, key="uri")
    assert asked["method"] == "GET" and asked["target"].startswith("/.onegate/auth")
    assert header(asked, "x-forwarded-method") == ["GET"]
    assert header(asked, "x-forwarded-uri") == [target]
    assert header(asked, "x-forwarded-host") == [host]
    assert header(asked, "x-forwarded-proto") == ["http"]
    assert "onegate_gw=s3ss10n" in ";".join(header(asked, "cookie"))
    assert onegate_headers(asked) == {}  # the gateway is not told the client's claims either


def test_logs_are_readable(nginx: NginxServer, caddy: CaddyServer) -> None:
    target = unique("/allowed/logged")
    assert httpx.get(nginx.url(target)).status_code == 200
    assert f'"GET {target} HTTP/1.1" 200' in nginx.log()  # the access log
    assert "start worker process" in nginx.log()  # the error log, level notice
    assert '"msg":"serving initial configuration"' in caddy.log()


def test_nginx_asks_in_nginx_mode(nginx: NginxServer, stand: Stand) -> None:
    target = unique("/allowed/mode")
    assert httpx.get(nginx.url(target)).status_code == 200
    (asked,) = stand.auth.find(target, key="uri")
    assert asked["target"] == "/.onegate/auth?mode=nginx"


def test_caddy_removes_every_x_onegate_header_the_client_sent(caddy: CaddyServer, stand: Stand) -> None:
    target = unique("/allowed/extra")
    forged = [
        ("X-OneGate-Extra", "1"),
        ("X-OneGate_Mixed", "2"),
        ("X_OneGate-Mixed", "3"),
        ("x-onegate-", "4"),
    ]
    response = httpx.get(caddy.url(target), headers=forged)
    assert onegate_headers(response.json()) == EXPECTED
    (asked,) = stand.auth.find(target, key="uri")
    assert onegate_headers(asked) == {}


def test_anonymous_allow_sends_no_identity_headers(proxy: NginxServer | CaddyServer) -> None:
    # Caddy 2.6 would send the literal "{http.reverse_proxy.header.X-Onegate-User}" without the
    # example's clean-up; nginx sends nothing for an empty value.
    response = httpx.get(proxy.url(unique("/anonymous/page")), headers=FORGED)
    assert response.status_code == 200
    assert onegate_headers(response.json()) == {}


def test_sign_in_is_a_redirect_to_the_gateways_start(proxy: NginxServer | CaddyServer, stand: Stand) -> None:
    target = unique("/login/here")
    response = httpx.get(proxy.url(target), headers={"host": f"hr.localhost:{proxy.port}"})
    assert response.status_code == 302
    # A path on the same host: nginx turns the 401's X-OneGate-Location into it, Caddy passes it on.
    assert response.headers["location"] == f"/.onegate/start?rd={quote(target, safe='')}"
    assert "x-onegate-location" not in response.headers
    assert stand.app.find(target) == []


def test_nginx_follows_only_the_gateways_own_sign_in_paths(nginx: NginxServer, stand: Stand) -> None:
    target = unique("/elsewhere")
    response = httpx.get(nginx.url(target))
    assert response.status_code == 401
    assert "location" not in response.headers
    assert stand.app.find(target) == []


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_denied_request_gets_the_gateways_deny_page(
    proxy: NginxServer | CaddyServer, stand: Stand, method: str
) -> None:
    target = unique("/denied/page")
    response = httpx.request(method, proxy.url(target), content=b"x" * 1000 if method == "POST" else None)
    assert response.status_code == 403
    assert "访问被拒绝 Access denied" in response.text
    assert "permits-hours" in response.text
    assert stand.app.find(target) == []
    assert all(header(r, "x-forwarded-method") == [method] for r in stand.auth.find(target, key="uri"))


def test_request_body_goes_to_the_app_and_never_to_the_gateway(
    proxy: NginxServer | CaddyServer, stand: Stand
) -> None:
    body = os.urandom(3 * 1024 * 1024 + 17)
    target = unique("/allowed/upload")
    response = httpx.post(
        proxy.url(target), content=body, headers={"content-type": "application/octet-stream"}
    )
    assert response.status_code == 200
    seen = response.json()
    assert (seen["method"], seen["size"], seen["sha256"]) == ("POST", len(body), sha256(body))
    (asked,) = stand.auth.find(target, key="uri")
    assert asked["method"] == "GET" and asked["size"] == 0
    assert header(asked, "x-forwarded-method") == ["POST"]


def test_gateway_paths_reach_the_gateway_as_they_came(proxy: NginxServer | CaddyServer, stand: Stand) -> None:
    target = f"/.onegate/callback?code=a%2Fb%3D%3D&state={secrets.token_hex(6)}%20x&iss=http%3A%2F%2Fidp"
    host = f"hr.localhost:{proxy.port}"
    response = httpx.get(proxy.url(target), headers=[("host", host), *FORGED])
    assert response.status_code == 200
    seen = response.json()
    assert seen["target"] == target  # not decoded, not re-encoded
    assert header(seen, "host") == [host]
    assert onegate_headers(seen) == {}
    assert stand.auth.find(target, key="uri") == []  # not decided: it is the gateway's own path


def test_websocket_through_the_proxy(proxy: NginxServer | CaddyServer, stand: Stand) -> None:
    with ws_connect(
        f"ws://127.0.0.1:{proxy.port}/grid/ws",
        additional_headers=[("X-OneGate-User", "mallory")],
        open_timeout=5,
    ) as ws:
        hello = json.loads(ws.recv(timeout=5))
        first, second = (json.loads(ws.recv(timeout=5)) for _ in range(2))
    assert hello == {"type": "hello", "user": "zhangwei"}  # the gateway's user, not the client's
    assert first["type"] == second["type"] == "tick" and second["seq"] > first["seq"]
    assert set(first["metrics"]) >= {"events_today", "in_progress", "dispatches"}
    asked = stand.auth.find("/grid/ws", key="uri")[-1]
    assert header(asked, "x-forwarded-method") == ["GET"]
    assert header(asked, "upgrade") == []  # the question itself is a plain GET, not a handshake


# -- nginx in front of the gateway ---------------------------------------------------------------


@dataclass
class Front:
    nginx: NginxServer
    tls: ssl.SSLContext


@pytest.fixture(scope="module")
def front(stand: Stand, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    """nginx terminating TLS in front of the "gateway" (here the echoing upstream)."""
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    with NginxServer(
        NGINX_PROXY,
        SERVER_NAME="idp.localhost hr.localhost",
        TLS_CERT=str(cert),
        TLS_KEY=str(key),
        GATEWAY=f"127.0.0.1:{stand.app_port}",
    ) as server:
        yield Front(server, ssl.create_default_context(cafile=str(cert)))


def test_front_proxy_sets_forwarded_headers_afresh(front: Front) -> None:
    target = unique("/account/sessions")
    forged = {
        "host": "idp.localhost",
        "x-forwarded-for": "203.0.113.9",
        "x-forwarded-proto": "http",
        "x-forwarded-host": "evil.example",
        "x-real-ip": "203.0.113.9",
        "forwarded": "for=203.0.113.9;proto=http",
    }
    response = httpx.get(front.nginx.url(target, scheme="https"), headers=forged, verify=front.tls)
    assert response.status_code == 200
    seen = response.json()
    assert seen["target"] == target
    assert header(seen, "host") == ["idp.localhost"]
    assert header(seen, "x-forwarded-for") == ["127.0.0.1"]
    assert header(seen, "x-real-ip") == ["127.0.0.1"]
    assert header(seen, "x-forwarded-proto") == ["https"]
    assert header(seen, "x-forwarded-host") == ["idp.localhost"]
    assert header(seen, "forwarded") == []


def test_front_proxy_streams_a_large_upload(front: Front) -> None:
    body = os.urandom(5 * 1024 * 1024)
    response = httpx.put(
        front.nginx.url(unique("/upload"), scheme="https"),
        content=body,
        headers={"host": "hr.localhost"},
        verify=front.tls,
    )
    assert response.status_code == 200
    assert (response.json()["size"], response.json()["sha256"]) == (len(body), sha256(body))


def test_front_proxy_redirects_plain_http_to_https(front: Front) -> None:
    port = front.nginx.ports["HTTP_LISTEN"]
    response = httpx.get(f"http://127.0.0.1:{port}/login?next=%2F", headers={"host": "idp.localhost"})
    assert response.status_code == 308
    assert response.headers["location"] == "https://idp.localhost/login?next=%2F"


def test_front_proxy_carries_websockets_over_tls(front: Front) -> None:
    with ws_connect(f"wss://127.0.0.1:{front.nginx.port}/grid/ws", ssl=front.tls, open_timeout=5) as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "hello"
        assert json.loads(ws.recv(timeout=5))["type"] == "tick"


# -- rendering -----------------------------------------------------------------------------------


def test_render_fills_every_placeholder_and_refuses_mistakes(tmp_path: Path) -> None:
    template = tmp_path / "t.conf"
    template.write_text("listen {{LISTEN}};\nproxy_pass http://{{GATEWAY}};\n# {{GATEWAY}} again\n")
    assert render(template, LISTEN="8080", GATEWAY="127.0.0.1:9") == (
        "listen 8080;\nproxy_pass http://127.0.0.1:9;\n# 127.0.0.1:9 again\n"
    )
    with pytest.raises(ValueError, match="no value for GATEWAY"):
        render(template, LISTEN="8080")
    with pytest.raises(ValueError, match="no placeholder UPSTREM"):
        render(template, LISTEN="8080", GATEWAY="a:1", UPSTREM="b:2")
    for bad in ("8080;\nuser root", "a:1; }", ""):
        with pytest.raises(ValueError, match="single configuration value"):
            render(template, LISTEN=bad, GATEWAY="a:1")


def test_every_placeholder_of_the_examples_is_documented() -> None:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for template in (NGINX_FORWARD_AUTH, NGINX_PROXY, CADDYFILE):
        names = placeholders(template)
        assert names, template
        for name in names:
            assert f"`{{{{{name}}}}}`" in readme, f"{name} of {template.name} is not in deploy/README.md"
