"""The consent page: ``GET`` / ``POST /consent?req=<id>`` (signed-in users only).

``/authorize`` sends the browser here when a third-party client asks for scopes the user has
not allowed it yet (OIDC Core 1.0 §3.1.2.4). The page names the client and what each scope
would give it; **Allow** records the consent (:class:`idp.consents.ConsentStore`, the union
with what was allowed before), emits ``consent-granted`` and continues at
``/authorize/resume?req=<id>``; **Deny** continues at ``/authorize/resume?req=<id>&denied=1``,
which the protocol side answers with ``access_denied`` to the client (RFC 6749 §4.1.2.1).
Nothing but the opaque request id travels through the browser, so the scopes granted are
exactly those of the validated request.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import Response

from core.web import N_, ErrorCode, HTTPProblem
from idp.clients.models import Client
from idp.consents import ConsentStore
from idp.context import IdpContext
from idp.events import auth_event
from idp.pages import (
    adopt_ui_locales,
    event_ip,
    form_field,
    localized_name,
    page_url,
    pending_request,
    redirect,
    render,
    signed_in,
)
from idp.pending import PendingAuthorization

__all__ = ["SCOPE_DESCRIPTIONS", "ConsentPage", "ScopeText"]


@dataclass(frozen=True)
class ScopeText:
    """What the consent page says about a scope (English message ids)."""

    title: str
    description: str


# OIDC Core 1.0 §5.4 (profile, email, phone), §11 (offline_access); groups and department
# are OneGate's own claims.
SCOPE_DESCRIPTIONS: dict[str, ScopeText] = {
    "openid": ScopeText(N_("Sign you in"), N_("Confirm who you are with a stable, anonymous identifier.")),
    "profile": ScopeText(N_("Your profile"), N_("Your name and user name.")),
    "email": ScopeText(N_("Your email address"), N_("Your work email address.")),
    "phone": ScopeText(N_("Your phone number"), N_("Your work phone number.")),
    "groups": ScopeText(N_("Your groups"), N_("The groups you belong to, which may decide what you can do.")),
    "department": ScopeText(N_("Your department"), N_("The department you work in.")),
    "offline_access": ScopeText(
        N_("Stay connected"),
        N_("Keep access to this information while you are away, until you sign out or withdraw consent."),
    ),
}


@dataclass(frozen=True)
class _ClientNames:
    pk: int
    name: str
    name_en: str | None


_EXPIRED = (
    "登录请求已过期或无效，请返回应用重新开始。",
    "This sign-in request has expired or is not valid. Go back to the application and start again.",
)


def expired_request() -> HTTPProblem:
    return HTTPProblem(
        ErrorCode.BAD_REQUEST, reason="unknown_request", message_zh=_EXPIRED[0], message_en=_EXPIRED[1]
    )


class ConsentPage:
    """``GET`` / ``POST /consent`` (see the module docstring)."""

    def __init__(self, ctx: IdpContext, consents: ConsentStore) -> None:
        self._ctx = ctx
        self._consents = consents

    async def show(self, request: Request) -> Response:
        ctx = self._ctx
        _req, pending = await pending_request(ctx, request)
        adopt_ui_locales(request, pending.ui_locales if pending else None)
        if pending is None:
            raise expired_request()
        me = await signed_in(ctx, request)
        if me is None:
            return redirect(request, "/login", req=pending.id)
        client = await self._client(pending)
        already = await self._consents.granted(me.user.id, client.pk)
        scopes = [
            {
                "name": scope,
                "text": SCOPE_DESCRIPTIONS.get(scope),
                "already": scope in already,
            }
            for scope in pending.scopes
        ]
        context = {
            "action": page_url(request, "/consent", req=pending.id),
            "client_name": localized_name(request, client.name, client.name_en),
            "display_name": me.user.display_name,
            "scopes": scopes,
        }
        return render(request, "consent.html", context)

    async def submit(self, request: Request) -> Response:
        ctx = self._ctx
        _req, pending = await pending_request(ctx, request)
        adopt_ui_locales(request, pending.ui_locales if pending else None)
        if pending is None:
            raise expired_request()
        me = await signed_in(ctx, request)
        if me is None:
            return redirect(request, "/login", req=pending.id)
        async with request.form() as form:
            decision = form_field(form, "decision")
        if decision == "deny":
            return redirect(request, "/authorize/resume", req=pending.id, denied="1")
        if decision != "allow":
            raise HTTPProblem(ErrorCode.BAD_REQUEST, reason="unknown_decision")
        client = await self._client(pending)
        allowed = await self._consents.grant(me.user.id, client.pk, pending.scopes)
        ctx.events.emit(
            auth_event(
                "consent-granted",
                success=True,
                username=me.user.username,
                user_id=me.user.id,
                source_ip=event_ip(ctx.client_ip(request)),
                client_id=pending.client_id,
                session_id=me.session.sid,
                labels__scopes=" ".join(sorted(allowed)),
            )
        )
        return redirect(request, "/authorize/resume", req=pending.id)

    async def _client(self, pending: PendingAuthorization) -> _ClientNames:
        async with self._ctx.db() as s:
            row = (
                await s.execute(
                    select(Client.id, Client.name, Client.name_en, Client.disabled).where(
                        Client.client_id == pending.client_id
                    )
                )
            ).one_or_none()
        if row is None or row.disabled:
            raise expired_request()  # the client was removed or disabled after /authorize
        return _ClientNames(pk=row.id, name=row.name, name_en=row.name_en)
