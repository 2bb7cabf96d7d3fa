"""Assemble the identity provider's web app from the runtime (the idp role), with the admin API
mounted at ``/api/admin/v1`` (onegate.admin; bearer keys, so exempt from CSRF, errors in JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from idp.clients.services import ClientRegistry
    from idp.context import IdpContext
    from idp.logout import BackChannelLogout
    from onegate.client_updates import ClientCacheFollower
    from onegate.runtime import Runtime

__all__ = ["IdpApp", "build_idp_app", "default_issuer"]

# Signing in ends in a redirect to the relying party, and browsers apply the sign-in form's
# form-action to every redirect that follows it: allow https origins and local development.
FORM_ACTION = ("'self'", "https:", "http://localhost:*", "http://*.localhost:*", "http://127.0.0.1:*")


async def _home(_request: Request) -> Response:
    # The IdP's own front page is the user's account page (which asks to sign in first).
    return RedirectResponse("/account", status_code=303)


def default_issuer(port: int) -> str:
    return f"http://idp.localhost:{port}"


@dataclass(frozen=True)
class IdpApp:
    app: Starlette
    context: IdpContext
    clients: ClientRegistry
    backchannel: BackChannelLogout
    follower: ClientCacheFollower | None = field(default=None)

    async def start(self) -> None:
        if self.follower is not None:
            await self.follower.start()

    async def close(self) -> None:
        if self.follower is not None:
            await self.follower.stop()
        await self.backchannel.drain()


def build_idp_app(runtime: Runtime, *, issuer: str) -> IdpApp:
    # The IdP's modules (authlib, fido2, its pages, the admin API) are imported here, not with
    # this module: the gateway role imports default_issuer and must not keep them in memory.
    from starlette.routing import Mount, Route

    import idp.endpoints.routes as protocol
    import idp.pages.routes as pages
    from core.net import TrustedProxies
    from core.web import create_web_app
    from idp.clients.services import ClientRegistry
    from idp.consents import ConsentStore
    from idp.context import IdpContext
    from idp.endpoints.jwks import jwks_max_age
    from idp.logout import BackChannelLogout
    from idp.pages import LOCALE_DIR as PAGES_LOCALE
    from idp.pages import TEMPLATE_DIR as PAGES_TEMPLATES
    from idp.pending import PendingStore
    from idp.sessions import SessionStore
    from idp.tokens import TokenService
    from mfa.services import MfaServices
    from onegate.admin.api import PREFIX as ADMIN_PREFIX
    from onegate.admin.app import build_admin_api
    from onegate.bootstrap import CSRF_KEY_NAME
    from onegate.client_updates import ClientCacheFollower

    settings = runtime.settings
    kv, vault = runtime.kv, runtime.vault
    clients = ClientRegistry(runtime.sessions, vault.secrets, events=runtime.bus)
    consents = ConsentStore(runtime.sessions)
    tokens = TokenService(issuer=issuer, kv=kv, signing=vault.signing, settings=settings.idp)
    backchannel = BackChannelLogout(
        tokens=tokens, clients=clients, profiles=runtime.directory.profile, events=runtime.bus
    )
    ctx = IdpContext(
        settings=settings.idp,
        issuer=issuer.rstrip("/"),
        https=settings.server.https,
        kv=kv,
        db=runtime.sessions,
        sessions=SessionStore(
            kv,
            idle_timeout=settings.idp.session_idle_timeout,
            absolute_timeout=settings.idp.session_absolute_timeout,
        ),
        pending=PendingStore(kv),
        directory=runtime.directory,
        passwords=runtime.directory.hashing,
        signing=vault.signing,
        secrets=vault.secrets,
        events=runtime.bus,
        mfa=MfaServices.build(
            settings.mfa,
            issuer=issuer,
            db=runtime.sessions,
            kv=kv,
            envelope=vault.envelope,
            hasher=runtime.directory.hashing,
            events=runtime.bus,
        ),
        trusted_proxies=TrustedProxies(settings.server.trusted_proxies),
        session_listeners=(backchannel,),
    )
    # No gateway route may take the IdP's own host name.
    admin = build_admin_api(runtime, reserved_hosts=[h for h in [urlsplit(issuer).hostname] if h])
    app = create_web_app(
        name="idp",
        routes=[
            *protocol.routes(
                ctx, clients, consents, jwks_max_age=jwks_max_age(settings.keyvault.prepublish_seconds)
            ),
            *pages.routes(ctx, consents=consents),
            Route("/", _home, methods=["GET"]),
            Mount(ADMIN_PREFIX, app=admin),
        ],
        csrf_secret=vault.secrets.get_or_create(CSRF_KEY_NAME),
        readiness_checks={"database": runtime.check_database, "kv": runtime.check_kv},
        template_dirs=[PAGES_TEMPLATES, protocol.TEMPLATE_DIR],
        locale_dirs=[PAGES_LOCALE, protocol.LOCALE_DIR],
        default_locale=settings.web.default_locale,
        https=settings.server.https,
        form_action=FORM_ACTION,
        csrf_exempt_paths=protocol.CSRF_EXEMPT_PATHS,
        csrf_exempt_prefixes=(ADMIN_PREFIX + "/",),
        json_path_prefixes=(ADMIN_PREFIX + "/",),
    )
    follower = ClientCacheFollower(clients, kv)
    return IdpApp(app=app, context=ctx, clients=clients, backchannel=backchannel, follower=follower)
