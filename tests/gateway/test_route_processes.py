"""Routes added at run time, end to end, on two gateway processes and one Redis: a route added
through the admin API of process A is served by process B within a second (a request to the new
host reaches its upstream), signing in works on the new host, and once the route is removed B
refuses the host (421) within a second.

A is ``onegate serve --role all`` (the IdP with the admin API, and a gateway); B is ``onegate serve
--role gateway``; they share the data dir and Redis (a key prefix of this run).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import requests
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.e2e.conftest import IdpUser, LoopbackAdapter
from tests.gateway.stack import GatewayStack
from tests.gateway.test_processes import SecondGateway
from tests.gateway.upstreams import UpstreamServer

POLICY = """
version: 1
apps:
  hr:
    hosts: [hr.localhost]
    rules:
      - {id: hr-staff, effect: allow, subjects: {departments: [hrss]}}
  permits:
    hosts: [permits.localhost]
    rules:
      - {id: permits-public, effect: allow, anonymous: true, paths: [/public]}
      - {id: permits-staff, effect: allow, subjects: {departments: [hrss]}}
"""


async def _permits(request: Request) -> Response:
    return JSONResponse({"system": "permits", "path": request.url.path})


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[UpstreamServer, UpstreamServer]]:
    with UpstreamServer() as hr, UpstreamServer(Starlette(routes=[Route("/{p:path}", _permits)])) as permits:
        yield hr, permits


@pytest.fixture(scope="module")
def stacks(
    tmp_path_factory: pytest.TempPathFactory,
    upstreams: tuple[UpstreamServer, UpstreamServer],
    redis_url: str,
) -> Iterator[tuple[GatewayStack, SecondGateway]]:
    root = tmp_path_factory.mktemp("routes")
    prefix = f"onegate-test-{os.getpid()}-{time.monotonic_ns()}:"
    stack = GatewayStack(
        root,
        {"hr": ("hr", upstreams[0].url)},
        policy=POLICY,
        settings={"ONEGATE_KV__BACKEND": "redis", "ONEGATE_KV__URL": redis_url, "ONEGATE_KV__PREFIX": prefix},
    ).start()
    second = None
    try:
        second = SecondGateway(stack, root)
        yield stack, second
    finally:
        if second is not None:
            second.stop()
        stack.stop()
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        if keys:
            client.delete(*keys)
        client.close()


def _session() -> requests.Session:
    session = requests.Session()
    session.mount("http://", LoopbackAdapter())
    return session


def _until(probe: Any, done: Any, seconds: float) -> tuple[float, requests.Response]:
    """Call ``probe`` until ``done(response)``; the time it took. Fails after ``seconds``."""
    started = time.monotonic()
    while True:
        response = probe()
        elapsed = time.monotonic() - started
        if done(response):
            return elapsed, response
        assert elapsed < seconds, f"{response.status_code} after {seconds} s: {response.text[:300]}"
        time.sleep(0.02)


def test_a_route_added_through_the_api_is_served_by_the_other_process_within_a_second(
    stacks: tuple[GatewayStack, SecondGateway], upstreams: tuple[UpstreamServer, UpstreamServer]
) -> None:
    a, b = stacks
    user = a.add_user(name="王芳", department="hrss", groups=["hr-staff"])
    key = a.cli("admin", "api-keys", "create", "--name", "e2e")["key"]
    api = _session()
    api.headers["authorization"] = f"Bearer {key}"
    at_b = f"http://permits.localhost:{b.port}"
    http = _session()

    assert http.get(f"{at_b}/public/notice", allow_redirects=False).status_code == 421

    created = api.post(
        a.url("/api/admin/v1/gateway/routes"),
        json={"app": "permits", "hosts": ["permits.localhost"], "upstream": upstreams[1].url},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    elapsed, served = _until(
        lambda: http.get(f"{at_b}/public/notice", allow_redirects=False), lambda r: r.status_code == 200, 1.0
    )
    assert served.json() == {"system": "permits", "path": "/public/notice"}
    print(f"added route served by the other process after {elapsed * 1000:.0f} ms")

    # Signing in works on the new host at B at once: its callback was registered at the IdP.
    page = _sign_in_at(a, f"{at_b}/desk", user)
    assert page.status_code == 200 and page.json() == {"system": "permits", "path": "/desk"}

    removed = api.delete(a.url("/api/admin/v1/gateway/routes/permits"), timeout=10)
    assert removed.status_code == 204, removed.text
    elapsed, _ = _until(
        lambda: http.get(f"{at_b}/public/notice", allow_redirects=False), lambda r: r.status_code == 421, 1.0
    )
    print(f"removed route refused by the other process after {elapsed * 1000:.0f} ms")
    # The history says who did it.
    history = api.get(a.url("/api/admin/v1/gateway/routes/permits/history"), timeout=10).json()["changes"]
    assert [(c["action"], c["actor"]) for c in history] == [
        ("remove", "api-key:e2e"),
        ("create", "api-key:e2e"),
    ]


def _sign_in_at(stack: GatewayStack, url: str, user: IdpUser, seconds: float = 3.0) -> requests.Response:
    """Open ``url`` and sign in at the IdP; tried again until the IdP accepts the new host's
    callback (the gateway registers it in the background after the route appears)."""
    started = time.monotonic()
    deadline = started + seconds
    while True:
        browser = stack.browser()
        page = browser.get(url)
        assert urlsplit(page.url).hostname == "idp.localhost", f"not sent to sign in: {page.url}"
        if page.status_code == 200:  # the sign-in form, not the IdP's "unknown callback" page
            page = browser.submit(
                browser.form("password"), {"username": user.username, "password": user.password}
            )
            if urlsplit(page.url).hostname == "permits.localhost":
                print(f"signed in on the new host in {(time.monotonic() - started) * 1000:.0f} ms")
                return page
        assert time.monotonic() < deadline, (
            f"sign-in on the new host failed: {page.status_code} {page.text[:300]}"
        )
        time.sleep(0.1)


def test_a_route_added_on_the_command_line_is_served_too(
    stacks: tuple[GatewayStack, SecondGateway], upstreams: tuple[UpstreamServer, UpstreamServer]
) -> None:
    a, b = stacks
    at_b = f"http://docs.localhost:{b.port}"
    http = _session()
    assert http.get(f"{at_b}/public", allow_redirects=False).status_code == 421
    a.cli("gateway", "routes", "add", "docs", "--host", "docs.localhost", "--upstream", upstreams[1].url)
    # Not in the policy: the gateway routes the host and the policy denies by default (no 421).
    _until(lambda: http.get(f"{at_b}/public", allow_redirects=False), lambda r: r.status_code != 421, 1.0)
    a.cli("gateway", "routes", "remove", "docs")
    _until(lambda: http.get(f"{at_b}/public", allow_redirects=False), lambda r: r.status_code == 421, 1.0)
