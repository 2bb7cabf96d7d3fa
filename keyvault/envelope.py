"""Envelope encryption of secrets at rest (client secrets, TOTP seeds, signing keys).

Each record gets a fresh random data key (DEK). The record is encrypted under the DEK; the
DEK is encrypted ("wrapped") under a key-encryption key (KEK) derived from the active master
key. Rotating the master key therefore only needs the small wrapped DEK rewritten
(:meth:`Envelope.rewrap`), never the data.

Blob layout, format version 1 (``K`` = the suite's key size: 32 for ``aes``, 16 for ``gm``)::

    offset      size   field
    0           1      format version (0x01)
    1           1      suite id (see keyvault.suites)
    2           4      master key id
    6           12     wrap nonce
    18          K+16   wrapped DEK = AEAD(KEK, wrap nonce, DEK, wrap_aad)
    34+K        12     data nonce
    46+K        n+16   data ciphertext = AEAD(DEK, data nonce, plaintext, data_aad)

    KEK       = HKDF(suite hash, master key, info="onegate keyvault kek v1 " || suite name)
    wrap_aad  = "onegate-kv/wrap\\0" || version || suite id || master key id || data nonce
    data_aad  = "onegate-kv/data\\0" || version || suite id || caller aad

Every byte is authenticated: version and suite id by both AEADs; the key id by the wrap;
the wrap nonce and wrapped DEK by the wrap's tag; the data nonce by both; the ciphertext by
the data tag. The master key id and wrap nonce are deliberately *not* in ``data_aad``, so a
rewrap leaves the data part (data nonce + ciphertext) byte-identical. The caller's ``aad``
(e.g. ``b"table:users/id:42/column:totp_seed"``) binds a ciphertext to its record, so a
blob copied into another row fails to decrypt.

Random nonces under one KEK are safe up to about 2^32 wraps (NIST SP 800-38D §8.3); rotate
the master key long before that (each record uses the KEK once).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Final

from keyvault.errors import DecryptionError
from keyvault.masterkey import MasterKey, MasterKeyring
from keyvault.suites import NONCE_SIZE, TAG_SIZE, CipherSuite, get_suite, suite_for_id

__all__ = ["FORMAT_VERSION", "Envelope"]

FORMAT_VERSION: Final = 1
_KEY_ID_SIZE: Final = 4
_WRAP_LABEL: Final = b"onegate-kv/wrap\x00"
_DATA_LABEL: Final = b"onegate-kv/data\x00"
_KEK_INFO: Final = b"onegate keyvault kek v1 "


class _Parsed:
    """The fields of a blob, sliced but not yet authenticated."""

    __slots__ = ("ciphertext", "data_nonce", "key_id", "suite", "version", "wrap_nonce", "wrapped_dek")

    def __init__(self, blob: bytes) -> None:
        if len(blob) < 2:
            raise DecryptionError("ciphertext is truncated")
        self.version = blob[0]
        if self.version != FORMAT_VERSION:
            raise DecryptionError("unsupported ciphertext format version")
        suite = suite_for_id(blob[1])
        if suite is None:
            raise DecryptionError("unknown cipher suite id")
        self.suite = suite
        wrapped_len = suite.key_size + TAG_SIZE
        wrap_end = 2 + _KEY_ID_SIZE + NONCE_SIZE + wrapped_len
        if len(blob) < wrap_end + NONCE_SIZE + TAG_SIZE:
            raise DecryptionError("ciphertext is truncated")
        self.key_id = blob[2 : 2 + _KEY_ID_SIZE]
        self.wrap_nonce = blob[2 + _KEY_ID_SIZE : 2 + _KEY_ID_SIZE + NONCE_SIZE]
        self.wrapped_dek = blob[2 + _KEY_ID_SIZE + NONCE_SIZE : wrap_end]
        self.data_nonce = blob[wrap_end : wrap_end + NONCE_SIZE]
        self.ciphertext = blob[wrap_end + NONCE_SIZE :]


def _wrap_aad(suite: CipherSuite, key_id: bytes, data_nonce: bytes) -> bytes:
    return _WRAP_LABEL + bytes((FORMAT_VERSION, suite.suite_id)) + key_id + data_nonce


def _data_aad(suite: CipherSuite, aad: bytes) -> bytes:
    # The prefix has a fixed length, so the caller's aad cannot be confused with it.
    return _DATA_LABEL + bytes((FORMAT_VERSION, suite.suite_id)) + aad


def _require_bytes(value: object, name: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{name} must be bytes, not {type(value).__name__}")


class Envelope:
    """Encrypt, decrypt and rewrap records under a master keyring.

    ``suite`` is used for *new* records; decryption takes the suite from each blob's header,
    so switching the configured suite leaves existing records readable.
    """

    def __init__(
        self,
        keyring: MasterKeyring,
        suite: CipherSuite | str = "aes",
        *,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._keyring = keyring
        self._suite = get_suite(suite) if isinstance(suite, str) else suite
        self._token_bytes = token_bytes
        # KEKs by (master key id, suite id). Ids are derived from key material, so an entry
        # stays correct even after use_keyring() swaps the ring.
        self._keks: dict[tuple[bytes, int], bytes] = {}

    @property
    def keyring(self) -> MasterKeyring:
        return self._keyring

    @property
    def suite(self) -> CipherSuite:
        return self._suite

    def use_keyring(self, keyring: MasterKeyring) -> None:
        """Swap in a reloaded keyring (e.g. after a master key rotation on disk)."""
        self._keyring = keyring

    def _kek(self, master: MasterKey, suite: CipherSuite) -> bytes:
        cache_key = (master.id_bytes, suite.suite_id)
        kek = self._keks.get(cache_key)
        if kek is None:
            kek = suite.derive_key(master.material, _KEK_INFO + suite.name.encode("ascii"))
            self._keks[cache_key] = kek
        return kek

    def _wrap(self, suite: CipherSuite, dek: bytes, data_nonce: bytes) -> bytes:
        """Header + wrapped DEK under the active master key (everything before the data nonce)."""
        master = self._keyring.active
        key_id = master.id_bytes
        wrap_nonce = self._token_bytes(NONCE_SIZE)
        wrapped = suite.encrypt(
            self._kek(master, suite), wrap_nonce, dek, _wrap_aad(suite, key_id, data_nonce)
        )
        return bytes((FORMAT_VERSION, suite.suite_id)) + key_id + wrap_nonce + wrapped

    def _unwrap(self, p: _Parsed) -> bytes:
        master = self._keyring.get(p.key_id.hex())  # UnknownKeyError is a DecryptionError
        return p.suite.decrypt(
            self._kek(master, p.suite),
            p.wrap_nonce,
            p.wrapped_dek,
            _wrap_aad(p.suite, p.key_id, p.data_nonce),
        )

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt ``plaintext`` bound to ``aad`` (which must be given again to decrypt)."""
        plaintext = _require_bytes(plaintext, "plaintext")
        aad = _require_bytes(aad, "aad")
        suite = self._suite
        dek = self._token_bytes(suite.key_size)
        data_nonce = self._token_bytes(NONCE_SIZE)
        ciphertext = suite.encrypt(dek, data_nonce, plaintext, _data_aad(suite, aad))
        return self._wrap(suite, dek, data_nonce) + data_nonce + ciphertext

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        """Authenticate and decrypt; any tampering (blob or aad) raises :class:`DecryptionError`."""
        blob = _require_bytes(blob, "blob")
        aad = _require_bytes(aad, "aad")
        p = _Parsed(blob)
        try:
            dek = self._unwrap(p)
            return p.suite.decrypt(dek, p.data_nonce, p.ciphertext, _data_aad(p.suite, aad))
        except ValueError as e:  # a length check in a primitive: still just a bad blob
            raise DecryptionError("malformed ciphertext") from e

    def rewrap(self, blob: bytes) -> bytes:
        """Re-wrap the data key under the active master key; the data part is left as is.

        The wrapped key is authenticated before it is re-wrapped; the data part is not (that
        needs the record's aad) and is checked by the next :meth:`decrypt`. A blob already
        under the active key is returned unchanged.
        """
        blob = _require_bytes(blob, "blob")
        p = _Parsed(blob)
        if p.key_id == self._keyring.active.id_bytes:
            return blob
        try:
            dek = self._unwrap(p)
        except ValueError as e:
            raise DecryptionError("malformed ciphertext") from e
        return self._wrap(p.suite, dek, p.data_nonce) + p.data_nonce + p.ciphertext

    def key_id_of(self, blob: bytes) -> str:
        """The master key id named in the header (unauthenticated: for migration jobs only)."""
        return _Parsed(_require_bytes(blob, "blob")).key_id.hex()

    def needs_rewrap(self, blob: bytes) -> bool:
        """Whether ``blob`` is wrapped under a key other than the active one."""
        return self.key_id_of(blob) != self._keyring.active_id

    def __repr__(self) -> str:
        return f"Envelope(suite={self._suite.name!r}, keyring={self._keyring!r})"
