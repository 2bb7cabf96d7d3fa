"""The IdP's security events (ECS), one constructor per kind so emitters cannot drift.

Actions (``event.action``): ``user-login`` (outcome success / failure with
``onegate.reason``), ``user-locked``, ``user-logout``, ``session-revoked``, ``session-step-up``
(a session upgraded in place by a further factor: ``onegate.amr``, ``onegate.acr``),
``consent-granted``, ``token-issued``, ``token-refreshed``, ``token-revoked``, ``refresh-token-reused``,
``code-reused``, ``ip-throttled``. Never pass a secret: the event model refuses fields that
look like one.
"""

from __future__ import annotations

from typing import Any

from core.events import Category, Event, Outcome

__all__ = ["auth_event"]

_CATEGORY = {
    "user-login": Category.AUTHENTICATION,
    "user-locked": Category.IAM,
    "user-unlocked": Category.IAM,
    "user-logout": Category.SESSION,
    "session-revoked": Category.SESSION,
    "session-step-up": Category.AUTHENTICATION,
    "backchannel-logout": Category.SESSION,
    "consent-granted": Category.IAM,
    "consent-revoked": Category.IAM,
    "token-issued": Category.AUTHENTICATION,
    "token-refreshed": Category.AUTHENTICATION,
    "token-revoked": Category.AUTHENTICATION,
    "refresh-token-reused": Category.INTRUSION_DETECTION,
    "code-reused": Category.INTRUSION_DETECTION,
    "ip-throttled": Category.INTRUSION_DETECTION,
    "user-created": Category.IAM,
    "user-updated": Category.IAM,
    "user-disabled": Category.IAM,
    "user-enabled": Category.IAM,
    "password-reset": Category.IAM,
    "password-changed": Category.IAM,
    "group-created": Category.IAM,
    "group-member-added": Category.IAM,
    "group-member-removed": Category.IAM,
    "department-created": Category.IAM,
}


def auth_event(
    action: str,
    *,
    success: bool,
    reason: str | None = None,
    username: str | None = None,
    user_id: int | None = None,
    source_ip: str | None = None,
    client_id: str | None = None,
    session_id: str | None = None,
    user_agent: str | None = None,
    **extra: Any,
) -> Event:
    """An IdP event; ``extra`` takes further ECS fields with ``__`` for dots (``url__path``)."""
    fields: dict[str, Any] = {}
    if username is not None:
        fields["user.name"] = username
    if user_id is not None:
        fields["user.id"] = str(user_id)
    if source_ip:
        fields["source.ip"] = source_ip
    if client_id is not None:
        fields["onegate.client_id"] = client_id
    if session_id is not None:
        fields["session.id"] = session_id
    if user_agent:
        fields["user_agent.original"] = user_agent[:512]
    if reason is not None:
        fields["onegate.reason"] = reason
    fields.update({key.replace("__", "."): value for key, value in extra.items()})
    return Event(
        action=action,
        category=_CATEGORY[action],
        outcome=Outcome.SUCCESS if success else Outcome.FAILURE,
        dataset="onegate.idp",
        fields=fields,
    )
