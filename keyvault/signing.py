"""JWS signing keys: generation, rotation with pre-publication, JWKS, sign and verify.

Specs: JWS RFC 7515 (https://www.rfc-editor.org/rfc/rfc7515), JWK RFC 7517, JWA RFC 7518,
JWT RFC 7519, JWK thumbprint RFC 7638, JWT best current practice RFC 8725.

Key life cycle (each transition happens lazily, from the injected clock, on any call)::

    pending ──(activates_at)──> active ──(successor activates)──> retired ──purge()──> gone
    in JWKS, never signs        signs       in JWKS, verifies until retire_until

:meth:`SigningKeyring.rotate` adds a *pending* key that activates ``prepublish_seconds`` later,
so relying parties that cache the JWKS learn the new key before any token carries it. When
it activates, the previous key retires with ``retire_until = activation + retire_after_seconds``
(configure that as the longest token lifetime plus leeway), so every token it signed can
still be verified until it expires.

Tokens are compact JWS built with ``cryptography`` directly: the whole format is a few lines
(the strict encodings, the algorithms and the thumbprint are in :mod:`keyvault.jws`), and
doing it here keeps every security decision visible (RFC 8725 §3.1): the algorithm is
taken from *our key record*, never from the token header; ``none`` and ``crit`` are refused;
keys are never taken from the token (``jwk``/``jku``/``x5u``/``x5c`` are ignored).

Private keys are stored encrypted with the :class:`~keyvault.envelope.Envelope` (aad binds
kid and alg) in ``<dir>/keys.json`` (``0600``, replaced atomically, read-modify-write under
an ``flock`` so the server and the ``onegate keys`` CLI can share it). Parsed key objects
are cached per kid: parsing a PEM/DER RSA key costs ~25 ms, signing with a loaded one ~1 ms.

Everything here is synchronous and CPU-light except key *generation* (RSA-3072 takes up to
a second): call :meth:`~SigningKeyring.rotate` / :meth:`~SigningKeyring.ensure_key` from the
CLI or via ``asyncio.to_thread`` in async code. ``sign``/``verify``/``jwks`` are safe to call
directly from an event loop (at most one ``stat`` per ``refresh_seconds``, and a tiny file
write when a transition is due).
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from keyvault.envelope import Envelope
from keyvault.errors import KeyvaultError, SigningKeyError, TokenInvalid
from keyvault.jws import (
    ALGORITHM_BY_NAME,
    ALGORITHMS,
    MAX_TOKEN_LENGTH,  # noqa: F401 - re-export: was defined in this module
    MIN_RSA_KEY_SIZE,
    PrivateKey,
    PublicKey,
    b64url_decode,
    b64url_encode,
    check_times,
    decode_json_segment,
    encode_json_segment,
    parse_json_object,
    split_compact,
    thumbprint,
)
from keyvault.store import ensure_private_dir, file_signature, locked, read_private_file, replace_private_file

__all__ = [
    "ALGORITHMS",
    "DEFAULT_RSA_KEY_SIZE",
    "KeyState",
    "SigningKeyInfo",
    "SigningKeyring",
]

DEFAULT_RSA_KEY_SIZE: Final = 3072
STORE_FORMAT: Final = 1
STORE_FILE: Final = "keys.json"

# Header parameters a caller of sign() may not set: they are ours (alg, kid), would make
# verifiers fetch or trust keys from the token (RFC 8725 §3.10), or change the JWS
# processing rules (crit, b64: RFC 7515 §4.1.11, RFC 7797).
_RESERVED_HEADERS: Final = frozenset(
    {"alg", "kid", "crit", "jku", "jwk", "x5u", "x5c", "x5t", "x5t#S256", "b64", "enc", "zip"}
)


class KeyState(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    RETIRED = "retired"


@dataclasses.dataclass(frozen=True)
class SigningKeyInfo:
    """A plain, secret-free description of one signing key (for the CLI and admin pages)."""

    kid: str
    alg: str
    state: str
    created_at: float
    activates_at: float
    retire_until: float | None


# -- records and the in-memory snapshot ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Record:
    kid: str
    alg: str
    state: KeyState
    created_at: float
    activates_at: float
    retired_at: float | None
    retire_until: float | None
    private_key: bytes  # envelope blob of the PKCS#8 DER


@dataclasses.dataclass(frozen=True)
class _Loaded:
    private_key: PrivateKey
    public_key: PublicKey
    jwk: Mapping[str, str]


@dataclasses.dataclass(frozen=True)
class _Snapshot:
    """An immutable view of the keyring; replaced as a whole, read without locks."""

    records: tuple[_Record, ...]
    loaded: Mapping[str, _Loaded]
    signature: tuple[int, int, int, int] | None
    active: _Record | None
    next_transition_at: float

    def published(self, kid: str, now: float) -> _Record | None:
        for rec in self.records:
            if rec.kid == kid:
                return rec if _is_published(rec, now) else None
        return None


def _is_published(rec: _Record, now: float) -> bool:
    if rec.state is KeyState.RETIRED:
        return rec.retire_until is not None and now < rec.retire_until
    return True


def _advance(records: list[_Record], now: float, retire_after: float) -> list[_Record]:
    """Apply every transition due at ``now``; a pure function of the records and the time.

    The newest key whose ``activates_at`` has passed is active; every older one is retired
    as of its successor's activation time. Deterministic, so processes sharing the store
    agree on the result whichever of them writes it first.
    """
    order = sorted(range(len(records)), key=lambda i: (records[i].activates_at, records[i].created_at, i))
    due = [i for i in order if records[i].activates_at <= now]
    out = list(records)
    for pos, i in enumerate(due):
        rec = records[i]
        if pos == len(due) - 1:
            if rec.state is KeyState.PENDING:
                out[i] = dataclasses.replace(rec, state=KeyState.ACTIVE)
        elif rec.state is not KeyState.RETIRED:
            retired_at = records[due[pos + 1]].activates_at
            out[i] = dataclasses.replace(
                rec, state=KeyState.RETIRED, retired_at=retired_at, retire_until=retired_at + retire_after
            )
    return out


def _aad(kid: str, alg: str) -> bytes:
    return f"keyvault/signing-key/kid:{kid}/alg:{alg}".encode()


# -- the keyring ------------------------------------------------------------------------------


class SigningKeyring:
    """The JWS signing keys of one issuer, persisted under ``directory``.

    :param directory: where ``keys.json`` lives (``<data_dir>/keys/signing``).
    :param envelope: encrypts private keys at rest.
    :param alg: algorithm for *new* keys (``"ES256"`` or ``"RS256"``); existing keys keep theirs.
    :param prepublish_seconds: how long a rotated-in key is published before it signs; at
        least the longest JWKS cache lifetime of any relying party.
    :param retire_after_seconds: how long a replaced key keeps verifying; at least the
        longest token lifetime plus clock leeway.
    :param clock: seconds since the epoch (injected for tests).
    :param rsa_key_size: modulus size for new RS256 keys (>= 2048).
    :param refresh_seconds: how often to ``stat`` the store for changes made by another
        process (e.g. ``onegate keys rotate``).
    """

    def __init__(
        self,
        directory: Path,
        envelope: Envelope,
        *,
        alg: str = "ES256",
        prepublish_seconds: float,
        retire_after_seconds: float,
        clock: Callable[[], float] = time.time,
        rsa_key_size: int = DEFAULT_RSA_KEY_SIZE,
        refresh_seconds: float = 1.0,
    ) -> None:
        if alg not in ALGORITHM_BY_NAME:
            raise ValueError(f"unknown signing algorithm {alg!r}; expected one of {', '.join(ALGORITHMS)}")
        if not (prepublish_seconds >= 0 and math.isfinite(prepublish_seconds)):
            raise ValueError("prepublish_seconds must be a finite number >= 0")
        if not (retire_after_seconds >= 0 and math.isfinite(retire_after_seconds)):
            raise ValueError("retire_after_seconds must be a finite number >= 0")
        if rsa_key_size < MIN_RSA_KEY_SIZE:
            raise ValueError(f"rsa_key_size must be at least {MIN_RSA_KEY_SIZE}")
        self._dir = Path(directory)
        self._path = self._dir / STORE_FILE
        self._lock_path = self._dir / f".{STORE_FILE}.lock"
        self._envelope = envelope
        self._alg = alg
        self._prepublish = float(prepublish_seconds)
        self._retire_after = float(retire_after_seconds)
        self._clock = clock
        self._rsa_key_size = rsa_key_size
        self._refresh = refresh_seconds
        self._mutex = threading.RLock()
        self._snapshot = _Snapshot((), {}, None, None, math.inf)
        self._fresh: dict[str, _Loaded] = {}  # keys generated here: cached without a re-parse
        self._last_check = clock()
        with self._mutex:
            self._install(self._read_records(), file_signature(self._path))

    # -- public API ----------------------------------------------------------------------------

    def ensure_key(self) -> str:
        """Make sure a key signs now; create one (active immediately) if none does. Returns its kid."""
        self._tick()
        if (active := self._snapshot.active) is not None:
            return active.kid
        private_key = ALGORITHM_BY_NAME[self._alg].generate(self._rsa_key_size)

        def add_if_missing(records: list[_Record], now: float) -> list[_Record]:
            if any(r.state is KeyState.ACTIVE for r in records):
                return records  # another process got there first
            return [*records, self._new_record(private_key, now, activates_at=now)]

        self._mutate(add_if_missing)
        active = self._snapshot.active
        if active is None:  # pragma: no cover - only if the clock jumps backwards meanwhile
            raise SigningKeyError("could not activate a signing key")
        return active.kid

    def rotate(self, *, immediate: bool = False) -> str:
        """Add a new key (algorithm ``alg``); return its kid.

        The key is *pending* for ``prepublish_seconds`` (published in the JWKS, not signing),
        then becomes active and the current key retires. ``immediate=True`` skips the
        pre-publication (for a compromised key: relying parties with a cached JWKS will
        refuse new tokens until they refetch). When no key signs at all, the new key is
        active at once, since there is nothing to hand over from.
        """
        self._tick()
        private_key = ALGORITHM_BY_NAME[self._alg].generate(self._rsa_key_size)
        created: list[str] = []

        def add(records: list[_Record], now: float) -> list[_Record]:
            someone_signs = any(r.state is KeyState.ACTIVE for r in records)
            at = now if immediate or not someone_signs else now + self._prepublish
            rec = self._new_record(private_key, now, activates_at=at)
            created.append(rec.kid)
            return [*records, rec]

        self._mutate(add)
        return created[0]

    def revoke(self, kid: str) -> None:
        """Remove a non-active key at once (key compromise): tokens it signed stop verifying.

        To replace a compromised *active* key, ``rotate(immediate=True)`` first, then revoke
        the old kid.
        """
        self._tick()

        def drop(records: list[_Record], now: float) -> list[_Record]:
            target = next((r for r in records if r.kid == kid), None)
            if target is None:
                raise SigningKeyError(f"no signing key {kid[:64]!r}")
            if target.state is KeyState.ACTIVE:
                raise SigningKeyError(f"signing key {kid} is active; rotate(immediate=True) first")
            return [r for r in records if r.kid != kid]

        self._mutate(drop)

    def purge(self) -> list[str]:
        """Delete retired keys whose ``retire_until`` has passed; return their kids."""
        self._tick()
        purged: list[str] = []

        def drop(records: list[_Record], now: float) -> list[_Record]:
            keep = []
            for r in records:
                if r.state is KeyState.RETIRED and r.retire_until is not None and r.retire_until <= now:
                    purged.append(r.kid)
                else:
                    keep.append(r)
            return keep

        self._mutate(drop)
        return purged

    def rewrap(self) -> int:
        """Re-wrap every stored private key under the active master key; the number changed."""
        self._tick()
        changed: list[str] = []

        def rewrap_all(records: list[_Record], now: float) -> list[_Record]:
            out = []
            for r in records:
                blob = self._envelope.rewrap(r.private_key)
                if blob != r.private_key:
                    changed.append(r.kid)
                out.append(dataclasses.replace(r, private_key=blob))
            return out

        self._mutate(rewrap_all)
        return len(changed)

    def sign(self, claims: Mapping[str, Any], headers: Mapping[str, Any] | None = None) -> str:
        """Sign ``claims`` with the active key; return a compact JWT (RFC 7519 §7.1).

        The protected header carries ``alg`` and ``kid`` of the active key and ``typ: JWT``
        (``headers`` may override ``typ``, e.g. ``at+jwt`` per RFC 9068, and add others, but
        never ``alg``, ``kid``, ``crit`` or key-carrying parameters).
        """
        self._tick()
        snap = self._snapshot
        rec = snap.active
        if rec is None:
            raise SigningKeyError("no active signing key; run ensure_key() (onegate init) first")
        extra = dict(headers or {})
        if bad := sorted(_RESERVED_HEADERS.intersection(extra)):
            raise ValueError(f"sign(): header parameter(s) {', '.join(bad)} may not be set by the caller")
        header = {"alg": rec.alg, "kid": rec.kid, "typ": "JWT", **extra}
        signing_input = f"{encode_json_segment(header)}.{encode_json_segment(dict(claims))}"
        algorithm = ALGORITHM_BY_NAME[rec.alg]
        signature = algorithm.sign(snap.loaded[rec.kid].private_key, signing_input.encode("ascii"))
        return f"{signing_input}.{b64url_encode(signature)}"

    def verify(
        self,
        token: str,
        *,
        leeway: float = 30.0,
        require_exp: bool = True,
        expected_typ: str | None = None,
    ) -> dict[str, Any]:
        """Verify a compact JWT signed by one of our published keys; return its claims.

        ``leeway`` (seconds) allows for clock skew on ``exp`` and ``nbf``. A token without
        ``exp`` is refused unless ``require_exp=False``. ``expected_typ`` enforces the ``typ``
        header (RFC 8725 §3.11), compared case-insensitively. Raises :class:`TokenExpired`,
        :class:`TokenNotYetValid` or :class:`TokenInvalid`.
        """
        now = self._tick()
        parts = split_compact(token)
        header = decode_json_segment(parts[0], "header")

        alg = header.get("alg")
        if not isinstance(alg, str):
            raise TokenInvalid("header has no alg")
        if alg.lower() == "none":
            # RFC 7518 §3.6 unsecured JWS; RFC 8725 §3.2: never accept it.
            raise TokenInvalid("alg 'none' is refused")
        if "crit" in header:
            # RFC 7515 §4.1.11: a recipient that does not understand a listed extension MUST
            # reject the JWS. We implement none, so any crit is refused.
            raise TokenInvalid("crit header parameter(s) not understood")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise TokenInvalid("header has no kid")
        snap = self._snapshot
        rec = snap.published(kid, now)
        if rec is None:
            raise TokenInvalid(f"unknown kid {kid[:64]!r}")
        # The algorithm comes from our key record; the header must merely agree with it
        # (RFC 8725 §3.1: key confusion attacks choose a different alg for the same key).
        if alg != rec.alg:
            raise TokenInvalid(f"alg {alg[:16]!r} does not match key {rec.kid} ({rec.alg})")
        if expected_typ is not None:
            typ = header.get("typ")
            if not isinstance(typ, str) or typ.lower() != expected_typ.lower():
                raise TokenInvalid(f"typ must be {expected_typ!r}")

        payload = b64url_decode(parts[1], "payload")  # also guarantees the signing input is ASCII
        signature = b64url_decode(parts[2], "signature")
        signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
        try:
            ALGORITHM_BY_NAME[rec.alg].verify(snap.loaded[rec.kid].public_key, signing_input, signature)
        except InvalidSignature as e:
            raise TokenInvalid("signature verification failed") from e

        claims = parse_json_object(payload, "payload")
        check_times(claims, now, leeway, require_exp)
        return claims

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public JWK Set (RFC 7517 §5): active, then pending, then retired-but-valid keys."""
        now = self._tick()
        snap = self._snapshot
        rank = {KeyState.ACTIVE: 0, KeyState.PENDING: 1, KeyState.RETIRED: 2}
        published = sorted(
            (r for r in snap.records if _is_published(r, now)), key=lambda r: (rank[r.state], -r.activates_at)
        )
        return {
            "keys": [
                # RFC 7517 §4.2 "use": "sig"; "key_ops" deliberately absent (§4.3: not both).
                {**snap.loaded[r.kid].jwk, "kid": r.kid, "alg": r.alg, "use": "sig"}
                for r in published
            ]
        }

    def list_keys(self) -> list[SigningKeyInfo]:
        """Every stored key (including retired ones not yet purged), oldest first."""
        self._tick()
        return [
            SigningKeyInfo(r.kid, r.alg, str(r.state), r.created_at, r.activates_at, r.retire_until)
            for r in sorted(self._snapshot.records, key=lambda r: (r.activates_at, r.created_at))
        ]

    def __repr__(self) -> str:
        keys = ", ".join(f"{r.kid[:8]}:{r.state}" for r in self._snapshot.records)
        return f"SigningKeyring(dir={str(self._dir)!r}, alg={self._alg!r}, keys=[{keys}])"

    # -- state management ----------------------------------------------------------------------

    def _tick(self) -> float:
        """Read the clock, pick up changes from other processes, apply due transitions."""
        now = self._clock()
        if abs(now - self._last_check) >= self._refresh:
            self._last_check = now
            sig = file_signature(self._path)
            if sig != self._snapshot.signature:
                with self._mutex:
                    self._install(self._read_records(), sig)
        if now >= self._snapshot.next_transition_at:
            self._mutate(lambda records, _now: records)
        return now

    def _mutate(self, change: Callable[[list[_Record], float], list[_Record]]) -> None:
        """Read-modify-write of the store under the thread and file locks."""
        with self._mutex:
            ensure_private_dir(self._dir)
            with locked(self._lock_path):
                now = self._clock()
                current = self._read_records()  # fresh: another process may have written
                # Advance before the change (so it sees today's states) and after it (so a
                # key it adds with activates_at <= now takes over at once).
                base = _advance(current, now, self._retire_after)
                updated = _advance(change(base, now), now, self._retire_after)
                if updated != current:
                    replace_private_file(self._path, self._serialize(updated))
                self._install(updated, file_signature(self._path))

    def _new_record(self, private_key: PrivateKey, now: float, *, activates_at: float) -> _Record:
        alg = self._alg
        public_key = private_key.public_key()
        jwk = ALGORITHM_BY_NAME[alg].jwk_members(public_key)
        kid = thumbprint(jwk)
        self._fresh[kid] = _Loaded(private_key, public_key, jwk)
        der = private_key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        blob = self._envelope.encrypt(der, _aad(kid, alg))
        state = KeyState.ACTIVE if activates_at <= now else KeyState.PENDING
        return _Record(kid, alg, state, now, activates_at, None, None, blob)

    def _load(self, rec: _Record) -> _Loaded:
        """Decrypt and parse one private key (once per kid per process; see module doc)."""
        try:
            der = self._envelope.decrypt(rec.private_key, _aad(rec.kid, rec.alg))
        except KeyvaultError as e:
            raise SigningKeyError(f"signing key {rec.kid}: cannot decrypt its private key ({e})") from e
        try:
            parsed = serialization.load_der_private_key(der, password=None)
        except ValueError as e:
            raise SigningKeyError(f"signing key {rec.kid}: private key does not parse") from e
        algorithm = ALGORITHM_BY_NAME[rec.alg]
        private_key = algorithm.check_key(parsed)
        public_key = private_key.public_key()
        jwk = algorithm.jwk_members(public_key)
        # kid is the RFC 7638 thumbprint: a record whose kid and key disagree was tampered with.
        if thumbprint(jwk) != rec.kid:
            raise SigningKeyError(f"signing key {rec.kid}: kid does not match the key's thumbprint")
        return _Loaded(private_key, public_key, jwk)

    def _install(self, records: list[_Record], signature: tuple[int, int, int, int] | None) -> None:
        old = self._snapshot.loaded
        loaded = {r.kid: old.get(r.kid) or self._fresh.get(r.kid) or self._load(r) for r in records}
        self._fresh.clear()
        actives = [r for r in records if r.state is KeyState.ACTIVE]
        active = max(actives, key=lambda r: (r.activates_at, r.created_at)) if actives else None
        pending = [r.activates_at for r in records if r.state is KeyState.PENDING]
        self._snapshot = _Snapshot(tuple(records), loaded, signature, active, min(pending, default=math.inf))

    # -- the store file ------------------------------------------------------------------------

    def _serialize(self, records: list[_Record]) -> bytes:
        doc = {
            "format": STORE_FORMAT,
            "keys": [
                {
                    "kid": r.kid,
                    "alg": r.alg,
                    "state": str(r.state),
                    "created_at": r.created_at,
                    "activates_at": r.activates_at,
                    "retired_at": r.retired_at,
                    "retire_until": r.retire_until,
                    "private_key": b64url_encode(r.private_key),
                }
                for r in records
            ],
        }
        return (json.dumps(doc, indent=2) + "\n").encode("utf-8")

    def _read_records(self) -> list[_Record]:
        if not self._path.exists():
            return []
        raw = read_private_file(self._path)
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("format") != STORE_FORMAT:
                raise ValueError("unexpected format")
            return [_parse_record(entry) for entry in doc["keys"]]
        except (KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
            raise SigningKeyError(f"signing key store {self._path} is malformed") from e


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expected a number")
    return float(value)


def _optional_number(value: object) -> float | None:
    return None if value is None else _number(value)


def _parse_record(entry: Any) -> _Record:
    if (
        not isinstance(entry, dict)
        or entry["alg"] not in ALGORITHM_BY_NAME
        or not isinstance(entry["kid"], str)
    ):
        raise ValueError("bad key entry")
    blob = entry["private_key"]
    if not isinstance(blob, str):
        raise ValueError("bad private_key")
    return _Record(
        kid=entry["kid"],
        alg=entry["alg"],
        state=KeyState(entry["state"]),
        created_at=_number(entry["created_at"]),
        activates_at=_number(entry["activates_at"]),
        retired_at=_optional_number(entry.get("retired_at")),
        retire_until=_optional_number(entry.get("retire_until")),
        private_key=base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4)),
    )
