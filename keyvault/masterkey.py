"""Master keys: the root secret that wraps every data key (see docs/keyvault.md).

A :class:`MasterKeyring` holds one or more 32-byte master keys, one of them active. New
records are wrapped under the active key; every key in the ring can still unwrap, which is
what makes rotation possible without re-encrypting data.

A key's id is derived from its material: the first 4 bytes of
``SHA-256("onegate keyvault master key id v1" || 0x00 || key)``, as 8 hex digits. A
derived id means the same key has the same id wherever it is configured (key file,
environment, a future KMS hook), a key file entry can be checked against its material,
and nothing needs to be assigned. 32 bits of a hash of a 256-bit random key reveal nothing
usable about the key.

Sources, in order (:func:`load_master_keyring`):

1. ``ONEGATE_MASTER_KEY`` — base64url (RFC 4648 §5, padding optional) of exactly 32 bytes:
   the active key. ``ONEGATE_MASTER_KEY_PREVIOUS`` may add older keys (comma-separated,
   same encoding) that are kept for unwrapping only. When the variable is set, the key file
   is not read at all.
2. ``<data_dir>/keys/master.key`` — JSON, mode ``0600``::

       {"format": 1, "active": "<id>",
        "keys": [{"id": "<id>", "created_at": <unix seconds>, "key": "<base64url>"}, ...]}

The key material is never part of a ``repr`` or an exception message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from keyvault.errors import KeyFileError, MasterKeyError, UnknownKeyError
from keyvault.store import (
    create_private_file,
    ensure_private_dir,
    locked,
    read_private_file,
    replace_private_file,
)

__all__ = [
    "ENV_MASTER_KEY",
    "ENV_MASTER_KEY_PREVIOUS",
    "MASTER_KEY_SIZE",
    "MasterKey",
    "MasterKeyring",
    "create_master_key_file",
    "generate_master_key",
    "load_master_key_file",
    "load_master_keyring",
    "master_key_id",
    "master_key_path",
    "remove_master_key",
    "rotate_master_key",
]

ENV_MASTER_KEY: Final = "ONEGATE_MASTER_KEY"
ENV_MASTER_KEY_PREVIOUS: Final = "ONEGATE_MASTER_KEY_PREVIOUS"
MASTER_KEY_SIZE: Final = 32
KEY_FILE_FORMAT: Final = 1

_ID_DOMAIN: Final = b"onegate keyvault master key id v1\x00"
_ID_RE: Final = re.compile(r"[0-9a-f]{8}")
_B64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]+={0,2}")


def master_key_id(material: bytes) -> str:
    """The id (8 lowercase hex digits) of a master key with this material."""
    return hashlib.sha256(_ID_DOMAIN + material).digest()[:4].hex()


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode_key(text: str, what: str) -> bytes:
    """Decode a base64url master key strictly; messages never echo the value."""
    text = text.strip()
    if not _B64URL_RE.fullmatch(text):
        raise MasterKeyError(f"{what} is not base64url (RFC 4648 §5: A-Z a-z 0-9 - _)")
    unpadded = text.rstrip("=")
    try:
        raw = base64.urlsafe_b64decode(unpadded + "=" * (-len(unpadded) % 4))
    except (binascii.Error, ValueError):
        raise MasterKeyError(f"{what} is not valid base64url") from None
    if len(raw) != MASTER_KEY_SIZE:
        raise MasterKeyError(f"{what} must decode to exactly {MASTER_KEY_SIZE} bytes, got {len(raw)}")
    if _b64url_encode(raw) != unpadded:
        raise MasterKeyError(f"{what} is not canonical base64url")
    return raw


class MasterKey:
    """One master key: 32 bytes of material and the id derived from it.

    Equality is by id (which is derived from the material); ``repr`` shows the id only.
    """

    __slots__ = ("_material", "created_at", "key_id")

    def __init__(self, material: bytes, *, created_at: float | None = None) -> None:
        if not isinstance(material, bytes) or len(material) != MASTER_KEY_SIZE:
            raise ValueError(f"a master key is exactly {MASTER_KEY_SIZE} bytes")
        self._material = material
        self.key_id: str = master_key_id(material)
        self.created_at = created_at

    @property
    def material(self) -> bytes:
        """The raw key. Only keyvault's envelope should ever need this."""
        return self._material

    @property
    def id_bytes(self) -> bytes:
        """The id as the 4 bytes stored in ciphertext headers."""
        return bytes.fromhex(self.key_id)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MasterKey):
            return NotImplemented
        return hmac.compare_digest(self._material, other._material)

    def __hash__(self) -> int:
        return hash(self.key_id)

    def __repr__(self) -> str:
        return f"MasterKey(id={self.key_id!r})"

    def __reduce__(self) -> Any:
        # Refuse pickling: a pickled key would land wherever the pickle goes (caches, logs).
        raise TypeError("MasterKey cannot be pickled")


