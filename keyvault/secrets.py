"""Named service secrets (the CSRF key, cookie keys ...), generated once and kept encrypted.

Each secret is a file ``<directory>/<name>.bin`` holding an envelope ciphertext whose
associated data names the secret, so one secret's file cannot stand in for another's.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from pathlib import Path

from keyvault.envelope import Envelope
from keyvault.store import (
    create_private_file,
    ensure_private_dir,
    locked,
    read_private_file,
    replace_private_file,
)

__all__ = ["SecretStore"]

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


class SecretStore:
    """Random secrets by name; the same name returns the same bytes in every process."""

    def __init__(
        self,
        directory: Path,
        envelope: Envelope,
        *,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._directory = Path(directory)
        self._envelope = envelope
        self._token_bytes = token_bytes
        self._cache: dict[str, bytes] = {}

    def __repr__(self) -> str:
        return f"SecretStore({str(self._directory)!r}, names={sorted(self._cache)})"

    def get_or_create(self, name: str, size: int = 32) -> bytes:
        """The secret called ``name``, created with ``size`` random bytes the first time."""
        if not _NAME.match(name):
            raise ValueError(f"secret name {name!r} must be lower-case letters, digits and dashes")
        if name in self._cache:
            return self._cache[name]
        aad = f"onegate secret:{name}".encode()
        path = self._directory / f"{name}.bin"
        ensure_private_dir(self._directory)
        # The lock makes "read, or create if absent" one step across processes.
        with locked(self._directory / ".lock"):
            if path.exists():
                value = self._envelope.decrypt(read_private_file(path), aad)
            else:
                value = self._token_bytes(size)
                create_private_file(path, self._envelope.encrypt(value, aad))
        self._cache[name] = value
        return value

    def rewrap(self) -> int:
        """Re-wrap every stored secret under the active master key; the number changed."""
        if not self._directory.is_dir():
            return 0
        changed = 0
        with locked(self._directory / ".lock"):
            for path in sorted(self._directory.glob("*.bin")):
                blob = read_private_file(path)
                rewrapped = self._envelope.rewrap(blob)
                if rewrapped != blob:
                    replace_private_file(path, rewrapped)
                    changed += 1
        return changed
