"""Second-factor checks: what one verification costs the IdP, against the bare primitive.

Figures, single-threaded on one event loop, over a time budget (``budget_s``) each:

* ``totp_verify_per_s`` — :meth:`mfa.totp.TotpService.verify` of a right code, each at a fresh
  time step (a fake clock moves 30 s per call, so the replay check passes): seed decryption, the
  conditional UPDATE that refuses replays, the failure counter. SQLite (WAL, a file) + the
  in-process KV. ``pyotp_verify_per_s`` is pyotp's own ``verify`` of the same code, nothing else:
  their ratio is what replay refusal and encryption at rest cost.
* ``webauthn_assertion_per_s`` — a whole second-factor ceremony, begin + finish (challenge in KV,
  fido2's checks, our origin / counter / binding checks, the counter UPDATE), signed by the test
  suite's software authenticator (its ES256 signing is inside the figure).
  ``es256_verify_per_s`` is a bare ES256 signature verification for scale.
* ``recovery_use_ms`` — spending the *last* of ten recovery codes (the worst case: ten argon2id
  verifications at the password parameters, m=19 MiB t=2) and ``recovery_wrong_ms`` a wrong code
  (the same ten); in milliseconds, median of ``recovery_rounds``.
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pyotp
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from core.db import create_engine, migrate, session_factory
from core.kv import MemoryKV
from idp.directory.models import User
from idp.directory.passwords import PasswordHashing
from keyvault import Envelope, MasterKeyring
from mfa.recovery import RecoveryCodes
from mfa.totp import TotpService
from mfa.webauthn import WebAuthnService
from onegate.runtime import MIGRATIONS
from tests.mfa.authenticator import SoftAuthenticator

ORIGIN = "https://idp.city.example"


class _Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def rate(operation: Callable[[], object], budget_s: float) -> float:
    operation()
    count, start = 0, time.perf_counter()
    while True:
        operation()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= budget_s:
            return round(count / elapsed, 1)


async def arate(operation: Callable[[], Awaitable[object]], budget_s: float) -> float:
    await operation()
    count, start = 0, time.perf_counter()
    while True:
        await operation()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= budget_s:
            return round(count / elapsed, 1)


async def _measure(data_dir: Path, budget_s: float, recovery_rounds: int) -> dict[str, Any]:
    engine = create_engine(f"sqlite+aiosqlite:///{data_dir / 'bench.db'}")
    await migrate(engine, MIGRATIONS)
    db = session_factory(engine)
    async with db() as s, s.begin():
        user = User(sub="sub-bench", username="zhangwei", display_name="张伟")
        s.add(user)
        await s.flush()
        user_id = user.id
    clock = _Clock()
    kv = MemoryKV(clock=clock)
    result: dict[str, Any] = {}
    try:
        # -- TOTP ---------------------------------------------------------------------------
        totp = TotpService(db, Envelope(MasterKeyring.generate()), kv, clock=clock)
        enrolment = await totp.begin_enrolment(user_id, "zhangwei")
        generator = pyotp.TOTP(enrolment.secret_base32)
        assert await totp.confirm_enrolment(user_id, generator.at(clock.now))  # noqa: S101

        async def verify_totp() -> None:
            clock.now += 30
            outcome = await totp.verify(user_id, generator.at(clock.now))
            if not outcome.ok:
                raise RuntimeError(f"TOTP refused: {outcome.reason}")

        result["totp_verify_per_s"] = await arate(verify_totp, budget_s)
        code = generator.at(clock.now)
        result["pyotp_verify_per_s"] = rate(lambda: generator.verify(code, for_time=clock.now), budget_s)

        # -- WebAuthn -----------------------------------------------------------------------
        webauthn = WebAuthnService(
            db, kv, rp_id="idp.city.example", rp_name="OneGate", origins=[ORIGIN], clock=clock
        )
        key = SoftAuthenticator(origin=ORIGIN)
        ceremony = await webauthn.begin_registration(user_id, username="zhangwei", display_name="张伟")
        registered = await webauthn.finish_registration(
            user_id, ceremony.id, key.create(ceremony.options), name="k"
        )
        if not registered.ok:
            raise RuntimeError(f"registration refused: {registered.reason}")

        async def assertion() -> None:
            started = await webauthn.begin_authentication(user_id)
            outcome = await webauthn.finish_authentication(
                started.id, key.get(started.options), user_id=user_id
            )
            if not outcome.ok:
                raise RuntimeError(f"assertion refused: {outcome.reason}")

        result["webauthn_assertion_per_s"] = await arate(assertion, budget_s)
        private = ec.generate_private_key(ec.SECP256R1())
        message = os.urandom(64)
        signature = private.sign(message, ec.ECDSA(hashes.SHA256()))
        public = private.public_key()
        result["es256_verify_per_s"] = rate(
            lambda: public.verify(signature, message, ec.ECDSA(hashes.SHA256())), budget_s
        )

        # -- recovery codes ------------------------------------------------------------------
        recovery = RecoveryCodes(db, PasswordHashing(), clock=clock)
        used, wrong = [], []
        for _ in range(recovery_rounds):
            codes = await recovery.generate(user_id)
            start = time.perf_counter()
            if (await recovery.use(user_id, "ABCDE-FGHJK")).ok:
                raise RuntimeError("a made-up recovery code worked")
            wrong.append((time.perf_counter() - start) * 1000)
            # Codes are checked in id order, and ids follow the sorted list: the last is checked last.
            start = time.perf_counter()
            if not (await recovery.use(user_id, codes[-1])).ok:
                raise RuntimeError("a fresh recovery code was refused")
            used.append((time.perf_counter() - start) * 1000)
        result["recovery_use_ms"] = round(statistics.median(used), 1)
        result["recovery_wrong_ms"] = round(statistics.median(wrong), 1)
    finally:
        await kv.close()
        await engine.dispose()
    return result


def run(budget_s: float = 1.0, recovery_rounds: int = 3) -> dict[str, Any]:
    """Measure and return the figures (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="onegate-bench-mfa-") as tmp:
        result = asyncio.run(_measure(Path(tmp), budget_s, recovery_rounds))
    result["totp_overhead_ratio"] = round(result["pyotp_verify_per_s"] / result["totp_verify_per_s"], 1)
    result.update(
        {
            "budget_s": budget_s,
            "recovery_rounds": recovery_rounds,
            "database": "sqlite (file, WAL)",
            "kv": "memory",
            "python": platform.python_version(),
            "implementation": sys.implementation.name,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        }
    )
    return result
