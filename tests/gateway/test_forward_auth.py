"""Forward-auth with the real gateway: Debian's nginx (``auth_request``) and Caddy
(``forward_auth``) run the deploy/ examples in front of an echo upstream, and ask a real
``onegate serve --role all`` process (tests/gateway/stack.py) about every request.

The application ``oa`` is routed on ``fa.localhost`` with no upstream (forward-auth only, as
docs/gateway.md describes); nginx and Caddy listen on loopback ports of their own and proxy
``fa.localhost`` to the echo upstream, and ``/.onegate/`` on that host to the gateway, passing
the browser's ``Host`` (``fa.localhost:<proxy port>``). The scripted browser opens
``http://fa.localhost:<proxy port>/`` and signs in at the IdP (``idp.localhost:<stack port>``).

Callback registration: the gateway builds its OIDC redirect URI from the ``Host`` the browser
used, here ``http://fa.localhost:<proxy port>/.onegate/callback``. With the built-in IdP the
gateway registers at start-up only the callbacks of its own port (and of the default port, where
a production proxy on 443 lands), so a proxy on another port needs its callback registered by
the operator, exactly as one would in a deployment: ``onegate client update onegate-gateway
--redirect-uri ...`` with the list the gateway registered plus the proxies' callbacks (the
option replaces the whole list). The gateway keeps such callbacks of its routed hosts when it
next starts (``onegate.gateway_app._register_client``), and the IdP sees a change made by the CLI
within its five-second client cache; the fixture waits until a sign-in started through each
proxy reaches the IdP's login form, so no test races that cache.

Every test runs against nginx and Caddy (``proxy``): each is started once per module, the first
time a test asks for it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urljoin, urlsplit

import pytest
import requests

from gateway.assertion import verify
from tests.e2e.browser import Browser, forms
from tests.e2e.conftest import IdpUser
from tests.gateway.servers import CADDYFILE, NGINX_FORWARD_AUTH, CaddyServer, NginxServer
from tests.gateway.stack import GatewayStack, headers_of, identity_names
from tests.gateway.upstreams import UpstreamServer

APP = "oa"
LABEL = "fa"
HOST = f"{LABEL}.localhost"
GATEWAY_CLIENT = "onegate-gateway"
IDENTITY = [
    "x-onegate-user",
    "x-onegate-name",
    "x-onegate-groups",
    "x-onegate-department",
    "x-onegate-assertion",
]

POLICY = f"""
version: 1
timezone: Asia/Shanghai
apps:
  {APP}:
    name: 协同办公 / Office automation
    hosts: [{HOST}]
    rules:
      - id: oa-hrss
        description: HR bureau staff use office automation / 人社局工作人员使用协同办公
        effect: allow
        subjects: {{departments: [hrss]}}
      - id: oa-public
        effect: allow
        paths: [/public]
        anonymous: true
      - id: oa-no-approval
        description: Approval bureau staff use their own system / 审批局使用本局系统
        effect: deny
        subjects: {{departments: [approval]}}
