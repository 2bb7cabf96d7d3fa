"""The authorization endpoint (RFC 6749 §4.1.1, OIDC Core §3.1.2): ``/authorize`` and
``/authorize/resume?req=<id>``.

``/authorize`` (GET, or POST as OIDC Core §3.1.2.1 requires) validates the request, then:

* errors *before* the client and its exact ``redirect_uri`` are established — unknown client,
  unregistered or missing redirect_uri, a repeated parameter, an unusable ``request_uri`` —
  are shown to the user as an error page and never redirected (RFC 6749 §4.1.2.1, RFC 9700
  §4.11.2); every later error goes to the redirect_uri with ``error``, ``error_description``,
  ``state`` and ``iss`` (RFC 9207);
* without a suitable SSO session (none, ``prompt=login`` / ``select_account``, ``max_age``
  exceeded, an ``id_token_hint`` or requested ``sub`` naming someone else) the request is
  kept as a :class:`~idp.pending.PendingAuthorization` and the browser goes to
  ``/login?req=<id>`` — or, with ``prompt=none``, the client gets ``login_required``;
* when a third-party client lacks the user's consent for some scope (or ``prompt=consent``),
  to ``/consent?req=<id>`` — with ``prompt=none``: ``consent_required``. First-party clients
  never ask;
* when the session's ``acr`` falls short of what the request, its client or the user needs
  (``idp.assurance``: ``acr_values``, an essential ``acr`` claim, ``clients.minimum_acr``, MFA
  required for the user or a group of theirs), to ``/mfa?req=<id>``: a step-up that upgrades the
  session in place — with ``prompt=none``: ``interaction_required``. An essential ``acr`` naming
  only classes this IdP does not know ends in ``unmet_authentication_requirements`` (OIDC Core
  §5.5.1.1);
* otherwise a code is issued, the client is remembered in the SSO session (for back-channel
  logout), and the browser goes back with ``code``, ``state`` and ``iss``.

``/authorize/resume`` is where the login and consent pages send the browser back: it
re-validates the stored request from scratch (the client may have changed meanwhile) and
requires the sign-in it asked for to have happened after the request was made
(``auth_time >= created_at``). ``&denied=1`` ends it with ``access_denied``.

``select_account`` is handled like ``login``: one browser holds one session, so choosing
another account means signing in again. The classes are ``urn:onegate:acr:pwd``, ``:mfa`` and
``:phr`` (``mfa.levels``); the ID token's ``acr`` and ``amr`` say what the session really did.

CSRF: ``/authorize`` is exempt — a relying party's page may POST it cross-site by design,
and it changes nothing a GET could not. ``/authorize/resume`` is a GET.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from authlib.oauth2.rfc6749 import AccessDeniedError, InvalidRequestError, OAuth2Error
from authlib.oidc.core.errors import (
    ConsentRequiredError,
    InteractionRequiredError,
    InvalidRequestURIError,
    LoginRequiredError,
    RegistrationNotSupportedError,
    RequestNotSupportedError,
    RequestURINotSupportedError,
)
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from idp.assurance import request_requirement, strongest
from idp.claims import ClaimsRequest, claim_scopes, parse_claims_request, releasable
from idp.endpoints import error_page, reject_duplicates
from idp.endpoints.par import REQUEST_URI_PREFIX, pull_request
from idp.errors import IdTokenHintInvalid, UnmetAuthenticationRequirementsError
from idp.integrations.starlette import OAuth2Response, read_oauth2_request, to_response
from idp.pending import PendingAuthorization
from idp.server import OneGateRequest
from mfa.levels import satisfies

if TYPE_CHECKING:
    from idp.claims import UserProfile
    from idp.server import Provider
    from idp.sessions import SSOSession

__all__ = ["ValidatedRequest", "authorize_endpoint", "resume_endpoint", "validate_request"]

_PROMPTS = frozenset({"none", "login", "consent", "select_account"})
_MAX_HINT = 256
_MAX_ACR_VALUES = 8


@dataclass(frozen=True)
class ValidatedRequest:
    """An authorization request that passed every check that does not need the user."""

    grant: Any  # idp.grants.authorization_code.AuthorizationCodeGrant
    redirect_uri: str
    scopes: tuple[str, ...]  # the access token's scope
    consent_scopes: frozenset[str]  # scopes plus those of single claims asked for
    prompt: frozenset[str]
    max_age: int | None
    claims: ClaimsRequest
    hint: dict[str, Any] | None  # verified id_token_hint claims
    acr: str | None  # the class the request needs (idp.assurance.request_requirement)


def _prompt(raw: str | None) -> frozenset[str]:
    values = frozenset((raw or "").split())
    if "none" in values and len(values) > 1:  # OIDC Core §3.1.2.1
        raise InvalidRequestError("'prompt' none cannot be combined with other values.")
    return values & _PROMPTS  # unknown values are ignored (extensions)


def _max_age(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 10:
        raise InvalidRequestError("'max_age' must be a non-negative integer.")
    return int(raw)


def validate_request(provider: Provider, oreq: OneGateRequest) -> ValidatedRequest:
    """Validate an authorization request (client, redirect_uri, response_type, scopes, PKCE,
    OIDC parameters). Raises OAuth2Error; its ``redirect_uri`` is set only once the client's
    redirect_uri is established, so that errors before it are never redirected."""
    reject_duplicates(oreq)
    grant = provider.server.get_consent_grant(oreq, end_user=None)  # sets error.state itself
    redirect_uri: str = grant.redirect_uri
    data = oreq.payload.data
    try:
        if "request" in data:
            raise RequestNotSupportedError()
        if "request_uri" in data:  # a PAR reference was resolved before; anything else is not ours
            raise RequestURINotSupportedError()
        if "registration" in data:
            raise RegistrationNotSupportedError()
        if data.get("response_mode") not in (None, "query"):
            raise InvalidRequestError("Only response_mode 'query' is supported.")
        prompt = _prompt(data.get("prompt"))
        max_age = _max_age(data.get("max_age"))
        claims = parse_claims_request(data.get("claims"))
        hint = None
        if data.get("id_token_hint"):
            try:
                hint = provider.tokens.verify_id_token_hint(data["id_token_hint"])
            except IdTokenHintInvalid as e:
                raise InvalidRequestError("Invalid 'id_token_hint'.") from e
    except OAuth2Error as error:
        error.redirect_uri, error.state = redirect_uri, oreq.payload.state
        raise
    client = oreq.client
    scopes = tuple((oreq.scope or "").split())
    acr = request_requirement(
        client_minimum=client.row.minimum_acr,
        acr_values=str(data.get("acr_values") or "").split()[:_MAX_ACR_VALUES],
        essential_acr=claims.essential_values("acr"),
    )
    return ValidatedRequest(
        grant=grant,
        redirect_uri=redirect_uri,
        scopes=scopes,
        consent_scopes=frozenset(scopes) | (claim_scopes(claims) & client.scopes),
        prompt=prompt,
        max_age=max_age,
        claims=claims,
        hint=hint,
        acr=acr,
    )


def _page(request: Request, path: str, pending_id: str) -> Response:
    root = str(request.scope.get("root_path", "")).rstrip("/")
    return RedirectResponse(f"{root}{path}?req={quote(pending_id)}", status_code=303)


class _Flow:
    """One pass over an authorization request, from /authorize or /authorize/resume."""

    def __init__(self, provider: Provider, request: Request) -> None:
        self.provider = provider
        self.idp = provider.idp
        self.request = request

    def error(self, oreq: OneGateRequest, error: OAuth2Error) -> Response:
        if error.redirect_uri:
            return to_response(self.provider.server.handle_error_response(oreq, error))
        return error_page(self.request, error)

    async def run(
        self, oreq: OneGateRequest, pending: PendingAuthorization | None, denied: bool = False
    ) -> Response:
        oreq.source_ip = self.idp.client_ip(self.request)
        oreq.known_client = await self.provider.client(oreq.payload.client_id)
        try:
            valid = validate_request(self.provider, oreq)
        except OAuth2Error as error:
            return self.error(oreq, error)
        try:
            if denied:
                raise AccessDeniedError()
            return await self._decide(oreq, valid, pending)
        except OAuth2Error as error:
            if pending is not None:
                await self.idp.pending.delete(pending.id)
            error.redirect_uri, error.state = valid.redirect_uri, oreq.payload.state
            return self.error(oreq, error)

    async def _user(self) -> tuple[SSOSession | None, UserProfile | None]:
        session = await self.idp.current_session(self.request)
        if session is None:
            return None, None
        profile = await self.provider.profile(session.user_id)
        if profile is None or profile.status != "active":
            return None, None
        return session, profile

    async def _decide(
        self, oreq: OneGateRequest, valid: ValidatedRequest, pending: PendingAuthorization | None
    ) -> Response:
        client = oreq.client
        session, profile = await self._user()
        now = self.provider.tokens.now()
        # A sign-in after the request was made satisfies prompt=login and max_age.
        fresh = session is not None and pending is not None and session.auth_time >= pending.created_at
        wanted_sub = valid.claims.requested_value("sub") or (valid.hint or {}).get("sub")
        other_user = profile is not None and wanted_sub is not None and wanted_sub != profile.sub
        needs_login = (
            session is None
            or other_user
            or (bool(valid.prompt & {"login", "select_account"}) and not fresh)
            or (valid.max_age is not None and now - session.auth_time > valid.max_age and not fresh)
        )
        if needs_login:
            # prompt=none cannot show the login page (OIDC Core §3.1.2.6); after a sign-in,
            # a hint that still names someone else is refused the same way (§3.1.2.1).
            if "none" in valid.prompt or (other_user and fresh):
                raise LoginRequiredError()
            return _page(self.request, "/login", (await self._pending(oreq, valid, pending)).id)
        assert session is not None and profile is not None  # noqa: S101 - needs_login covers None

        user = await self.idp.directory.get_user_by_id(session.user_id)
        if user is None:
            raise LoginRequiredError()
        # A one-time password (new account, administrator reset) must be replaced before any
        # application receives a code: the password page resumes this request afterwards.
        if user.must_change_password:
            if "none" in valid.prompt:
                raise InteractionRequiredError()
            return _page(self.request, "/password", (await self._pending(oreq, valid, pending)).id)

        # Zero trust for the session too: its class is checked against what this request, this
        # client and this user need, every time; a shortfall is a step-up, never a pass.
        required = strongest(valid.acr, await self.idp.mfa_requirement(user))
        if not satisfies(session.acr, required):
            if "none" in valid.prompt:
                raise InteractionRequiredError()
            return _page(self.request, "/mfa", (await self._pending(oreq, valid, pending)).id)
        essential_acr = valid.claims.essential_values("acr")
        if essential_acr is not None and not any(satisfies(session.acr, v) for v in essential_acr):
            raise UnmetAuthenticationRequirementsError()

        if not client.first_party:
            granted = await self.provider.consents.granted(session.user_id, client.pk)
            ask = not valid.consent_scopes <= granted
            if not ask and "consent" in valid.prompt:
                # prompt=consent: the consent page must have been shown for this very request.
                ask = pending is None or not await self._consented_since(session.user_id, client.pk, pending)
            if ask:
                if "none" in valid.prompt:
                    raise ConsentRequiredError()
                return _page(self.request, "/consent", (await self._pending(oreq, valid, pending)).id)

        return await self._issue(oreq, valid, session, profile, pending)

    async def _consented_since(self, user_id: int, client_pk: int, pending: PendingAuthorization) -> bool:
        for consent in await self.provider.consents.list_for_user(user_id):
            if consent.client_pk == client_pk:
                return consent.granted_at.timestamp() >= int(pending.created_at)
        return False

    async def _pending(
        self, oreq: OneGateRequest, valid: ValidatedRequest, pending: PendingAuthorization | None
    ) -> PendingAuthorization:
        if pending is not None:
            return pending
        data = oreq.payload.data
        login_hint = data.get("login_hint") or (valid.hint or {}).get("preferred_username")
        row = oreq.client.row
        created = PendingAuthorization(
            id=self.idp.pending.new_id(),
            client_id=oreq.client.client_id,
            client_name=row.name,
            client_name_en=row.name_en,
            params=tuple(oreq.pairs()),
            scopes=tuple(sorted(valid.consent_scopes)),
            prompt=tuple(sorted(valid.prompt)),
            login_hint=str(login_hint)[:_MAX_HINT] if login_hint else None,
            max_age=valid.max_age,
            acr_values=tuple(str(data.get("acr_values") or "").split())[:_MAX_ACR_VALUES],
            ui_locales=(data.get("ui_locales") or None),
            created_at=self.provider.tokens.now(),
            acr=valid.acr,
        )
        await self.idp.pending.put(created)
        return created

    async def _issue(
        self,
        oreq: OneGateRequest,
        valid: ValidatedRequest,
        session: SSOSession,
        profile: UserProfile,
        pending: PendingAuthorization | None,
    ) -> Response:
        oreq.session, oreq.profile = session, profile
        ids, userinfo = releasable(valid.claims, valid.consent_scopes)
        oreq.released_claims = (tuple(ids), tuple(userinfo))
        result: OAuth2Response = self.provider.server.create_authorization_response(
            oreq, grant_user=profile, grant=valid.grant
        )
        if oreq.new_code is None:  # authlib refused after all: its error redirect
            return to_response(result)
        await self.provider.tokens.store_code(*oreq.new_code)
        # Back-channel logout reaches every client that got a code from this session.
        await self.idp.sessions.add_client(session.sid, oreq.client.client_id)
        if pending is not None:
            await self.idp.pending.delete(pending.id)
        return to_response(result)


def authorize_endpoint(provider: Provider) -> Callable[[Request], Awaitable[Response]]:
    async def authorize(request: Request) -> Response:
        try:
            oreq = await read_oauth2_request(request, source="any", cls=OneGateRequest)
            request_uri = oreq.payload.data.get("request_uri")
            if request_uri is not None and request_uri.startswith(REQUEST_URI_PREFIX):
                reject_duplicates(oreq)
                pushed = await pull_request(provider, request_uri, oreq.payload.client_id)
                if pushed is None:
                    raise InvalidRequestURIError("The 'request_uri' is unknown, expired or already used.")
                oreq = OneGateRequest(oreq.method, oreq.uri, oreq.headers, list(pushed.params), [])
        except OAuth2Error as error:
            return error_page(request, error)
        return await _Flow(provider, request).run(oreq, None)

    return authorize


def resume_endpoint(provider: Provider) -> Callable[[Request], Awaitable[Response]]:
    async def resume(request: Request) -> Response:
        pending = await provider.idp.pending.get(request.query_params.get("req"))
        if pending is None:
            error = InvalidRequestError("The sign-in request has expired. Start again from the application.")
            return error_page(request, error)
        oreq = OneGateRequest("GET", str(request.url), dict(request.headers), list(pending.params), [])
        denied = request.query_params.get("denied") == "1"
        return await _Flow(provider, request).run(oreq, pending, denied=denied)

    return resume
