"""Self-service second factors: ``/account/security`` ("登录方式与安全").

A signed-in user lists their authenticator apps and passkeys (name, when added, last used),
adds, renames and removes them, and sees and regenerates their recovery codes. A user who
already has a second factor must have proved one in this session (class ``mfa`` or better,
``mfa.levels``), within the last ``mfa.reauth_max_age`` seconds (15 minutes by default), before
anything here is shown or changed — a stolen password, a session left open after a password-only
sign-in or a browser left signed in for hours must not be enough to swap the factors; otherwise
the page sends them through ``/mfa?then=security`` first (a step-up in place, which renews
``auth_time``).

Forms (``POST``, CSRF token): ``/account/security/totp`` (confirm a new app, after ``GET`` of the
same path showed its QR code), ``/account/security/rename`` (``factor``, ``name``),
``/account/security/remove`` (``factor``), ``/account/security/recovery`` (a new set of codes,
shown once; the old set stops working). JSON: ``/account/security/passkeys/options`` and
``/verify`` (WebAuthn L3 §7.1). ``factor`` is ``totp:<id>`` or ``webauthn:<id>``, always looked up
among the user's own factors.

Removing the last factor while a second factor is required of the user (``mfa.required``, a
group, an administrator's request) is refused (``mfa-removed`` failure, reason ``last_factor``).
When a user who needs none removes their last factor, their recovery codes go too: they would
have nothing left to recover. The first factor added here upgrades the session in place, like a
sign-in with it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from core.web import N_, ErrorCode
from idp.context import IdpContext
from idp.pages import SignedIn, form_field, page_url, problem, redirect, render, signed_in
from idp.pages.account import DISPLAY_TZ
from idp.pages.api import ApiReason, CeremonyCookie, json_failure, json_success
from idp.pages.factors import (
    DEFAULT_PASSKEY_NAME,
    DEFAULT_TOTP_NAME,
    FactorRef,
    clean_name,
    finish_registration,
    new_recovery_codes,
    recovery_codes_page,
    registration_options,
    totp_failure_page,
    totp_page,
)
from idp.pages.signin import THEN_SECURITY
from idp.pages.subjects import Subjects, stale
from mfa.events import mfa_event
from mfa.levels import ACR_MFA, AMR_OTP, satisfies
from mfa.services import Factors

__all__ = ["NOTICES", "SecurityPage"]

NOTICES = {
    "totp-added": N_("The authenticator app has been added."),
    "passkey-added": N_("The passkey has been added."),
    "renamed": N_("The name has been changed."),
    "removed": N_("The sign-in method has been removed."),
}
LAST_FACTOR = N_(
    "This is your last second factor and your organisation requires one: add another authenticator "
    "app or passkey before you remove it."
)
NO_FACTOR = N_("Set up an authenticator app or a passkey first.")
UNKNOWN_FACTOR = N_("That sign-in method was not found in your account.")


def _when(moment: datetime | None) -> dict[str, str] | None:
    if moment is None:
        return None
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # SQLite reads back naive UTC
    return {
        "iso": aware.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "shown": aware.astimezone(DISPLAY_TZ).strftime("%Y-%m-%d %H:%M"),
    }


class SecurityPage:
    """``/account/security`` and its forms (see the module docstring)."""

    def __init__(self, ctx: IdpContext, subjects: Subjects, ceremonies: CeremonyCookie) -> None:
        self._ctx = ctx
        self._subjects = subjects
        self._ceremonies = ceremonies

    async def _gate(self, request: Request, *, json: bool = False) -> tuple[SignedIn, Factors] | Response:
        me = await signed_in(self._ctx, request)
        if me is None:
            if json:
                return json_failure(request, ApiReason.SIGN_IN_EXPIRED, status_code=401)
            return redirect(request, "/login")
        if me.user.must_change_password and not json:
            return redirect(request, "/password")
        factors = await self._ctx.mfa.factors(me.user.id)
        if factors.any and (not satisfies(me.session.acr, ACR_MFA) or stale(self._ctx, me.session)):
            if json:
                return json_failure(request, ApiReason.STEP_UP_REQUIRED, status_code=403)
            return redirect(request, "/mfa", then=THEN_SECURITY)
        return me, factors

    # -- the page ------------------------------------------------------------------------------

    async def show(self, request: Request) -> Response:
        gate = await self._gate(request)
        if isinstance(gate, Response):
            return gate
        me, factors = gate
        return await self._page(
            request, me, factors, notice=NOTICES.get(request.query_params.get("notice", ""))
        )

    async def _page(
        self,
        request: Request,
        me: SignedIn,
        factors: Factors,
        *,
        notice: str | None = None,
        error: str | None = None,
        status_code: int = 200,
    ) -> Response:
        mfa = self._ctx.mfa
        user_id = me.user.id
        apps = [
            {
                "ref": str(FactorRef("totp", app.id)),
                "name": app.name,
                "created": _when(app.created_at),
                "last_used": _when(app.last_used_at),
                "synced": False,
            }
            for app in await mfa.totp.list(user_id)
        ]
        passkeys = [
            {
                "ref": str(FactorRef("webauthn", key.id)),
                "name": key.name,
                "created": _when(key.created_at),
                "last_used": _when(key.last_used_at),
                "synced": key.backup_eligible,
            }
            for key in await mfa.webauthn.list(user_id)
        ]
        context: dict[str, Any] = {
            "apps": apps,
            "passkeys": passkeys,
            "recovery_left": factors.recovery_left,
            "has_factor": factors.any,
            "required": await self._ctx.mfa_requirement(me.user) is not None,
            "notice": notice,
            "error": error,
            "totp_url": page_url(request, "/account/security/totp"),
            "passkey_options": page_url(request, "/account/security/passkeys/options"),
            "passkey_verify": page_url(request, "/account/security/passkeys/verify"),
        }
        return render(request, "security.html", context, status_code=status_code)

    # -- authenticator app ---------------------------------------------------------------------

    async def totp_start(self, request: Request) -> Response:
        gate = await self._gate(request)
        if isinstance(gate, Response):
            return gate
        me, _ = gate
        enrolment = await self._ctx.mfa.totp.begin_enrolment(me.user.id, me.user.username)
        here = page_url(request, "/account/security/totp")
        return totp_page(
            request,
            uri=enrolment.provisioning_uri,
            secret=enrolment.secret_base32,
            action=here,
            restart_url=here,
            cancel_url=page_url(request, "/account/security"),
        )

    async def totp_confirm(self, request: Request) -> Response:
        async with request.form() as form:
            code = form_field(form, "code")
            raw_name = form_field(form, "name")
        gate = await self._gate(request)
        if isinstance(gate, Response):
            return gate
        me, factors = gate
        ctx = self._ctx
        name = clean_name(request, raw_name, DEFAULT_TOTP_NAME)
        here = page_url(request, "/account/security/totp")
        if not await ctx.mfa.totp.confirm_enrolment(me.user.id, code, name=name):
            return await totp_failure_page(
                ctx,
                request,
                me.user,
                action=here,
                restart_url=here,
                cancel_url=page_url(request, "/account/security"),
                name=raw_name,
            )
        return await self._added(request, me, factors, (AMR_OTP,), "totp-added")

    # -- passkeys ------------------------------------------------------------------------------

    async def passkey_options(self, request: Request) -> Response:
        gate = await self._gate(request, json=True)
        if isinstance(gate, Response):
            return gate
        me, _ = gate
        return await registration_options(self._ctx, request, me.user, self._ceremonies)

    async def passkey_verify(self, request: Request) -> Response:
        gate = await self._gate(request, json=True)
        if isinstance(gate, Response):
            return gate
        me, factors = gate
        result = await finish_registration(self._ctx, request, me.user, self._ceremonies)
        if isinstance(result, Response):
            return result
        page = await self._added(request, me, factors, result.amr, "passkey-added", json=True)
        self._ceremonies.clear(page)
        return page

    async def _added(
        self,
        request: Request,
        me: SignedIn,
        before: Factors,
        methods: tuple[str, ...],
        notice: str,
        *,
        json: bool = False,
    ) -> Response:
        """A factor was added: the first one upgrades the session and brings recovery codes."""
        ctx = self._ctx
        cookie: str | None = None
        if not before.any:
            await self._subjects.enrolment_met(me.user)
            # Proving the new factor is a second factor for this session: step it up in place.
            upgraded = await self._subjects.step_up(request, me.user, me.session, methods)
            cookie = upgraded[1] if upgraded is not None else None
        codes = await new_recovery_codes(ctx, me.user.id)
        back = page_url(request, "/account/security", notice=notice)
        response: Response
        if json:
            response = json_success({"next": back, "recovery_codes": codes or []})
        elif codes:
            response = recovery_codes_page(
                request,
                codes=codes,
                remaining=len(codes),
                continue_url=page_url(request, "/account/security"),
                added="totp" if notice == "totp-added" else "passkey",
            )
        else:
            response = RedirectResponse(back, status_code=303)
        if cookie is not None:
            ctx.set_session_cookie(response, cookie)
        return response

    # -- rename, remove ------------------------------------------------------------------------

    async def rename(self, request: Request) -> Response:
        async with request.form() as form:
            ref = FactorRef.parse(form_field(form, "factor"))
            raw_name = form_field(form, "name")
        gate = await self._gate(request)
        if isinstance(gate, Response):
            return gate
        me, _ = gate
        mfa = self._ctx.mfa
        renamed = False
        if ref is not None and ref.kind == "totp":
            renamed = await mfa.totp.rename(
                me.user.id, ref.id, clean_name(request, raw_name, DEFAULT_TOTP_NAME)
            )
        elif ref is not None:
            name = clean_name(request, raw_name, DEFAULT_PASSKEY_NAME)
            renamed = await mfa.webauthn.rename(me.user.id, ref.id, name)
        if not renamed:
            raise problem(request, ErrorCode.NOT_FOUND, reason="unknown_factor", message=UNKNOWN_FACTOR)
        return redirect(request, "/account/security", notice="renamed")

    async def remove(self, request: Request) -> Response:
        async with request.form() as form:
            ref = FactorRef.parse(form_field(form, "factor"))
        gate = await self._gate(request)
        if isinstance(gate, Response):
            return gate
        me, factors = gate
        ctx = self._ctx
        user_id = me.user.id
        mine = {str(FactorRef("totp", app.id)) for app in await ctx.mfa.totp.list(user_id)}
        mine |= {str(FactorRef("webauthn", key.id)) for key in await ctx.mfa.webauthn.list(user_id)}
        if ref is None or str(ref) not in mine:
            raise problem(request, ErrorCode.NOT_FOUND, reason="unknown_factor", message=UNKNOWN_FACTOR)
        if factors.count <= 1 and await ctx.mfa_requirement(me.user) is not None:
            ctx.events.emit(
                mfa_event(
                    "mfa-removed",
                    success=False,
                    user_id=user_id,
                    method=ref.kind,
                    reason="last_factor",
                    credential_id=ref.id,
                )
            )
            return await self._page(request, me, factors, error=LAST_FACTOR, status_code=409)
        if ref.kind == "totp":
            removed = await ctx.mfa.totp.remove(user_id, ref.id)
        else:
            removed = await ctx.mfa.webauthn.remove(user_id, ref.id)
        if removed and not (await ctx.mfa.factors(user_id)).any:
            await ctx.mfa.recovery.remove_all(user_id)
        return redirect(request, "/account/security", notice="removed")

    # -- recovery codes ------------------------------------------------------------------------

    async def regenerate(self, request: Request) -> Response:
        gate = await self._gate(request)
        if isinstance(gate, Response):
            return gate
        me, factors = gate
        if not factors.any:
            return await self._page(request, me, factors, error=NO_FACTOR, status_code=400)
        codes = await self._ctx.mfa.recovery.generate(me.user.id)
        return recovery_codes_page(
            request,
            codes=codes,
            remaining=len(codes),
            continue_url=page_url(request, "/account/security"),
        )