"""

# A client's attempts to speak for the gateway, in the spellings a proxy must not let through.
FORGED = [
    ("X-OneGate-User", "admin"),
    ("x-onegate-groups", "hr-admins"),
    ("X-ONEGATE-DEPARTMENT", "city"),
    ("X-Onegate-Name", "admin"),
    ("X-OneGate-Assertion", "forged.forged.forged"),
    ("X_OneGate_User", "admin"),
    ("x_onegate_groups", "sys-admins"),
]


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer() as server:
        yield server


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayStack]:
    server = GatewayStack(
        tmp_path_factory.mktemp("forward-auth"),
        {APP: (LABEL, None)},
        policy=POLICY,
        # nginx and Caddy connect from loopback: the gateway believes their X-Forwarded-*.
        settings={"ONEGATE_SERVER__TRUSTED_PROXIES": '["127.0.0.1/32"]'},
    ).start()
    try:
        yield server
    finally:
        server.stop()


Proxy = NginxServer | CaddyServer


@dataclass
class Proxies:
    """nginx and Caddy, rendered from deploy/ with their ports chosen up front (so both callbacks
    are registered at once) and each started the first time a test asks for it."""

    stack: GatewayStack
    servers: dict[str, Proxy]
    started: set[str] = field(default_factory=set)

    def get(self, kind: str) -> Proxy:
        server = self.servers[kind]
        if kind not in self.started:
            server.start()
            self.started.add(kind)
            wait_for_callback(self.stack, server)
        return server


@dataclass(frozen=True)
class Cast:
    proxies: Proxies
    zhangwei: IdpUser  # 人社局 (hrss): allowed
    liqiang: IdpUser  # 审批局 (approval): denied by oa-no-approval


def register_callbacks(stack: GatewayStack, servers: dict[str, Proxy]) -> list[str]:
    """What an operator does for a proxy on a port of its own: add its callback to the gateway's
    registration (``--redirect-uri`` replaces the list, so the registered ones are repeated)."""
    registered = stack.cli("client", "show", GATEWAY_CLIENT)["redirect_uris"]
    callbacks = [f"http://{HOST}:{server.port}/.onegate/callback" for server in servers.values()]
    uris = [*registered, *(c for c in callbacks if c not in registered)]
    options = [arg for uri in uris for arg in ("--redirect-uri", uri)]
    updated: list[str] = stack.cli("client", "update", GATEWAY_CLIENT, *options)["redirect_uris"]
    return updated


@pytest.fixture(scope="module")
def cast(stack: GatewayStack, upstream: UpstreamServer) -> Iterator[Cast]:
    gateway = f"127.0.0.1:{stack.port}"
    app = upstream.url.removeprefix("http://")
    servers: dict[str, Proxy] = {
        "nginx": NginxServer(NGINX_FORWARD_AUTH, SERVER_NAME=HOST, GATEWAY=gateway, UPSTREAM=app),
        "caddy": CaddyServer(CADDYFILE, GATEWAY=gateway, UPSTREAM=app),
    }
    try:
        # Independent CLI runs (a process start of a second or two each) at once.
        with ThreadPoolExecutor(3) as pool:
            zhangwei = pool.submit(stack.add_user, name="张伟", department="hrss", groups=["hr-staff"])
            liqiang = pool.submit(
                stack.add_user, name="李强", department="approval", groups=["approval-staff"]
            )
            callbacks = pool.submit(register_callbacks, stack, servers)
            people = Cast(Proxies(stack, servers), zhangwei.result(), liqiang.result())
        for server in servers.values():
            assert f"http://{HOST}:{server.port}/.onegate/callback" in callbacks.result()
        yield people
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="module")
def zhangwei(cast: Cast) -> IdpUser:
    return cast.zhangwei


@pytest.fixture(scope="module")
def liqiang(cast: Cast) -> IdpUser:
    return cast.liqiang


@pytest.fixture(params=["nginx", "caddy"])
def proxy(request: pytest.FixtureRequest, cast: Cast) -> Proxy:
    return cast.proxies.get(request.param)


# -- helpers -------------------------------------------------------------------------------------


def app_url(proxy: Proxy, path: str = "/") -> str:
    """``path`` on the application, as the browser reaches it through the proxy."""
    return f"http://{HOST}:{proxy.port}{path}"


def wait_for_callback(stack: GatewayStack, proxy: Proxy, timeout: float = 8) -> None:
    """Until the IdP accepts the proxy's callback: a sign-in started through the proxy reaches
    the IdP's login form (the IdP keeps clients in memory for up to five seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        page = stack.browser().get(app_url(proxy, "/.onegate/start?rd=%2F"))
        if urlsplit(page.url).hostname == "idp.localhost" and any(
            "password" in [f[0] for f in form.fields] for form in forms(page.text)
        ):
            return
        assert time.monotonic() < deadline, (
            f"the IdP does not accept the callback through {proxy.name}: {page.status_code} {page.url}\n"
            f"{page.text[:1000]}"
        )
        time.sleep(0.25)


def sign_in(
    stack: GatewayStack, proxy: Proxy, user: IdpUser, path: str = "/"
) -> tuple[Browser, requests.Response]:
    """Open ``path`` through the proxy, follow it to the IdP and sign in with the password;
    the browser and the page it ends on."""
    browser = stack.browser()
    page = browser.get(app_url(proxy, path))
    assert urlsplit(page.url).hostname == "idp.localhost", (
        f"not sent to sign in: {page.url} {page.text[:500]}"
    )
    page = browser.submit(browser.form("password"), {"username": user.username, "password": user.password})
    return browser, page


def navigate(
    browser: Browser, url: str, *, headers: Iterable[tuple[str, str]] = (), **kwargs: Any
) -> requests.Response:
    """One browser navigation (``Accept: text/html`` and ``headers``), redirects not followed."""
    sent = {"accept": "text/html", **dict(headers)}
    return browser.http.get(url, allow_redirects=False, headers=sent, timeout=10, **kwargs)


