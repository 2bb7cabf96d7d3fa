"""Operational endpoints: ``/healthz`` (alive), ``/readyz`` (dependencies), ``/metrics``.

* ``GET /healthz`` -> 200 ``{"status": "ok"}`` whenever the process serves requests.
* ``GET /readyz`` runs every readiness check concurrently, each bounded by ``readiness_timeout``
  seconds: 200 ``{"status": "ready", "checks": {"db": "ok"}}``, or 503
  ``{"status": "not_ready", "checks": {"db": "ok", "kv": "timeout"}, "failing": ["kv"]}``.
  A check is an ``async def check() -> None`` that raises when its dependency is not usable.
  The reason shown is ``timeout`` or ``error: <ExceptionType>`` only: exception messages can
  hold DSNs with passwords, so they go to the log (redacted), never into the response.
* ``GET /metrics`` -> the app's own Prometheus registry in the text exposition format.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping

import anyio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from core.logging import get_logger

__all__ = ["ReadinessCheck", "health_routes", "run_readiness_checks"]

ReadinessCheck = Callable[[], Awaitable[None]]
_CHECK_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_log = get_logger("onegate.health")


async def run_readiness_checks(
    checks: Mapping[str, ReadinessCheck], *, seconds_each: float
) -> dict[str, str]:
    """Run ``checks`` concurrently, each bounded by ``seconds_each``; map each name to ``ok``,
    ``timeout`` or ``error: <ExceptionType>``."""
    results: dict[str, str] = {}

    async def run(name: str, check: ReadinessCheck) -> None:
        try:
            with anyio.fail_after(seconds_each):
                await check()
        except TimeoutError:
            _log.warning("readiness_check_timeout", check=name, timeout_s=seconds_each)
            results[name] = "timeout"
        except Exception as exc:
            _log.warning("readiness_check_failed", check=name, error=str(exc), exc_type=type(exc).__name__)
            results[name] = f"error: {type(exc).__name__}"
        else:
            results[name] = "ok"

    async with anyio.create_task_group() as group:
        for name, check in checks.items():
            group.start_soon(run, name, check)
    return dict(sorted(results.items()))


def health_routes(
    *,
    readiness_checks: Mapping[str, ReadinessCheck],
    registry: CollectorRegistry,
    readiness_timeout: float = 2.0,
) -> list[BaseRoute]:
    """The three operational routes (names: ``healthz``, ``readyz``, ``metrics``)."""
    for name in readiness_checks:
        if not _CHECK_NAME.fullmatch(name):
            raise ValueError(f"readiness_checks: check name {name!r} must match {_CHECK_NAME.pattern}")
    if readiness_timeout <= 0:
        raise ValueError("readiness_timeout must be positive")
    checks = dict(readiness_checks)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        results = await run_readiness_checks(checks, seconds_each=readiness_timeout)
        failing = [name for name, result in results.items() if result != "ok"]
        if failing:
            return JSONResponse(
                {"status": "not_ready", "checks": results, "failing": failing}, status_code=503
            )
        return JSONResponse({"status": "ready", "checks": results})

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/healthz", healthz, methods=["GET"], name="healthz"),
        Route("/readyz", readyz, methods=["GET"], name="readyz"),
        Route("/metrics", metrics, methods=["GET"], name="metrics"),
    ]
