"""IdP throughput over real HTTP: client-credentials grants, refresh grants, password sign-ins.

One ``onegate serve --role idp`` process (one uvicorn worker, embedded SQLite + memory KV)
is started in a temporary data dir; the load comes from this process with aiohttp,
``CONCURRENCY`` requests in flight, for ``DURATION_S`` seconds per figure. Each figure is
also given as a ratio to the Keycloak sizing guide's per-vCPU figures (15 password logins,
120 client-credentials grants and 120 refresh grants per second per vCPU): the server
process uses one core, so the ratio is per core.

- ``client_credentials_per_s``: POST /token grant_type=client_credentials, client_secret_basic.
- ``refresh_per_s``: POST /token grant_type=refresh_token; every worker follows its own
  rotating chain (each answer's refresh token is used for the next request).
- ``password_logins_per_s``: GET /login (form + CSRF token) then POST /login with the right
  password: argon2id verification and a new SSO session each time.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp

CONCURRENCY = 16
DURATION_S = 5.0
KEYCLOAK_PER_VCPU = {"password_logins_per_s": 15, "client_credentials_per_s": 120, "refresh_per_s": 120}
REDIRECT_URI = "http://127.0.0.1:9/callback"
USERNAME = "benchuser"
PASSWORD = "Bench-password-" + secrets.token_hex(8)
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _onegate(*args: str, env: dict[str, str]) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "onegate", *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(result.stdout))


def _setup(data_dir: Path, env: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    _onegate("init", "--data-dir", str(data_dir), env=env)
    machine = _onegate(
        "client",
        "add",
        "--name",
        "bench-machine",
        "--grant-type",
        "client_credentials",
        "--scope",
        "api",
        "--data-dir",
        str(data_dir),
        env=env,
    )
    web = _onegate(
        "client",
        "add",
        "--name",
        "bench-web",
        "--first-party",
        "--redirect-uri",
        REDIRECT_URI,
        "--grant-type",
        "authorization_code",
        "--grant-type",
        "refresh_token",
        "--scope",
        "openid",
        "--scope",
        "profile",
        "--scope",
        "offline_access",
        "--data-dir",
        str(data_dir),
        env=env,
    )
    _add_user(data_dir, env)
    return machine, web


def _add_user(data_dir: Path, env: dict[str, str]) -> None:
    code = (
        "import asyncio, sys\n"
        "from core.settings import load_settings\n"
        "from idp.directory.passwords import PasswordHashing\n"
        "from onegate.runtime import open_runtime\n"
        "async def main():\n"
        "    runtime = await open_runtime(load_settings(overrides={'data_dir': sys.argv[1]}))\n"
        "    try:\n"
        "        await runtime.directory.add_user(username=sys.argv[2], display_name='压测用户',\n"
        "                                         password_hash=PasswordHashing().hash(sys.argv[3]))\n"
        "    finally:\n"
        "        await runtime.close()\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([sys.executable, "-c", code, str(data_dir), USERNAME, PASSWORD], env=env, check=True)


async def _measure(
    worker: Callable[[aiohttp.ClientSession], Awaitable[None]], *, cookies: bool = False
) -> float:
    """Completed worker calls per second with CONCURRENCY workers for DURATION_S."""
    done = 0
    deadline = time.perf_counter() + DURATION_S

    async def loop() -> None:
        nonlocal done
        jar: aiohttp.abc.AbstractCookieJar = (
            aiohttp.CookieJar(unsafe=True) if cookies else aiohttp.DummyCookieJar()
        )
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            while time.perf_counter() < deadline:
                await worker(http)
                done += 1

    start = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(CONCURRENCY)))
    return done / (time.perf_counter() - start)


def _basic(client: dict[str, Any]) -> str:
    pair = f"{client['client_id']}:{client['client_secret']}".encode()
    return "Basic " + base64.b64encode(pair).decode()


async def _sign_in(http: aiohttp.ClientSession, base: str, query: str = "") -> aiohttp.ClientResponse:
    async with http.get(f"{base}/login{query}") as page:
        token = _CSRF.search(await page.text())
    if token is None:
        raise RuntimeError("no CSRF token on the login page")
    form = {"csrf_token": token.group(1), "username": USERNAME, "password": PASSWORD}
    response = await http.post(f"{base}/login{query}", data=form, allow_redirects=False)
    response.release()
    if response.status not in (302, 303):
        raise RuntimeError(f"sign-in failed: HTTP {response.status}")
    return response


async def _refresh_token(base: str, web: dict[str, Any]) -> str:
    """One code + PKCE sign-in, returning its refresh token (the start of a chain)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    params = {
        "client_id": web["client_id"],
        "response_type": "code",
        "redirect_uri": REDIRECT_URI,
        "scope": "openid profile offline_access",
        "state": secrets.token_urlsafe(8),
        "nonce": secrets.token_urlsafe(8),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        url = f"{base}/authorize?{urlencode(params)}"
        for _ in range(10):
            async with http.get(url, allow_redirects=False) as response:
                location = response.headers.get("Location", "")
            if location.startswith(REDIRECT_URI):
                break
            if "/login" in location:
                query = "?" + urlsplit(location).query
                signed = await _sign_in(http, base, query)
                url = (
                    base + signed.headers["Location"]
                    if signed.headers["Location"].startswith("/")
                    else signed.headers["Location"]
                )
                continue
            url = location if location.startswith("http") else base + location
        code = parse_qs(urlsplit(location).query)["code"][0]
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
        }
        async with http.post(f"{base}/token", data=form, headers={"Authorization": _basic(web)}) as response:
            body = await response.json()
    return str(body["refresh_token"])


