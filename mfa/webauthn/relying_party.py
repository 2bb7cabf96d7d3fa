"""The relying party (WebAuthn L3 §4 "Relying Party", "RP ID"): who we are and what we accept,
checked once, at start-up, naming the setting in the error.

* **An exact origin allow-list.** fido2 by default accepts any origin under the RP id (any
  subdomain); we accept only the configured origins, compared as strings in the form a browser
  serialises them (lower case, no default port). Each must lie within the RP id.
* The user-verification requirement, the attestation conveyance (``none`` or ``direct``), the
  AAGUID allow-list (never the all-zero AAGUID), the public-key algorithms offered and the
  ceremony lifetime.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from fido2.server import Fido2Server
from fido2.webauthn import (
    AttestationConveyancePreference,
    PublicKeyCredentialParameters,
    PublicKeyCredentialRpEntity,
    PublicKeyCredentialType,
)

__all__ = ["ALGORITHMS", "USER_VERIFICATION", "RelyingParty", "check_origin"]

USER_VERIFICATION = ("required", "preferred", "discouraged")
_ATTESTATION = ("none", "direct")
_ZERO_AAGUID = "00000000-0000-0000-0000-000000000000"
# The algorithms offered in pubKeyCredParams, in the order §5.4 recommends: EdDSA, ES256, RS256.
# A credential of any other algorithm is refused (§7.1: its "alg" must be one we asked for).
ALGORITHMS = (-8, -7, -257)


def check_origin(origin: str) -> str:
    """``origin`` as the browser reports it (``scheme://host[:port]``); ValueError when it is not one."""
    parts = urlsplit(origin)
    if (
        parts.scheme not in ("https", "http")
        or not parts.hostname
        or parts.path
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise ValueError(f"mfa.webauthn_origins: {origin!r} is not an origin (scheme://host[:port])")
    # The browser serialises an origin in lower case without a default port; compare that form.
    return f"{parts.scheme}://{parts.netloc.lower()}"


@dataclass(frozen=True, slots=True)
class RelyingParty:
    """The checked settings; build it with :meth:`checked`."""

    id: str
    name: str
    origins: frozenset[str]
    user_verification: str
    attestation: str
    aaguids: frozenset[str]
    challenge_ttl: int

    @classmethod
    def checked(
        cls,
        *,
        rp_id: str,
        rp_name: str,
        origins: Sequence[str],
        user_verification: str,
        attestation: str,
        aaguid_allowlist: Collection[str],
        challenge_ttl: int,
    ) -> RelyingParty:
        """The relying party these settings describe; ValueError naming the first bad setting."""
        if not rp_id or any(ch in rp_id for ch in "/:@ ") or rp_id != rp_id.lower():
            raise ValueError(f"mfa.webauthn_rp_id: {rp_id!r} is not a domain name")
        if not origins:
            raise ValueError("mfa.webauthn_origins: at least one origin is needed")
        allowed = frozenset(check_origin(o.rstrip("/")) for o in origins)
        for origin in allowed:
            host = urlsplit(origin).hostname or ""
            # §4 "RP ID": the RP id must be the origin's host or a registrable suffix of it; a browser
            # refuses any other combination, so say so at start-up rather than at every sign-in.
            if host != rp_id and not host.endswith("." + rp_id):
                raise ValueError(f"mfa.webauthn_origins: {origin} is not within the RP id {rp_id!r}")
        if user_verification not in USER_VERIFICATION:
            raise ValueError(f"mfa.webauthn_user_verification must be one of {', '.join(USER_VERIFICATION)}")
        if attestation not in _ATTESTATION:
            raise ValueError(f"mfa.webauthn_attestation must be one of {', '.join(_ATTESTATION)}")
        aaguids: set[str] = set()
        for value in aaguid_allowlist:
            try:
                aaguids.add(str(uuid.UUID(value)))
            except ValueError as e:
                raise ValueError(f"mfa.webauthn_aaguids: {value!r} is not an AAGUID (a UUID)") from e
        if _ZERO_AAGUID in aaguids:
            # The all-zero AAGUID is what a client sends when it hides the model: allowing it
            # would make the allow-list allow everything.
            raise ValueError("mfa.webauthn_aaguids: the all-zero AAGUID cannot be allowed")
        if challenge_ttl <= 0:
            raise ValueError("mfa.webauthn_challenge_ttl must be positive")
        return cls(
            id=rp_id,
            name=rp_name,
            origins=allowed,
            user_verification=user_verification,
            attestation=attestation,
            aaguids=frozenset(aaguids),
            challenge_ttl=challenge_ttl,
        )

    def origin_allowed(self, origin: object) -> bool:
        """Whether the client data's ``origin`` is one of ours, exactly (§7.1 / §7.2)."""
        return isinstance(origin, str) and origin in self.origins

    def server(self) -> Fido2Server:
        """fido2's server for this relying party: it checks type, origin (through
        :meth:`origin_allowed`), challenge, ``rpIdHash``, UP / UV and the assertion signature."""
        server = Fido2Server(
            PublicKeyCredentialRpEntity(id=self.id, name=self.name),
            attestation=AttestationConveyancePreference(self.attestation),
            # Exact match: fido2's default accepts any https origin under the RP id.
            verify_origin=self.origin_allowed,
        )
        server.allowed_algorithms = [
            PublicKeyCredentialParameters(type=PublicKeyCredentialType.PUBLIC_KEY, alg=alg)
            for alg in ALGORITHMS
        ]
        # A hint to the browser, in milliseconds (fido2 declares the attribute as None only).
        server.timeout = self.challenge_ttl * 1000  # type: ignore[assignment]
        return server
