"""The protocol side's routes, for the idp role app (``core.web.create_web_app``).

Assembly::

    from idp.endpoints.routes import CSRF_EXEMPT_PATHS, LOCALE_DIR, TEMPLATE_DIR, routes

    app = create_web_app(
        name="idp",
        routes=[*routes(ctx, clients, consents, jwks_max_age=jwks_max_age(prepublish)), *pages],
        template_dirs=[TEMPLATE_DIR, ...], locale_dirs=[LOCALE_DIR, ...],
        csrf_exempt_paths=CSRF_EXEMPT_PATHS, ...)

``CSRF_EXEMPT_PATHS`` are the endpoints that no browser cookie authorizes: the back-channel
ones (clients authenticate, or present a bearer token), ``/authorize`` (a relying party may
POST the request cross-site, OIDC Core §3.1.2.1) and ``/logout`` (likewise, RP-Initiated
Logout §2; it never ends a session on a cookie alone — see :mod:`idp.logout`). The logout
confirmation form (``/logout/confirm``) is *not* exempt.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from idp.clients.services import ClientRegistry
from idp.consents import ConsentStore
from idp.context import IdpContext
from idp.endpoints import LOCALE_DIR, TEMPLATE_DIR
from idp.endpoints.authorize import authorize_endpoint, resume_endpoint
from idp.endpoints.discovery import discovery_endpoint
from idp.endpoints.introspection import introspection_endpoint
from idp.endpoints.jwks import jwks_endpoint
from idp.endpoints.par import par_endpoint
from idp.endpoints.revocation import revocation_endpoint
from idp.endpoints.token import token_endpoint
from idp.endpoints.userinfo import userinfo_endpoint
from idp.logout import confirm_endpoint, logout_endpoint
from idp.server import Provider

__all__ = ["CSRF_EXEMPT_PATHS", "LOCALE_DIR", "TEMPLATE_DIR", "provider_routes", "routes"]

CSRF_EXEMPT_PATHS = frozenset(
    {"/token", "/revoke", "/introspect", "/par", "/userinfo", "/authorize", "/logout"}
)


def provider_routes(provider: Provider) -> list[BaseRoute]:
    """The protocol endpoints of ``provider``."""
    return [
        Route("/.well-known/openid-configuration", discovery_endpoint(provider), methods=["GET"]),
        Route("/jwks.json", jwks_endpoint(provider), methods=["GET"]),
        Route("/authorize", authorize_endpoint(provider), methods=["GET", "POST"]),
        Route("/authorize/resume", resume_endpoint(provider), methods=["GET"]),
        Route("/token", token_endpoint(provider), methods=["POST"]),
        Route("/userinfo", userinfo_endpoint(provider), methods=["GET", "POST"]),
        Route("/revoke", revocation_endpoint(provider), methods=["POST"]),
        Route("/introspect", introspection_endpoint(provider), methods=["POST"]),
        Route("/par", par_endpoint(provider), methods=["POST"]),
        Route("/logout", logout_endpoint(provider), methods=["GET", "POST"]),
        Route("/logout/confirm", confirm_endpoint(provider), methods=["POST"]),
    ]


def routes(
    ctx: IdpContext, clients: ClientRegistry, consents: ConsentStore, *, jwks_max_age: int = 300
) -> list[BaseRoute]:
    """The protocol endpoints, built on ``ctx`` (see the module docstring)."""
    return provider_routes(Provider.create(ctx, clients, consents, jwks_max_age=jwks_max_age))