def sent_to_sign_in(response: requests.Response, path: str) -> bool:
    """``response`` redirects to the gateway's sign-in start on the same host, to return to
    ``path``."""
    location = response.headers.get("location", "")
    parts = urlsplit(location)
    return (
        response.status_code == 302
        and location.startswith("/.onegate/start?")
        and parse_qs(parts.query).get("rd") == [path]
    )


def logged(stack: GatewayStack) -> list[dict[str, Any]]:
    """The stack's JSON log records (access log and application log)."""
    records = []
    for line in stack.log().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def backchannel_logouts(stack: GatewayStack) -> int:
    """How many back-channel logouts the gateway has accepted (its access log)."""
    return sum(
        1 for r in logged(stack) if r.get("path") == "/.onegate/backchannel-logout" and r.get("status") == 200
    )


def server_errors(stack: GatewayStack) -> str:
    """The unhandled exceptions the stack logged, one line each (for a failure's message)."""
    return "\n".join(
        f"{r.get('path')}: {(str(r.get('exception', '')).strip().splitlines() or [''])[-1]}"
        for r in logged(stack)
        if r.get("event") == "unhandled_exception"
    )


def onegate_headers(view: dict[str, Any]) -> dict[str, list[str]]:
    """The headers the upstream received that claim to be the gateway's, by lower-case name
    (``_`` read as ``-``)."""
    found: dict[str, list[str]] = {}
    for name in identity_names(view):
        key = name.lower().replace("_", "-")
        found.setdefault(key, []).extend(v for n, v in view["headers"] if n == name)
    return found


# -- 1. sign-in through the proxy ------------------------------------------------------------------


def test_anonymous_request_signs_in_through_the_proxy_and_reaches_the_app(
    proxy: Proxy, stack: GatewayStack, zhangwei: IdpUser
) -> None:
    browser = stack.browser()
    target = "/docs/report?q=%E5%B9%B4%E6%8A%A5&page=2"
    first = navigate(browser, app_url(proxy, target))
    # A redirect to the gateway's sign-in start on the application's own host and port.
    assert sent_to_sign_in(first, target), (first.status_code, first.headers, first.text[:500])
    assert "x-onegate-location" not in first.headers
    assert "method" not in first.text  # not the upstream's echo

    start = browser.http.get(urljoin(app_url(proxy), first.headers["location"]), allow_redirects=False)
    authorize = urlsplit(start.headers.get("location", ""))
    assert start.status_code == 302 and authorize.hostname == "idp.localhost", start.text[:500]
    # The gateway answered on the proxy's host and port, and asks the IdP to come back there.
    assert parse_qs(authorize.query)["redirect_uri"] == [f"http://{HOST}:{proxy.port}/.onegate/callback"]
    page = browser.get(start.headers["location"])
    page = browser.submit(
        browser.form("password"), {"username": zhangwei.username, "password": zhangwei.password}
    )

    # Back on the application through the proxy, at the address first asked for.
    assert page.url == app_url(proxy, target), page.url
    view = stack.upstream_view(page)
    assert view["target"] == target
    headers = headers_of(view)
    assert headers["host"] == [f"{HOST}:{proxy.port}"]
    assert headers["x-onegate-user"] == [zhangwei.username]
    assert headers["x-onegate-groups"] == ["hr-staff"]
    assert headers["x-onegate-department"] == ["hrss"]
    assert unquote(headers["x-onegate-name"][0]) == "张伟"
    # The assertion is the gateway's, for this application, verifiable with the keys the gateway
    # publishes on the application host (through the proxy).
    jwks = browser.http.get(app_url(proxy, "/.onegate/jwks"), timeout=10).json()
    claims = verify(headers["x-onegate-assertion"][0], audience=APP, issuer=stack.issuer, jwks=jwks)
    assert claims["preferred_username"] == zhangwei.username
    assert claims["departments"] == ["hrss", "city"] and claims["groups"] == ["hr-staff"]
    assert claims["exp"] - claims["iat"] <= 60

    # Signed in: the next request goes straight through, with the browser's other cookies but
    # never the gateway's session cookie.
    browser.http.cookies.set("theme", "dark", domain=HOST)
    browser.http.cookies.set("lang", "zh", domain=HOST)
    again = navigate(browser, app_url(proxy, "/next"))
    seen = headers_of(stack.upstream_view(again))
    assert seen["x-onegate-user"] == [zhangwei.username]
    sent = "; ".join(seen.get("cookie", []))
    assert "onegate_gw" not in sent, sent
    assert "theme=dark" in sent and "lang=zh" in sent, sent


