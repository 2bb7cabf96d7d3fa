"""The sign-in page: ``GET /login`` shows the form, ``POST /login`` checks the password.

Optional ``?req=<id>`` names a pending authorization request (``idp.pending``): the page then
shows the client's name, pre-fills the username from ``login_hint`` and speaks the request's
``ui_locales`` (OIDC Core 1.0 §3.1.2.1), and a successful sign-in continues at
``/authorize/resume?req=<id>``. Without it (or when it has expired) the user lands on
``/account``. Those, ``/password`` and ``/mfa`` are the only places this page ever redirects to.

A user who has a second factor, or needs one (``idp.assurance.strongest`` of the pending
request's class and ``IdpContext.mfa_requirement``), gets no SSO session for the password alone:
a sign-in transaction (``idp.pages.transactions``) is kept instead and the browser goes to
``/mfa?req=<id>``. The page also offers a passkey sign-in without a password (the
``#passkey-signin`` button, ``idp.pages.passkey``).

No enumeration (OWASP Authentication Cheat Sheet, "Authentication and Error Messages"): an
unknown username, a wrong password, a disabled or locked account all get the same page —
same status (200, the form again: a 401 would owe a ``WWW-Authenticate`` challenge, RFC 9110
§15.5.2, that a form cannot meet), same text — after the same work (a password hash is
verified in every case, against a dummy hash for unknown users). Only the ``user-login``
event tells them apart, by its reason: ``unknown_user``, ``bad_password``, ``locked``,
``disabled``, ``throttled``. A throttled source address is the one exception: it gets a 429
with ``Retry-After`` before any password is checked (it reveals nothing about accounts).

A success replaces any session the browser had (ending it first, so back-channel logout
runs for it) with a new one under a new id and cookie (no session fixation, OWASP Session
Management Cheat Sheet, "Renew the Session ID After Any Privilege Level Change").
"""

from __future__ import annotations

from enum import StrEnum

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from core.web import N_, ErrorCode, HTTPProblem
from idp.assurance import strongest
from idp.context import IdpContext
from idp.directory.models import User, UserStatus
from idp.events import auth_event
from idp.guard import LoginGuard
from idp.pages import (
    ACR_PWD,
    AMR_PWD,
    adopt_ui_locales,
    event_ip,
    form_field,
    localized_name,
    page_url,
    pending_request,
    redirect,
    render,
)
from idp.pages.signin import next_url, start_session
from idp.pages.transactions import TransactionStore
from idp.pending import PendingAuthorization
from mfa.levels import satisfies

__all__ = ["FAILURE_MESSAGE", "LoginPage", "LoginReason"]

FAILURE_MESSAGE = N_(
    "Sign-in failed. Check your username and password; if they are right, the account may be "
    "unable to sign in for now. Contact the service desk if this persists."
)
_USERNAME_MAX = 64  # users.username is String(64): anything longer cannot exist

# Notices another page may ask for when it sends the browser here (a closed set: never echo).
NOTICES = {
    "signed-out": N_("You have signed out."),
    "signed-out-everywhere": N_("You have signed out on every device."),
    "mfa-expired": N_("The sign-in took too long or was already completed. Please sign in again."),
    "mfa-locked": N_(
        "Too many failed attempts: the account is locked for a while. Try again later or contact the "
        "service desk."
    ),
    "mfa-refused": FAILURE_MESSAGE,
}


class LoginReason(StrEnum):
    """``onegate.reason`` of a failed ``user-login`` event (never shown to the user)."""

    UNKNOWN_USER = "unknown_user"
    BAD_PASSWORD = "bad_password"  # noqa: S105 - a reason code, not a credential
    LOCKED = "locked"
    DISABLED = "disabled"
    THROTTLED = "throttled"
    BAD_PASSKEY = "bad_passkey"
    NO_USER_VERIFICATION = "no_user_verification"


