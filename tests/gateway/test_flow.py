"""The gateway end to end over real HTTP: one ``onegate serve --role all`` process (IdP and
gateway), echo upstreams, users made with the CLI, sign-in through the IdP's own forms.

Single sign-on across applications, the identity and the signed assertion the upstream receives,
the deny page, step-up, global logout ending every application session (back-channel logout),
and the refusals an attacker would try: forged identity headers, path tricks, open redirects,
unknown hosts, a cookie replayed after logout, request smuggling.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from gateway.assertion import AssertionInvalid, verify
from tests.e2e.browser import forms
from tests.e2e.conftest import IdpUser, LoopbackAdapter
from tests.gateway.stack import GatewayStack, headers_of, identity_names
from tests.gateway.upstreams import UpstreamServer

POLICY = """
version: 1
timezone: Asia/Shanghai
apps:
  hr:
    hosts: [hr.localhost]
    rules:
      - id: hr-staff
        description: HR staff use the HR system / 人社局工作人员使用人事系统
        effect: allow
        subjects: {departments: [hrss]}
        not_paths: [/admin]
      - id: hr-admin-only
        effect: allow
        paths: [/admin]
        subjects: {groups: [hr-admins]}
      - id: hr-admin-passkey
        effect: step_up
        paths: [/admin]
        acr: phr
      - id: hr-public
        effect: allow
        paths: [/public]
        anonymous: true
  grid:
    hosts: [grid.localhost]
    rules:
      - {id: grid-read, effect: allow, methods: [GET, HEAD], subjects: {departments: [city]}}
  permits:
    hosts: [permits.localhost]
    rules:
      - {id: permits-staff, effect: allow, subjects: {groups: [approval-staff]}}
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer() as server:
        yield server


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, upstream: UpstreamServer) -> Iterator[GatewayStack]:
    routes = {
        "hr": ("hr", upstream.url),
        "grid": ("grid", upstream.url),
        "permits": ("permits", upstream.url),
    }
    server = GatewayStack(tmp_path_factory.mktemp("stack"), routes, policy=POLICY).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def zhangwei(stack: GatewayStack) -> IdpUser:
    return stack.add_user(name="张伟", department="hrss", groups=["hr-staff"])


@pytest.fixture(scope="module")
def wangfang(stack: GatewayStack) -> IdpUser:
    return stack.add_user(name="王芳", department="hrss", groups=["hr-staff", "hr-admins"])


def test_sign_in_once_then_every_application_without_a_prompt(stack: GatewayStack, zhangwei: IdpUser) -> None:
    browser, page = stack.sign_in("hr", zhangwei, "/people?q=1")
    view = stack.upstream_view(page)
    assert urlsplit(page.url).hostname == "hr.localhost" and view["target"] == "/people?q=1"
    headers = headers_of(view)
    assert headers["x-onegate-user"] == [zhangwei.username]
    assert headers["x-onegate-groups"] == ["hr-staff"]
    assert headers["x-onegate-department"] == ["hrss"]
    assert requests.utils.unquote(headers["x-onegate-name"][0]) == "张伟"
    # The assertion verifies against the IdP's published keys, for this application only.
    token = headers["x-onegate-assertion"][0]
    jwks = stack.http().get(stack.url("/jwks.json"), timeout=5).json()
    claims = verify(token, audience="hr", issuer=stack.issuer, jwks=jwks)
    assert claims["preferred_username"] == zhangwei.username and claims["departments"] == ["hrss", "city"]
    assert claims["exp"] - claims["iat"] <= 60
    with pytest.raises(AssertionInvalid):
        verify(token, audience="grid", issuer=stack.issuer, jwks=jwks)
    # The gateway's session cookie never reaches the application.
    assert not any("onegate_gw" in c for c in headers.get("cookie", []))

    # A second application: the IdP session signs the user in without a form.
    page = browser.get(stack.app_url("grid", "/dashboard"))
    assert urlsplit(page.url).hostname == "grid.localhost", page.url
    assert headers_of(stack.upstream_view(page))["x-onegate-user"] == [zhangwei.username]


def test_a_forbidden_application_shows_the_deny_page(stack: GatewayStack, zhangwei: IdpUser) -> None:
    browser, _ = stack.sign_in("hr", zhangwei)
    page = browser.get(stack.app_url("permits", "/apply"))
    assert page.status_code == 403 and urlsplit(page.url).hostname == "permits.localhost"
    assert "无权访问" in page.text and "permits" in page.text
    assert "此应用的访问规则中没有适用于您的授权" in page.text  # a default deny says why in words
    assert "请求编号" in page.text or "Request ID" in page.text
    assert "Traceback" not in page.text and "upstream" not in page.text.lower()
    english = browser.get(stack.app_url("permits", "/apply?lang=en"))
    assert english.status_code == 403 and "Access denied" in english.text


def test_a_deny_rule_names_its_reason(stack: GatewayStack, zhangwei: IdpUser) -> None:
    browser, _ = stack.sign_in("hr", zhangwei)
    page = browser.get(stack.app_url("hr", "/admin/users"))
    assert page.status_code == 403
    assert "人社局工作人员" not in page.text  # an allow rule is not a reason to refuse


