"""OneGate's shared web core: the app factory every role's Starlette app is built from.

Typical use in a role::

    from core.web import ErrorCode, HTTPProblem, create_web_app

    app = create_web_app(name="idp", routes=routes, csrf_secret=secret,
                         template_dirs=[IDP_TEMPLATES], readiness_checks={"db": db.ping})

See ``core.web.app`` for the middleware stack, ``core.web.templating`` for rendering pages,
``core.web.errors`` for user-facing errors and ``core.web.middleware.csrf`` for forms.
"""

from core.web.app import STATIC_DIR, create_web_app
from core.web.errors import ErrorCode, HTTPProblem, ProblemRenderer, wants_html
from core.web.health import ReadinessCheck, run_readiness_checks
from core.web.i18n import N_, Catalogs, html_lang, negotiate_locale, parse_accept_language
from core.web.middleware.csrf import CSRFFailure, csrf_token
from core.web.templating import CORE_TEMPLATE_DIR, Templates

__all__ = [
    "CORE_TEMPLATE_DIR",
    "N_",
    "STATIC_DIR",
    "CSRFFailure",
    "Catalogs",
    "ErrorCode",
    "HTTPProblem",
    "ProblemRenderer",
    "ReadinessCheck",
    "Templates",
    "create_web_app",
    "csrf_token",
    "html_lang",
    "negotiate_locale",
    "parse_accept_language",
    "run_readiness_checks",
    "wants_html",
]
