"""Logout: RP-Initiated Logout 1.0 (``/logout``) and Back-Channel Logout 1.0 (a session listener).

``GET``/``POST /logout`` (the ``end_session_endpoint``) takes ``id_token_hint``,
``client_id``, ``post_logout_redirect_uri``, ``state``, ``ui_locales`` (RP-Initiated §2):

* an ``id_token_hint`` must be an ID token we issued — expired is fine, nothing else is
  (:meth:`idp.tokens.TokenService.verify_id_token_hint`); an invalid one, or one whose ``aud``
  does not contain ``client_id``, ends in an error page: no logout, no redirect (§4);
* the redirect target must be registered, exactly, for *that* client (§3); any other value is
  dropped and the user sees our "signed out" page instead — never an open redirect;
* the session ends at once when the hint names this browser's session (its ``sid``); without
  a hint, or with one for another session, the user confirms first (§6: a logout request
  without a valid hint is a denial-of-service vector). The confirmation form posts to
  ``/logout/confirm``, which the CSRF middleware protects; ``/logout`` itself is exempt, since
  relying parties may POST to it cross-site;
* ``state`` is returned with the redirect (§3).

Ending a session goes through :meth:`idp.context.IdpContext.end_session`, whose listeners
include :class:`BackChannelLogout`: it marks the session's tokens ended (:mod:`idp.tokens`)
and POSTs a signed ``logout_token`` (Back-Channel Logout §2.4) to the
``backchannel_logout_uri`` of every client that received a code from the session — over real
HTTP (aiohttp), in a background task (never delaying the user's response), with a short
timeout and a couple of retries, one ``backchannel-logout`` event per delivery.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc6749 import InvalidRequestError, OAuth2Error
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from core.events import Category, Event, EventEmitter, Outcome
from core.logging import get_logger
from idp.endpoints import error_page, reject_duplicates
from idp.errors import IdTokenHintInvalid
from idp.events import auth_event
from idp.integrations.starlette import read_form, read_oauth2_request
from idp.server import OneGateRequest

if TYPE_CHECKING:
    from idp.claims import UserProfile
    from idp.clients.services import ClientRegistry
    from idp.server import Provider
    from idp.sessions import SSOSession
    from idp.tokens import TokenService

__all__ = ["BackChannelLogout", "confirm_endpoint", "logout_endpoint"]

_log = get_logger("onegate.idp.logout")
LOGOUT_REQUEST_TTL = 600.0
_DELIVERY_ACTION = "backchannel-logout"


class BackChannelLogout:
    """A session listener (``IdpContext.session_listeners``): when an SSO session ends, end its
    tokens and tell every client that had it (OIDC Back-Channel Logout 1.0 §2.5-§2.8).

    Build it before the ``IdpContext`` (it needs no context)::

        backchannel = BackChannelLogout(tokens=TokenService(...), clients=registry,
                                        profiles=directory.profile, events=bus)
        ctx = IdpContext(..., session_listeners=(backchannel,))
    """

    def __init__(
        self,
        *,
        tokens: TokenService,
        clients: ClientRegistry,
        profiles: Callable[[int], Awaitable[UserProfile | None]],
        events: EventEmitter,
        timeout: float = 2.0,
        attempts: int = 3,
        backoff: float = 0.25,
    ) -> None:
        self._tokens = tokens
        self._clients = clients
        self._profiles = profiles
        self._events = events
        self._timeout = timeout
        self._attempts = attempts
        self._backoff = backoff
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, session: SSOSession, reason: str) -> None:
        await self._tokens.end_session(session.sid)
        targets: list[tuple[str, str]] = []
        for client_id in session.clients:
            row = await self._clients.get(client_id)
            if row is not None and not row.disabled and row.backchannel_logout_uri:
                targets.append((client_id, row.backchannel_logout_uri))
        if not targets:
            return
        profile = await self._profiles(session.user_id)
        if profile is None:
            return
        deliveries = [
            (client_id, uri, self._tokens.logout_token(client_id=client_id, sub=profile.sub, sid=session.sid))
            for client_id, uri in targets
        ]
        task = asyncio.create_task(
            self._deliver_all(session, deliveries), name=f"backchannel-logout:{session.sid}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the deliveries under way (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _deliver_all(self, session: SSOSession, deliveries: list[tuple[str, str, str]]) -> None:
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            await asyncio.gather(
                *(self._deliver(http, session, client_id, uri, token) for client_id, uri, token in deliveries)
            )

    async def _deliver(
        self, http: aiohttp.ClientSession, session: SSOSession, client_id: str, uri: str, logout_token: str
    ) -> None:
        status: int | None = None
        reason = "unreachable"
        attempt = 0
        for attempt in range(1, self._attempts + 1):
            try:
                # §2.5: POST, form-encoded; never follow a redirect with the token.
                async with http.post(uri, data={"logout_token": logout_token}, allow_redirects=False) as resp:
                    status = resp.status
                    await resp.read()
            except (aiohttp.ClientError, TimeoutError) as e:
                status, reason = None, type(e).__name__.lower()
            else:
                if status in (200, 204):  # §2.8: 200 OK (204 is common and harmless)
                    reason = "delivered"
                    break
                reason = f"http_{status}"
                if status < 500:  # the RP refused the token: retrying will not change that
                    break
            if attempt < self._attempts:
                await asyncio.sleep(self._backoff * attempt)
        fields: dict[str, Any] = {
            "onegate.client_id": client_id,
            "session.id": session.sid,
            "user.id": str(session.user_id),
            "user.name": session.username,
            "url.original": uri,
            "onegate.reason": reason,
            "labels.attempts": attempt,
        }
        if status is not None:
            fields["http.response.status_code"] = status
        if reason != "delivered":
            _log.warning("backchannel_logout_failed", client_id=client_id, reason=reason, attempts=attempt)
        self._events.emit(
            Event(
                action=_DELIVERY_ACTION,
                category=Category.SESSION,
                outcome=Outcome.SUCCESS if reason == "delivered" else Outcome.FAILURE,
                dataset="onegate.idp",
                fields=fields,
            )
        )


# -- RP-initiated logout ---------------------------------------------------------------------------


def _render(request: Request, template: str, context: dict[str, Any], status: int = 200) -> Response:
    response: Response = request.app.state.templates.render(
        request, template, context, status_code=status, headers={"Cache-Control": "no-store"}
    )
    return response


async def _end(provider: Provider, request: Request, session: SSOSession, target: str | None) -> Response:
    idp = provider.idp
    await idp.end_session(session.sid, reason="logout")
    idp.events.emit(
        auth_event(
            "user-logout",
            success=True,
            username=session.username,
            user_id=session.user_id,
            session_id=session.sid,
            source_ip=idp.client_ip(request),
        )
    )
    response = (
        RedirectResponse(target, status_code=303) if target else _render(request, "logged_out.html", {})
    )
    idp.clear_session_cookie(response)
    return response


def logout_endpoint(provider: Provider) -> Callable[[Request], Awaitable[Response]]:
    idp = provider.idp

    async def logout(request: Request) -> Response:
        try:
            oreq = await read_oauth2_request(request, source="any", cls=OneGateRequest)
            reject_duplicates(oreq)
            data = oreq.payload.data
            hint = None
            if data.get("id_token_hint"):
                try:
                    hint = provider.tokens.verify_id_token_hint(data["id_token_hint"])
                except IdTokenHintInvalid as e:
                    raise InvalidRequestError("Invalid 'id_token_hint'.") from e
            client_id = data.get("client_id")
            if hint is not None:
                aud = hint["aud"]
                audiences = [aud] if isinstance(aud, str) else list(aud)
                if client_id is not None and client_id not in audiences:  # §2
                    raise InvalidRequestError("'client_id' is not an audience of 'id_token_hint'.")
                client_id = client_id or (audiences[0] if len(audiences) == 1 else hint.get("azp"))
        except OAuth2Error as error:
            return error_page(request, error)

        client = await provider.client(client_id) if client_id else None
        target = None
        uri = data.get("post_logout_redirect_uri")
        if uri and client is not None and uri in client.post_logout_redirect_uris:  # §3: exact match
            target = add_params_to_uri(uri, [("state", data["state"])]) if data.get("state") else uri

        session = await idp.current_session(request, touch=False)
        if session is None:
            # Nothing to end here; a validated target is still honoured (§2, "had a session").
            return (
                RedirectResponse(target, status_code=303)
                if target
                else _render(request, "logged_out.html", {})
            )
        if hint is not None and hint.get("sid") == session.sid:
            return await _end(provider, request, session, target)

        reference = provider.tokens.new_secret()
        record = {"sid": session.sid, "target": target}
        await idp.kv.set(f"oauth-logout:{reference}", json.dumps(record).encode(), ttl=LOGOUT_REQUEST_TTL)
        name = None
        if client is not None:
            name = client.row.display_name(str(request.scope.get("state", {}).get("locale", "")))
        return _render(request, "logout_confirm.html", {"req": reference, "client_name": name})

    return logout


def confirm_endpoint(provider: Provider) -> Callable[[Request], Awaitable[Response]]:
    idp = provider.idp

    async def confirm(request: Request) -> Response:
        try:
            form = dict(await read_form(request))
        except OAuth2Error as error:
            return error_page(request, error)
        reference = form.get("req", "")
        raw = await idp.kv.get_and_delete(f"oauth-logout:{reference[:64]}") if reference else None
        if raw is None:
            return error_page(request, InvalidRequestError("The sign-out request has expired."))
        record = json.loads(raw)
        session = await idp.current_session(request, touch=False)
        if session is None:
            return _render(request, "logged_out.html", {})
        # The user confirmed (a CSRF-checked form): end this browser's session, whichever it is.
        return await _end(provider, request, session, record.get("target"))

    return confirm
