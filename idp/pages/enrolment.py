"""Setting up a second factor during sign-in: ``/mfa/setup``.

``/mfa`` sends a user here when nothing they have can be used: no factor at all while one is
required (forced enrolment: MFA required for everyone, by a group, by the client, or asked of
this user by an administrator), or a phishing-resistant sign-in (``urn:onegate:acr:phr``) by a
user without a passkey, after they proved a code. A password alone never adds a factor to an
account that already has one (``Subjects.may_enrol``).

* ``GET /mfa/setup`` — choose: an authenticator app (not for ``phr``) or a passkey;
* ``GET /mfa/setup/totp`` — a fresh key as QR code and text; ``POST /mfa/setup/totp`` (``code``,
  ``name``) binds it only when the code is right (RFC 6238);
* ``POST /mfa/setup/passkey/options`` / ``verify`` (JSON) — register a passkey (WebAuthn L3 §7.1).

The factor just set up is the sign-in's second factor (its code, or the registration's ``amr``):
the administrator's request (``users.mfa_enrol_required``) is cleared, the sign-in goes on
(``Subjects.advance``), and a first set of recovery codes is shown once when the user has none.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from idp.context import IdpContext
from idp.pages import adopt_ui_locales, form_field, localized_name, render
from idp.pages.api import ApiReason, CeremonyCookie, json_failure, json_success
from idp.pages.factors import (
    DEFAULT_TOTP_NAME,
    clean_name,
    finish_registration,
    new_recovery_codes,
    recovery_codes_page,
    registration_options,
    totp_failure_page,
    totp_page,
)
from idp.pages.signin import next_url
from idp.pages.subjects import Subject, Subjects
from mfa.levels import ACR_PHR, AMR_OTP, satisfies
from mfa.services import Factors

__all__ = ["EnrolmentPage"]


class EnrolmentPage:
    """``/mfa/setup`` and its steps (see the module docstring)."""

    def __init__(self, ctx: IdpContext, subjects: Subjects, ceremonies: CeremonyCookie) -> None:
        self._ctx = ctx
        self._subjects = subjects
        self._ceremonies = ceremonies

    async def _gate(self, request: Request) -> tuple[Subject, Factors, str | None] | Response:
        """The subject when it may set up a factor here, else where the browser goes instead."""
        subjects = self._subjects
        subject = await subjects.find(request)
        if subject is None:
            step = subjects.expired(request, None)
            return step.apply(RedirectResponse(step.next_url, status_code=303))
        adopt_ui_locales(request, subject.pending.ui_locales if subject.pending else None)
        admission = await subjects.admit(request, subject, attempt=False)
        if not admission.allowed:
            return await subjects.refuse(request, subject, admission, json=False)
        factors = await subjects.factors(subject)
        target = await subjects.target(subject, factors)
        if not subjects.may_enrol(subject, factors):
            return RedirectResponse(subject.url(request, "/mfa"), status_code=303)
        if subject.transaction is None and satisfies(subject.acr, target):
            # A session that needs nothing more manages its factors on the security page.
            url = next_url(request, subject.user, subject.pending, then=subject.then)
            return RedirectResponse(url, status_code=303)
        return subject, factors, target

    async def show(self, request: Request) -> Response:
        gate = await self._gate(request)
        if isinstance(gate, Response):
            return gate
        subject, factors, target = gate
        pending = subject.pending
        context = {
            "client_name": (
                localized_name(request, pending.client_name, pending.client_name_en) if pending else None
            ),
            "phishing_resistant": target == ACR_PHR,
            "first_factor": not factors.any,
            "totp_url": subject.url(request, "/mfa/setup/totp"),
            "passkey_options": subject.url(request, "/mfa/setup/passkey/options"),
            "passkey_verify": subject.url(request, "/mfa/setup/passkey/verify"),
            "cancel_action": subject.url(request, "/mfa/cancel") if subject.transaction else None,
        }
        return render(request, "setup.html", context)

    # -- authenticator app ---------------------------------------------------------------------

    async def totp_start(self, request: Request) -> Response:
        gate = await self._gate(request)
        if isinstance(gate, Response):
            return gate
        subject, _, target = gate
        if target == ACR_PHR:  # only a passkey will do
            return RedirectResponse(subject.url(request, "/mfa/setup"), status_code=303)
        enrolment = await self._ctx.mfa.totp.begin_enrolment(subject.user.id, subject.user.username)
        return totp_page(
            request,
            uri=enrolment.provisioning_uri,
            secret=enrolment.secret_base32,
            action=subject.url(request, "/mfa/setup/totp"),
            restart_url=subject.url(request, "/mfa/setup/totp"),
            cancel_url=subject.url(request, "/mfa/setup"),
        )

    async def totp_confirm(self, request: Request) -> Response:
        async with request.form() as form:
            code = form_field(form, "code")
            raw_name = form_field(form, "name")
        gate = await self._gate(request)
        if isinstance(gate, Response):
            return gate
        subject, _, target = gate
        if target == ACR_PHR:
            return RedirectResponse(subject.url(request, "/mfa/setup"), status_code=303)
        user = subject.user
        name = clean_name(request, raw_name, DEFAULT_TOTP_NAME)
        if not await self._ctx.mfa.totp.confirm_enrolment(user.id, code, name=name):
            return await totp_failure_page(
                self._ctx,
                request,
                user,
                action=subject.url(request, "/mfa/setup/totp"),
                restart_url=subject.url(request, "/mfa/setup/totp"),
                cancel_url=subject.url(request, "/mfa/setup"),
                name=raw_name,
            )
        await self._subjects.enrolment_met(user)
        step = await self._subjects.advance(request, subject, (AMR_OTP,))
        if not step.ok:
            return step.apply(RedirectResponse(step.next_url, status_code=303))
        codes = await new_recovery_codes(self._ctx, user.id)
        page = recovery_codes_page(
            request,
            codes=codes,
            remaining=await self._ctx.mfa.recovery.remaining(user.id),
            continue_url=step.next_url,
            added="totp",
        )
        return step.apply(page)

    # -- passkey -------------------------------------------------------------------------------

    async def _json_gate(self, request: Request) -> Subject | Response:
        subjects = self._subjects
        subject = await subjects.find_admitted(request)
        if isinstance(subject, Response):
            return subject
        factors = await subjects.factors(subject)
        if not subjects.may_enrol(subject, factors):
            return json_failure(request, ApiReason.STEP_UP_REQUIRED, status_code=403)
        return subject

    async def passkey_options(self, request: Request) -> Response:
        subject = await self._json_gate(request)
        if isinstance(subject, Response):
            return subject
        return await registration_options(self._ctx, request, subject.user, self._ceremonies)

    async def passkey_verify(self, request: Request) -> Response:
        subject = await self._json_gate(request)
        if isinstance(subject, Response):
            return subject
        result = await finish_registration(self._ctx, request, subject.user, self._ceremonies)
        if isinstance(result, Response):
            return result
        user = subject.user
        await self._subjects.enrolment_met(user)
        step = await self._subjects.advance(request, subject, result.amr)
        if not step.ok:
            response: Response = json_failure(request, ApiReason.SIGN_IN_EXPIRED, status_code=401)
        else:
            codes = await new_recovery_codes(self._ctx, user.id)
            response = json_success({"next": step.next_url, "recovery_codes": codes or []})
        self._ceremonies.clear(response)
        return step.apply(response)
