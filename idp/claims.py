"""Which user claims a client receives: scopes (OIDC Core §5.4) and the ``claims`` request
parameter (OIDC Core §5.5).

Scopes and the claims they release::

    openid       sub
    profile      name (display name), preferred_username (username)
    email        email
    phone        phone_number
    groups       groups (group names)
    department   department (name), department_code, departments (codes: the department and
                 every one above it, nearest first; what access policies match on)
    offline_access   no claim: refresh tokens that outlive the SSO session (see idp.tokens)

The ``claims`` parameter may ask for single claims in the ID token or at userinfo. A claim
asked for that way is released only when its scope is one the client may use and the user
allowed (the authorization request counts those scopes in what it asks consent for), so the
parameter can never widen what a client learns. Claims that cannot be released are left out
without an error (§5.5.1: essential claims are a wish, not a condition), except ``acr``,
whose essential request the authorization endpoint enforces (§5.5.1.1).

ID tokens carry the scope claims as well as userinfo does: relying parties such as the
gateway then need no userinfo round trip (§5.4 allows either place).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from authlib.oauth2.rfc6749 import InvalidRequestError

__all__ = [
    "CLAIMS_SUPPORTED",
    "SCOPES_SUPPORTED",
    "SCOPE_CLAIMS",
    "USER_SCOPES",
    "ClaimsRequest",
    "UserProfile",
    "claim_scopes",
    "parse_claims_request",
    "releasable",
    "user_claims",
]

SCOPE_CLAIMS: Mapping[str, tuple[str, ...]] = {
    "openid": ("sub",),
    "profile": ("name", "preferred_username"),
    "email": ("email",),
    "phone": ("phone_number",),
    "groups": ("groups",),
    "department": ("department", "department_code", "departments"),
    "offline_access": (),
}
SCOPES_SUPPORTED = tuple(SCOPE_CLAIMS)
# Scopes about a user: meaningless (and refused) in a client_credentials grant.
USER_SCOPES = frozenset(SCOPE_CLAIMS)
_CLAIM_SCOPE = {claim: scope for scope, claims in SCOPE_CLAIMS.items() for claim in claims}
_PROTOCOL_CLAIMS = ("iss", "aud", "exp", "iat", "auth_time", "nonce", "acr", "amr", "sid", "at_hash", "azp")
CLAIMS_SUPPORTED = tuple(sorted({*_CLAIM_SCOPE, *_PROTOCOL_CLAIMS}))
MAX_CLAIMS_REQUEST = 4096  # characters of the JSON; a real request is a few hundred


class UserProfile(Protocol):
    """What the directory tells about a user (``Directory.profile``)."""

    @property
    def sub(self) -> str: ...
    @property
    def username(self) -> str: ...
    @property
    def display_name(self) -> str: ...
    @property
    def email(self) -> str | None: ...
    @property
    def phone(self) -> str | None: ...
    @property
    def department(self) -> str | None: ...
    @property
    def department_code(self) -> str | None: ...
    @property
    def departments(self) -> tuple[str, ...]: ...
    @property
    def groups(self) -> Collection[str]: ...
    @property
    def status(self) -> str: ...


@dataclass(frozen=True)
class ClaimsRequest:
    """A parsed ``claims`` parameter: claim name -> its request (``None``: just "please")."""

    id_token: Mapping[str, Mapping[str, Any] | None] = field(default_factory=dict)
    userinfo: Mapping[str, Mapping[str, Any] | None] = field(default_factory=dict)

    def essential_values(self, claim: str) -> tuple[str, ...] | None:
        """The values an ID token claim must take when requested as essential, else None."""
        spec = self.id_token.get(claim)
        if not spec or spec.get("essential") is not True:
            return None
        if "value" in spec:
            return (str(spec["value"]),)
        values = spec.get("values")
        return tuple(str(v) for v in values) if isinstance(values, list) else None

    def requested_value(self, claim: str) -> str | None:
        """A single ``value`` asked for an ID token claim (§5.5.1: e.g. a given ``sub``)."""
        spec = self.id_token.get(claim)
        value = spec.get("value") if spec else None
        return value if isinstance(value, str) else None

    def to_json(self) -> str:
        return json.dumps(
            {"id_token": self.id_token, "userinfo": self.userinfo}, ensure_ascii=False, separators=(",", ":")
        )


def _member(document: Mapping[str, Any], name: str) -> dict[str, Mapping[str, Any] | None]:
    value = document.get(name, {})
    if not isinstance(value, dict):
        raise InvalidRequestError(f"'claims' member '{name}' must be a JSON object.")
    out: dict[str, Mapping[str, Any] | None] = {}
    for claim, spec in value.items():
        if spec is not None and not isinstance(spec, dict):
            raise InvalidRequestError("Each requested claim must be null or a JSON object.")
        if spec is not None and "values" in spec and not isinstance(spec["values"], list):
            raise InvalidRequestError("A claim's 'values' must be a JSON array.")
        out[claim] = spec
    return out


def parse_claims_request(raw: str | None) -> ClaimsRequest:
    """Parse the ``claims`` parameter (OIDC Core §5.5); ``invalid_request`` when malformed."""
    if raw is None or raw == "":
        return ClaimsRequest()
    if len(raw) > MAX_CLAIMS_REQUEST:
        raise InvalidRequestError("The 'claims' parameter is too large.")
    try:
        document = json.loads(raw)
    except ValueError as e:
        raise InvalidRequestError("The 'claims' parameter is not JSON.") from e
    if not isinstance(document, dict):
        raise InvalidRequestError("The 'claims' parameter must be a JSON object.")
    return ClaimsRequest(id_token=_member(document, "id_token"), userinfo=_member(document, "userinfo"))


def claim_scopes(request: ClaimsRequest) -> frozenset[str]:
    """The scopes whose claims ``request`` asks for one by one."""
    names = [*request.id_token, *request.userinfo]
    return frozenset(_CLAIM_SCOPE[name] for name in names if name in _CLAIM_SCOPE)


def user_claims(profile: UserProfile, scopes: Iterable[str], extra: Iterable[str] = ()) -> dict[str, Any]:
    """The user claims of ``scopes`` plus the single claims in ``extra`` (already checked to be
    releasable); claims the directory has no value for are left out (OIDC Core §5.3.2)."""
    values: dict[str, Any] = {
        "sub": profile.sub,
        "name": profile.display_name,
        "preferred_username": profile.username,
        "email": profile.email,
        "phone_number": profile.phone,
        "groups": sorted(profile.groups),
        "department": profile.department,
        "department_code": profile.department_code,
        "departments": list(profile.departments) if profile.departments else None,
    }
    wanted = {"sub", *extra}
    for scope in scopes:
        wanted.update(SCOPE_CLAIMS.get(scope, ()))
    return {name: values[name] for name in sorted(wanted) if name in values and values[name] is not None}


def releasable(request: ClaimsRequest, authorized_scopes: Collection[str]) -> tuple[list[str], list[str]]:
    """The single claims of ``request`` (ID token, userinfo) whose scope is authorized."""

    def allowed(names: Iterable[str]) -> list[str]:
        return sorted(n for n in names if n in _CLAIM_SCOPE and _CLAIM_SCOPE[n] in authorized_scopes)

    return allowed(request.id_token), allowed(request.userinfo)
