"""Keyvault throughput: JWS sign/verify (ES256, RS256) and envelope encryption of 1 KiB records.

Each figure is operations per second over a fixed time budget (``budget_s``, 1 s by
default), single-threaded, measured with ``time.perf_counter`` after one warm-up call.
Everything runs in a temporary data directory with a throw-away master key.
"""

from __future__ import annotations

import os
import platform
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cryptography
from cryptography.hazmat.backends.openssl.backend import backend

from keyvault.envelope import Envelope
from keyvault.masterkey import MasterKey, MasterKeyring
from keyvault.signing import DEFAULT_RSA_KEY_SIZE, SigningKeyring
from keyvault.vault import init_keyvault

RECORD_BYTES = 1024
AAD = b"table:clients/id:42/column:client_secret"


def rate(operation: Callable[[], object], budget_s: float) -> float:
    """Calls per second of ``operation`` over ``budget_s`` seconds (after one warm-up call)."""
    operation()
    count = 0
    start = time.perf_counter()
    while True:
        operation()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= budget_s:
            return round(count / elapsed, 1)


def _id_token_claims(now: float) -> dict[str, Any]:
    return {
        "iss": "https://idp.city.example",
        "sub": "u-0000042",
        "aud": "hr-portal",
        "iat": int(now),
        "exp": int(now) + 3600,
        "auth_time": int(now) - 5,
        "nonce": "n-0S6_WzA2Mj",
        "acr": "urn:onegate:acr:mfa",
        "amr": ["pwd", "otp"],
        "name": "张三",
    }


def _signing(ring: SigningKeyring, prefix: str, budget_s: float) -> dict[str, float]:
    claims = _id_token_claims(time.time())
    token = ring.sign(claims)
    return {
        f"{prefix}_sign_per_s": rate(lambda: ring.sign(claims), budget_s),
        f"{prefix}_verify_per_s": rate(lambda: ring.verify(token), budget_s),
    }


def _envelope(env: Envelope, prefix: str, budget_s: float) -> dict[str, float]:
    record = os.urandom(RECORD_BYTES)
    blob = env.encrypt(record, AAD)
    return {
        f"{prefix}encrypt_per_s": rate(lambda: env.encrypt(record, AAD), budget_s),
        f"{prefix}decrypt_per_s": rate(lambda: env.decrypt(blob, AAD), budget_s),
    }


def run(budget_s: float = 1.0) -> dict[str, Any]:
    """Measure and return the figures (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="onegate-bench-") as tmp:
        data_dir = Path(tmp)
        vault = init_keyvault(data_dir, environ={}, prepublish_seconds=3600, retire_after_seconds=7200)
        rs256 = SigningKeyring(
            data_dir / "keys" / "signing-rs256",
            vault.envelope,
            alg="RS256",
            prepublish_seconds=3600,
            retire_after_seconds=7200,
        )
        rs256.ensure_key()  # RSA key generation is not part of any figure
        sm4 = Envelope(vault.keyring, "gm")

        result: dict[str, Any] = {}
        result.update(_signing(vault.signing, "es256", budget_s))
        result.update(_signing(rs256, "rs256", budget_s))
        result.update(_envelope(vault.envelope, "", budget_s))
        result.update(_envelope(sm4, "sm4_", budget_s))
        # Rewrap a record whose master key is no longer the active one (the real workload).
        old_blob = vault.envelope.encrypt(os.urandom(RECORD_BYTES), AAD)
        new_key = MasterKey(os.urandom(32))
        rotated = Envelope(MasterKeyring([*vault.keyring, new_key], new_key.key_id))
        result["rewrap_per_s"] = rate(lambda: rotated.rewrap(old_blob), budget_s)

    result.update(
        {
            "record_bytes": RECORD_BYTES,
            "rsa_bits": DEFAULT_RSA_KEY_SIZE,
            "budget_s": budget_s,
            "python": platform.python_version(),
            "implementation": sys.implementation.name,
            "cryptography": cryptography.__version__,
            "openssl": backend.openssl_version_text(),
            "python_ssl": ssl.OPENSSL_VERSION,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        }
    )
    return result
