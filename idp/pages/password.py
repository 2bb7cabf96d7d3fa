"""The password change page: ``GET`` / ``POST /password`` (signed-in users only).

The sign-in page sends users whose ``must_change_password`` is set here first (keeping the
pending authorization request's ``req``); anyone signed in may come by choice. The current
password is asked again (OWASP Authentication Cheat Sheet, "Require re-authentication for
sensitive features") and counts like a sign-in attempt for throttling and lockout, so a
stolen session cannot be used to guess it. The new password is entered twice and stored by
:meth:`Directory.set_password`, which applies the directory's
:class:`~idp.directory.policy.PasswordPolicy` (length, the bundled common-password list, not
built on the username, not the current one, ...); the reasons it refuses are shown translated.

On success: the new hash is stored, ``must_change_password`` cleared, ``password-changed``
emitted, and every *other* session of the user ended (whoever else knew the old password
is signed out; this browser stays signed in).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from core.web import N_, ErrorCode, HTTPProblem
from idp.context import IdpContext
from idp.directory.errors import PasswordRejected
from idp.directory.policy import REASON_MESSAGES
from idp.events import auth_event
from idp.guard import LoginGuard
from idp.pages import (
    SignedIn,
    adopt_ui_locales,
    event_ip,
    form_field,
    page_url,
    pending_request,
    redirect,
    render,
    signed_in,
)

__all__ = ["PasswordPage", "problems_of"]

WRONG_CURRENT = N_("The current password is not correct.")
MISMATCH = N_("The two new passwords do not match.")
REFUSED = N_("This password cannot be used; choose another one.")


def problems_of(rejected: PasswordRejected) -> list[str]:
    """The policy's reasons as English message ids for the page (placeholders: min/max length)."""
    return [REASON_MESSAGES.get(reason, REFUSED) for reason in rejected.reasons]


class PasswordPage:
    """``GET`` / ``POST /password`` (see the module docstring)."""

    def __init__(self, ctx: IdpContext, guard: LoginGuard) -> None:
        self._ctx = ctx
        self._guard = guard

    async def show(self, request: Request) -> Response:
        _req, pending = await pending_request(self._ctx, request)
        adopt_ui_locales(request, pending.ui_locales if pending else None)
        me = await signed_in(self._ctx, request)
        if me is None:
            return redirect(request, "/login", req=pending.id if pending else None)
        return self._form(request, me, pending.id if pending else None)

    async def submit(self, request: Request) -> Response:
        ctx = self._ctx
        _req, pending = await pending_request(ctx, request)
        adopt_ui_locales(request, pending.ui_locales if pending else None)
        me = await signed_in(ctx, request)
        valid_req = pending.id if pending else None
        if me is None:
            return redirect(request, "/login", req=valid_req)
        async with request.form() as form:
            current = form_field(form, "current_password")
            new = form_field(form, "new_password")
            confirm = form_field(form, "confirm_password")
        user, ip = me.user, ctx.client_ip(request)

        source = await self._guard.begin_attempt(ip, username=user.username)
        if source.refused:
            self._emit(me, ip, success=False, reason="throttled")
            raise HTTPProblem(
                ErrorCode.RATE_LIMITED, reason="throttled", headers={"Retry-After": str(source.retry_after)}
            )
        verified = await ctx.directory.verify_password(user, current)
        locked = self._guard.check_account(user).refused
        if locked or not verified:
            self._emit(me, ip, success=False, reason="locked" if locked else "bad_password")
            await self._guard.record_failure(ip=ip, user=None if locked else user)
            return self._form(request, me, valid_req, problems=[WRONG_CURRENT], status_code=400)
        await self._guard.record_success(ip=ip, user=user)

        if new != confirm:
            self._emit(me, ip, success=False, reason="mismatch")
            return self._form(request, me, valid_req, problems=[MISMATCH], status_code=400)
        try:
            await ctx.directory.set_password(user.id, new)
        except PasswordRejected as rejected:
            self._emit(me, ip, success=False, reason="policy", labels__policy=" ".join(rejected.reasons))
            return self._form(request, me, valid_req, problems=problems_of(rejected), status_code=400)

        for other in await ctx.sessions.list_for_user(user.id):
            if other.sid != me.session.sid:
                await ctx.end_session(other.sid, reason="password-changed", actor=user.username)
        self._emit(me, ip, success=True)
        if valid_req is not None:
            return redirect(request, "/authorize/resume", req=valid_req)
        return redirect(request, "/account", notice="password-changed")

    def _form(
        self,
        request: Request,
        me: SignedIn,
        req: str | None,
        *,
        problems: list[str] | None = None,
        status_code: int = 200,
    ) -> Response:
        context = {
            "action": page_url(request, "/password", req=req),
            "forced": me.user.must_change_password,
            "min_length": self._ctx.directory.policy.min_length,
            "max_length": self._ctx.directory.policy.max_length,
            "problems": problems or [],
            "username": me.user.username,
        }
        return render(request, "password.html", context, status_code=status_code)

    def _emit(
        self, me: SignedIn, ip: str, *, success: bool, reason: str | None = None, **labels: str
    ) -> None:
        self._ctx.events.emit(
            auth_event(
                "password-changed",
                success=success,
                reason=reason,
                username=me.user.username,
                user_id=me.user.id,
                source_ip=event_ip(ip),
                session_id=me.session.sid,
                **labels,
            )
        )
