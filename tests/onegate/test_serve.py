"""`onegate demo` and `onegate serve` as real processes answering real HTTP."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest

from tests.onegate.conftest import ONEGATE, Run, clean_env


class Server:
    def __init__(self, args: list[str], env: Mapping[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [*ONEGATE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(env)
        )

    def stop(self) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, out, err


def wait_for(path: Path, server: Server, timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise AssertionError(f"server exited: {server.stop()}")
        if path.exists():
            return dict(json.loads(path.read_text()))
        time.sleep(0.1)
    raise AssertionError(f"{path} did not appear: {server.stop()}")


def wait_for_line(server: Server, needle: str, timeout: float = 30) -> str:
    assert server.proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = server.proc.stdout.readline()
        if needle in line:
            return line
        if not line and server.proc.poll() is not None:
            break
    raise AssertionError(f"no line with {needle!r}: {server.stop()}")


@pytest.fixture
def demo(data_dir: Path) -> Iterator[tuple[Server, dict[str, object]]]:
    server = Server(["demo", "--data-dir", str(data_dir), "--port", "0"])
    try:
        yield server, wait_for(data_dir / "demo.json", server)
    finally:
        server.stop()


def test_demo_serves_health_at_the_written_url(demo: tuple[Server, dict[str, object]]) -> None:
    _server, info = demo
    urls = info["urls"]
    assert isinstance(urls, dict)
    port = info["port"]
    assert isinstance(port, int) and port > 0
    assert str(port) in urls["healthz"]
    health = httpx.get(urls["healthz"], timeout=5)
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    ready = httpx.get(urls["readyz"], timeout=5)
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "kv": "ok"}
    assert "onegate_http_requests_total" in httpx.get(urls["metrics"], timeout=5).text
    users = {u["username"]: u for u in info["users"]}  # type: ignore[attr-defined]
    assert users["zhangwei"]["display_name"] == "张伟"
    assert "hr-staff" in users["zhangwei"]["groups"] and users["zhangwei"]["password"]
    # 张伟 signs in with password + TOTP: his authenticator key is enrolled and written down.
    zhang = users["zhangwei"]
    assert len(zhang["totp_secret"]) == 32 and zhang["totp_uri"].startswith("otpauth://totp/")
    assert f"secret={zhang['totp_secret']}" in zhang["totp_uri"]
    assert "totp_secret" not in users["wangfang"]  # she sets up her passkey at first sign-in


def test_demo_routes_roles_by_host_name(demo: tuple[Server, dict[str, object]]) -> None:
    _server, info = demo
    base = f"http://127.0.0.1:{info['port']}/"
    idp_host = {"Host": f"idp.localhost:{info['port']}"}
    assert httpx.get(base, headers=idp_host, timeout=5).headers["location"] == "/account"
    login = httpx.get(base + "login", headers=idp_host, timeout=5)
    assert login.status_code == 200
    assert "登录" in login.text and 'lang="zh-CN"' in login.text
    discovery = httpx.get(base + ".well-known/openid-configuration", headers=idp_host, timeout=5).json()
    assert discovery["issuer"] == info["issuer"] == f"http://idp.localhost:{info['port']}"
    soc = httpx.get(
        base, headers={"Host": f"soc.localhost:{info['port']}", "Accept-Language": "en"}, timeout=5
    )
    assert "Security operations centre" in soc.text and 'lang="en"' in soc.text
    gateway = httpx.get(base, timeout=5)
    assert "零信任访问网关" in gateway.text
    assert "frame-ancestors 'none'" in gateway.headers["content-security-policy"]


def test_second_demo_reuses_the_data_dir(data_dir: Path) -> None:
    first = Server(["demo", "--data-dir", str(data_dir), "--port", "0"])
    first_users = wait_for(data_dir / "demo.json", first)["users"]
    code, out, _err = first.stop()
    assert code == 0
    assert "one-time password" in out
    assert not (data_dir / "demo.json").exists()  # removed on a clean stop
    master_key = (data_dir / "keys" / "master.key").read_bytes()
    keys = sorted(p.name for p in (data_dir / "keys" / "signing").iterdir())

    second = Server(["demo", "--data-dir", str(data_dir), "--port", "0"])
    info = wait_for(data_dir / "demo.json", second)
    assert info["users"] == first_users  # the same demo accounts and passwords
    assert httpx.get(f"http://127.0.0.1:{info['port']}/healthz", timeout=5).status_code == 200
    code, out, _err = second.stop()
    assert code == 0
    assert "one-time password" not in out
    assert (data_dir / "keys" / "master.key").read_bytes() == master_key
    assert sorted(p.name for p in (data_dir / "keys" / "signing").iterdir()) == keys


def test_serve_on_postgresql_and_redis(
    onegate: Run, data_dir: Path, fresh_postgres_url: str, redis_url: str, redis_prefix: str
) -> None:
    env = {
        "ONEGATE_DATABASE__URL": fresh_postgres_url,
        "ONEGATE_KV__BACKEND": "redis",
        "ONEGATE_KV__URL": redis_url,
        "ONEGATE_KV__PREFIX": redis_prefix,
    }
    init = onegate("init", "--data-dir", str(data_dir), env=env)
    assert init.returncode == 0, init.stderr
    assert "postgresql+asyncpg" in init.stdout
    server = Server(["serve", "--role", "idp", "--data-dir", str(data_dir), "--port", "0"], env=env)
    try:
        line = wait_for_line(server, "serving on")
        url = line.split("serving on ", 1)[1].strip()
        ready = httpx.get(url + "readyz", timeout=5)
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"database": "ok", "kv": "ok"}
        # The idp role serves the identity provider on any host name.
        discovery = httpx.get(url + ".well-known/openid-configuration", timeout=5).json()
        assert discovery["token_endpoint"].endswith("/token")
        assert "登录" in httpx.get(url + "login", timeout=5).text
    finally:
        code, _out, err = server.stop()
    assert code == 0, err