def test_step_up_goes_back_to_the_idp_asking_for_more(stack: GatewayStack, wangfang: IdpUser) -> None:
    browser, page = stack.sign_in("hr", wangfang)
    assert page.status_code == 200
    response = browser.http.get(
        stack.app_url("hr", "/admin/"), allow_redirects=False, headers={"accept": "text/html"}
    )
    assert response.status_code == 302 and response.headers["location"].startswith("/.onegate/start?")
    start = browser.http.get(stack.app_url("hr", response.headers["location"]), allow_redirects=False)
    authorize = urlsplit(start.headers["location"])
    query = parse_qs(authorize.query)
    assert authorize.hostname == "idp.localhost" and query["acr_values"] == ["urn:onegate:acr:phr"]
    assert query["code_challenge_method"] == ["S256"] and query["state"] and query["nonce"]
    # An API client gets a 401 it can act on instead of a redirect.
    api = browser.http.get(
        stack.app_url("hr", "/admin/"), allow_redirects=False, headers={"accept": "application/json"}
    )
    assert api.status_code == 401


def test_global_logout_ends_every_application_session(stack: GatewayStack, zhangwei: IdpUser) -> None:
    browser, _ = stack.sign_in("hr", zhangwei)
    assert browser.get(stack.app_url("grid", "/")).status_code == 200
    hr_cookie = browser.http.cookies.get("onegate_gw", domain="hr.localhost")
    assert hr_cookie
    # Sign out everywhere from the HR application's logout page.
    page = browser.get(stack.app_url("hr", "/.onegate/logout"))
    page = browser.submit(browser.form("scope"), {}, button=("scope", "everywhere"))
    # The IdP asks nothing more: the ID token hint names this very session.
    assert urlsplit(page.url).hostname == "idp.localhost", page.url
    assert not any("confirm" in f.action for f in forms(page.text)), page.text[:500]
    # Back-channel logout reaches the gateway in the background: allow it a moment.
    deadline = time.monotonic() + 5
    for app in ("hr", "grid"):
        while True:
            again = browser.http.get(
                stack.app_url(app, "/"), allow_redirects=False, headers={"accept": "text/html"}
            )
            if again.status_code == 302:
                break
            assert time.monotonic() < deadline, f"{app}: still signed in after the global logout"
            time.sleep(0.05)
        assert "/.onegate/start" in again.headers["location"], app
    # The old cookie replayed by someone who kept it: refused as well.
    replay = requests.Session()
    replay.mount("http://", LoopbackAdapter())
    replayed = replay.get(
        stack.app_url("hr", "/"),
        cookies={"onegate_gw": hr_cookie},
        allow_redirects=False,
        headers={"accept": "text/html"},
    )
    assert replayed.status_code == 302


def test_forged_identity_and_forwarding_headers_never_reach_the_upstream(
    stack: GatewayStack, zhangwei: IdpUser
) -> None:
    browser, _ = stack.sign_in("hr", zhangwei)
    forged = {
        "X-OneGate-User": "admin",
        "x-onegate-groups": "hr-admins",
        "X-ONEGATE-DEPARTMENT": "city",
        "X_OneGate_User": "admin",
        "X-Onegate-Assertion": "forged",
        "X-OneGate-Extra": "1",
        "X-Forwarded-For": "10.9.9.9",
        "X-Forwarded-Host": "evil.example",
        "Forwarded": "for=10.9.9.9",
        "Connection": "X-OneGate-User, keep-alive",
    }
    page = browser.http.get(stack.app_url("hr", "/"), headers=forged, allow_redirects=False)
    view = stack.upstream_view(page)
    headers = headers_of(view)
    names = identity_names(view)
    assert sorted(n.lower() for n in names) == sorted(
        [
            "x-onegate-user",
            "x-onegate-name",
            "x-onegate-groups",
            "x-onegate-department",
            "x-onegate-assertion",
        ]
    )
    assert headers["x-onegate-user"] == [zhangwei.username] and headers["x-onegate-groups"] == ["hr-staff"]
    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    assert headers["x-forwarded-host"] == [f"hr.localhost:{stack.port}"]
    assert "forwarded" not in headers
    # Anonymous on a public path: no identity at all, forged or not.
    anonymous = requests.Session()
    anonymous.mount("http://", LoopbackAdapter())
    view = stack.upstream_view(anonymous.get(stack.app_url("hr", "/public/x"), headers=forged))
    assert identity_names(view) == []


@pytest.mark.parametrize(
    "path",
    [
        "/admin",
        "/ADMIN",
        "/%61dmin",
        "//admin",
        "/admin;x=y",
        "/x/../admin",
        "/%2e%2e/admin",
        "/Admin/",
        "/./admin",
    ],
)
def test_path_tricks_reach_no_path_the_rules_deny(stack: GatewayStack, zhangwei: IdpUser, path: str) -> None:
    """A user refused /admin is refused it in every spelling (403), and nothing reaches the upstream."""
    browser, _ = stack.sign_in("hr", zhangwei)
    response = _raw_get(stack, "hr", path, browser.http.cookies.get("onegate_gw", domain="hr.localhost"))
    assert response.startswith((b"HTTP/1.1 403", b"HTTP/1.1 400")), (path, response[:200])


