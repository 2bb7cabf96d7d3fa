"""The pages' routes, for the assembly (``core.web.create_web_app(routes=...)``).

Every unsafe method is checked by the web core's CSRF middleware — form posts by their
``csrf_token`` field, the WebAuthn ``fetch`` calls by their ``X-CSRF-Token`` header; none of
these paths may be listed in ``csrf_exempt_paths``. Pass :data:`idp.pages.TEMPLATE_DIR` and
:data:`idp.pages.LOCALE_DIR` to the app factory too. The pages' own script and styles are
served from :data:`ASSETS_PATH` (``idp/pages/static``; same origin, as the CSP requires).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from idp.consents import ConsentStore
from idp.context import IdpContext
from idp.guard import LoginGuard
from idp.pages import STATIC_DIR
from idp.pages.account import AccountPage
from idp.pages.api import CeremonyCookie
from idp.pages.consent import ConsentPage
from idp.pages.enrolment import EnrolmentPage
from idp.pages.login import LoginPage
from idp.pages.mfa import SecondFactorPage
from idp.pages.passkey import PasskeySignIn
from idp.pages.password import PasswordPage
from idp.pages.security import SecurityPage
from idp.pages.subjects import Subjects
from idp.pages.transactions import TransactionStore

__all__ = ["ASSETS_PATH", "routes"]

ASSETS_PATH = "/assets/idp"

Endpoint = Callable[[Request], Awaitable[Response]]


def _get(path: str, endpoint: Endpoint, name: str) -> Route:
    return Route(path, endpoint, methods=["GET"], name=name)


def _post(path: str, endpoint: Endpoint, name: str) -> Route:
    return Route(path, endpoint, methods=["POST"], name=name)


def routes(
    ctx: IdpContext, *, consents: ConsentStore | None = None, guard: LoginGuard | None = None
) -> list[BaseRoute]:
    """``/login``, ``/mfa``, ``/consent``, ``/password``, ``/account`` and their forms and JSON
    endpoints, and the pages' static assets.

    ``consents`` / ``guard``: the assembly's own instances when it shares them with the
    protocol side; by default made from ``ctx`` (its database, KV store and clock).
    """
    guard = guard or LoginGuard.for_context(ctx)
    consents = consents or ConsentStore(ctx.db, clock=ctx.clock)
    transactions = TransactionStore(ctx.kv, https=ctx.https, clock=ctx.clock)
    ceremonies = CeremonyCookie(https=ctx.https, ttl=ctx.mfa.settings.webauthn_challenge_ttl)
    subjects = Subjects(ctx, guard, transactions)
    login = LoginPage(ctx, guard, transactions)
    passkey = PasskeySignIn(ctx, guard, ceremonies, transactions)
    second = SecondFactorPage(ctx, subjects, ceremonies)
    setup = EnrolmentPage(ctx, subjects, ceremonies)
    consent = ConsentPage(ctx, consents)
    password = PasswordPage(ctx, guard)
    account = AccountPage(ctx, consents)
    security = SecurityPage(ctx, subjects, ceremonies)

    return [
        _get("/login", login.show, "login"),
        _post("/login", login.submit, "login_submit"),
        _post("/login/passkey/options", passkey.options, "login_passkey_options"),
        _post("/login/passkey/verify", passkey.verify, "login_passkey_verify"),
        _get("/mfa", second.show, "mfa"),
        _post("/mfa/totp", second.totp, "mfa_totp"),
        _post("/mfa/recovery", second.recovery, "mfa_recovery"),
        _post("/mfa/webauthn/options", second.webauthn_options, "mfa_webauthn_options"),
        _post("/mfa/webauthn/verify", second.webauthn_verify, "mfa_webauthn_verify"),
        _post("/mfa/cancel", second.cancel, "mfa_cancel"),
        _get("/mfa/setup", setup.show, "mfa_setup"),
        _get("/mfa/setup/totp", setup.totp_start, "mfa_setup_totp"),
        _post("/mfa/setup/totp", setup.totp_confirm, "mfa_setup_totp_confirm"),
        _post("/mfa/setup/passkey/options", setup.passkey_options, "mfa_setup_passkey_options"),
        _post("/mfa/setup/passkey/verify", setup.passkey_verify, "mfa_setup_passkey_verify"),
        _get("/consent", consent.show, "consent"),
        _post("/consent", consent.submit, "consent_submit"),
        _get("/password", password.show, "password"),
        _post("/password", password.submit, "password_submit"),
        _get("/account", account.show, "account"),
        _post("/account/logout", account.logout, "account_logout"),
        _post("/account/sessions/end", account.end_other, "account_end_session"),
        _post("/account/logout-everywhere", account.logout_everywhere, "account_logout_everywhere"),
        _post("/account/consents/revoke", account.revoke_consent, "account_revoke_consent"),
        _get("/account/security", security.show, "account_security"),
        _get("/account/security/totp", security.totp_start, "account_security_totp"),
        _post("/account/security/totp", security.totp_confirm, "account_security_totp_confirm"),
        _post("/account/security/passkeys/options", security.passkey_options, "account_passkey_options"),
        _post("/account/security/passkeys/verify", security.passkey_verify, "account_passkey_verify"),
        _post("/account/security/rename", security.rename, "account_security_rename"),
        _post("/account/security/remove", security.remove, "account_security_remove"),
        _post("/account/security/recovery", security.regenerate, "account_security_recovery"),
        Mount(ASSETS_PATH, app=StaticFiles(directory=STATIC_DIR), name="idp_assets"),
    ]
