"""`onegate demo` as one real process running the whole demo city (STORIES.md, "A day", 1-2).

The IdP, the gateway and OA answer on the demo's port by host name; HR, Permits and City
operations run behind the gateway on loopback ports of their own inside the same process. A
scripted browser (``*.localhost`` sent to 127.0.0.1 with the original Host header) signs 张伟
in once, with password and TOTP, and walks through the four systems as demo.json lists them.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
import requests

from tests.e2e.browser import Browser
from tests.e2e.conftest import LoopbackAdapter, free_port
from tests.onegate.conftest import ONEGATE, clean_env

APPS = {  # host label -> the name demo.json gives
    "hr": "人事管理系统 HR",
    "permits": "行政审批系统 Permits",
    "grid": "城市运行一网统管 City operations",
    "oa": "协同办公 OA",
}


class Demo:
    """A real ``onegate demo`` process; its output goes to a file (nobody reads a pipe while
    the test runs, and a full pipe would block the server mid-request)."""

    def __init__(self, data_dir: Path, port: int = 0) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self.log_path = data_dir.parent / f"demo-{time.monotonic_ns()}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [*ONEGATE, "demo", "--data-dir", str(data_dir), "--port", str(port)],
                env=clean_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.info = self._wait_for_demo_json()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_for_demo_json(self, timeout: float = 30) -> dict[str, Any]:
        path = self.data_dir / "demo.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"demo exited {self.proc.returncode}:\n{self.log()[-4000:]}")
            if path.exists():
                return dict(json.loads(path.read_text(encoding="utf-8")))
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"no demo.json within {timeout} s:\n{self.log()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"demo did not stop within 20 s:\n{self.log()[-4000:]}") from None

    # -- what demo.json says ---------------------------------------------------------------------

    def app_url(self, label: str, path: str = "/") -> str:
        urls = [a["url"] for a in self.info["apps"] if urlsplit(a["url"]).hostname == f"{label}.localhost"]
        assert len(urls) == 1, self.info["apps"]
        return urls[0].rstrip("/") + path

    def user(self, username: str) -> dict[str, Any]:
        found: dict[str, Any] = next(u for u in self.info["users"] if u["username"] == username)
        return found

    def browser(self) -> Browser:
        browser = Browser()
        browser.http.mount("http://", LoopbackAdapter())
        return browser


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    running = Demo(tmp_path_factory.mktemp("demo") / "data")
    try:
        yield running
    finally:
        running.stop()


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_demo_json_lists_the_four_systems(demo: Demo) -> None:
    port = demo.info["port"]
    assert demo.info["apps"] == [
        {"name": name, "url": f"http://{label}.localhost:{port}/"} for label, name in APPS.items()
    ]
    printed = demo.log()
    for label, name in APPS.items():  # and the console shows them
        assert re.search(rf"http://{label}\.localhost:{port}/\s+{re.escape(name)}", printed), printed[-3000:]
    # Every system answers on its own host name (HR's health check needs no sign-in).
    health = demo.browser().get(demo.app_url("hr", "/healthz"))
    assert health.status_code == 200 and urlsplit(health.url).hostname == "hr.localhost"


def test_zhangwei_signs_in_once_and_walks_through_the_city(demo: Demo) -> None:
    issuer = demo.info["issuer"]
    assert issuer == f"http://idp.localhost:{demo.info['port']}"
    zhang = demo.user("zhangwei")
    browser = demo.browser()

    # 1. HR through the gateway: the IdP's zh-CN sign-in page, password, then his TOTP code.
    page = browser.get(demo.app_url("hr"))
    assert page.url.startswith(f"{issuer}/login"), page.url
    page = browser.submit(browser.form("password"), {"username": "zhangwei", "password": zhang["password"]})
    assert urlsplit(page.url).path == "/mfa", f"no second factor asked: {page.url}"
    # One step ahead (RFC 6238 §5.2 allows it): the current step may have been used at seeding.
    code = pyotp.TOTP(zhang["totp_secret"]).at(time.time() + 30)
    page = browser.submit(browser.form("code"), {"code": code})
    assert page.status_code == 200 and page.url == demo.app_url("hr"), page.url
    assert re.search(r'<span class="who">张伟 \(zhangwei\)</span>', page.text), page.text[:2000]
    assert "<td><code>hrss</code></td>" in page.text  # the department the gateway passed on
    # HR verified the assertion with the gateway's issuer and public keys.
    status = re.search(r'id="assertion-status">(.*?)</p>', page.text)
    assert status is not None and "badge ok" in status.group(1) and "verified" in status.group(1)
    assert f"<code>{issuer}</code>" in page.text and "<code>urn:onegate:acr:mfa</code>" in page.text

    # 2. City operations: no second sign-in (the IdP's session answers the gateway at once).
    page = browser.get(demo.app_url("grid"), stop_at=f"{issuer}/login")
    assert page.status_code == 200 and page.url == demo.app_url("grid"), page.url
    assert "城市运行一网统管" in page.text and "张伟 (zhangwei)" in page.text

    # 3. Permits: the demo policy lets only approval staff in; the gateway's deny page, no prompt.
    page = browser.get(demo.app_url("permits"), stop_at=f"{issuer}/login")
    assert page.status_code == 403 and page.url == demo.app_url("permits"), page.url
    assert "行政审批系统" not in page.text  # the upstream never answered
    assert "无权访问" in text_of(page.text)

    # 4. OA signs users in itself: to the IdP's authorization endpoint as client onegate-demo-oa.
    page = browser.get(demo.app_url("oa", "/login"), stop_at=f"{issuer}/authorize")
    authorize = urlsplit(page.headers["location"])
    query = parse_qs(authorize.query)
    assert f"{authorize.scheme}://{authorize.netloc}{authorize.path}" == f"{issuer}/authorize"
    assert query["client_id"] == ["onegate-demo-oa"]
    assert query["redirect_uri"] == [demo.app_url("oa", "/callback")]
    assert query["code_challenge_method"] == ["S256"] and query["response_type"] == ["code"]
    # ... and with 张伟's IdP session it signs him in without a prompt (SSO).
    page = browser.get(page.headers["location"], stop_at=f"{issuer}/login")
    assert page.status_code == 200 and page.url == demo.app_url("oa"), page.url
    assert "张伟" in page.text and "协同办公" in page.text


def test_restart_keeps_the_policy_and_moves_oa_to_the_new_port(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = Demo(data_dir, port=free_port())
    assert first.stop(signal.SIGINT) == 0, first.log()[-3000:]  # Ctrl-C stops everything cleanly
    assert not (data_dir / "demo.json").exists()

    port = free_port()
    while port == first.info["port"]:
        port = free_port()
    second = Demo(data_dir, port=port)
    try:
        issuer = second.info["issuer"]
        # OA's registration follows the port: the IdP accepts its new redirect URI.
        browser = second.browser()
        page = browser.get(second.app_url("oa", "/login"))
        assert page.status_code == 200 and page.url.startswith(f"{issuer}/login"), page.url
        browser.form("password")  # the sign-in form, not an error about the client
        # The gateway routes to this run's upstreams (their ports are new as well).
        hr = requests.Session()
        hr.mount("http://", LoopbackAdapter())
        assert hr.get(second.app_url("hr", "/healthz"), timeout=10).status_code == 200
    finally:
        assert second.stop() == 0
    history = subprocess.run(
        [*ONEGATE, "policy", "history", "--json", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=True,
    )
    versions = json.loads(history.stdout)
    assert [(v["version"], v["author"]) for v in versions] == [(1, "onegate-demo")]  # applied once
