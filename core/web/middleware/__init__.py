"""Raw ASGI middleware, one concern per module; assembled only by ``core.web.app``."""

from core.web.middleware.access_log import AccessLogMiddleware
from core.web.middleware.csrf import CSRFFailure, CSRFMiddleware, CSRFState, csrf_token
from core.web.middleware.errors import ErrorsMiddleware
from core.web.middleware.locale import LocaleMiddleware
from core.web.middleware.metrics import HTTPMetrics, MetricsMiddleware, route_template
from core.web.middleware.request_id import RequestIdMiddleware
from core.web.middleware.security_headers import SecurityHeadersMiddleware, security_headers

__all__ = [
    "AccessLogMiddleware",
    "CSRFFailure",
    "CSRFMiddleware",
    "CSRFState",
    "ErrorsMiddleware",
    "HTTPMetrics",
    "LocaleMiddleware",
    "MetricsMiddleware",
    "RequestIdMiddleware",
    "SecurityHeadersMiddleware",
    "csrf_token",
    "route_template",
    "security_headers",
]
