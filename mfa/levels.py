"""Authentication levels: what a sign-in proved (``amr``) and the class it reaches (``acr``).

``amr`` values are those of RFC 8176 §2, one per method actually used in the SSO session:

=========  ==========================================================================
``pwd``    a password
``otp``    a one-time code: an authenticator app (TOTP) or a recovery code
``hwk``    a WebAuthn assertion from a device-bound key (a security key, a platform passkey)
``swk``    a WebAuthn assertion from a key that may be synced between devices (backup
           eligible, the ``BE`` flag): possession is proven, but of a copyable key
``user``   the authenticator tested user presence (the ``UP`` flag)
``pin``    the authenticator verified the user (the ``UV`` flag: a PIN or a biometric; the
           authenticator does not tell which, so ``pin`` stands for both)
``mfa``    two or more independent factors were used
=========  ==========================================================================

The three classes, ordered (a higher one satisfies a request for a lower one):

* ``urn:onegate:acr:pwd`` — one factor (a password);
* ``urn:onegate:acr:mfa`` — two factors (a password and a one-time code or a WebAuthn key, or
  a WebAuthn key whose authenticator verified the user);
* ``urn:onegate:acr:phr`` — phishing-resistant: two factors of which one is a WebAuthn key
  (bound to the origin by the browser, so a look-alike site gets nothing it can replay).

An SSO session is upgraded in place by a step-up: :func:`combine` merges the methods of the
step into the session's and :func:`acr_for` re-derives the class. Nothing here trusts input: the
methods come from checks the IdP itself made.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "ACR_LEVELS",
    "ACR_MFA",
    "ACR_PHR",
    "ACR_PWD",
    "AMR_HWK",
    "AMR_MFA",
    "AMR_OTP",
    "AMR_PIN",
    "AMR_PWD",
    "AMR_SWK",
    "AMR_USER",
    "acr_for",
    "combine",
    "level",
    "lowest_known",
    "satisfies",
]

ACR_PWD = "urn:onegate:acr:pwd"  # noqa: S105 - an authentication context class, not a secret
ACR_MFA = "urn:onegate:acr:mfa"
ACR_PHR = "urn:onegate:acr:phr"
ACR_LEVELS = (ACR_PWD, ACR_MFA, ACR_PHR)  # weakest first

AMR_PWD = "pwd"  # noqa: S105 - a method name, not a secret
AMR_OTP = "otp"
AMR_HWK = "hwk"
AMR_SWK = "swk"
AMR_USER = "user"
AMR_PIN = "pin"
AMR_MFA = "mfa"

_ORDER = (AMR_PWD, AMR_OTP, AMR_HWK, AMR_SWK, AMR_USER, AMR_PIN, AMR_MFA)
_KNOWLEDGE = frozenset({AMR_PWD})
_POSSESSION = frozenset({AMR_OTP, AMR_HWK, AMR_SWK})
_WEBAUTHN = frozenset({AMR_HWK, AMR_SWK})


def _factors(amr: frozenset[str]) -> int:
    """How many independent factors the methods prove: knowledge, possession, inherence/PIN."""
    count = 0
    if amr & _KNOWLEDGE:
        count += 1
    if amr & _POSSESSION:
        count += 1
    # User verification by the authenticator (PIN or biometric) is a second factor only
    # together with the key that performed it.
    if AMR_PIN in amr and amr & _WEBAUTHN:
        count += 1
    return count


def combine(*methods: Iterable[str]) -> tuple[str, ...]:
    """The union of several ``amr`` lists in a fixed order, with ``mfa`` when it is earned."""
    merged = frozenset(m for group in methods for m in group if m != AMR_MFA)
    if _factors(merged) >= 2:
        merged |= {AMR_MFA}
    return tuple(m for m in _ORDER if m in merged)


def acr_for(amr: Iterable[str]) -> str:
    """The class the methods reach."""
    methods = frozenset(amr)
    if _factors(methods) < 2:
        return ACR_PWD
    return ACR_PHR if methods & _WEBAUTHN else ACR_MFA


def level(acr: str | None) -> int:
    """The rank of a known class (0 = pwd); -1 for anything else."""
    return ACR_LEVELS.index(acr) if acr in ACR_LEVELS else -1


def satisfies(acr: str | None, wanted: str | None) -> bool:
    """Whether a session of class ``acr`` meets a requirement of class ``wanted`` (None: anything)."""
    if wanted is None:
        return True
    return level(acr) >= level(wanted) >= 0


def lowest_known(values: Iterable[str]) -> str | None:
    """The weakest of the known classes among ``values`` (an ``acr_values`` request: any of them
    will do, OIDC Core §3.1.2.1), or None when none is known."""
    known = [v for v in values if v in ACR_LEVELS]
    return min(known, key=ACR_LEVELS.index) if known else None
