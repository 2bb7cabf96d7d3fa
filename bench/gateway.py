"""The gateway's cost per request, against an upstream alone, nginx, and LemonLDAP::NG, in one run.

Everything runs on this machine on loopback, one after the other, measured with ``wrk`` (Debian):

* ``direct``: nginx answering a 100-byte page itself (the upstream of every other case);
* ``nginx``: nginx as a plain reverse proxy to it (keep-alive pool): the ceiling for a proxy hop;
* ``llng``: LemonLDAP::NG (Debian's lemonldap-ng: nginx ``auth_request`` + its FastCGI handler),
  a logged-in session, the same upstream — the peer, started with ../shared/peers/llng_up.sh
  when that script and the packages are here (``llng_*`` figures are null otherwise);
* ``gateway``: ``onegate serve --role gateway`` (one worker, uvloop + httptools) with Redis as
  KV, a signed-in session (created in Redis as a sign-in would), the policy deciding every
  request, the identity headers and the assertion added, the same upstream.

Figures: ``*_rps`` at 64 connections (2 wrk threads, 10 s), ``*_p50_ms_c1`` at one connection,
``gateway_p99_ms_c64``, and the ratios ``gateway_vs_nginx`` and ``gateway_vs_llng``. The
gateway's access events go to its in-process bus (no SOC subscriber here).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PEERS = Path(__file__).resolve().parents[2] / "shared" / "peers"
DURATION = int(os.environ.get("BENCH_DURATION", "10"))
POLICY = """
version: 1
apps:
  bench:
    hosts: [bench.localhost]
    rules:
      - {id: bench-staff, effect: allow, subjects: {groups: [bench-staff]}}
      - {id: bench-admin, effect: step_up, paths: [/admin], acr: phr}
rules:
  - {id: high-risk, effect: deny, apps: "*", min_risk: 80}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def _wrk(url: str, connections: int, headers: dict[str, str], duration: int = DURATION) -> dict[str, float]:
    threads = "2" if connections > 1 else "1"
    args = ["wrk", "-t", threads, "-c", str(connections), "-d", f"{duration}s", "--latency"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non2xx:
        raise RuntimeError(f"{url}: {non2xx.group(1)} failed responses\n{out}")

    def percentile(p: str) -> float:
        match = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M)
        if match is None:
            raise RuntimeError(f"no {p}th percentile in wrk's output:\n{out}")
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    return {"rps": rps, "p50_ms": percentile("50"), "p99_ms": percentile("99")}


def _nginx(work: Path, upstream_port: int, proxy_port: int) -> subprocess.Popen[bytes]:
    conf = work / "nginx.conf"
    conf.write_text(
        f"""
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx.err;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {work}/body; proxy_temp_path {work}/proxy;
  fastcgi_temp_path {work}/fcgi; uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
  upstream up {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
  server {{ listen 127.0.0.1:{upstream_port}; location / {{ default_type text/plain;
    return 200 "{"x" * 99}\\n"; }} }}
  server {{ listen 127.0.0.1:{proxy_port}; location / {{ proxy_http_version 1.1;
    proxy_set_header Connection ""; proxy_pass http://up; }} }}
}}
"""
    )
    process = subprocess.Popen(["nginx", "-c", str(conf), "-g", "daemon off;"], stderr=subprocess.DEVNULL)
    _wait_port(upstream_port)
    _wait_port(proxy_port)
    return process


def _onegate(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "onegate", *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"onegate {' '.join(args)}: {done.stderr}")
    return done.stdout


async def _session(env: dict[str, str]) -> str:
    """A signed-in session as the gateway's callback creates one, in the gateway's Redis."""
    from core.kv import RedisKV
    from gateway.sessions import GatewaySessions

    kv = RedisKV(env["ONEGATE_KV__URL"], prefix=env["ONEGATE_KV__PREFIX"])
    try:
        sessions = GatewaySessions(kv, idle_timeout=3600, absolute_timeout=36000)
        _, cookie = await sessions.create(
            host="bench.localhost",
            sub="bench-sub",
            username="zhangwei",
            name="张伟",
            groups=["bench-staff"],
            department="hrss",
            departments=["hrss", "city"],
            acr="urn:onegate:acr:mfa",
            amr=["pwd", "otp"],
            auth_time=time.time(),
            idp_sid="bench-idp-session",
            id_token="-",  # noqa: S106 - no ID token: the session is made here, not by a sign-in
        )
        return cookie
    finally:
        await kv.close()


