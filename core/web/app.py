"""The app factory every role (idp, gateway, soc, admin) builds its Starlette app with.

``create_web_app`` is the one place where the middleware stack is assembled. Outermost first:

    ErrorsMiddleware          any exception -> 500 page / JSON with the request id only
    RequestIdMiddleware       scope["state"]["request_id"], X-Request-ID, log context
    AccessLogMiddleware       one JSON line per request
    MetricsMiddleware         Prometheus counters / histogram / gauge (per-app registry)
    SecurityHeadersMiddleware CSP, HSTS (https only), nosniff, ...
    TrustedHostMiddleware     only when ``trusted_hosts`` is given
    LocaleMiddleware          scope["state"]["locale"]
    CSRFMiddleware            every unsafe method, except the exempt paths
    *extra_middleware         the role's own, innermost
    (Starlette's ExceptionMiddleware renders HTTPProblem / HTTPException; then the router)

Routes: ``/healthz``, ``/readyz``, ``/metrics``, ``/static/...`` (core's CSS), then the
role's ``routes``. ``app.state`` holds ``templates`` (``core.web.templating.Templates``),
``metrics_registry`` (register role metrics there), ``catalogs`` and ``name``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Lifespan

from core.web.errors import HTTPProblem, ProblemRenderer
from core.web.health import ReadinessCheck, health_routes
from core.web.i18n import Catalogs
from core.web.middleware.access_log import AccessLogMiddleware
from core.web.middleware.csrf import CSRFMiddleware
from core.web.middleware.errors import ErrorsMiddleware
from core.web.middleware.locale import LocaleMiddleware
from core.web.middleware.metrics import HTTPMetrics, MetricsMiddleware
from core.web.middleware.request_id import RequestIdMiddleware
from core.web.middleware.security_headers import SecurityHeadersMiddleware, security_headers
from core.web.templating import STATIC_PATH, Templates

__all__ = ["STATIC_DIR", "create_web_app"]

STATIC_DIR = Path(__file__).parent / "static"
_MIN_SECRET_BYTES = 32


def create_web_app(
    *,
    name: str,
    routes: Sequence[BaseRoute],
    csrf_secret: bytes,
    readiness_checks: Mapping[str, ReadinessCheck] | None = None,
    readiness_timeout: float = 2.0,
    template_dirs: Sequence[Path] = (),
    locale_dirs: Sequence[Path] = (),
    default_locale: str = "zh_CN",
    locales: Sequence[str] = ("zh_CN", "en"),
    https: bool = False,
    form_action: Sequence[str] = ("'self'",),
    csrf_exempt_paths: Collection[str] = (),
    csrf_exempt_prefixes: Sequence[str] = (),
    csrf_trusted_origins: Sequence[str] = (),
    max_form_bytes: int = 1 << 20,
    json_path_prefixes: Sequence[str] = (),
    trusted_hosts: Sequence[str] | None = None,
    debug: bool = False,
    lifespan: Lifespan[Starlette] | None = None,
    extra_middleware: Sequence[Middleware] = (),
) -> Starlette:
    """Build a role's Starlette app with OneGate's routes, templates and middleware stack.

    ``csrf_secret``: at least 32 random bytes (from keyvault), keying the CSRF token HMAC.
    ``readiness_checks``: name -> ``async def () -> None`` that raises when not ready.
    ``template_dirs`` / ``locale_dirs``: the role's templates and catalogs, searched / merged
    before core's. ``https``: the public scheme is https (HSTS, ``__Host-`` and Secure cookies).
    ``form_action``: CSP ``form-action`` sources. ``csrf_exempt_paths`` (exact) and
    ``csrf_exempt_prefixes`` (ending in ``/``): unsafe requests not authenticated by cookies.
    ``csrf_trusted_origins``: other origins allowed to post here. ``json_path_prefixes``:
    paths whose errors are always JSON. ``trusted_hosts``: Host header allow-list.
    ``debug`` only enables template auto-reload and Starlette's debug flag; tracebacks are
    never sent to clients. Raises ``ValueError`` naming the argument on bad configuration.
    """
    if not name:
        raise ValueError("name: required")
    if not isinstance(csrf_secret, bytes) or len(csrf_secret) < _MIN_SECRET_BYTES:
        raise ValueError(f"csrf_secret: at least {_MIN_SECRET_BYTES} random bytes are required")
    if max_form_bytes <= 0:
        raise ValueError("max_form_bytes: must be positive")

    catalogs = Catalogs.load(locales=locales, default_locale=default_locale, locale_dirs=locale_dirs)
    templates = Templates(directories=template_dirs, catalogs=catalogs, auto_reload=debug)
    renderer = ProblemRenderer(templates=templates, json_path_prefixes=json_path_prefixes)
    registry = CollectorRegistry(auto_describe=True)
    static_headers = security_headers(https=https, form_action=form_action)

    middleware = [
        Middleware(ErrorsMiddleware, renderer=renderer, security_headers=static_headers),
        Middleware(RequestIdMiddleware),
        Middleware(AccessLogMiddleware),
        Middleware(MetricsMiddleware, metrics=HTTPMetrics(registry)),
        Middleware(SecurityHeadersMiddleware, https=https, form_action=form_action),
    ]
    if trusted_hosts is not None:
        middleware.append(
            Middleware(TrustedHostMiddleware, allowed_hosts=list(trusted_hosts), www_redirect=False)
        )
    middleware += [
        Middleware(LocaleMiddleware, locales=locales, default_locale=default_locale, https=https),
        Middleware(
            CSRFMiddleware,
            secret=csrf_secret,
            on_reject=renderer.response,
            https=https,
            exempt_paths=csrf_exempt_paths,
            exempt_prefixes=csrf_exempt_prefixes,
            trusted_origins=csrf_trusted_origins,
            max_body_bytes=max_form_bytes,
        ),
        *extra_middleware,
    ]
    all_routes: list[BaseRoute] = [
        *health_routes(
            readiness_checks=readiness_checks or {}, registry=registry, readiness_timeout=readiness_timeout
        ),
        Mount(STATIC_PATH, app=StaticFiles(directory=STATIC_DIR), name="static"),
        *routes,
    ]
    app = Starlette(
        debug=debug,
        routes=all_routes,
        middleware=middleware,
        exception_handlers={HTTPProblem: renderer.handle_exception, HTTPException: renderer.handle_exception},
        lifespan=lifespan,
    )
    # Build the stack now: configuration errors surface here, not on the first request, and
    # nobody can add middleware later (the stack is assembled in this one place).
    app.middleware_stack = app.build_middleware_stack()
    app.state.name = name
    app.state.templates = templates
    app.state.catalogs = catalogs
    app.state.metrics_registry = registry
    return app
