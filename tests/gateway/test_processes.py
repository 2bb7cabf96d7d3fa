"""Several gateway processes on one Redis, as in production: a session revoked through one is
refused by the other on the very next request; and a gateway process streams a 1 GiB download
and a 1 GiB upload without holding them in memory.

One ``onegate serve --role all`` process (IdP and gateway A) and one ``onegate serve --role
gateway`` process (gateway B) share the data dir and Redis (a key prefix of this run). A browser
cookie is per host, not per port, so the same cookie reaches A and B — like two instances behind
a load balancer.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
import requests

from tests.e2e.conftest import IdpUser, LoopbackAdapter, free_port
from tests.gateway.stack import GatewayStack
from tests.gateway.upstreams import UpstreamServer
from tests.onegate.conftest import ONEGATE

POLICY = """
version: 1
apps:
  hr:
    hosts: [hr.localhost]
    rules:
      - {id: hr-staff, effect: allow, subjects: {departments: [hrss]}}
rules:
  - id: high-risk
    description: a high-risk user is refused / 高风险用户一律拒绝
    effect: deny
    apps: "*"
    min_risk: 80
"""
GIB = 1 << 30
MIB = 1 << 20
# The gateway process's peak memory (VmHWM) while a 1 GiB download and a 1 GiB upload stream
# through it (docs/performance.md, "Gateway memory").
PEAK_LIMIT = 100 * MIB


class SecondGateway:
    def __init__(self, stack: GatewayStack, root: Path) -> None:
        self.port = free_port()
        self.log_path = root / "gateway-b.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [*ONEGATE, "serve", "--role", "gateway", "--port", str(self.port), "--host", "127.0.0.1"],
            env=stack.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/readyz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert self.process.poll() is None and time.monotonic() < deadline, self.log_path.read_text()
            time.sleep(0.05)

    def url(self, path: str = "/") -> str:
        return f"http://hr.localhost:{self.port}{path}"

    def rss(self, field: str) -> int:
        """``VmRSS`` / ``VmHWM`` of the process, in bytes."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {field}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(20)
        self._log.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer() as server:
        yield server


@pytest.fixture(scope="module")
def stacks(
    tmp_path_factory: pytest.TempPathFactory, upstream: UpstreamServer, redis_url: str
) -> Iterator[tuple[GatewayStack, SecondGateway]]:
    root = tmp_path_factory.mktemp("two")
    prefix = f"onegate-test-{os.getpid()}-{time.monotonic_ns()}:"
    stack = GatewayStack(
        root,
        {"hr": ("hr", upstream.url)},
        policy=POLICY,
        settings={"ONEGATE_KV__BACKEND": "redis", "ONEGATE_KV__URL": redis_url, "ONEGATE_KV__PREFIX": prefix},
    ).start()
    stack.kv_prefix = prefix  # type: ignore[attr-defined]
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


@pytest.fixture(scope="module")
def zhangwei(stacks: tuple[GatewayStack, SecondGateway]) -> IdpUser:
    return stacks[0].add_user(name="张伟", department="hrss", groups=["hr-staff"])


def test_a_session_revoked_at_one_gateway_is_refused_by_the_other(
    stacks: tuple[GatewayStack, SecondGateway], zhangwei: IdpUser
) -> None:
    a, b = stacks
    browser, page = a.sign_in("hr", zhangwei)
    assert page.status_code == 200 and urlsplit(page.url).port == a.port
    # The same session serves at the other instance.
    at_b = browser.http.get(b.url("/x"), allow_redirects=False)
    assert at_b.status_code == 200, at_b.text[:300]
    assert at_b.json()["target"] == "/x"
    # Sign out of the application at A; B refuses the cookie on its next request.
    browser.get(a.app_url("hr", "/.onegate/logout"))
    cookie = browser.http.cookies.get("onegate_gw", domain="hr.localhost")
    browser.submit(browser.form("scope"), {}, button=("scope", "app"))
    started = time.monotonic()
    while True:
        again = requests.Session()
        again.mount("http://", LoopbackAdapter())
        response = again.get(
            b.url("/x"),
            cookies={"onegate_gw": cookie},
            allow_redirects=False,
            headers={"accept": "text/html"},
        )
        if response.status_code == 302:
            break
        assert time.monotonic() - started < 1.0, "gateway B still served a revoked session after 1 s"
        time.sleep(0.02)
    assert "/.onegate/start" in response.headers["location"]


