"""Cipher suites: which AEAD and which hash keyvault uses.

Two suites, chosen per deployment by name and recorded per ciphertext by a one-byte id:

==========  ====  =====================  ========  ===========================================
name        id    AEAD                   key size  hash
==========  ====  =====================  ========  ===========================================
``aes``     0x01  AES-256-GCM            32 bytes  SHA-256
``gm``      0x02  SM4-GCM (GB/T 32907)   16 bytes  SM3 (GB/T 32905)
==========  ====  =====================  ========  ===========================================

Both use a 96-bit nonce and a full 128-bit tag (NIST SP 800-38D §5.2.1.1 recommends 96-bit
IVs; truncated tags are refused). The ids are part of the stored ciphertext format: never
renumber them.

Every primitive checks its inputs strictly (key length, nonce length, minimum ciphertext
length) and raises ``ValueError`` for programming errors; a tag that fails to verify raises
:class:`~keyvault.errors.DecryptionError`.
"""

from __future__ import annotations

from typing import Final, Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keyvault.errors import DecryptionError

__all__ = [
    "AES_GCM",
    "GM_SM4_GCM",
    "NONCE_SIZE",
    "SUITES",
    "TAG_SIZE",
    "AesGcmSuite",
    "CipherSuite",
    "Sm4GcmSuite",
    "get_suite",
    "suite_for_id",
]

NONCE_SIZE: Final = 12
TAG_SIZE: Final = 16


@runtime_checkable
class CipherSuite(Protocol):
    """An AEAD with a fixed key size plus the hash that goes with it."""

    @property
    def name(self) -> str:
        """Configuration name (``"aes"`` / ``"gm"``)."""
        ...

    @property
    def suite_id(self) -> int:
        """One byte written into ciphertext headers; stable forever."""
        ...

    @property
    def key_size(self) -> int:
        """AEAD key length in bytes."""
        ...

    def encrypt(self, key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """Return ``ciphertext || tag`` (tag is :data:`TAG_SIZE` bytes)."""
        ...

    def decrypt(self, key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        """Verify and decrypt ``ciphertext || tag``; raise ``DecryptionError`` if it fails."""
        ...

    def hash_algorithm(self) -> hashes.HashAlgorithm:
        """A fresh instance of the suite's hash (for HKDF, HMAC, digests)."""
        ...

    def digest(self, data: bytes) -> bytes:
        """The suite's hash of ``data``."""
        ...

    def derive_key(self, secret: bytes, info: bytes) -> bytes:
        """HKDF (RFC 5869) with the suite's hash: a ``key_size``-byte key for ``info``."""
        ...


def _check(key: bytes, nonce: bytes, key_size: int, name: str) -> None:
    if not isinstance(key, bytes) or len(key) != key_size:
        raise ValueError(f"{name}: key must be exactly {key_size} bytes")
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
        raise ValueError(f"{name}: nonce must be exactly {NONCE_SIZE} bytes")


class _SuiteBase:
    name: str
    suite_id: int
    key_size: int

    def hash_algorithm(self) -> hashes.HashAlgorithm:
        raise NotImplementedError

    def digest(self, data: bytes) -> bytes:
        h = hashes.Hash(self.hash_algorithm())
        h.update(data)
        return h.finalize()

    def derive_key(self, secret: bytes, info: bytes) -> bytes:
        if len(secret) < 32:
            raise ValueError(f"{self.name}: key derivation secret must be at least 32 bytes")
        # No salt: the input is already a uniformly random 256-bit key (RFC 5869 §3.1 allows
        # omitting it); ``info`` gives domain separation between uses and suites (§3.2).
        return HKDF(algorithm=self.hash_algorithm(), length=self.key_size, salt=None, info=info).derive(
            secret
        )

    def __repr__(self) -> str:
        return f"<CipherSuite {self.name} id=0x{self.suite_id:02x}>"


class AesGcmSuite(_SuiteBase):
    """AES-256-GCM + SHA-256 (the default)."""

    name = "aes"
    suite_id = 0x01
    key_size = 32

    def hash_algorithm(self) -> hashes.HashAlgorithm:
        return hashes.SHA256()

    def encrypt(self, key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        _check(key, nonce, self.key_size, self.name)
        return AESGCM(key).encrypt(nonce, plaintext, aad)

    def decrypt(self, key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        _check(key, nonce, self.key_size, self.name)
        if len(ciphertext) < TAG_SIZE:
            raise DecryptionError("ciphertext too short")
        try:
            return AESGCM(key).decrypt(nonce, ciphertext, aad)
        except InvalidTag as e:
            raise DecryptionError("authentication failed") from e


class Sm4GcmSuite(_SuiteBase):
    """SM4-GCM + SM3, the Chinese commercial cryptography (GM/T) suite.

    SM4 has a 128-bit key, so wrapping keys derived from the 256-bit master key are 16 bytes
    (see :meth:`derive_key`). ``cryptography`` has no one-shot SM4 AEAD class, so the generic
    ``Cipher(SM4, GCM)`` interface is used with an explicit 16-byte tag.
    """

    name = "gm"
    suite_id = 0x02
    key_size = 16

    def hash_algorithm(self) -> hashes.HashAlgorithm:
        return hashes.SM3()

    def encrypt(self, key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        _check(key, nonce, self.key_size, self.name)
        enc = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
        enc.authenticate_additional_data(aad)
        ct = enc.update(plaintext) + enc.finalize()
        return ct + enc.tag

    def decrypt(self, key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        _check(key, nonce, self.key_size, self.name)
        if len(ciphertext) < TAG_SIZE:
            raise DecryptionError("ciphertext too short")
        body, tag = ciphertext[:-TAG_SIZE], ciphertext[-TAG_SIZE:]
        # min_tag_length pinned to the full tag: never accept a truncated tag.
        dec = Cipher(algorithms.SM4(key), modes.GCM(nonce, tag, min_tag_length=TAG_SIZE)).decryptor()
        dec.authenticate_additional_data(aad)
        try:
            return dec.update(body) + dec.finalize()
        except InvalidTag as e:
            raise DecryptionError("authentication failed") from e


AES_GCM: Final[CipherSuite] = AesGcmSuite()
GM_SM4_GCM: Final[CipherSuite] = Sm4GcmSuite()

SUITES: Final[dict[str, CipherSuite]] = {s.name: s for s in (AES_GCM, GM_SM4_GCM)}
_BY_ID: Final[dict[int, CipherSuite]] = {s.suite_id: s for s in (AES_GCM, GM_SM4_GCM)}


def get_suite(name: str) -> CipherSuite:
    """The suite configured as ``name``; ``ValueError`` listing the valid names otherwise."""
    try:
        return SUITES[name]
    except (KeyError, TypeError):
        valid = ", ".join(repr(n) for n in SUITES)
        raise ValueError(f"unknown cipher suite {name!r}; expected one of {valid}") from None


def suite_for_id(suite_id: int) -> CipherSuite | None:
    """The suite whose header id is ``suite_id``, or ``None`` if unknown."""
    return _BY_ID.get(suite_id)