class LoginPage:
    """``GET`` / ``POST /login`` (see the module docstring)."""

    def __init__(self, ctx: IdpContext, guard: LoginGuard, transactions: TransactionStore) -> None:
        self._ctx = ctx
        self._guard = guard
        self._transactions = transactions

    async def show(self, request: Request) -> Response:
        req, pending = await pending_request(self._ctx, request)
        adopt_ui_locales(request, pending.ui_locales if pending else None)
        if pending is None and await self._ctx.current_session(request, touch=False) is not None:
            return redirect(request, "/account")
        hint = (pending.login_hint or "")[:_USERNAME_MAX] if pending else ""
        notice = NOTICES.get(request.query_params.get("notice", ""))
        return self._form(request, req, pending, username=hint, notice=notice)

    async def submit(self, request: Request) -> Response:
        ctx = self._ctx
        req, pending = await pending_request(ctx, request)
        adopt_ui_locales(request, pending.ui_locales if pending else None)
        async with request.form() as form:
            username = form_field(form, "username").strip()
            password = form_field(form, "password")
        ip = ctx.client_ip(request)
        user_agent = request.headers.get("user-agent", "")

        source = await self._guard.begin_attempt(ip, username=username)
        if source.refused:
            self._failed(
                LoginReason.THROTTLED,
                username=username,
                user=None,
                ip=ip,
                user_agent=user_agent,
                pending=pending,
            )
            raise HTTPProblem(
                ErrorCode.RATE_LIMITED, reason="throttled", headers={"Retry-After": str(source.retry_after)}
            )

        user = await ctx.directory.get_user(username) if 0 < len(username) <= _USERNAME_MAX else None
        # Always one argon2 verify (a dummy hash for unknown users): equal work, no enumeration.
        # It runs in a worker thread, and re-hashes an outdated hash on success.
        verified = await ctx.directory.verify_password(user, password)

        reason: LoginReason | None = None
        if user is None:
            reason = LoginReason.UNKNOWN_USER
        elif user.status == UserStatus.DISABLED:
            reason = LoginReason.DISABLED
        elif user.status == UserStatus.LOCKED or self._guard.check_account(user).refused:
            reason = LoginReason.LOCKED
        elif not verified:
            reason = LoginReason.BAD_PASSWORD
        if user is None or reason is not None:
            reason = reason or LoginReason.UNKNOWN_USER
            self._failed(reason, username=username, user=user, ip=ip, user_agent=user_agent, pending=pending)
            # Only a wrong password counts towards the account's lockout (module docs of idp.guard).
            counted = user if reason is LoginReason.BAD_PASSWORD else None
            await self._guard.record_failure(ip=ip, user=counted)
            return self._form(request, req, pending, username=username[:_USERNAME_MAX], failed=True)

        await self._guard.record_success(ip=ip, user=user)
        valid_req = pending.id if pending is not None else None
        required = strongest(pending.acr if pending else None, await ctx.mfa_requirement(user))
        if (await ctx.mfa.factors(user.id)).any or not satisfies(ACR_PWD, required):
            # The password is not enough: a second factor is owed (or must be set up) first.
            _, value = await self._transactions.begin(
                user_id=user.id, methods=AMR_PWD, req=valid_req, ip=ip, user_agent=user_agent
            )
            response = redirect(request, "/mfa", req=valid_req)
            self._transactions.set_cookie(response, value)
            return response

        _, cookie = await start_session(ctx, request, user, amr=AMR_PWD, pending=pending)
        response = RedirectResponse(next_url(request, user, pending), status_code=303)
        ctx.set_session_cookie(response, cookie)
        return response

    def _form(
        self,
        request: Request,
        req: str | None,
        pending: PendingAuthorization | None,
        *,
        username: str,
        failed: bool = False,
        notice: str | None = None,
    ) -> Response:
        client_name = (
            localized_name(request, pending.client_name, pending.client_name_en) if pending else None
        )
        context = {
            "action": page_url(request, "/login", req=pending.id if pending else None),
            "client_name": client_name,
            "expired": req is not None and pending is None,
            "failed": failed,
            "failure_message": FAILURE_MESSAGE,
            "notice": notice,
            "username": username,
            "passkey_options": page_url(
                request, "/login/passkey/options", req=pending.id if pending else None
            ),
            "passkey_verify": page_url(request, "/login/passkey/verify", req=pending.id if pending else None),
        }
        return render(request, "login.html", context)

    def _failed(
        self,
        reason: LoginReason,
        *,
        username: str,
        user: User | None,
        ip: str,
        user_agent: str,
        pending: PendingAuthorization | None,
    ) -> None:
        self._ctx.events.emit(
            auth_event(
                "user-login",
                success=False,
                reason=reason.value,
                username=username[:_USERNAME_MAX] or None,
                user_id=user.id if user is not None else None,
                source_ip=event_ip(ip),
                client_id=pending.client_id if pending else None,
                user_agent=user_agent,
            )
        )
