"""The keyvault exception family.

One base class, :class:`KeyvaultError`, so a caller can catch everything keyvault raises
in one clause; below it one class per kind of failure. Messages never contain key
material, plaintext or token contents: they name files, key ids and reasons only.

::

    KeyvaultError
    ├── MasterKeyError          no usable master key (env var malformed, nothing configured)
    │   └── KeyFileError        a key file is missing, unsafe (permissions) or malformed
    ├── DecryptionError         a ciphertext did not authenticate (any tampering lands here)
    │   └── UnknownKeyError     ... because its master key id is not in the keyring
    ├── SigningKeyError         no signing key can sign now / the signing store is unusable
    └── TokenInvalid            a JWT failed verification (bad form, signature, alg, kid ...)
        ├── TokenExpired        ... because ``exp`` has passed (beyond the leeway)
        └── TokenNotYetValid    ... because ``nbf`` is still in the future (beyond the leeway)
"""

from __future__ import annotations

__all__ = [
    "DecryptionError",
    "KeyFileError",
    "KeyvaultError",
    "MasterKeyError",
    "SigningKeyError",
    "TokenExpired",
    "TokenInvalid",
    "TokenNotYetValid",
    "UnknownKeyError",
]


class KeyvaultError(Exception):
    """Base class of every error raised by the keyvault package."""


class MasterKeyError(KeyvaultError):
    """No usable master key: the environment value is malformed or nothing is configured."""


class KeyFileError(MasterKeyError):
    """A key file is missing, malformed, or readable by group/others (the message says the fix)."""


class DecryptionError(KeyvaultError):
    """A ciphertext blob failed to authenticate or parse.

    Deliberately uninformative: which byte was wrong is not reported, so the error cannot be
    used as an oracle. Tampering with any bit of the blob or the associated data ends here.
    """


class UnknownKeyError(DecryptionError):
    """The blob names a master key id that the keyring does not hold.

    A subclass of :class:`DecryptionError` because a flipped bit in the key id field must be
    handled like any other tampering; callers that care (e.g. "restart after rotation") can
    still tell it apart.
    """


class SigningKeyError(KeyvaultError):
    """No signing key is active, or the signing key store cannot be used."""


class TokenInvalid(KeyvaultError):
    """A token failed verification. The base of the token error family."""


class TokenExpired(TokenInvalid):
    """The token's ``exp`` claim is in the past (beyond the allowed leeway)."""


class TokenNotYetValid(TokenInvalid):
    """The token's ``nbf`` claim is in the future (beyond the allowed leeway)."""