# -- 2. forged identity headers ------------------------------------------------------------------


def test_forged_identity_headers_never_reach_the_app(
    proxy: Proxy, stack: GatewayStack, zhangwei: IdpUser
) -> None:
    browser, _ = sign_in(stack, proxy, zhangwei)
    view = stack.upstream_view(navigate(browser, app_url(proxy, "/inbox"), headers=FORGED))
    # Exactly the gateway's five headers, once each: every forged value and spelling is gone.
    assert sorted(onegate_headers(view)) == sorted(IDENTITY), view["headers"]
    assert all(len(values) == 1 for values in onegate_headers(view).values())
    headers = headers_of(view)
    assert headers["x-onegate-user"] == [zhangwei.username]
    assert headers["x-onegate-groups"] == ["hr-staff"] and headers["x-onegate-department"] == ["hrss"]
    assert unquote(headers["x-onegate-name"][0]) == "张伟"
    assert (
        headers["x-onegate-assertion"][0].count(".") == 2
        and "forged" not in headers["x-onegate-assertion"][0]
    )

    # Anonymous on a path the policy opens to everyone: no identity at all, forged or not.
    anonymous = stack.browser()
    view = stack.upstream_view(navigate(anonymous, app_url(proxy, "/public/notice"), headers=FORGED))
    assert view["target"] == "/public/notice"
    assert identity_names(view) == [], view["headers"]

    # Anonymous elsewhere: sent to sign in, the forged user gets nowhere.
    refused = navigate(anonymous, app_url(proxy, "/inbox"), headers=FORGED)
    assert sent_to_sign_in(refused, "/inbox"), (refused.status_code, refused.text[:300])


def test_other_x_onegate_names_reach_the_app_only_through_plain_nginx(
    proxy: Proxy, stack: GatewayStack, zhangwei: IdpUser
) -> None:
    """deploy/README.md: plain nginx cannot remove headers by pattern, so an ``X-OneGate-*`` name
    other than the five reaches the system (headers-more, Caddy or the gateway itself remove it);
    Caddy's ``request_header -X-OneGate-*`` removes every spelling."""
    browser, _ = sign_in(stack, proxy, zhangwei)
    extra = [("X-OneGate-Extra", "1"), ("x-onegate-role", "admin"), ("X-OneGate_Mixed", "2")]
    view = stack.upstream_view(navigate(browser, app_url(proxy, "/extra"), headers=extra))
    others = {k: v for k, v in onegate_headers(view).items() if k not in IDENTITY}
    if proxy.name == "caddy":
        assert others == {}, view["headers"]
    else:  # the documented limit: names with "_" are dropped by nginx, the others pass
        assert others == {"x-onegate-extra": ["1"], "x-onegate-role": ["admin"]}, view["headers"]
    assert headers_of(view)["x-onegate-user"] == [zhangwei.username]


# -- 3. deny ---------------------------------------------------------------------------------------


def test_a_user_the_policy_denies_gets_the_gateways_deny_page(
    proxy: Proxy, stack: GatewayStack, liqiang: IdpUser
) -> None:
    browser, page = sign_in(stack, proxy, liqiang, "/inbox")
    # Signed in (the callback went through the proxy), then refused on the application itself.
    assert page.url == app_url(proxy, "/inbox"), page.url
    assert page.status_code == 403, page.text[:500]
    assert "text/html" in page.headers["content-type"]
    assert "无权访问" in page.text, page.text[:1500]
    assert "oa-no-approval" in page.text and "审批局使用本局系统" in page.text
    assert "method" not in page.text and liqiang.username not in page.text  # not the upstream's echo
    english = navigate(browser, app_url(proxy, "/inbox"), headers=[("accept-language", "en")])
    assert english.status_code == 403 and "Access denied" in english.text, english.text[:1500]
    # Every method, not only a navigation.
    posted = browser.http.post(app_url(proxy, "/inbox"), data={"x": "1"}, allow_redirects=False, timeout=10)
    assert posted.status_code == 403 and "oa-no-approval" in posted.text


# -- 4. the gateway's own paths on the application host ---------------------------------------------


