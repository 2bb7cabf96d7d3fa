"""The pages' routes, for the assembly (``core.web.create_web_app(routes=...)``).

Every unsafe method is a form post checked by the web core's CSRF middleware; none of these
paths may be listed in ``csrf_exempt_paths``. Pass :data:`idp.pages.TEMPLATE_DIR` and
:data:`idp.pages.LOCALE_DIR` to the app factory too.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from idp.consents import ConsentStore
from idp.context import IdpContext
from idp.guard import LoginGuard
from idp.pages.account import AccountPage
from idp.pages.consent import ConsentPage
from idp.pages.login import LoginPage
from idp.pages.password import PasswordPage

__all__ = ["routes"]


def routes(
    ctx: IdpContext, *, consents: ConsentStore | None = None, guard: LoginGuard | None = None
) -> list[BaseRoute]:
    """``/login``, ``/consent``, ``/password``, ``/account`` and the account page's forms.

    ``consents`` / ``guard``: the assembly's own instances when it shares them with the
    protocol side; by default made from ``ctx`` (its database, KV store and clock).
    """
    guard = guard or LoginGuard.for_context(ctx)
    consents = consents or ConsentStore(ctx.db, clock=ctx.clock)
    login = LoginPage(ctx, guard)
    consent = ConsentPage(ctx, consents)
    password = PasswordPage(ctx, guard)
    account = AccountPage(ctx, consents)
    return [
        Route("/login", login.show, methods=["GET"], name="login"),
        Route("/login", login.submit, methods=["POST"], name="login_submit"),
        Route("/consent", consent.show, methods=["GET"], name="consent"),
        Route("/consent", consent.submit, methods=["POST"], name="consent_submit"),
        Route("/password", password.show, methods=["GET"], name="password"),
        Route("/password", password.submit, methods=["POST"], name="password_submit"),
        Route("/account", account.show, methods=["GET"], name="account"),
        Route("/account/logout", account.logout, methods=["POST"], name="account_logout"),
        Route("/account/sessions/end", account.end_other, methods=["POST"], name="account_end_session"),
        Route(
            "/account/logout-everywhere",
            account.logout_everywhere,
            methods=["POST"],
            name="account_logout_everywhere",
        ),
        Route(
            "/account/consents/revoke",
            account.revoke_consent,
            methods=["POST"],
            name="account_revoke_consent",
        ),
    ]
