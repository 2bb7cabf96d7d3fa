"""Password hashing: argon2id with the OWASP Password Storage Cheat Sheet parameters.

OWASP (2024) recommends argon2id with at least 19 MiB of memory, 2 iterations and one
degree of parallelism; that costs ~20 ms per hash on the 2-core machines measured here,
and far more for an attacker with a stolen table. Hashes carry their parameters (PHC
string), so raising them later only needs ``needs_rehash`` at the next login
(``Directory.verify_password`` re-hashes on a successful verify).

Passwords are hashed in their Unicode NFKC form (NIST SP 800-63B §5.1.1.2), so a password typed
with full-width characters by a Chinese input method matches its ASCII spelling. NFKC leaves
ASCII unchanged, so hashes made before this normalisation still verify.
"""

from __future__ import annotations

import secrets
import string

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from idp.directory.policy import normalise_password

__all__ = ["PasswordHashing", "generate_password"]

_ALPHABET = string.ascii_letters + string.digits


class PasswordHashing:
    """Hash and verify low-entropy secrets (passwords, recovery codes)."""

    def __init__(self, *, time_cost: int = 2, memory_cost_kib: int = 19 * 1024, parallelism: int = 1) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_cost_kib,
            parallelism=parallelism,
            hash_len=32,
            salt_len=16,
        )
        # Verified against for unknown users, so that both paths do the same work (no enumeration).
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))

    def hash(self, password: str) -> str:
        return self._hasher.hash(normalise_password(password))

    def verify(self, stored_hash: str | None, password: str) -> bool:
        """True when ``password`` matches; with ``stored_hash`` None, equal work and False."""
        try:
            return (
                self._hasher.verify(stored_hash or self._dummy, normalise_password(password))
                and stored_hash is not None
            )
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored_hash: str) -> bool:
        """True when ``stored_hash`` was made with other parameters (or is not argon2id at all)."""
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except (InvalidHashError, ValueError):
            return True


def generate_password(length: int = 20) -> str:
    """A random one-time password (~119 bits for 20 characters)."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))
