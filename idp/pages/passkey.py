"""Signing in with a passkey, without a username or password: ``POST /login/passkey/options``
and ``POST /login/passkey/verify`` (JSON, ``X-CSRF-Token``), behind the login page's
"使用通行密钥登录 / Sign in with a passkey" button.

The ceremony is for a discoverable credential (WebAuthn L3 §5.4.6 ``residentKey``; no
``allowCredentials``) with user verification required: the authenticator's PIN or biometric is
the second factor next to the key itself, so the sign-in reaches ``urn:onegate:acr:phr``
(``amr`` e.g. ``hwk user pin mfa``). ``mfa.webauthn`` finds the account from the credential and
checks that the returned ``userHandle`` is that credential's (WebAuthn L3 §7.2 step 6); the
ceremony id never leaves the HttpOnly cookie (``idp.pages.api.CeremonyCookie``).

It is a sign-in like ``POST /login``: the source address is throttled the same way, and a
disabled or locked account (an administrator's lock, or the automatic lockout) is refused with
the same message as there; ``user-login`` events say why (``onegate.reason``). An assertion
without user verification is refused too (``no_user_verification``): one factor is not a
passwordless sign-in.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from idp.assurance import strongest
from idp.context import IdpContext
from idp.directory.models import User, UserStatus
from idp.events import auth_event
from idp.guard import LoginGuard
from idp.pages import event_ip, pending_request
from idp.pages.api import ApiReason, CeremonyCookie, json_failure, json_success
from idp.pages.login import LoginReason
from idp.pages.signin import next_url, start_session
from idp.pages.transactions import TransactionStore
from idp.pending import PendingAuthorization
from mfa.levels import acr_for, combine, satisfies

__all__ = ["PasskeySignIn"]


class PasskeySignIn:
    """The two JSON endpoints of a passwordless sign-in (see the module docstring)."""

    def __init__(
        self,
        ctx: IdpContext,
        guard: LoginGuard,
        ceremonies: CeremonyCookie,
        transactions: TransactionStore,
    ) -> None:
        self._ctx = ctx
        self._guard = guard
        self._ceremonies = ceremonies
        self._transactions = transactions

    async def options(self, request: Request) -> Response:
        # user_id None: a discoverable-credential ceremony, user verification required.
        ceremony = await self._ctx.mfa.webauthn.begin_authentication(None)
        response = json_success({"publicKey": ceremony.options})
        self._ceremonies.set(response, ceremony.id)
        return response

    async def verify(self, request: Request) -> Response:
        ctx = self._ctx
        _, pending = await pending_request(ctx, request)
        answer = await self._ceremonies.answer(request)
        if isinstance(answer, Response):
            return answer
        ip = ctx.client_ip(request)

        source = await self._guard.begin_attempt(ip)
        if source.refused:
            self._failed(request, LoginReason.THROTTLED, user=None, pending=pending)
            headers = {"Retry-After": str(source.retry_after)}
            return json_failure(request, ApiReason.THROTTLED, status_code=429, headers=headers)

        result = await ctx.mfa.webauthn.finish_authentication(
            answer.ceremony_id, answer.credential, user_id=None
        )
        if not result.ok or result.user_id is None:
            reason = result.reason.value if result.reason is not None else "invalid"
            self._failed(request, LoginReason.BAD_PASSKEY, user=None, pending=pending, webauthn=reason)
            return self._clear(json_failure(request, result.reason or ApiReason.INVALID))

        user = await ctx.directory.get_user_by_id(result.user_id)
        refusal: LoginReason | None = None
        if user is None:
            refusal = LoginReason.UNKNOWN_USER
        elif user.status == UserStatus.DISABLED:
            refusal = LoginReason.DISABLED
        elif user.status == UserStatus.LOCKED or self._guard.check_account(user).refused:
            refusal = LoginReason.LOCKED
        elif not result.user_verified:
            refusal = LoginReason.NO_USER_VERIFICATION
        if user is None or refusal is not None:
            self._failed(request, refusal or LoginReason.UNKNOWN_USER, user=user, pending=pending)
            why = (
                ApiReason.NO_USER_VERIFICATION
                if refusal is LoginReason.NO_USER_VERIFICATION
                else ApiReason.REFUSED
            )
            return self._clear(json_failure(request, why, status_code=403))

        amr = combine(result.amr)
        required = strongest(pending.acr if pending else None, await ctx.mfa_requirement(user))
        if not satisfies(acr_for(amr), required):  # cannot happen with UV; fail closed all the same
            self._failed(request, LoginReason.NO_USER_VERIFICATION, user=user, pending=pending)
            return self._clear(json_failure(request, ApiReason.NO_USER_VERIFICATION, status_code=403))

        await self._guard.record_success(ip=ip, user=user)
        _, cookie = await start_session(ctx, request, user, amr=amr, pending=pending)
        if user.mfa_enrol_required:  # the user signed in with a factor: the request is met
            await ctx.directory.clear_mfa_enrol_required(user.id)
        # A sign-in transaction left over from a password attempt in this browser is superseded.
        transaction = await self._transactions.of(request)
        if transaction is not None:
            await self._transactions.discard(transaction)
        response = json_success({"next": next_url(request, user, pending)})
        ctx.set_session_cookie(response, cookie)
        self._transactions.clear_cookie(response)
        return self._clear(response)

    def _clear(self, response: Response) -> Response:
        self._ceremonies.clear(response)
        return response

    def _failed(
        self,
        request: Request,
        reason: LoginReason,
        *,
        user: User | None,
        pending: PendingAuthorization | None,
        webauthn: str | None = None,
    ) -> None:
        extra = {"onegate__mfa__method": "webauthn"}
        if webauthn is not None:
            extra["onegate__mfa__reason"] = webauthn
        self._ctx.events.emit(
            auth_event(
                "user-login",
                success=False,
                reason=reason.value,
                username=user.username if user is not None else None,
                user_id=user.id if user is not None else None,
                source_ip=event_ip(self._ctx.client_ip(request)),
                client_id=pending.client_id if pending else None,
                user_agent=request.headers.get("user-agent", ""),
                **extra,
            )
        )
