"""MFA errors. Checks of user input return values (``TotpResult``, ``RecoveryResult``);
exceptions are for broken storage or misuse by the caller."""

from __future__ import annotations

__all__ = ["MfaError", "UnreadableSecret"]


class MfaError(Exception):
    """Base class of the errors raised by :mod:`mfa`."""


class UnreadableSecret(MfaError):
    """A stored TOTP seed does not decrypt (wrong master key, tampered or moved row)."""