async def _forget(env: dict[str, str]) -> None:
    """Remove what the run left in Redis (its session and the gateway's keys)."""
    import redis.asyncio as redis

    client = redis.Redis.from_url(env["ONEGATE_KV__URL"])
    try:
        keys = [key async for key in client.scan_iter(match=f"{env['ONEGATE_KV__PREFIX']}*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def _gateway(
    work: Path, upstream_port: int, port: int
) -> tuple[subprocess.Popen[bytes], str, dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONEGATE_")}
    env |= {
        "ONEGATE_DATA_DIR": str(work / "data"),
        "ONEGATE_KV__BACKEND": "redis",
        "ONEGATE_KV__URL": os.environ.get("ONEGATE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
        "ONEGATE_KV__PREFIX": f"bench-{os.getpid()}:",
        "ONEGATE_LOG__LEVEL": "warning",
        "ONEGATE_GATEWAY__ROUTES": json.dumps(
            [{"app": "bench", "hosts": ["bench.localhost"], "upstream": f"http://127.0.0.1:{upstream_port}"}]
        ),
    }
    _onegate(env, "init")
    _onegate(env, "user", "groups", "add", "bench-staff")
    (work / "policy.yaml").write_text(POLICY)
    _onegate(env, "policy", "apply", str(work / "policy.yaml"))
    log = (work / "gateway.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "onegate", "serve", "--role", "gateway", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    _wait_port(port)
    cookie = asyncio.run(_session(env))
    return process, cookie, env


def _llng(upstream_port: int, port: int, work: Path) -> tuple[str | None, Path | None]:
    script = PEERS / "llng_up.sh"
    if not script.exists() or not Path("/usr/sbin/llng-fastcgi-server").exists():
        return None, None
    llng = work / "llng"
    done = subprocess.run(
        ["bash", str(script), str(upstream_port), str(port), str(llng)],
        capture_output=True,
        text=True,
        check=False,
    )
    cookie = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode != 0 or not cookie.startswith("lemonldap="):
        return None, llng
    return cookie, llng


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def run() -> dict[str, Any]:
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is needed (Debian package {tool})")
    work = Path(tempfile.mkdtemp(prefix="onegate-bench-gw-"))
    work.chmod(0o755)  # LemonLDAP::NG's FastCGI server runs as www-data and needs to reach its socket
    upstream, proxy, llng_port, gw_port = (_free_port() for _ in range(4))
    nginx = gateway = None
    env: dict[str, str] | None = None
    llng_dir: Path | None = None
    try:
        nginx = _nginx(work, upstream, proxy)
        gateway, cookie, env = _gateway(work, upstream, gw_port)
        gw_headers = {"Host": "bench.localhost", "Cookie": f"onegate_gw={cookie}"}
        # Warm up each, then measure; the same order every run.
        _wrk(f"http://127.0.0.1:{gw_port}/", 8, gw_headers, 2)
        direct = _wrk(f"http://127.0.0.1:{upstream}/", 64, {})
        plain = _wrk(f"http://127.0.0.1:{proxy}/", 64, {})
        gw = _wrk(f"http://127.0.0.1:{gw_port}/", 64, gw_headers)
        direct_c1 = _wrk(f"http://127.0.0.1:{upstream}/", 1, {})
        gw_c1 = _wrk(f"http://127.0.0.1:{gw_port}/", 1, gw_headers)
        llng_cookie, llng_dir = _llng(upstream, llng_port, work)
        llng = llng_c1 = None
        if llng_cookie is not None:
            llng_headers = {"Host": "test1.example.com", "Cookie": llng_cookie}
            llng = _wrk(f"http://127.0.0.1:{llng_port}/", 64, llng_headers)
            llng_c1 = _wrk(f"http://127.0.0.1:{llng_port}/", 1, llng_headers)
        return {
            "direct_rps": round(direct["rps"]),
            "nginx_rps": round(plain["rps"]),
            "llng_rps": round(llng["rps"]) if llng else None,
            "gateway_rps": round(gw["rps"]),
            "gateway_vs_nginx": round(gw["rps"] / plain["rps"], 3),
            "gateway_vs_llng": round(gw["rps"] / llng["rps"], 2) if llng else None,
            "direct_p50_ms_c1": direct_c1["p50_ms"],
            "llng_p50_ms_c1": llng_c1["p50_ms"] if llng_c1 else None,
            "gateway_p50_ms_c1": gw_c1["p50_ms"],
            "gateway_added_p50_ms_c1": round(gw_c1["p50_ms"] - direct_c1["p50_ms"], 3),
            "gateway_p99_ms_c64": gw["p99_ms"],
            "nginx_p99_ms_c64": plain["p99_ms"],
            "duration_s": DURATION,
            "cpus": os.cpu_count(),
        }
    finally:
        _stop(gateway)
        _stop(nginx)
        if env is not None:
            asyncio.run(_forget(env))
        if llng_dir is not None and (PEERS / "llng_down.sh").exists():
            subprocess.run(
                ["bash", str(PEERS / "llng_down.sh"), str(llng_dir)], capture_output=True, check=False
            )
        shutil.rmtree(work, ignore_errors=True)