def test_gateway_paths_on_the_app_host_reach_the_gateway(
    proxy: Proxy, stack: GatewayStack, zhangwei: IdpUser
) -> None:
    browser, _ = sign_in(stack, proxy, zhangwei)
    page = navigate(browser, app_url(proxy, "/.onegate/logout"))
    assert page.status_code == 200 and "张伟" in page.text
    (form,) = [f for f in forms(page.text) if any(b[0] == "scope" for b in f.buttons)]
    assert sorted(form.buttons) == [("scope", "app"), ("scope", "everywhere")]
    assert urlsplit(urljoin(page.url, form.action)).netloc == f"{HOST}:{proxy.port}"

    keys = navigate(browser, app_url(proxy, "/.onegate/jwks"))
    assert keys.status_code == 200 and keys.json()["keys"]
    # The gateway's own path is not decided as the application's, nor handed to the upstream.
    unknown = navigate(stack.browser(), app_url(proxy, "/.onegate/nothing-here"))
    assert unknown.status_code == 404 and "method" not in unknown.text


def test_the_logout_page_renders_without_a_session(proxy: Proxy, stack: GatewayStack) -> None:
    page = navigate(stack.browser(), app_url(proxy, "/.onegate/logout"))
    assert page.status_code == 200, f"{page.status_code}; the gateway logged:\n{server_errors(stack)}"
    assert "text/html" in page.headers["content-type"]
    assert not [f for f in forms(page.text) if any(b[0] == "scope" for b in f.buttons)]


# -- 5. logout -------------------------------------------------------------------------------------


def test_after_logout_the_next_request_signs_in_again(
    proxy: Proxy, stack: GatewayStack, zhangwei: IdpUser
) -> None:
    browser, page = sign_in(stack, proxy, zhangwei)
    assert headers_of(stack.upstream_view(page))["x-onegate-user"] == [zhangwei.username]
    cookie = browser.http.cookies.get("onegate_gw", domain=HOST)
    assert cookie

    browser.get(app_url(proxy, "/.onegate/logout"))
    done = browser.submit(browser.form("scope"), {}, button=("scope", "app"))
    assert done.status_code == 200 and done.url == app_url(proxy, "/.onegate/logout"), done.url
    assert browser.http.cookies.get("onegate_gw", domain=HOST) is None

    again = navigate(browser, app_url(proxy, "/inbox"))
    assert sent_to_sign_in(again, "/inbox"), (again.status_code, again.text[:300])
    # The cookie from before the logout, replayed: the session is over.
    replay = stack.browser()
    replayed = navigate(replay, app_url(proxy, "/inbox"), cookies={"onegate_gw": cookie})
    assert sent_to_sign_in(replayed, "/inbox"), (replayed.status_code, replayed.text[:300])
    # The IdP session lives on (this was the application's logout): signing in again needs no form.
    page = browser.get(app_url(proxy, "/inbox"))
    assert page.url == app_url(proxy, "/inbox"), page.url
    assert headers_of(stack.upstream_view(page))["x-onegate-user"] == [zhangwei.username]


def test_signing_out_at_the_idp_ends_the_session_behind_the_proxy(
    proxy: Proxy, stack: GatewayStack, zhangwei: IdpUser
) -> None:
    """A revocation from outside the proxy's path: the IdP's own sign-out sends a back-channel
    logout to the gateway, and the forward-auth answer changes with it."""
    browser, page = sign_in(stack, proxy, zhangwei)
    assert headers_of(stack.upstream_view(page))["x-onegate-user"] == [zhangwei.username]
    notices = backchannel_logouts(stack)
    account = browser.get(stack.url("/account"))
    (logout,) = [f for f in forms(account.text) if f.action.endswith("/account/logout")]
    page = browser.submit(logout, {})
    assert urlsplit(page.url).path == "/login", page.url
    assert browser.http.cookies.get("onegate_gw", domain=HOST)  # the browser still holds it

    # The back-channel logout reaches the gateway in the background: allow it a moment.
    deadline = time.monotonic() + 5
    while not sent_to_sign_in(again := navigate(browser, app_url(proxy, "/inbox")), "/inbox"):
        assert again.status_code == 200, (again.status_code, again.text[:300])
        assert time.monotonic() < deadline, "still let through after the IdP session ended"
        time.sleep(0.05)
    assert backchannel_logouts(stack) > notices
    # With the IdP session gone too, signing in asks for the password again.
    page = browser.get(app_url(proxy, "/inbox"))
    assert urlsplit(page.url).hostname == "idp.localhost" and browser.form("password")
