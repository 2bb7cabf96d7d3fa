"""What a decision is made about, and what it says.

A :class:`Request` is everything the policy may look at: who (user, groups, departments, roles,
authentication level and age), what (application, canonical path, method), from where (source
address), when, and the user's current risk score. A :class:`Decision` is the answer: an
:class:`Effect`, the ids of the rules that made it, and for ``step_up`` the authentication the
gateway must ask the IdP for.

Authentication levels (``acr``) are ranked ``pwd`` < ``mfa`` < ``phr`` (password; password and a
second factor; phishing-resistant, i.e. a passkey). Rules name them by the short name or the full
URN the IdP puts in ``acr`` (``urn:onegate:acr:mfa``).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from policy.normalize import canonical_path

__all__ = [
    "ACR_NAMES",
    "ACR_URN_PREFIX",
    "Decision",
    "Effect",
    "IPAddress",
    "Reason",
    "Request",
    "StepUp",
    "acr_rank",
    "acr_urn",
    "client_address",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ACR_URN_PREFIX = "urn:onegate:acr:"
# Weakest first; the rank of a level is its index + 1 (0: not authenticated, or unknown).
ACR_NAMES = ("pwd", "mfa", "phr")
_RANKS = {name: i + 1 for i, name in enumerate(ACR_NAMES)} | {
    ACR_URN_PREFIX + name: i + 1 for i, name in enumerate(ACR_NAMES)
}


def acr_rank(value: str | None) -> int:
    """The rank of an authentication level (short name or URN); 0 for none or an unknown one."""
    if not value:
        return 0
    return _RANKS.get(value, 0)


def acr_urn(name: str) -> str:
    """The URN of a level given by short name or URN (``mfa`` -> ``urn:onegate:acr:mfa``)."""
    rank = acr_rank(name)
    if not rank:
        raise ValueError(f"unknown authentication level {name!r}")
    return ACR_URN_PREFIX + ACR_NAMES[rank - 1]


def client_address(value: str | IPAddress) -> IPAddress:
    """An address as rules see it: an IPv4-mapped IPv6 address (``::ffff:10.1.2.3``, what a dual-stack
    socket reports for an IPv4 client) is the IPv4 address, so IPv4 networks match it."""
    address = ipaddress.ip_address(value) if isinstance(value, str) else value
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class Effect(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    STEP_UP = "step_up"


class Reason(StrEnum):
    """Why a decision came out as it did (closed vocabulary: events, the deny page, explain)."""

    ALLOWED = "allowed"  # an allow rule matched, no deny rule, every step-up requirement met
    DENIED_BY_RULE = "denied_by_rule"  # a deny rule matched (deny overrides allow)
    NO_MATCHING_RULE = "no_matching_rule"  # default deny: no allow rule matched
    STEP_UP_REQUIRED = "step_up_required"  # allowed once a stronger or fresher sign-in is proved
    UNKNOWN_APP = "unknown_app"  # the application has no policy at all


@dataclass(frozen=True, slots=True)
class StepUp:
    """The obligation of a ``step_up`` decision: sign in again with at least ``acr`` (a URN), and
    with ``max_age`` set, no longer ago than that many seconds."""

    acr: str | None
    max_age: int | None


@dataclass(frozen=True, slots=True)
class Decision:
    effect: Effect
    reason: Reason
    rule_ids: tuple[str, ...] = ()
    step_up: StepUp | None = None

    @property
    def allowed(self) -> bool:
        return self.effect is Effect.ALLOW

    @property
    def obligations(self) -> dict[str, object]:
        """What the gateway must do besides forwarding (``acr_values`` and ``max_age`` for a step-up)."""
        if self.step_up is None:
            return {}
        out: dict[str, object] = {}
        if self.step_up.acr:
            out["acr_values"] = self.step_up.acr
        if self.step_up.max_age is not None:
            out["max_age"] = self.step_up.max_age
        return out


_set = object.__setattr__


@dataclass(frozen=True, slots=True)
class Request:
    """One request as the policy sees it.

    ``path`` is the canonical match key (:attr:`policy.normalize.CanonicalPath.key`): the gateway
    canonicalises once and passes the key here; :meth:`of` does it for callers holding a raw path.
    ``departments`` holds the user's department and every department above it, nearest first.
    ``user`` is None for a request with no signed-in user.
    """

    app: str
    path: str
    method: str = "GET"
    user: str | None = None
    groups: frozenset[str] = frozenset()
    departments: tuple[str, ...] = ()
    roles: frozenset[str] = frozenset()
    acr: str | None = None
    auth_time: float | None = None
    ip: IPAddress | None = None
    now: float = field(default_factory=time.time)
    risk: int = 0

    @classmethod
    def of(
        cls,
        *,
        app: str,
        path: str,
        method: str = "GET",
        user: str | None = None,
        groups: Iterable[str] = (),
        departments: Iterable[str] = (),
        roles: Iterable[str] = (),
        acr: str | None = None,
        auth_time: float | None = None,
        ip: str | IPAddress | None = None,
        now: float | None = None,
        risk: int = 0,
    ) -> Request:
        """A request from loosely typed values (CLI, tests, replayed events); the path is raw and is
        canonicalised here (:class:`policy.normalize.PathRejected` if it cannot be)."""
        return cls(
            app=app,
            path=canonical_path(path).key,
            method=method.upper(),
            user=user or None,
            groups=frozenset(groups),
            departments=tuple(departments),
            roles=frozenset(roles),
            acr=acr or None,
            auth_time=auth_time,
            ip=client_address(ip) if ip is not None else None,
            now=time.time() if now is None else now,
            risk=risk,
        )

    @classmethod
    def exact(  # noqa: PLR0917 - positional on purpose: the gateway calls it on every request
        cls,
        app: str,
        path: str,
        method: str,
        user: str | None,
        groups: frozenset[str],
        departments: tuple[str, ...],
        roles: frozenset[str],
        acr: str | None,
        auth_time: float | None,
        ip: IPAddress | None,
        now: float,
        risk: int,
    ) -> Request:
        """A request from values already of the right types, every one given (the gateway's
        hot path: the dataclass constructor costs twice as much)."""
        request = object.__new__(cls)
        _set(request, "app", app)
        _set(request, "path", path)
        _set(request, "method", method)
        _set(request, "user", user)
        _set(request, "groups", groups)
        _set(request, "departments", departments)
        _set(request, "roles", roles)
        _set(request, "acr", acr)
        _set(request, "auth_time", auth_time)
        _set(request, "ip", ip)
        _set(request, "now", now)
        _set(request, "risk", risk)
        return request

    @property
    def acr_rank(self) -> int:
        return acr_rank(self.acr)

    @property
    def auth_age(self) -> float | None:
        """Seconds since the user last proved their identity (None: unknown)."""
        return None if self.auth_time is None else max(0.0, self.now - self.auth_time)
