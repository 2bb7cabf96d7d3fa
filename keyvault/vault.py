"""Wiring: build the keyvault of one data directory from typed settings.

``open_keyvault`` assembles what exists and creates nothing; ``init_keyvault`` (used by
``onegate init``) first creates what is missing — the master key file, unless the master key
comes from the environment, and the first signing key — and is safe to run again.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from keyvault.envelope import Envelope
from keyvault.masterkey import (
    ENV_MASTER_KEY,
    MasterKeyring,
    create_master_key_file,
    load_master_keyring,
    master_key_path,
)
from keyvault.secrets import SecretStore
from keyvault.signing import ALGORITHMS, SigningKeyring
from keyvault.suites import SUITES, get_suite

__all__ = ["Keyvault", "init_keyvault", "open_keyvault", "signing_dir"]


@dataclasses.dataclass(frozen=True)
class Keyvault:
    """The keyvault of one data directory."""

    keyring: MasterKeyring
    envelope: Envelope
    signing: SigningKeyring
    secrets: SecretStore

    def rewrap(self) -> dict[str, int]:
        """Re-wrap everything this vault stores under the active master key (after a rotation).

        Returns how many records of each kind changed. Records kept by other components (in
        the database) are re-wrapped by them with :meth:`Envelope.rewrap`.
        """
        return {"signing_keys": self.signing.rewrap(), "secrets": self.secrets.rewrap()}


def signing_dir(data_dir: Path) -> Path:
    """Where signing keys are stored: ``<data_dir>/keys/signing``."""
    return Path(data_dir) / "keys" / "signing"


def _check_settings(
    suite: str, signing_alg: str, prepublish_seconds: float, retire_after_seconds: float
) -> None:
    # Each message names the setting, so a bad config file is fixed in one go.
    if suite not in SUITES:
        valid = ", ".join(repr(n) for n in SUITES)
        raise ValueError(f"setting keyvault.suite: unknown cipher suite {suite!r}; expected one of {valid}")
    if signing_alg not in ALGORITHMS:
        valid = ", ".join(repr(a) for a in ALGORITHMS)
        raise ValueError(
            f"setting keyvault.signing_alg: unknown signing algorithm {signing_alg!r}; "
            f"expected one of {valid}"
        )
    if not prepublish_seconds >= 0:
        raise ValueError(f"setting keyvault.prepublish_seconds: must be >= 0, got {prepublish_seconds!r}")
    if not retire_after_seconds >= 0:
        raise ValueError(f"setting keyvault.retire_after_seconds: must be >= 0, got {retire_after_seconds!r}")


def open_keyvault(
    data_dir: Path,
    *,
    suite: str = "aes",
    signing_alg: str = "ES256",
    prepublish_seconds: int,
    retire_after_seconds: int,
    environ: Mapping[str, str] = os.environ,
    clock: Callable[[], float] = time.time,
) -> Keyvault:
    """Open the keyvault under ``data_dir``; raises ``MasterKeyError`` if no master key exists.

    ``suite`` is the cipher suite for new ciphertexts (``aes`` or ``gm``); ``signing_alg`` the
    algorithm of newly generated signing keys. See :class:`~keyvault.signing.SigningKeyring`
    for the two durations.
    """
    _check_settings(suite, signing_alg, prepublish_seconds, retire_after_seconds)
    keyring = load_master_keyring(Path(data_dir), environ)
    envelope = Envelope(keyring, get_suite(suite))
    signing = SigningKeyring(
        signing_dir(data_dir),
        envelope,
        alg=signing_alg,
        prepublish_seconds=prepublish_seconds,
        retire_after_seconds=retire_after_seconds,
        clock=clock,
    )
    secrets = SecretStore(Path(data_dir) / "keys" / "secrets", envelope)
    return Keyvault(keyring=keyring, envelope=envelope, signing=signing, secrets=secrets)


def init_keyvault(
    data_dir: Path,
    *,
    suite: str = "aes",
    signing_alg: str = "ES256",
    prepublish_seconds: int,
    retire_after_seconds: int,
    environ: Mapping[str, str] = os.environ,
    clock: Callable[[], float] = time.time,
) -> Keyvault:
    """Create what is missing (master key file, first signing key), then open. Idempotent."""
    _check_settings(suite, signing_alg, prepublish_seconds, retire_after_seconds)
    path = master_key_path(Path(data_dir))
    if not environ.get(ENV_MASTER_KEY, "").strip() and not path.exists():
        create_master_key_file(path, clock=clock)
    vault = open_keyvault(
        data_dir,
        suite=suite,
        signing_alg=signing_alg,
        prepublish_seconds=prepublish_seconds,
        retire_after_seconds=retire_after_seconds,
        environ=environ,
        clock=clock,
    )
    vault.signing.ensure_key()
    return vault
