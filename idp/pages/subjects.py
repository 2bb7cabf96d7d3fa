"""Who the second-factor pages act for, what they must reach, and where a proved factor leads.

The *subject* of ``/mfa`` and ``/mfa/setup`` is the browser's sign-in transaction
(``idp.pages.transactions``: a password accepted, a second factor owed) or, without one, its SSO
session (a step-up: an authorization request needs more than the session has, or the security
page needs a second factor before factors may be changed).

The class to reach (``urn:onegate:acr:*``, ``mfa.levels``) is the strongest of the pending
authorization request's (``PendingAuthorization.acr``) and the user's own
(``IdpContext.mfa_requirement``: ``mfa.required``, the user's ``mfa_enrol_required``, a group's
``mfa_required``); a sign-in transaction always owes at least ``mfa`` (it exists because the user
has a second factor or needs one), and so does the security page for a user who has one.

What may be used (:meth:`Subjects.offer`): the user's passkeys, authenticator apps and recovery
codes — but for ``phr`` (phishing-resistant) only WebAuthn. A user who must reach ``phr`` and has
no passkey yet first proves a code (if they have an app), and then sets a passkey up: a password
alone never suffices to add a factor to an account that has one (:meth:`Subjects.may_enrol`).

Each code attempt is a sign-in attempt for the ``LoginGuard`` (``idp.guard``): counted per source
address before the code is looked at, and a wrong code counts toward the account's lockout like a
wrong password; a locked or disabled account's transaction is refused and discarded.

When a factor is proved, :meth:`Subjects.advance` either completes — the transaction becomes a
new SSO session (``idp.pages.signin.start_session``), a session is upgraded in place
(``SessionStore.upgrade``: same ``sid``, new cookie, event ``session-step-up``) — or, when more
is needed, records what was proved and sends the browser on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from starlette.requests import Request
from starlette.responses import Response

from core.web import N_, ErrorCode, HTTPProblem
from idp.assurance import strongest
from idp.context import IdpContext
from idp.directory.models import User, UserStatus
from idp.events import auth_event
from idp.guard import GuardDecision, LoginGuard
from idp.pages import event_ip, page_url, pending_request, problem, redirect, signed_in
from idp.pages.api import ApiReason, json_failure
from idp.pages.signin import THEN_SECURITY, next_url, start_session
from idp.pages.transactions import SignInTransaction, TransactionStore
from idp.pending import PendingAuthorization
from idp.sessions import SSOSession
from mfa.levels import ACR_MFA, ACR_PHR, acr_for, combine, satisfies
from mfa.services import Factors

__all__ = ["LOCKED_MESSAGE", "Admission", "Offer", "Refusal", "Step", "Subject", "Subjects", "stale"]

LOCKED_MESSAGE = N_(
    "Too many failed attempts: the account is locked for a while. Try again later or contact the "
    "service desk."
)


def stale(ctx: IdpContext, session: SSOSession) -> bool:
    """Whether the session's last authentication is older than ``mfa.reauth_max_age``."""
    return ctx.clock() - session.auth_time > ctx.mfa.settings.reauth_max_age


class Refusal(StrEnum):
    """Why a subject may not try a factor now (``onegate.reason`` of the ``user-login`` event)."""

    LOCKED = "locked"
    DISABLED = "disabled"
    THROTTLED = "throttled"


@dataclass(frozen=True)
class Subject:
    """The user the page authenticates, what they proved so far, and where they are headed."""

    user: User
    methods: tuple[str, ...]
    pending: PendingAuthorization | None
    transaction: SignInTransaction | None = None
    session: SSOSession | None = None
    then: str | None = None  # THEN_SECURITY or None: where a session goes without a pending request

    @property
    def acr(self) -> str:
        return acr_for(self.methods)

    @property
    def has_second_factor(self) -> bool:
        """Whether a second factor was proved in this sign-in (or for this session)."""
        return satisfies(self.acr, ACR_MFA)

    @property
    def req(self) -> str | None:
        return self.pending.id if self.pending is not None else None

    def url(self, request: Request, path: str) -> str:
        """One of the MFA pages for this subject (keeping ``req`` and ``then``)."""
        then = self.then if self.transaction is None else None
        return page_url(request, path, req=self.req, then=then)