class MasterKeyring:
    """An immutable set of master keys, one of them active (wraps new data keys)."""

    __slots__ = ("_active", "_by_id", "source")

    def __init__(self, keys: Iterable[MasterKey], active_id: str, *, source: str = "memory") -> None:
        by_id: dict[str, MasterKey] = {}
        for key in keys:
            if key.key_id in by_id:
                raise MasterKeyError(f"master key {key.key_id} is listed twice ({source})")
            by_id[key.key_id] = key
        if not by_id:
            raise MasterKeyError(f"no master keys ({source})")
        if active_id not in by_id:
            raise MasterKeyError(f"active master key {active_id!r} is not among the keys ({source})")
        self._by_id: Mapping[str, MasterKey] = by_id
        self._active = by_id[active_id]
        self.source = source

    @classmethod
    def generate(cls, *, token_bytes: Callable[[int], bytes] = secrets.token_bytes) -> MasterKeyring:
        """A fresh in-memory ring with one random key (tests, benchmarks, tooling)."""
        key = MasterKey(token_bytes(MASTER_KEY_SIZE))
        return cls([key], key.key_id)

    @property
    def active(self) -> MasterKey:
        """The key that wraps new data keys."""
        return self._active

    @property
    def active_id(self) -> str:
        return self._active.key_id

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._by_id)

    def get(self, key_id: str) -> MasterKey:
        """The key with ``key_id``; :class:`UnknownKeyError` if the ring does not hold it."""
        try:
            return self._by_id[key_id]
        except KeyError:
            raise UnknownKeyError(f"master key {key_id!r} is not in the keyring ({self.source})") from None

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._by_id

    def __iter__(self) -> Iterator[MasterKey]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def __repr__(self) -> str:
        return f"MasterKeyring(active={self.active_id!r}, ids={self.ids!r}, source={self.source!r})"


# -- the key file ------------------------------------------------------------------------------


def master_key_path(data_dir: Path) -> Path:
    """Where the master key file lives: ``<data_dir>/keys/master.key``."""
    return Path(data_dir) / "keys" / "master.key"