def test_one_gib_each_way_streams_through_with_little_memory(
    stacks: tuple[GatewayStack, SecondGateway], zhangwei: IdpUser
) -> None:
    a, b = stacks
    # Signed in through B itself, and a page rendered there: the process holds everything a
    # working gateway holds (the sign-in client, the templates), not only the proxy.
    browser = a.browser()
    assert urlsplit(browser.get(b.url("/")).url).hostname == "idp.localhost"
    page = browser.submit(
        browser.form("password"), {"username": zhangwei.username, "password": zhangwei.password}
    )
    assert page.status_code == 200 and urlsplit(page.url).port == b.port, page.url
    assert browser.get(b.url("/.onegate/logout")).status_code == 200
    baseline = b.rss("VmRSS")
    Path(f"/proc/{b.process.pid}/clear_refs").write_text("5")  # restart the peak (VmHWM) from now

    received = 0
    with browser.http.get(b.url(f"/download?size={GIB}"), stream=True, timeout=120) as download:
        assert download.status_code == 200
        for chunk in download.iter_content(1 << 20):
            received += len(chunk)
    assert received == GIB

    def body() -> Iterator[bytes]:
        block = b"u" * (1 << 20)
        for _ in range(1024):
            yield block

    upload = browser.http.post(b.url("/upload"), data=body(), timeout=120)
    assert upload.status_code == 200 and upload.json()["body_bytes"] == GIB
    peak = b.rss("VmHWM")
    grown = peak - baseline
    print(
        f"gateway B: {baseline / MIB:.1f} MiB at rest, peak {peak / MIB:.1f} MiB "
        f"(+{grown / MIB:.1f} MiB) during 1 GiB each way"
    )
    assert grown < 16 * MIB, f"the gateway grew by {grown / MIB:.1f} MiB while streaming"
    assert peak < PEAK_LIMIT, f"the gateway's peak was {peak / MIB:.1f} MiB (limit {PEAK_LIMIT / MIB:.0f})"


def _answers_within(b: SecondGateway, browser_cookie: str, *, status: int, seconds: float = 1.0) -> None:
    """Poll gateway B with the cookie until it answers ``status``; fail after ``seconds``."""
    session = requests.Session()
    session.mount("http://", LoopbackAdapter())
    started = time.monotonic()
    while True:
        response = session.get(
            b.url("/x"),
            cookies={"onegate_gw": browser_cookie},
            allow_redirects=False,
            headers={"accept": "text/html"},
        )
        if response.status_code == status:
            return
        assert time.monotonic() - started < seconds, (
            f"{response.status_code} after {seconds} s, wanted {status}"
        )
        time.sleep(0.02)


def test_a_locked_account_is_refused_on_its_next_request(
    stacks: tuple[GatewayStack, SecondGateway],
) -> None:
    a, b = stacks
    user = a.add_user(name="刘洋", department="hrss", groups=["hr-staff"])
    browser, page = a.sign_in("hr", user)
    assert page.status_code == 200
    cookie = browser.http.cookies.get("onegate_gw", domain="hr.localhost")
    assert browser.http.get(b.url("/x"), allow_redirects=False).status_code == 200
    locked = a.cli("user", "lock", user.username)
    assert locked["status"] == "locked"
    _answers_within(b, cookie, status=302)


async def test_a_raised_risk_score_is_decided_on_at_once(
    stacks: tuple[GatewayStack, SecondGateway], zhangwei: IdpUser, redis_url: str
) -> None:
    from core.kv import RedisKV
    from gateway.risk import RiskScores

    a, b = stacks
    browser, page = a.sign_in("hr", zhangwei)
    assert page.status_code == 200
    cookie = browser.http.cookies.get("onegate_gw", domain="hr.localhost")
    kv = RedisKV(redis_url, prefix=a.kv_prefix)  # type: ignore[attr-defined]
    try:
        await RiskScores(kv).set(zhangwei.username, 90, ttl=60)
        _answers_within(b, cookie, status=403)
        denied = browser.http.get(b.url("/x"), allow_redirects=False)
        assert "高风险用户一律拒绝" in denied.text  # the rule's description says why
        await RiskScores(kv).set(zhangwei.username, 0)
        _answers_within(b, cookie, status=200, seconds=2.0)  # lowering is no emergency
    finally:
        await kv.close()
