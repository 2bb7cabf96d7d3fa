"""End every session of a user, at the IdP and at every gateway: what locking, disabling or
resetting an account (and the SOC's "revoke sessions" response) means.

The IdP's SSO sessions and the gateway's per-host sessions live in the deployment's KV. With
Redis (production) a command run anywhere ends them for every running instance: the gateway
publishes each revocation and every instance refuses the session on its next request. With the
embedded in-process KV only the process that holds it can; see docs/operations.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.events import EventEmitter
from gateway.sessions import GatewaySessions
from idp.events import auth_event
from idp.sessions import SessionStore
from onegate.runtime import Runtime

__all__ = ["EndedSessions", "end_user_sessions", "session_stores"]


@dataclass(frozen=True)
class EndedSessions:
    idp: int
    gateway: int


def session_stores(runtime: Runtime) -> tuple[SessionStore, GatewaySessions]:
    """The IdP's and the gateway's session stores on the runtime's KV, with its timeouts."""
    settings = runtime.settings
    idp = SessionStore(
        runtime.kv,
        idle_timeout=settings.idp.session_idle_timeout,
        absolute_timeout=settings.idp.session_absolute_timeout,
    )
    gateway = GatewaySessions(
        runtime.kv,
        idle_timeout=settings.gateway.session_idle_timeout,
        absolute_timeout=settings.gateway.session_absolute_timeout,
    )
    return idp, gateway


async def end_user_sessions(
    runtime: Runtime, *, user_id: int, sub: str, username: str, reason: str, actor: str, events: EventEmitter
) -> EndedSessions:
    """End the user's IdP and gateway sessions; one ``session-revoked`` event per session."""
    idp, gateway = session_stores(runtime)
    ended_idp = await idp.revoke_user(user_id)
    ended_gateway = await gateway.revoke_user(sub)
    for sid in [s.sid for s in ended_idp] + [s.sid for s in ended_gateway]:
        events.emit(
            auth_event(
                "session-revoked",
                success=True,
                reason=reason,
                username=username,
                user_id=user_id,
                session_id=sid,
                labels__actor=actor,
            )
        )
    return EndedSessions(idp=len(ended_idp), gateway=len(ended_gateway))