def _lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def _serialize(keys: list[MasterKey], active_id: str) -> bytes:
    doc = {
        "format": KEY_FILE_FORMAT,
        "active": active_id,
        "keys": [
            {"id": k.key_id, "created_at": k.created_at, "key": _b64url_encode(k.material)} for k in keys
        ],
    }
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def _parse(path: Path, raw: bytes) -> MasterKeyring:
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        # The decoder's message could quote file content: report the file only.
        raise KeyFileError(f"key file {path} is not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != KEY_FILE_FORMAT:
        raise KeyFileError(f'key file {path}: expected a JSON object with "format": {KEY_FILE_FORMAT}')
    active, entries = doc.get("active"), doc.get("keys")
    if not isinstance(active, str) or not isinstance(entries, list) or not entries:
        raise KeyFileError(f'key file {path}: needs "active" (a key id) and a non-empty "keys" list')
    keys: list[MasterKey] = []
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise KeyFileError(f"key file {path}: keys[{n}] is not an object")
        key_id, material, created_at = entry.get("id"), entry.get("key"), entry.get("created_at")
        if not isinstance(key_id, str) or not _ID_RE.fullmatch(key_id) or not isinstance(material, str):
            raise KeyFileError(f'key file {path}: keys[{n}] needs an "id" (8 hex digits) and a "key"')
        if created_at is not None and (
            isinstance(created_at, bool) or not isinstance(created_at, int | float)
        ):
            raise KeyFileError(f"key file {path}: keys[{n}].created_at must be a number")
        try:
            key = MasterKey(_b64url_decode_key(material, f"keys[{n}].key"), created_at=created_at)
        except MasterKeyError as e:
            raise KeyFileError(f"key file {path}: {e}") from None
        # The id is derived from the material, so a mismatch means the entry was damaged
        # (or hand-edited): refuse rather than wrap data under a key nobody can name.
        if not hmac.compare_digest(key.key_id, key_id):
            raise KeyFileError(f"key file {path}: keys[{n}] id {key_id} does not match its key material")
        keys.append(key)
    try:
        return MasterKeyring(keys, active, source=str(path))
    except MasterKeyError as e:
        raise KeyFileError(str(e)) from None


def load_master_key_file(path: Path) -> MasterKeyring:
    """Read and validate a master key file (must be ``0600``-style: no group/other access)."""
    path = Path(path)
    return _parse(path, read_private_file(path))


def create_master_key_file(
    path: Path,
    *,
    clock: Callable[[], float] = time.time,
    token_bytes: Callable[[int], bytes] = secrets.token_bytes,
) -> MasterKeyring:
    """Create a new key file with one random key (file ``0600``, directory ``0700``).

    Refuses to overwrite: losing a master key loses every secret wrapped under it.
    """
    path = Path(path)
    ensure_private_dir(path.parent)
    key = MasterKey(token_bytes(MASTER_KEY_SIZE), created_at=clock())
    try:
        create_private_file(path, _serialize([key], key.key_id))
    except FileExistsError:
        raise KeyFileError(f"key file {path} already exists; refusing to overwrite a master key") from None
    return MasterKeyring([key], key.key_id, source=str(path))


def rotate_master_key(
    path: Path,
    *,
    clock: Callable[[], float] = time.time,
    token_bytes: Callable[[int], bytes] = secrets.token_bytes,
) -> str:
    """Add a new random key to the file and make it active; return its id.

    Older keys stay in the file so existing records still decrypt; ``Envelope.rewrap`` moves
    records to the new key, after which :func:`remove_master_key` can drop an old one.
    Running processes keep their loaded ring until restarted.
    """
    path = Path(path)
    with locked(_lock_path(path)):
        ring = load_master_key_file(path)
        key = MasterKey(token_bytes(MASTER_KEY_SIZE), created_at=clock())
        if key.key_id in ring:  # 2^-32 chance with a sound RNG; never silently merge
            raise MasterKeyError("new master key id collides with an existing one; run rotation again")
        replace_private_file(path, _serialize([*ring, key], key.key_id))
    return key.key_id


def remove_master_key(path: Path, key_id: str) -> None:
    """Drop a no-longer-needed key from the file. The active key cannot be removed.

    Only do this once every record wrapped under ``key_id`` has been rewrapped: anything
    still wrapped under it becomes undecryptable.
    """
    path = Path(path)
    with locked(_lock_path(path)):
        ring = load_master_key_file(path)
        if key_id == ring.active_id:
            raise MasterKeyError(f"master key {key_id} is active; rotate before removing it")
        ring.get(key_id)
        replace_private_file(path, _serialize([k for k in ring if k.key_id != key_id], ring.active_id))


# -- the environment ---------------------------------------------------------------------------


def generate_master_key(*, token_bytes: Callable[[int], bytes] = secrets.token_bytes) -> str:
    """A new random key in the ``ONEGATE_MASTER_KEY`` encoding (base64url, no padding)."""
    return _b64url_encode(token_bytes(MASTER_KEY_SIZE))


def _from_environment(value: str, previous: str) -> MasterKeyring:
    active = MasterKey(_b64url_decode_key(value, ENV_MASTER_KEY))
    keys = [active]
    for n, item in enumerate(p for p in previous.split(",") if p.strip()):
        keys.append(MasterKey(_b64url_decode_key(item, f"{ENV_MASTER_KEY_PREVIOUS} item {n + 1}")))
    source = f"environment {ENV_MASTER_KEY}"
    if len(keys) > 1:
        source += f" + {ENV_MASTER_KEY_PREVIOUS}"
    return MasterKeyring(keys, active.key_id, source=source)


def load_master_keyring(data_dir: Path, environ: Mapping[str, str] = os.environ) -> MasterKeyring:
    """Load the master keyring from the environment, else from ``<data_dir>/keys/master.key``.

    This is the one place in keyvault that reads the environment. An empty variable counts as
    unset (container templates often expand a missing value to ``""``).
    """
    value = environ.get(ENV_MASTER_KEY, "").strip()
    previous = environ.get(ENV_MASTER_KEY_PREVIOUS, "").strip()
    if value:
        return _from_environment(value, previous)
    if previous:
        raise MasterKeyError(
            f"{ENV_MASTER_KEY_PREVIOUS} is set but {ENV_MASTER_KEY} is not; set the active key too"
        )
    path = master_key_path(data_dir)
    if not path.exists():
        raise KeyFileError(f"no master key: set {ENV_MASTER_KEY} or create {path} (onegate init creates it)")
    return load_master_key_file(path)
