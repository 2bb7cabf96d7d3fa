"""How strong a sign-in must be: the authentication class (acr) a user, a client or a request needs.

Three sources, and the strongest of them wins (``mfa.levels`` orders the classes):

* the **user** — every user when ``mfa.required`` is set, a user an administrator asked to set up a
  second factor (``users.mfa_enrol_required``), and the members of any group with ``mfa_required``;
* the **client** — ``clients.minimum_acr``, for applications that hold sensitive data;
* the **request** — ``acr_values`` (OIDC Core 1.0 §3.1.2.1: any of the listed classes will do, so the
  weakest known one is the requirement) and an essential ``acr`` claim (§5.5.1.1).

The requirement is checked on every authorization request against the SSO session's ``acr``; a
session that falls short is stepped up in place (``/mfa``), never silently accepted.
"""

from __future__ import annotations

from collections.abc import Iterable

from mfa.levels import ACR_MFA, level, lowest_known

__all__ = ["request_requirement", "strongest", "user_requirement"]


def strongest(*required: str | None) -> str | None:
    """The strongest of the known classes given (None: no requirement)."""
    known = [acr for acr in required if acr is not None and level(acr) >= 0]
    return max(known, key=level) if known else None


def request_requirement(
    *, client_minimum: str | None, acr_values: Iterable[str], essential_acr: Iterable[str] | None
) -> str | None:
    """The class an authorization request needs, from its client and its own parameters."""
    return strongest(
        client_minimum,
        lowest_known(acr_values),
        lowest_known(essential_acr) if essential_acr is not None else None,
    )


def user_requirement(*, everyone: bool, enrol_required: bool, group_required: bool) -> str | None:
    """The class every sign-in of a user needs, whatever the client."""
    return ACR_MFA if everyone or enrol_required or group_required else None
