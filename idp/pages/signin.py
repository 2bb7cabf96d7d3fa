"""What every completed sign-in does, whichever way it came: password alone, password and a
second factor, or a passkey without a password.

A completed sign-in replaces any session the browser had (ending it first, so back-channel
logout runs for it) with a new one under a new id and cookie (no session fixation, OWASP Session
Management Cheat Sheet, "Renew the Session ID After Any Privilege Level Change"); its ``amr`` is
what was really proved (RFC 8176 §2, merged by ``mfa.levels.combine``) and its ``acr`` the class
that reaches (``mfa.levels.acr_for``). The ``user-login`` success event carries both
(``onegate.amr``, ``onegate.acr``). Where the browser goes next is decided here too, only ever
to our own fixed paths.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.requests import Request

from idp.context import IdpContext
from idp.directory.models import User
from idp.events import auth_event
from idp.pages import event_ip, page_url
from idp.pending import PendingAuthorization
from idp.sessions import SSOSession
from mfa.levels import acr_for, combine

__all__ = ["THEN_SECURITY", "next_url", "start_session"]

# Where /mfa returns to when it was not asked by an authorization request (a closed set: the
# query value is compared, never echoed into a URL).
THEN_SECURITY = "security"


async def start_session(
    ctx: IdpContext,
    request: Request,
    user: User,
    *,
    amr: Iterable[str],
    pending: PendingAuthorization | None,
) -> tuple[SSOSession, str]:
    """Record the sign-in, replace the browser's session with a new one, emit ``user-login``.

    Returns the new session and its cookie value (the caller sets the cookie)."""
    ip = ctx.client_ip(request)
    user_agent = request.headers.get("user-agent", "")
    methods = combine(amr)
    await ctx.directory.record_login(user.id)
    previous = await ctx.current_session(request, touch=False)
    if previous is not None:
        await ctx.end_session(previous.sid, reason="replaced")
    session, cookie = await ctx.sessions.create(
        user_id=user.id,
        username=user.username,
        amr=methods,
        acr=acr_for(methods),
        ip=ip,
        user_agent=user_agent,
    )
    ctx.events.emit(
        auth_event(
            "user-login",
            success=True,
            username=user.username,
            user_id=user.id,
            source_ip=event_ip(ip),
            client_id=pending.client_id if pending else None,
            session_id=session.sid,
            user_agent=user_agent,
            onegate__amr=list(session.amr),
            onegate__acr=session.acr,
        )
    )
    return session, cookie


def next_url(
    request: Request, user: User, pending: PendingAuthorization | None, *, then: str | None = None
) -> str:
    """Where a signed-in (or stepped-up) browser goes on: ``/password`` while a one-time password
    must be replaced, the pending authorization request, the security page, or ``/account``."""
    req = pending.id if pending is not None else None
    if user.must_change_password:
        return page_url(request, "/password", req=req)
    if req is not None:
        return page_url(request, "/authorize/resume", req=req)
    if then == THEN_SECURITY:
        return page_url(request, "/account/security")
    return page_url(request, "/account")
