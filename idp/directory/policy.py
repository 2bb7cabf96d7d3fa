"""The password policy: what a new password must satisfy, as a value with reason codes.

Rules follow NIST SP 800-63B §5.1.1.2 (memorized secret verifiers): a minimum length
(``settings.idp.password_min_length``, 12 by default) and a generous maximum (256), no
composition rules, but refuse passwords found in a list of commonly used ones, passwords
built on the account name, and repetitive or sequential characters ("aaaaaaaaaaaa",
"abcdefghijkl", "123456789012"). A password of digits only is refused too: twelve digits are a
phone number, an ID card fragment or a date far more often than a random number.

Passwords are compared after Unicode NFKC normalisation (§5.1.1.2 again), the same form
:class:`~idp.directory.passwords.PasswordHashing` hashes: full-width characters typed with a
Chinese input method ("１２３") count as their ASCII forms.

:meth:`PasswordPolicy.check` returns a :class:`PolicyResult`; pages translate its reason codes
(English message ids in :data:`REASON_MESSAGES`), they never show the password back.
"""

from __future__ import annotations

import itertools
import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "DEFAULT_MIN_LENGTH",
    "REASON_MESSAGES",
    "PasswordPolicy",
    "PolicyReason",
    "PolicyResult",
    "common_passwords",
    "normalise_password",
]

DEFAULT_MIN_LENGTH = 12
DEFAULT_MAX_LENGTH = 256


def N_(message: str) -> str:
    """Mark a message id for extraction (babel.cfg) without translating it here."""
    return message


class PolicyReason(StrEnum):
    """Why a password was refused: a closed vocabulary that pages translate."""

    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    CONTAINS_USERNAME = "contains_username"
    COMMON_PASSWORD = "common_password"  # noqa: S105 (a reason code, not a password)
    REPEATED = "repeated"
    SEQUENTIAL = "sequential"
    DIGITS_ONLY = "digits_only"
    # Set by Directory.set_password, not by the policy: the new password is the current one.
    REUSED = "reused"


REASON_MESSAGES: dict[str, str] = {
    PolicyReason.TOO_SHORT: N_("Use at least %(min_length)s characters."),
    PolicyReason.TOO_LONG: N_("Use at most %(max_length)s characters."),
    PolicyReason.CONTAINS_USERNAME: N_("The password must not contain your user name."),
    PolicyReason.COMMON_PASSWORD: N_("This password is too common; choose another one."),
    PolicyReason.REPEATED: N_("The password must not be the same characters repeated."),
    PolicyReason.SEQUENTIAL: N_("The password must not be a run of consecutive characters."),
    PolicyReason.DIGITS_ONLY: N_("The password must not be digits only."),
    PolicyReason.REUSED: N_("Choose a password different from the current one."),
}
"""English message ids per reason (placeholders: ``min_length``, ``max_length``)."""


@dataclass(frozen=True, slots=True)
class PolicyResult:
    """The verdict on one password: ``ok``, or the reasons it was refused (in rule order)."""

    ok: bool
    reasons: tuple[str, ...] = ()

    @classmethod
    def refused(cls, *reasons: str) -> PolicyResult:
        return cls(ok=False, reasons=reasons)


def normalise_password(password: str) -> str:
    """The form passwords are checked and hashed in (NIST SP 800-63B §5.1.1.2: NFKC)."""
    return unicodedata.normalize("NFKC", password)


@cache
def common_passwords() -> frozenset[str]:
    """The bundled list (common_passwords.txt), lower-case; read once per process."""
    text = resources.files("idp.directory").joinpath("common_passwords.txt").read_text("utf-8")
    return frozenset(
        line.strip().lower()
        for line in text.splitlines()
        if line.strip() and not (line.startswith("# ") or line.strip() == "#")
    )


def _repeated(password: str) -> bool:
    # One unit repeated at least twice covers "aaaaaaaaaaaa", "abcabcabcabc" and "passwordpassword".
    n = len(password)
    return any(n % size == 0 and password == password[:size] * (n // size) for size in range(1, n // 2 + 1))


def _sequential(password: str) -> bool:
    """A run of consecutive characters, ascending or descending (digits wrap: ...8901)."""
    if len(password) < 3:
        return False
    lowered = password.lower()
    return any(all(_follows(a, b, step) for a, b in itertools.pairwise(lowered)) for step in (1, -1))


def _follows(a: str, b: str, step: int) -> bool:
    if a.isdigit() and b.isdigit() and a.isascii() and b.isascii():
        return (int(a) + step) % 10 == int(b)
    return ord(b) - ord(a) == step


class PasswordPolicy:
    """Checks a candidate password; configured once from settings, shared by every caller."""

    def __init__(
        self,
        *,
        min_length: int = DEFAULT_MIN_LENGTH,
        max_length: int = DEFAULT_MAX_LENGTH,
        common: frozenset[str] | None = None,
    ) -> None:
        if not 1 <= min_length <= max_length:
            raise ValueError(f"password lengths must satisfy 1 <= min ({min_length}) <= max ({max_length})")
        self.min_length = min_length
        self.max_length = max_length
        self._common = common

    @property
    def common(self) -> frozenset[str]:
        return self._common if self._common is not None else common_passwords()

    def check(self, password: str, *, username: str | None = None) -> PolicyResult:
        """Every rule the password breaks, or ``ok``; never raises for any string."""
        candidate = normalise_password(password)
        reasons: list[str] = []
        if len(candidate) < self.min_length:
            reasons.append(PolicyReason.TOO_SHORT)
        if len(candidate) > self.max_length:
            # Past this the remaining rules would only cost time on a hostile input.
            return PolicyResult.refused(*reasons, PolicyReason.TOO_LONG)
        folded = candidate.casefold()
        if username and username.casefold() in folded:
            reasons.append(PolicyReason.CONTAINS_USERNAME)
        if folded in self.common or candidate.lower() in self.common:
            reasons.append(PolicyReason.COMMON_PASSWORD)
        if candidate and _repeated(candidate):
            reasons.append(PolicyReason.REPEATED)
        elif _sequential(candidate):
            reasons.append(PolicyReason.SEQUENTIAL)
        if candidate.isascii() and candidate.isdigit():
            reasons.append(PolicyReason.DIGITS_ONLY)
        return PolicyResult.refused(*reasons) if reasons else PolicyResult(ok=True)