@pytest.mark.parametrize("path", ["/%252e%252e/admin", "/admin%2fx", "/adm%00in", "/%c0%ae%c0%ae/admin"])
def test_ambiguous_paths_are_refused(stack: GatewayStack, zhangwei: IdpUser, path: str) -> None:
    browser, _ = stack.sign_in("hr", zhangwei)
    response = _raw_get(stack, "hr", path, browser.http.cookies.get("onegate_gw", domain="hr.localhost"))
    assert response.startswith(b"HTTP/1.1 400"), (path, response[:200])


def _raw_get(stack: GatewayStack, app: str, target: str, cookie: str | None, extra: bytes = b"") -> bytes:
    """Send a request exactly as written (no client-side normalisation of the target)."""
    host = f"{stack.routes[app][0]}.localhost:{stack.port}"
    request = f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAccept: text/html\r\n".encode()
    if cookie:
        request += f"Cookie: onegate_gw={cookie}\r\n".encode()
    request += extra + b"Connection: close\r\n\r\n"
    return _exchange(stack.port, request)


def _exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def test_return_to_is_limited_to_the_applications_own_origin(stack: GatewayStack, zhangwei: IdpUser) -> None:
    for evil in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "http:evil.example"):
        browser = stack.browser()
        start = browser.http.get(
            stack.app_url("hr", f"/.onegate/start?rd={requests.utils.quote(evil, safe='')}"),
            allow_redirects=False,
        )
        assert start.status_code == 302
        page = browser.get(start.headers["location"])
        page = browser.submit(
            browser.form("password"), {"username": zhangwei.username, "password": zhangwei.password}
        )
        assert urlsplit(page.url).hostname == "hr.localhost", (evil, page.url)
        assert stack.upstream_view(page)["target"] == "/", evil


def test_a_host_no_route_names_is_refused(stack: GatewayStack, upstream: UpstreamServer) -> None:
    response = _exchange(
        stack.port,
        f"GET / HTTP/1.1\r\nHost: evil.localhost:{stack.port}\r\nConnection: close\r\n\r\n".encode(),
    )
    assert response.startswith(b"HTTP/1.1 421")
    doubled = _exchange(
        stack.port,
        f"GET / HTTP/1.1\r\nHost: hr.localhost:{stack.port}\r\nHost: evil.localhost\r\n"
        "Connection: close\r\n\r\n".encode(),
    )
    assert doubled.startswith(b"HTTP/1.1 400")


def test_request_smuggling_is_refused(stack: GatewayStack) -> None:
    host = f"hr.localhost:{stack.port}"
    body = b"0\r\n\r\nGET /public/smuggled HTTP/1.1\r\nHost: " + host.encode() + b"\r\n\r\n"
    request = (
        f"POST /public/x HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode() + body
    response = _exchange(stack.port, request)
    assert response.startswith(b"HTTP/1.1 400"), response[:200]
    assert b"smuggled" not in response
    doubled = (
        f"POST /public/x HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nContent-Length: 6\r\n"
        "Connection: close\r\n\r\nhello!"
    ).encode()
    assert _exchange(stack.port, doubled).startswith(b"HTTP/1.1 400")


def test_bodies_stream_both_ways(stack: GatewayStack, zhangwei: IdpUser) -> None:
    browser, _ = stack.sign_in("hr", zhangwei)
    size = 32 * 1024 * 1024
    download = browser.http.get(stack.app_url("hr", f"/download?size={size}"), stream=True)
    assert download.status_code == 200 and sum(len(c) for c in download.iter_content(1 << 20)) == size

    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b"y" * (256 * 1024)

    upload = browser.http.post(stack.app_url("hr", "/upload"), data=chunks())
    view = stack.upstream_view(upload)
    assert view["body_bytes"] == 64 * 256 * 1024 and view["method"] == "POST"


async def test_websockets_are_proxied_after_the_same_decision(stack: GatewayStack, zhangwei: IdpUser) -> None:
    import websockets
    from websockets.asyncio.client import connect

    browser, _ = stack.sign_in("hr", zhangwei)
    cookie = browser.http.cookies.get("onegate_gw", domain="hr.localhost")
    # The URI names the application's host (the Host header); the connection goes to 127.0.0.1.
    url = f"ws://hr.localhost:{stack.port}/ws"
    address = {"host": "127.0.0.1", "port": stack.port, "proxy": None}
    async with connect(
        url, additional_headers={"Cookie": f"onegate_gw={cookie}", "X-OneGate-User": "admin"}, **address
    ) as ws:
        assert await ws.recv() == f"hello {zhangwei.username}"  # the upstream saw the real identity
        await ws.send("你好")
        assert await ws.recv() == "你好"
    # Without a session the handshake is refused.
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with connect(url, **address):
            pass
    assert refused.value.response.status_code == 403