async def _load(base: str, machine: dict[str, Any], web: dict[str, Any]) -> dict[str, float]:
    machine_auth = _basic(machine)
    web_auth = _basic(web)

    async def client_credentials(http: aiohttp.ClientSession) -> None:
        async with http.post(
            f"{base}/token",
            data={"grant_type": "client_credentials", "scope": "api"},
            headers={"Authorization": machine_auth},
        ) as response:
            if response.status != 200:
                raise RuntimeError(f"client_credentials: HTTP {response.status} {await response.text()}")
            await response.read()

    chains = [await _refresh_token(base, web) for _ in range(CONCURRENCY)]

    async def refresh(http: aiohttp.ClientSession) -> None:
        token = chains.pop()
        async with http.post(
            f"{base}/token",
            data={"grant_type": "refresh_token", "refresh_token": token},
            headers={"Authorization": web_auth},
        ) as response:
            if response.status != 200:
                raise RuntimeError(f"refresh: HTTP {response.status} {await response.text()}")
            chains.append(str((await response.json())["refresh_token"]))

    async def password_login(http: aiohttp.ClientSession) -> None:
        http.cookie_jar.clear()
        await _sign_in(http, base)

    return {
        "client_credentials_per_s": await _measure(client_credentials),
        "refresh_per_s": await _measure(refresh),
        "password_logins_per_s": await _measure(password_login, cookies=True),
    }


def _wait_ready(base: str, server: subprocess.Popen[bytes]) -> None:
    import urllib.request

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("the IdP server exited during start-up")
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=2) as response:  # noqa: S310 - loopback
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the IdP server did not become ready")


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="onegate-bench-idp-") as tmp:
        data_dir = Path(tmp) / "data"
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ONEGATE_")}
        env.update(
            {
                "ONEGATE_IDP__ISSUER": base,
                "ONEGATE_LOG__LEVEL": "warning",
                # The load comes from one address: keep the per-address sign-in throttle out of the way.
                "ONEGATE_IDP__IP_THROTTLE_LIMIT": "1000000",
            }
        )
        machine, web = _setup(data_dir, env)
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "onegate",
                "serve",
                "--role",
                "idp",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_ready(base, server)
            figures = asyncio.run(_load(base, machine, web))
        finally:
            server.terminate()
            server.wait(30)
    result: dict[str, Any] = {key: round(value, 1) for key, value in figures.items()}
    for key, keycloak in KEYCLOAK_PER_VCPU.items():
        result[f"{key.removesuffix('_per_s')}_vs_keycloak_per_vcpu"] = round(figures[key] / keycloak, 2)
    result.update(
        {"concurrency": CONCURRENCY, "duration_s": DURATION_S, "server_processes": 1, "cpus": os.cpu_count()}
    )
    return result