@dataclass(frozen=True)
class Offer:
    """Which factors the page may offer the subject now."""

    webauthn: bool
    totp: bool
    recovery: bool

    @property
    def any(self) -> bool:
        return self.webauthn or self.totp or self.recovery


@dataclass(frozen=True)
class Admission:
    refusal: Refusal | None = None
    retry_after: int = 0

    @property
    def allowed(self) -> bool:
        return self.refusal is None


@dataclass
class Step:
    """What a proved factor led to: where the browser goes, and the cookies to set or clear."""

    ok: bool
    next_url: str
    finished: bool = False
    cookies: list[Callable[[Response], None]] = field(default_factory=list)

    def apply(self, response: Response) -> Response:
        for change in self.cookies:
            change(response)
        return response


class Subjects:
    """Finds the subject of a request and moves it on (see the module docstring)."""

    def __init__(self, ctx: IdpContext, guard: LoginGuard, transactions: TransactionStore) -> None:
        self._ctx = ctx
        self._guard = guard
        self.transactions = transactions

    # -- who ------------------------------------------------------------------------------------

    async def find(self, request: Request) -> Subject | None:
        """The transaction's subject, else the signed-in session's, else None."""
        ctx = self._ctx
        transaction = await self.transactions.of(request)
        if transaction is not None:
            user = await ctx.directory.get_user_by_id(transaction.user_id)
            if user is None:  # deleted meanwhile
                await self.transactions.discard(transaction)
                return None
            # The request id is the one stored at /login, never the URL's: the URL cannot point
            # a completed sign-in at another authorization request.
            pending = await ctx.pending.get(transaction.req)
            return Subject(user=user, methods=transaction.methods, pending=pending, transaction=transaction)
        me = await signed_in(ctx, request)
        if me is None:
            return None
        _, pending = await pending_request(ctx, request)
        then = THEN_SECURITY if request.query_params.get("then") == THEN_SECURITY else None
        return Subject(user=me.user, methods=me.session.amr, pending=pending, session=me.session, then=then)

    async def find_admitted(self, request: Request) -> Subject | Response:
        """For a JSON endpoint: the subject, admitted (not locked, disabled or throttled); else the
        JSON answer to give (401 when there is none: the sign-in expired)."""
        subject = await self.find(request)
        if subject is None:
            return json_failure(request, ApiReason.SIGN_IN_EXPIRED, status_code=401)
        admission = await self.admit(request, subject, attempt=False)
        if not admission.allowed:
            return await self.refuse(request, subject, admission, json=True)
        return subject

    async def factors(self, subject: Subject) -> Factors:
        return await self._ctx.mfa.factors(subject.user.id)

    # -- what ----------------------------------------------------------------------------------

    async def target(self, subject: Subject, factors: Factors) -> str | None:
        """The class this subject must reach (None: nothing to do)."""
        required = strongest(
            subject.pending.acr if subject.pending is not None else None,
            await self._ctx.mfa_requirement(subject.user),
        )
        owes_second = subject.transaction is not None or (subject.then == THEN_SECURITY and factors.any)
        return strongest(required, ACR_MFA if owes_second else None)

    def needs_recent_proof(self, subject: Subject, factors: Factors) -> bool:
        """Whether a session headed for the security page must prove a factor again first: its
        last proof is older than ``mfa.reauth_max_age`` (a session cookie left in a browser for
        hours must not be enough to replace the factors)."""
        return (
            subject.then == THEN_SECURITY
            and subject.session is not None
            and factors.any
            and stale(self._ctx, subject.session)
        )

    @staticmethod
    def offer(subject: Subject, factors: Factors, target: str | None) -> Offer:
        # Phishing-resistant means WebAuthn (its answer is bound to our origin by the browser): a
        # code may only open the way to setting up a first passkey, never reach phr itself.
        codes = target != ACR_PHR or (factors.webauthn == 0 and not subject.has_second_factor)
        return Offer(
            webauthn=factors.webauthn > 0,
            totp=codes and factors.totp > 0,
            recovery=codes and factors.any and factors.recovery_left > 0,
        )

    @staticmethod
    def may_enrol(subject: Subject, factors: Factors) -> bool:
        """Whether the subject may add a factor now: a user without any (forced enrolment: the
        password is all there is to trust), or one who proved a second factor in this sign-in
        (or session). Never on a password alone when the account already has a factor."""
        return not factors.any or subject.has_second_factor

    # -- the guard -----------------------------------------------------------------------------

    async def admit(self, request: Request, subject: Subject, *, attempt: bool) -> Admission:
        """May the subject try a factor now? ``attempt``: count it for the source address."""
        user = subject.user
        if user.status == UserStatus.DISABLED:
            return Admission(Refusal.DISABLED)
        if user.status == UserStatus.LOCKED:
            return Admission(Refusal.LOCKED)
        lock = self._guard.check_account(user)
        if lock.refused:
            return Admission(Refusal.LOCKED, lock.retry_after)
        if attempt:
            source = await self._guard.begin_attempt(self._ctx.client_ip(request), username=user.username)
            if source.refused:
                return Admission(Refusal.THROTTLED, source.retry_after)
        return Admission()

    async def count_failure(self, request: Request, subject: Subject) -> GuardDecision:
        """A wrong code: it counts toward the account's lockout like a wrong password."""
        return await self._guard.record_failure(ip=self._ctx.client_ip(request), user=subject.user)

    async def count_success(self, request: Request, subject: Subject) -> None:
        await self._guard.record_success(ip=self._ctx.client_ip(request), user=subject.user)

    async def refuse(
        self, request: Request, subject: Subject, admission: Admission, *, json: bool
    ) -> Response:
        """The answer to a refused subject. A transaction is discarded (the browser starts again
        at ``/login``); a session stays, but may not step up now."""
        refusal = admission.refusal or Refusal.LOCKED
        retry = {"Retry-After": str(max(1, admission.retry_after))} if admission.retry_after else None
        if subject.transaction is not None:
            self._failed_login(request, subject, refusal.value)
            if refusal is not Refusal.THROTTLED:
                await self.transactions.discard(subject.transaction)
        if refusal is Refusal.THROTTLED:
            if json:
                return json_failure(request, ApiReason.THROTTLED, status_code=429, headers=retry)
            raise HTTPProblem(ErrorCode.RATE_LIMITED, reason="throttled", headers=retry)
        if json:
            reason = ApiReason.LOCKED if refusal is Refusal.LOCKED else ApiReason.REFUSED
            response: Response = json_failure(request, reason, status_code=403)
        elif subject.transaction is not None:
            notice = "mfa-locked" if refusal is Refusal.LOCKED else "mfa-refused"
            response = redirect(request, "/login", req=subject.req, notice=notice)
        else:
            raise problem(request, ErrorCode.FORBIDDEN, reason=refusal.value, message=LOCKED_MESSAGE)
        if subject.transaction is not None:
            self.transactions.clear_cookie(response)
        return response

    def expired(self, request: Request, subject: Subject | None) -> Step:
        """The sign-in (or session) ended meanwhile: start again at /login."""
        req = subject.req if subject is not None else None
        url = page_url(request, "/login", req=req, notice="mfa-expired")
        return Step(ok=False, next_url=url, cookies=[self.transactions.clear_cookie])

    # -- on -------------------------------------------------------------------------------------

    async def advance(self, request: Request, subject: Subject, methods: Sequence[str]) -> Step:
        """A factor was proved (``methods``: its RFC 8176 values): complete, or record and go on."""
        factors = await self.factors(subject)
        target = await self.target(subject, factors)
        if subject.transaction is not None:
            return await self._advance_transaction(request, subject, subject.transaction, methods, target)
        assert subject.session is not None  # noqa: S101 - a subject is a transaction or a session
        return await self._advance_session(request, subject, subject.session, methods, target)

    async def _advance_transaction(
        self,
        request: Request,
        subject: Subject,
        transaction: SignInTransaction,
        methods: Sequence[str],
        target: str | None,
    ) -> Step:
        if not satisfies(acr_for(combine(subject.methods, methods)), target):
            updated = await self.transactions.add_methods(transaction, methods)
            if updated is None:
                return self.expired(request, subject)
            onward = replace(subject, methods=updated.methods)
            return Step(ok=True, next_url=onward.url(request, "/mfa"))
        finished = await self.transactions.finish(transaction)
        if finished is None:  # completed (or expired) meanwhile: a transaction is used once
            return self.expired(request, subject)
        user = subject.user
        _, cookie = await start_session(
            self._ctx, request, user, amr=combine(finished.methods, methods), pending=subject.pending
        )
        await self.enrolment_met(user)

        def set_session(response: Response) -> None:
            self._ctx.set_session_cookie(response, cookie)

        return Step(
            ok=True,
            finished=True,
            next_url=next_url(request, user, subject.pending),
            cookies=[set_session, self.transactions.clear_cookie],
        )

    async def _advance_session(
        self,
        request: Request,
        subject: Subject,
        session: SSOSession,
        methods: Sequence[str],
        target: str | None,
    ) -> Step:
        ctx = self._ctx
        upgraded = await self.step_up(request, subject.user, session, methods, pending=subject.pending)
        if upgraded is None:
            return self.expired(request, None)
        stepped, cookie = upgraded

        def set_session(response: Response) -> None:
            ctx.set_session_cookie(response, cookie)

        if not satisfies(stepped.acr, target):
            onward = replace(subject, methods=stepped.amr, session=stepped)
            return Step(ok=True, next_url=onward.url(request, "/mfa"), cookies=[set_session])
        await self.enrolment_met(subject.user)
        return Step(
            ok=True,
            finished=True,
            next_url=next_url(request, subject.user, subject.pending, then=subject.then),
            cookies=[set_session],
        )

    async def step_up(
        self,
        request: Request,
        user: User,
        session: SSOSession,
        methods: Sequence[str],
        *,
        pending: PendingAuthorization | None = None,
    ) -> tuple[SSOSession, str] | None:
        """Upgrade ``session`` in place with ``methods`` (same ``sid``, new cookie value: the old
        one is dead) and emit ``session-step-up``; None when the session ended meanwhile."""
        ctx = self._ctx
        upgraded = await ctx.sessions.upgrade(session.sid, methods)
        if upgraded is None:
            return None
        stepped, _ = upgraded
        ctx.events.emit(
            auth_event(
                "session-step-up",
                success=True,
                username=user.username,
                user_id=user.id,
                source_ip=event_ip(ctx.client_ip(request)),
                client_id=pending.client_id if pending is not None else None,
                session_id=stepped.sid,
                user_agent=request.headers.get("user-agent", ""),
                onegate__amr=list(stepped.amr),
                onegate__acr=stepped.acr,
            )
        )
        return upgraded

    async def enrolment_met(self, user: User) -> None:
        # An administrator's "set up a second factor at next sign-in" is met once the user has
        # signed in with one.
        if user.mfa_enrol_required and (await self._ctx.mfa.factors(user.id)).any:
            await self._ctx.directory.clear_mfa_enrol_required(user.id)

    def _failed_login(self, request: Request, subject: Subject, reason: str) -> None:
        ctx = self._ctx
        ctx.events.emit(
            auth_event(
                "user-login",
                success=False,
                reason=reason,
                username=subject.user.username,
                user_id=subject.user.id,
                source_ip=event_ip(ctx.client_ip(request)),
                client_id=subject.pending.client_id if subject.pending is not None else None,
                user_agent=request.headers.get("user-agent", ""),
                onegate__amr=list(subject.methods),
            )
        )
