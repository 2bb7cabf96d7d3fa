"""The account page: who I am, where I am signed in, which applications I allowed.

``GET /account`` (signed-in users only, else to ``/login``) shows the user's name,
department and groups; "my sessions" — device (browser and system, read simply from the
User-Agent), address, sign-in time, last activity, this one marked; and the applications
the user consented to. Every change is a ``POST`` form carrying the CSRF token:

* ``/account/logout`` — sign out this session;
* ``/account/sessions/end`` (``sid``) — sign out one of *my* other sessions: a ``sid`` that
  is not the user's own is answered exactly like one that does not exist (404), so the page
  is no oracle for other people's session ids;
* ``/account/logout-everywhere`` — every session of the user, this one included;
* ``/account/consents/revoke`` (``client``) — withdraw a consent (``consent-revoked``).

Sessions end through :meth:`IdpContext.end_session` / ``end_user_sessions``, so back-channel
logout (OIDC Back-Channel Logout 1.0) and the other session listeners run for each.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import Response

from core.web import N_, ErrorCode, HTTPProblem
from idp.consents import ConsentStore
from idp.context import IdpContext
from idp.directory.models import Department
from idp.events import auth_event
from idp.pages import SignedIn, event_ip, form_field, localized_name, redirect, render, signed_in
from idp.sessions import SSOSession

__all__ = ["NOTICES", "AccountPage", "describe_device"]

# Shown times are China Standard Time (UTC+8, no daylight saving): the one time zone of
# the government that runs OneGate. The machine-readable <time datetime> stays in UTC.
DISPLAY_TZ = timezone(timedelta(hours=8), "CST")

# Notices a redirect back here may ask for (a closed set: the query value is never echoed).
NOTICES = {
    "session-ended": N_("The session has been signed out."),
    "consent-revoked": N_("The application's access has been withdrawn."),
    "password-changed": N_("Your password has been changed. Your other sessions were signed out."),
}

# (token in the User-Agent, name): first match wins, so more specific tokens come first
# (Edge and Opera also say "Chrome", Chrome also says "Safari", iOS also says "Mac OS X").
_BROWSERS = (
    ("MicroMessenger/", N_("WeChat")),
    ("Edg/", "Edge"),
    ("EdgA/", "Edge"),
    ("OPR/", "Opera"),
    ("Firefox/", "Firefox"),
    ("FxiOS/", "Firefox"),
    ("CriOS/", "Chrome"),
    ("Chromium/", "Chromium"),
    ("Chrome/", "Chrome"),
    ("Safari/", "Safari"),
    ("curl/", "curl"),
)
_SYSTEMS = (
    ("iPhone", "iOS"),
    ("iPad", "iPadOS"),
    ("Android", "Android"),
    ("HarmonyOS", "HarmonyOS"),
    ("CrOS", "ChromeOS"),
    ("Windows", "Windows"),
    ("Macintosh", "macOS"),
    ("Mac OS X", "macOS"),
    ("Linux", "Linux"),
)


def describe_device(user_agent: str) -> tuple[str | None, str | None]:
    """(browser, operating system) read from a User-Agent string, None where not recognised.

    Deliberately simple: the user only needs to tell "my phone" from "the office PC".
    """
    browser = next((name for token, name in _BROWSERS if token in user_agent), None)
    system = next((name for token, name in _SYSTEMS if token in user_agent), None)
    return browser, system


def _time(epoch: float) -> dict[str, str]:
    moment = datetime.fromtimestamp(epoch, UTC)
    return {
        "iso": moment.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "shown": moment.astimezone(DISPLAY_TZ).strftime("%Y-%m-%d %H:%M"),
    }


def _session_row(session: SSOSession, current: SSOSession) -> dict[str, object]:
    browser, system = describe_device(session.user_agent)
    return {
        "sid": session.sid,
        "browser": browser,
        "system": system,
        "ip": session.ip,
        "signed_in": _time(session.auth_time),
        "last_seen": _time(session.last_seen),
        "current": session.sid == current.sid,
    }


class AccountPage:
    """``/account`` and its forms (see the module docstring)."""

    def __init__(self, ctx: IdpContext, consents: ConsentStore) -> None:
        self._ctx = ctx
        self._consents = consents

    async def show(self, request: Request) -> Response:
        ctx = self._ctx
        me = await signed_in(ctx, request)
        if me is None:
            return redirect(request, "/login")
        if me.user.must_change_password:
            return redirect(request, "/password")
        user = me.user
        department = await self._department(request, user.department_id)
        sessions = await ctx.sessions.list_for_user(user.id)
        consents = [
            {
                "client_pk": consent.client_pk,
                "name": localized_name(request, consent.client_name, consent.client_name_en),
                "scopes": sorted(consent.scopes),
                "granted_at": _time(consent.granted_at.timestamp()),
            }
            for consent in await self._consents.list_for_user(user.id)
        ]
        context = {
            "display_name": user.display_name,
            "username": user.username,
            "email": user.email,
            "department": department,
            "groups": await ctx.directory.groups_of(user.username),
            "sessions": [_session_row(session, me.session) for session in sessions],
            "consents": consents,
            "notice": NOTICES.get(request.query_params.get("notice", "")),
        }
        return render(request, "account.html", context)

    async def logout(self, request: Request) -> Response:
        """Sign out this session."""
        me = await signed_in(self._ctx, request)
        if me is not None:
            await self._ctx.end_session(me.session.sid, reason="logout", actor=me.user.username)
            self._emit_logout(request, me, scope="session")
        response = redirect(request, "/login", notice="signed-out")
        self._ctx.clear_session_cookie(response)
        return response

    async def end_other(self, request: Request) -> Response:
        """Sign out one of the user's own sessions, by its public id."""
        me = await signed_in(self._ctx, request)
        if me is None:
            return redirect(request, "/login")
        async with request.form() as form:
            sid = form_field(form, "sid")
        target = await self._ctx.sessions.get(sid, touch=False) if sid else None
        # Not mine and not there look the same: no oracle for other people's session ids.
        if target is None or target.user_id != me.user.id:
            raise HTTPProblem(ErrorCode.NOT_FOUND, reason="unknown_session")
        if target.sid == me.session.sid:
            return await self.logout(request)
        await self._ctx.end_session(target.sid, reason="revoked", actor=me.user.username)
        return redirect(request, "/account", notice="session-ended")

    async def logout_everywhere(self, request: Request) -> Response:
        """Sign out every session of the user, this one included."""
        me = await signed_in(self._ctx, request)
        if me is not None:
            await self._ctx.end_user_sessions(me.user.id, reason="everywhere", actor=me.user.username)
            self._emit_logout(request, me, scope="everywhere")
        response = redirect(request, "/login", notice="signed-out-everywhere")
        self._ctx.clear_session_cookie(response)
        return response

    async def revoke_consent(self, request: Request) -> Response:
        """Withdraw the consent given to one client (only ever the user's own: keyed by user)."""
        me = await signed_in(self._ctx, request)
        if me is None:
            return redirect(request, "/login")
        async with request.form() as form:
            client = form_field(form, "client")
        mine = {consent.client_pk: consent for consent in await self._consents.list_for_user(me.user.id)}
        consent = mine.get(int(client)) if client.isdigit() else None
        if consent is None:
            raise HTTPProblem(ErrorCode.NOT_FOUND, reason="unknown_consent")
        await self._consents.revoke(me.user.id, consent.client_pk)
        self._ctx.events.emit(
            auth_event(
                "consent-revoked",
                success=True,
                username=me.user.username,
                user_id=me.user.id,
                source_ip=event_ip(self._ctx.client_ip(request)),
                client_id=consent.client_id,
                session_id=me.session.sid,
            )
        )
        return redirect(request, "/account", notice="consent-revoked")

    def _emit_logout(self, request: Request, me: SignedIn, *, scope: str) -> None:
        self._ctx.events.emit(
            auth_event(
                "user-logout",
                success=True,
                reason=scope,
                username=me.user.username,
                user_id=me.user.id,
                source_ip=event_ip(self._ctx.client_ip(request)),
                session_id=me.session.sid,
            )
        )

    async def _department(self, request: Request, department_id: int | None) -> str | None:
        if department_id is None:
            return None
        async with self._ctx.db() as s:
            row = (
                await s.execute(
                    select(Department.name, Department.name_en).where(Department.id == department_id)
                )
            ).one_or_none()
        return None if row is None else localized_name(request, row.name, row.name_en)
