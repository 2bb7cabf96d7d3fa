"""The demo city's systems: HR, Permits, City operations (behind the gateway) and OA (OIDC).

HR, Permits and the dashboard page are driven in-process through ``httpx.ASGITransport``; the
dashboard's WebSocket and OA run under a real uvicorn on a free port, OA against a real IdP
process (``onegate serve --role idp``) with a client registered by the real CLI, signing in
through the IdP's real forms.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import secrets
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
import requests
import uvicorn
from starlette.types import ASGIApp
from websockets.asyncio.client import connect as ws_connect

from gateway.assertion import AssertionIssuer
from gateway.assertion import Identity as AssertedIdentity
from keyvault.envelope import Envelope
from keyvault.masterkey import MasterKeyring
from keyvault.signing import SigningKeyring
from onegate.demo_apps import (
    DEMO_APPS,
    OA_SCOPES,
    OaClient,
    _SessionStore,
    build_demo_apps,
    grid_app,
    hr_app,
    oa_app,
    permits_app,
)
from tests.e2e.browser import Browser as FormBrowser
from tests.e2e.conftest import IdpServer, LoopbackAdapter, free_port

NASTY = "张伟<script>alert(1)</script>"
ZHANGWEI = {
    "X-OneGate-User": "zhangwei",
    "X-OneGate-Name": quote(NASTY),
    "X-OneGate-Groups": "hr-staff,<b>bold</b>",
    "X-OneGate-Department": "hrss",
}
ISSUER = "https://gateway.example.gov.cn"


def client(app: ASGIApp, host: str = "hr.localhost") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{host}")


def csrf_token(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


# -- HR --------------------------------------------------------------------------------------------


async def test_hr_shows_the_identity_it_receives_escaped() -> None:
    async with client(hr_app()) as http:
        response = await http.get("/", headers=ZHANGWEI)
    page = response.text
    assert response.status_code == 200
    assert "张伟&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "<script" not in page and "<b>" not in page
    assert "<code>zhangwei</code>" in page and "<code>hrss</code>" in page
    assert page.index("人事管理系统") < page.index("HR")  # zh-CN first
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("path", ["/", "/admin/", "/staff"])
async def test_hr_says_plainly_when_no_identity_arrived(path: str) -> None:
    async with client(hr_app()) as http:
        response = await http.get(path)
    assert response.status_code == 200
    assert "未收到身份信息" in response.text and "No identity received" in response.text
    assert "未登录" in response.text


async def test_hr_admin_page_and_staff_list() -> None:
    async with client(hr_app()) as http:
        admin = await http.get("/admin/", headers=ZHANGWEI)
        staff = await http.get("/staff", headers=ZHANGWEI)
    assert admin.status_code == 200 and "管理员页面" in admin.text and "Administrator page" in admin.text
    assert "hr-admins" in admin.text
    assert staff.status_code == 200 and "王芳" in staff.text and "Wang Fang" in staff.text


@pytest.fixture
def ring(tmp_path: Path) -> SigningKeyring:
    keys = SigningKeyring(
        tmp_path / "signing",
        Envelope(MasterKeyring.generate()),
        alg="ES256",
        prepublish_seconds=300.0,
        retire_after_seconds=120.0,
    )
    keys.ensure_key()
    return keys


def assertion_for(ring: SigningKeyring, app: str) -> str:
    identity = AssertedIdentity(
        sub="5d2e", username="wangfang", name="王芳", groups=("hr-admins",), department="hrss",
        departments=("hrss", "city"), acr="urn:onegate:acr:phr", amr=("hwk",), auth_time=int(time.time()),
        sid="gw-1",
    )  # fmt: skip
    return AssertionIssuer(ring, issuer=ISSUER).issue(identity, app)


async def test_hr_verifies_the_assertion_with_the_issuers_keys(ring: SigningKeyring) -> None:
    headers = {**ZHANGWEI, "X-OneGate-Assertion": assertion_for(ring, "hr")}
    async with client(hr_app(issuer=ISSUER, jwks=ring.jwks())) as http:
        whoami = (await http.get("/api/whoami", headers=headers)).json()
        admin = await http.get("/admin/", headers=headers)
    assert whoami["assertion"]["status"] == "verified"
    assert whoami["assertion"]["claims"]["aud"] == "hr"
    assert whoami["assertion"]["claims"]["acr"] == "urn:onegate:acr:phr"
    assert whoami["identity"]["name"] == NASTY  # decoded from percent-encoded UTF-8
    assert "已验证" in admin.text and "urn:onegate:acr:phr" in admin.text


async def test_hr_refuses_an_assertion_for_another_application(ring: SigningKeyring) -> None:
    headers = {**ZHANGWEI, "X-OneGate-Assertion": assertion_for(ring, "permits")}
    async with client(hr_app(issuer=ISSUER, jwks=ring.jwks())) as http:
        whoami = (await http.get("/api/whoami", headers=headers)).json()
        page = await http.get("/", headers=headers)
    assert whoami["assertion"]["status"] == "invalid"
    assert whoami["assertion"]["detail"] == "audience"
    assert "验证失败" in page.text and "NOT verified" in page.text


async def test_hr_without_keys_shows_the_assertion_as_not_checked(ring: SigningKeyring) -> None:
    headers = {**ZHANGWEI, "X-OneGate-Assertion": assertion_for(ring, "hr")}
    async with client(hr_app()) as http:
        whoami = (await http.get("/api/whoami", headers=headers)).json()
        page = await http.get("/", headers=headers)
    assert whoami["assertion"]["status"] == "not_checked"
    assert whoami["assertion"]["claims"]["preferred_username"] == "wangfang"  # decoded, for display
    assert "assertion not checked" in page.text and "未验证" in page.text


# -- Permits ---------------------------------------------------------------------------------------

LIU_YANG = {
    "X-OneGate-User": "liuyang",
    "X-OneGate-Name": quote("刘洋"),
    "X-OneGate-Groups": "approval-staff",
}
BOUNDARY = "----OneGateDemo7MA4YWxkTrZu0gW"


async def multipart(
    fields: list[tuple[str, str]], file_size: int, digest: Any, *, seed: int = 7, chunk: int = 65_537
) -> AsyncIterator[bytes]:
    """A multipart/form-data body made as it is sent (odd chunk sizes: parts straddle chunks)."""
    head = b"".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields
    )
    yield head
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="attachment"; filename="规划图 <1>.pdf"\r\n'
        "Content-Type: application/pdf\r\n\r\n"
    ).encode()
    rng = random.Random(seed)
    sent = 0
    while sent < file_size:
        data = rng.randbytes(min(chunk, file_size - sent))
        digest.update(data)
        sent += len(data)
        yield data
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


async def test_permits_streams_an_upload_and_shows_size_and_sha256() -> None:
    size = 8 * 1024 * 1024 + 3
    digest = hashlib.sha256()
    async with client(permits_app(), "permits.localhost") as http:
        form = await http.get("/new", headers=LIU_YANG)
        assert form.status_code == 200 and 'enctype="multipart/form-data"' in form.text
        token = csrf_token(form.text)
        tracemalloc.start()
        try:
            response = await http.post(
                "/applications",
                headers={**LIU_YANG, "content-type": f"multipart/form-data; boundary={BOUNDARY}"},
                content=multipart([("csrf_token", token), ("title", "建设工程规划许可")], size, digest),
            )
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert response.status_code == 303, response.text
        shown = await http.get(response.headers["location"], headers=LIU_YANG)
        listed = await http.get("/", headers=LIU_YANG)
    assert f'<span id="size">{size}</span>' in shown.text
    assert f'<code id="sha256">{digest.hexdigest()}</code>' in shown.text
    assert "建设工程规划许可" in shown.text and "刘洋" in shown.text
    assert "规划图 &lt;1&gt;.pdf" in listed.text
    assert peak < 3 * 1024 * 1024, f"{peak} bytes traced for an {size}-byte upload: not streamed"


async def test_permits_accepts_a_browser_style_form() -> None:
    data = secrets.token_bytes(100_000)
    async with client(permits_app(), "permits.localhost") as http:
        token = csrf_token((await http.get("/new", headers=LIU_YANG)).text)
        response = await http.post(
            "/applications",
            headers=LIU_YANG,
            data={"csrf_token": token, "title": "营业执照"},
            files={"attachment": ("a.bin", data, "application/octet-stream")},
        )
        shown = await http.get(response.headers["location"], headers=LIU_YANG)
    assert hashlib.sha256(data).hexdigest() in shown.text


@pytest.mark.parametrize(
    "case", ["no cookie", "wrong token", "another user's token", "file before token", "no token"]
)
async def test_permits_refuses_a_form_without_its_csrf_token(case: str) -> None:
    app = permits_app()
    async with client(app, "permits.localhost") as http:
        token = csrf_token((await http.get("/new", headers=LIU_YANG)).text)
        user = LIU_YANG
        fields = [("csrf_token", token), ("title", "x")]
        if case == "no cookie":
            http.cookies.clear()
        elif case == "wrong token":
            forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")  # never the token
            fields = [("csrf_token", forged), ("title", "x")]
        elif case == "another user's token":
            user = {**LIU_YANG, "X-OneGate-User": "mallory"}
        elif case == "no token":
            fields = [("title", "x")]

        async def body() -> AsyncIterator[bytes]:
            if case == "file before token":
                yield (
                    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="attachment"; filename="a"\r\n\r\n'
                    f"data\r\n"
                ).encode()
            async for part in multipart(fields, 10, hashlib.sha256()):
                yield part

        response = await http.post(
            "/applications",
            headers={**user, "content-type": f"multipart/form-data; boundary={BOUNDARY}"},
            content=body(),
        )
        listed = await http.get("/", headers=LIU_YANG)
    assert response.status_code == 403
    assert "CSRF" in response.text and "无法提交" in response.text
    assert "暂无申请" in listed.text  # nothing was recorded


async def test_permits_bounds_the_upload_and_needs_an_identity() -> None:
    async with client(permits_app(max_upload_bytes=1000), "permits.localhost") as http:
        token = csrf_token((await http.get("/new", headers=LIU_YANG)).text)
        too_big = await http.post(
            "/applications",
            headers={**LIU_YANG, "content-type": f"multipart/form-data; boundary={BOUNDARY}"},
            content=multipart([("csrf_token", token), ("title", "x")], 5000, hashlib.sha256()),
        )
        anonymous = await http.post("/applications", data={"title": "x"}, files={"a": ("a", b"x")})
        not_multipart = await http.post("/applications", headers=LIU_YANG, data={"title": "x"})
    assert too_big.status_code == 413 and "附件过大" in too_big.text
    assert anonymous.status_code == 403 and "未收到身份信息" in anonymous.text
    assert not_multipart.status_code == 400


# -- City operations -------------------------------------------------------------------------------


class Served:
    """An ASGI app under uvicorn on 127.0.0.1:``port`` in a thread of its own."""

    def __init__(self, app: ASGIApp, port: int | None = None) -> None:
        self.port = port or free_port()
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


OPS_DUTY = {
    "X-OneGate-User": "sunmin",
    "X-OneGate-Name": quote("孙敏"),
    "X-OneGate-Groups": "civil-servants,ops-duty",
}


async def test_grid_dashboard_updates_over_a_websocket() -> None:
    with Served(grid_app(tick_seconds=0.1)) as server:
        base = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient(base_url=base) as http:
            page = await http.get("/", headers=OPS_DUTY)
            async with ws_connect(f"ws://127.0.0.1:{server.port}/ws", additional_headers=OPS_DUTY) as ws:
                hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
                started = time.monotonic()
                ticks = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(4)]
                elapsed = time.monotonic() - started
                # A dispatch by the duty group shows in the next ticks.
                token = csrf_token(page.text)
                sent = await http.post(
                    "/dispatch",
                    headers=OPS_DUTY,
                    data={"csrf_token": token, "kind": "manhole", "location": "人民路"},
                )
                assert sent.status_code == 303
                for _ in range(20):
                    tick = json.loads(await asyncio.wait_for(ws.recv(), 5))
                    if tick["metrics"]["dispatches"] == 1:
                        break
            after = await http.get("/", headers=OPS_DUTY)
    assert hello == {"type": "hello", "user": "sunmin"}
    assert [t["seq"] for t in ticks] == list(range(ticks[0]["seq"], ticks[0]["seq"] + 4))
    assert all(t["type"] == "tick" for t in ticks)
    assert set(ticks[0]["metrics"]) == {
        "events_today",
        "in_progress",
        "closed_today",
        "staff_online",
        "dispatches",
    }
    assert 0.25 <= elapsed < 2.0  # three intervals of 0.1 s
    assert tick["metrics"]["dispatches"] == 1 and tick["last_dispatch"] == {
        "kind": "manhole",
        "location": "人民路",
    }
    assert "人民路" in after.text and "井盖缺失" in after.text
    nonce = re.search(r"script-src 'nonce-([^']+)'", page.headers["content-security-policy"])
    assert nonce and f'<script nonce="{nonce.group(1)}">' in page.text and 'id="m-events_today"' in page.text


async def test_grid_dispatch_is_for_ops_duty_with_a_valid_form() -> None:
    reader = {**OPS_DUTY, "X-OneGate-User": "zhangwei", "X-OneGate-Groups": "hr-staff"}
    async with client(grid_app(), "grid.localhost") as http:
        token = csrf_token((await http.get("/", headers=OPS_DUTY)).text)
        form = {"csrf_token": token, "kind": "traffic", "location": "解放街"}
        not_duty = await http.post("/dispatch", headers=reader, data=form)
        forged = await http.post("/dispatch", headers=OPS_DUTY, data={**form, "csrf_token": "x" * 43})
        nobody = await http.post("/dispatch", data=form)
        unknown_kind = await http.post("/dispatch", headers=OPS_DUTY, data={**form, "kind": "<x>"})
        done = await http.post("/dispatch", headers=OPS_DUTY, data=form)
    assert not_duty.status_code == 403 and "ops-duty" in not_duty.text
    assert forged.status_code == 403 and "CSRF" in forged.text
    assert nobody.status_code == 403
    assert unknown_kind.status_code == 400
    assert done.status_code == 303


# -- OA: OpenID Connect against a real IdP ----------------------------------------------------------


@dataclass
class Oa:
    idp: IdpServer
    origin: str
    registered: dict[str, Any]
    metadata: dict[str, Any]

    def browser(self) -> FormBrowser:
        forms = FormBrowser()
        forms.http.mount("http://", LoopbackAdapter())
        return forms


@pytest.fixture(scope="module")
def oa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Oa]:
    idp = IdpServer(tmp_path_factory.mktemp("idp")).start()
    try:
        port = free_port()
        origin = f"http://oa.localhost:{port}"
        registered = idp.add_client(
            name="协同办公",
            name_en="Office automation",
            redirect_uris=[f"{origin}/callback"],
            scopes=OA_SCOPES,
            extra=("--post-logout-redirect-uri", f"{origin}/"),
        )
        app = oa_app(
            issuer=idp.issuer,
            client_id=registered["client_id"],
            client_secret=registered["client_secret"],
            redirect_uri=f"{origin}/callback",
            post_logout_redirect_uri=f"{origin}/",
        )
        with idp.http() as http:
            metadata = http.get(idp.url("/.well-known/openid-configuration"), timeout=5).json()
        with Served(app, port):
            yield Oa(idp, origin, registered, metadata)
    finally:
        idp.stop()


def _sign_in(oa: Oa, forms: FormBrowser, username: str, password: str) -> requests.Response:
    """From OA's sign-in link through the IdP's forms back to OA."""
    page = forms.get(f"{oa.origin}/login")
    assert urlsplit(page.url).path == "/login", page.url
    page = forms.submit(forms.form("password"), {"username": username, "password": password})
    if urlsplit(page.url).path == "/consent":
        page = forms.submit(forms.form("decision"), {}, button=("decision", "allow"))
    return page


def test_oa_redirects_to_the_idp_with_state_nonce_and_pkce(oa: Oa) -> None:
    with oa.browser().http as http:
        response = http.get(f"{oa.origin}/login", allow_redirects=False, timeout=10)
    assert response.status_code == 302
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == oa.metadata["authorization_endpoint"]
    query = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert query["response_type"] == "code"
    assert query["client_id"] == oa.registered["client_id"]
    assert query["redirect_uri"] == f"{oa.origin}/callback"
    assert set(query["scope"].split()) == set(OA_SCOPES)
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert len(query["state"]) >= 20 and len(query["nonce"]) >= 20
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("oa_session=") and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert query["state"] not in cookie and query["nonce"] not in cookie  # kept server-side


def test_oa_signs_in_through_the_idp_and_signs_out_there(oa: Oa) -> None:
    user = oa.idp.add_user(name="陈静<img src=x>", email="chenjing@bda.city.gov.cn")
    forms = oa.browser()
    with forms.http:
        forms.http.get(f"{oa.origin}/login", allow_redirects=False, timeout=10)
        before = forms.http.cookies.get("oa_session")
        page = _sign_in(oa, forms, user.username, user.password)
        assert page.url == f"{oa.origin}/", page.url
        assert page.status_code == 200
        assert "陈静&lt;img src=x&gt;" in page.text and "<img" not in page.text
        assert f"<code>{user.username}</code>" in page.text
        assert "chenjing@bda.city.gov.cn" in page.text
        assert oa.idp.issuer in page.text  # the iss claim
        after = forms.http.cookies.get("oa_session")
        assert after and before and after != before  # a new session id at sign-in

        # Sign out: OA's session ends and the browser goes to the IdP's end_session_endpoint.
        end_session = oa.metadata["end_session_endpoint"]
        out = forms.submit(forms.form("csrf_token"), {}, stop_at=end_session)
        query = {k: v[0] for k, v in parse_qs(urlsplit(out.headers["location"]).query).items()}
        assert query["post_logout_redirect_uri"] == f"{oa.origin}/"
        assert query["client_id"] == oa.registered["client_id"] and query["id_token_hint"].count(".") == 2
        page = forms.get(out.headers["location"])
        if urlsplit(page.url).netloc != urlsplit(oa.origin).netloc:  # the IdP asks to confirm
            page = forms.submit(forms.form("req"), {})
        assert page.url.startswith(f"{oa.origin}/")
        assert "您尚未登录" in page.text
        # The IdP session is over too: signing in again asks for the password.
        again = forms.get(f"{oa.origin}/login")
        assert (
            urlsplit(again.url).path == "/login" and urlsplit(again.url).netloc != urlsplit(oa.origin).netloc
        )


def test_oa_refuses_a_forged_or_mixed_up_callback(oa: Oa) -> None:
    forms = oa.browser()
    with forms.http as http:
        http.get(f"{oa.origin}/login", allow_redirects=False, timeout=10)
        forged = http.get(f"{oa.origin}/callback?code=abc&state=not-ours", allow_redirects=False, timeout=10)
        mixed = http.get(
            f"{oa.origin}/callback?code=abc&state=x&iss=https%3A%2F%2Fevil.example",
            allow_redirects=False,
            timeout=10,
        )
        logout = http.post(
            f"{oa.origin}/logout", data={"csrf_token": "guess"}, allow_redirects=False, timeout=10
        )
    assert forged.status_code == 400 and "登录未完成" in forged.text
    assert mixed.status_code == 400 and "unknown issuer" in mixed.text
    assert logout.status_code == 403


def test_session_store_is_bounded_in_number_and_age() -> None:
    now = [1000.0]
    store = _SessionStore(ttl=60, max_sessions=2, clock=lambda: now[0])
    for sid in ("a", "b", "c"):
        store.save(sid, {"sid": sid})
    assert store.load("a") is None and store.load("b") == {"sid": "b"}  # the oldest went first
    now[0] += 61
    assert store.load("c") is None


def test_build_demo_apps_names_every_system() -> None:
    apps = build_demo_apps()
    assert set(apps) == {"hr", "permits", "grid"}
    assert (apps["hr"].title_zh, apps["hr"].title_en, apps["hr"].host) == DEMO_APPS["hr"]
    assert all(app.behind_gateway for app in apps.values())
    with_oa = build_demo_apps(
        oa=OaClient("http://idp.localhost:1", "oa", "s3cret", "http://oa.localhost:2/callback")
    )
    assert with_oa["oa"].title_zh == "协同办公" and not with_oa["oa"].behind_gateway
    assert "s3cret" not in repr(OaClient("http://i", "oa", "s3cret", "http://o/cb"))
