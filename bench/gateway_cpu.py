"""The gateway's CPU time per proxied request: the figure that holds on a noisy machine.

Sets up the same stack as :mod:`bench.gateway` (nginx as the upstream, ``onegate serve --role
gateway`` on Redis, a signed-in session) and runs ``wrk`` at 64 connections against the gateway
only, reading the gateway process's user + system CPU time from ``/proc`` before and after each
run. Figures: ``gateway_cpu_us_per_request`` (the median of the runs), each run's figure (and
its user-mode part: the interpreter's work, without the system calls), and the requests per
second of each run (which move with the machine's load; the CPU time per
request much less).

``BENCH_DURATION`` (seconds per run, default 10) and ``BENCH_RUNS`` (default 3) tune it;
``BENCH_HOLD`` (seconds) keeps the stack up after the runs, its ports printed on stderr, for a
profiler to attach.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.gateway import _forget, _free_port, _gateway, _nginx, _stop, _wrk

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
DURATION = int(os.environ.get("BENCH_DURATION", "10"))
HOLD = float(os.environ.get("BENCH_HOLD", "0"))


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of process ``pid`` so far (proc(5): fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def run() -> dict[str, Any]:
    import asyncio

    work = Path(tempfile.mkdtemp(prefix="onegate-bench-gwcpu-"))
    upstream, proxy, gw_port = (_free_port() for _ in range(3))
    nginx = gateway = None
    env: dict[str, str] | None = None
    try:
        nginx = _nginx(work, upstream, proxy)
        gateway, cookie, env = _gateway(work, upstream, gw_port)
        headers = {"Host": "bench.localhost", "Cookie": f"onegate_gw={cookie}"}
        url = f"http://127.0.0.1:{gw_port}/"
        _wrk(url, 8, headers, 2)
        per_request: list[float] = []
        user: list[float] = []
        rps: list[float] = []
        for _ in range(RUNS):
            user_before, system_before = _cpu_seconds(gateway.pid)
            result = _wrk(url, 64, headers, DURATION)
            user_after, system_after = _cpu_seconds(gateway.pid)
            requests = result["rps"] * DURATION
            used = user_after - user_before + system_after - system_before
            per_request.append(round(used / requests * 1e6, 1))
            user.append(round((user_after - user_before) / requests * 1e6, 1))
            rps.append(round(result["rps"]))
        if HOLD:
            print(f"gateway pid {gateway.pid} on {url} (Host bench.localhost)", file=sys.stderr)
            print(f"Cookie: onegate_gw={cookie}", file=sys.stderr)
            time.sleep(HOLD)
        return {
            "gateway_cpu_us_per_request": statistics.median(per_request),
            "runs_cpu_us_per_request": per_request,
            "runs_user_us_per_request": user,
            "runs_rps": rps,
            "duration_s": DURATION,
        }
    finally:
        _stop(gateway)
        _stop(nginx)
        if env is not None:
            asyncio.run(_forget(env))
        shutil.rmtree(work, ignore_errors=True)
