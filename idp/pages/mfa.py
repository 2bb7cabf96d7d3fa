"""The second-factor page: ``GET /mfa`` and what it posts to.

Its subject (``idp.pages.subjects``) is the browser's sign-in transaction or, without one, its
SSO session (a step-up). It offers what the user has and the required class allows — a passkey
or security key (a button; WebAuthn L3 §7.2 "Verifying an Authentication Assertion", done by
``mfa.webauthn``), an authenticator-app code (RFC 6238, ``mfa.totp``), a recovery code — and sends
a user with nothing usable to ``/mfa/setup``.

* ``POST /mfa/totp`` (form ``code``) and ``POST /mfa/recovery`` (form ``code``): each is a
  sign-in attempt (source-address throttling, and a wrong code counts toward the account's
  lockout, ``idp.guard``); the authenticator app's own attempt limit answers ``429`` with a
  message saying so. A recovery code that worked tells the user how many are left.
* ``POST /mfa/webauthn/options`` and ``POST /mfa/webauthn/verify`` (JSON, ``X-CSRF-Token``):
  the assertion ceremony for the subject's user (``idp.pages.api`` for the answers).
* ``POST /mfa/cancel``: give up the sign-in transaction.

Success goes through ``Subjects.advance``: a new SSO session, or the session upgraded in place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from core.web import N_
from idp.context import IdpContext
from idp.pages import (
    adopt_ui_locales,
    form_field,
    localized_name,
    page_url,
    pending_request,
    redirect,
    render,
)
from idp.pages.api import ApiReason, CeremonyCookie, json_failure, json_success
from idp.pages.signin import next_url
from idp.pages.subjects import Admission, Offer, Refusal, Step, Subject, Subjects
from mfa.levels import ACR_PHR, AMR_OTP, satisfies
from mfa.totp import TotpReason

__all__ = ["RECOVERY_FAILED", "TOTP_MESSAGES", "SecondFactorPage"]


class _CodeAttempt(NamedTuple):
    subject: Subject
    offer: Offer
    target: str | None
    code: str


TOTP_MESSAGES = {
    TotpReason.INVALID: N_(
        "The code is not correct. Enter the 6-digit code your authenticator app shows now, and check "
        "that your phone's clock is right."
    ),
    TotpReason.REPLAYED: N_(
        "This code has already been used. Wait for the next code in your app and enter that one."
    ),
    TotpReason.RATE_LIMITED: N_(
        "Too many wrong codes. Wait a few minutes before you try again, or use a recovery code."
    ),
    TotpReason.NOT_ENROLLED: N_("No authenticator app is set up for this account."),
}
RECOVERY_FAILED = N_("The recovery code is not valid or has already been used.")
NOT_OFFERED = N_("This sign-in method cannot be used here.")


_LOCKED = Admission(Refusal.LOCKED)  # this very failure locked the account


def _step_response(step: Step) -> Response:
    return step.apply(RedirectResponse(step.next_url, status_code=303))


class SecondFactorPage:
    """``/mfa`` and its actions (see the module docstring)."""

    def __init__(self, ctx: IdpContext, subjects: Subjects, ceremonies: CeremonyCookie) -> None:
        self._ctx = ctx
        self._subjects = subjects
        self._ceremonies = ceremonies

    # -- the page ------------------------------------------------------------------------------

    async def show(self, request: Request) -> Response:
        subjects = self._subjects
        subject = await subjects.find(request)
        if subject is None:
            _, pending = await pending_request(self._ctx, request)
            return redirect(request, "/login", req=pending.id if pending else None)
        adopt_ui_locales(request, subject.pending.ui_locales if subject.pending else None)
        admission = await subjects.admit(request, subject, attempt=False)
        if not admission.allowed:
            return await subjects.refuse(request, subject, admission, json=False)
        factors = await subjects.factors(subject)
        target = await subjects.target(subject, factors)
        if (
            subject.transaction is None
            and satisfies(subject.acr, target)
            and not subjects.needs_recent_proof(subject, factors)
        ):
            # The session already reaches what is asked: nothing to prove.
            url = next_url(request, subject.user, subject.pending, then=subject.then)
            return RedirectResponse(url, status_code=303)
        offer = subjects.offer(subject, factors, target)
        if not offer.any:
            return RedirectResponse(subject.url(request, "/mfa/setup"), status_code=303)
        return self._page(request, subject, offer, target)

    async def cancel(self, request: Request) -> Response:
        """Give up the sign-in transaction (another account, or not now)."""
        transactions = self._subjects.transactions
        transaction = await transactions.of(request)
        req = None
        if transaction is not None:
            await transactions.discard(transaction)
            req = transaction.req if await self._ctx.pending.get(transaction.req) else None
        response = redirect(request, "/login", req=req)
        transactions.clear_cookie(response)
        return response

    # -- codes ---------------------------------------------------------------------------------

    async def _code_attempt(
        self, request: Request, offered: Callable[[Offer], bool]
    ) -> _CodeAttempt | Response:
        """What both code forms do first: the subject, the posted code, the method still offered
        to it, and the attempt admitted (throttle, lockout); otherwise the response to give."""
        subjects = self._subjects
        subject = await subjects.find(request)
        async with request.form() as form:
            code = form_field(form, "code")
        if subject is None:
            return _step_response(subjects.expired(request, None))
        adopt_ui_locales(request, subject.pending.ui_locales if subject.pending else None)
        factors = await subjects.factors(subject)
        target = await subjects.target(subject, factors)
        offer = subjects.offer(subject, factors, target)
        if not offered(offer):
            return self._page(request, subject, offer, target, error=NOT_OFFERED, status_code=400)
        admission = await subjects.admit(request, subject, attempt=True)
        if not admission.allowed:
            return await subjects.refuse(request, subject, admission, json=False)
        return _CodeAttempt(subject, offer, target, code)

    async def totp(self, request: Request) -> Response:
        ctx, subjects = self._ctx, self._subjects
        attempt = await self._code_attempt(request, lambda offer: offer.totp)
        if isinstance(attempt, Response):
            return attempt
        subject, offer, target, code = attempt
        result = await ctx.mfa.totp.verify(subject.user.id, code)
        if result.ok:
            await subjects.count_success(request, subject)
            return _step_response(await subjects.advance(request, subject, (AMR_OTP,)))
        reason = result.reason or TotpReason.INVALID
        if reason is not TotpReason.NOT_ENROLLED:
            decision = await subjects.count_failure(request, subject)
            if decision.locked_now:
                return await subjects.refuse(request, subject, _LOCKED, json=False)
        status = 429 if reason is TotpReason.RATE_LIMITED else 400
        return self._page(request, subject, offer, target, error=TOTP_MESSAGES[reason], status_code=status)

    async def recovery(self, request: Request) -> Response:
        ctx, subjects = self._ctx, self._subjects
        attempt = await self._code_attempt(request, lambda offer: offer.recovery)
        if isinstance(attempt, Response):
            return attempt
        subject, offer, target, code = attempt
        result = await ctx.mfa.recovery.use(subject.user.id, code)
        if not result.ok:
            decision = await subjects.count_failure(request, subject)
            if decision.locked_now:
                return await subjects.refuse(request, subject, _LOCKED, json=False)
            return self._page(
                request, subject, offer, target, error=RECOVERY_FAILED, recovery_open=True, status_code=400
            )
        await subjects.count_success(request, subject)
        step = await subjects.advance(request, subject, (AMR_OTP,))
        if not step.ok:
            return _step_response(step)
        # An interstitial: the user must learn how many codes are left before going on.
        context = {"remaining": result.remaining, "continue_url": step.next_url}
        return step.apply(render(request, "recovery_used.html", context))

    # -- WebAuthn (JSON) -----------------------------------------------------------------------

    async def webauthn_options(self, request: Request) -> Response:
        subjects = self._subjects
        subject = await subjects.find_admitted(request)
        if isinstance(subject, Response):
            return subject
        factors = await subjects.factors(subject)
        if not subjects.offer(subject, factors, await subjects.target(subject, factors)).webauthn:
            return json_failure(request, ApiReason.NOT_OFFERED)
        ceremony = await self._ctx.mfa.webauthn.begin_authentication(subject.user.id)
        response = json_success({"publicKey": ceremony.options})
        self._ceremonies.set(response, ceremony.id)
        return response

    async def webauthn_verify(self, request: Request) -> Response:
        subjects = self._subjects
        subject = await subjects.find(request)
        if subject is None:
            return json_failure(request, ApiReason.SIGN_IN_EXPIRED, status_code=401)
        answer = await self._ceremonies.answer(request)
        if isinstance(answer, Response):
            return answer
        factors = await subjects.factors(subject)
        if not subjects.offer(subject, factors, await subjects.target(subject, factors)).webauthn:
            return json_failure(request, ApiReason.NOT_OFFERED)
        admission = await subjects.admit(request, subject, attempt=True)
        if not admission.allowed:
            return await subjects.refuse(request, subject, admission, json=True)
        result = await self._ctx.mfa.webauthn.finish_authentication(
            answer.ceremony_id, answer.credential, user_id=subject.user.id
        )
        if not result.ok:
            response: Response = json_failure(request, result.reason or ApiReason.INVALID)
            self._ceremonies.clear(response)
            return response
        await subjects.count_success(request, subject)
        step = await subjects.advance(request, subject, result.amr)
        if step.ok:
            response = json_success({"next": step.next_url})
        else:
            response = json_failure(request, ApiReason.SIGN_IN_EXPIRED, status_code=401)
        self._ceremonies.clear(response)
        return step.apply(response)

    # -- helpers -------------------------------------------------------------------------------

    def _page(
        self,
        request: Request,
        subject: Subject,
        offer: Offer,
        target: str | None,
        *,
        error: str | None = None,
        recovery_open: bool = False,
        status_code: int = 200,
    ) -> Response:
        pending = subject.pending
        client_name = (
            localized_name(request, pending.client_name, pending.client_name_en) if pending else None
        )
        context: dict[str, Any] = {
            "client_name": client_name,
            "offer": offer,
            "phishing_resistant": target == ACR_PHR,
            # phr without a passkey yet: a code first, then a passkey is set up.
            "passkey_next": target == ACR_PHR and not offer.webauthn,
            "step_up": subject.transaction is None,
            "error": error,
            "recovery_open": recovery_open,
            "totp_action": subject.url(request, "/mfa/totp"),
            "recovery_action": subject.url(request, "/mfa/recovery"),
            "webauthn_options": subject.url(request, "/mfa/webauthn/options"),
            "webauthn_verify": subject.url(request, "/mfa/webauthn/verify"),
            "cancel_action": page_url(request, "/mfa/cancel"),
        }
        return render(request, "mfa.html", context, status_code=status_code)
