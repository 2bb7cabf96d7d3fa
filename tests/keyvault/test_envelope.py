"""Envelope encryption: round trips, tamper detection on every bit, rotation and rewrap."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyvault.envelope import FORMAT_VERSION, Envelope
from keyvault.errors import DecryptionError, UnknownKeyError
from keyvault.masterkey import (
    MasterKey,
    MasterKeyring,
    create_master_key_file,
    load_master_key_file,
    master_key_path,
    remove_master_key,
    rotate_master_key,
)
from keyvault.suites import AES_GCM, GM_SM4_GCM, CipherSuite

AAD = b"table:users/id:42/column:totp_seed"
SUITES = pytest.mark.parametrize("suite", [AES_GCM, GM_SM4_GCM], ids=lambda s: s.name)

# A module-level ring (not a fixture) so hypothesis tests need no function-scoped fixtures.
RING = MasterKeyring.generate()
ENVELOPES = {s.name: Envelope(RING, s) for s in (AES_GCM, GM_SM4_GCM)}


def header_size(suite: CipherSuite) -> int:
    """Everything before the data nonce: version, suite, key id, wrap nonce, wrapped DEK."""
    return 2 + 4 + 12 + suite.key_size + 16


def ring_of(*keys: MasterKey, active: MasterKey) -> MasterKeyring:
    return MasterKeyring(keys, active.key_id)


@SUITES
@pytest.mark.parametrize("plaintext", [b"", b"x", b"secret TOTP seed", os.urandom(70_000)], ids=len)
def test_round_trip(suite: CipherSuite, plaintext: bytes) -> None:
    env = Envelope(RING, suite)
    blob = env.encrypt(plaintext, AAD)
    assert len(blob) == header_size(suite) + 12 + len(plaintext) + 16
    assert env.decrypt(blob, AAD) == plaintext
    assert len(plaintext) < 8 or plaintext not in blob


@SUITES
def test_header_layout(suite: CipherSuite) -> None:
    blob = Envelope(RING, suite).encrypt(b"x", AAD)
    assert blob[0] == FORMAT_VERSION
    assert blob[1] == suite.suite_id
    assert blob[2:6] == RING.active.id_bytes
    assert Envelope(RING).key_id_of(blob) == RING.active_id


def test_default_suite_is_aes() -> None:
    assert Envelope(RING).suite is AES_GCM
    assert Envelope(RING, "gm").suite is GM_SM4_GCM
    with pytest.raises(ValueError, match="unknown cipher suite"):
        Envelope(RING, "des")


def test_fresh_data_key_and_nonces_per_record() -> None:
    env = Envelope(RING)
    a, b = env.encrypt(b"same", AAD), env.encrypt(b"same", AAD)
    assert a != b
    assert a[6:] != b[6:]  # wrap nonce, wrapped key, data nonce and ciphertext all differ


def test_randomness_is_injected() -> None:
    def fixed(n: int) -> bytes:
        return bytes(n)

    a = Envelope(RING, token_bytes=fixed).encrypt(b"x", AAD)
    assert a == Envelope(RING, token_bytes=fixed).encrypt(b"x", AAD)
    assert Envelope(RING).decrypt(a, AAD) == b"x"


@SUITES
def test_decrypting_other_suite_uses_the_header(suite: CipherSuite) -> None:
    other = GM_SM4_GCM if suite is AES_GCM else AES_GCM
    blob = Envelope(RING, other).encrypt(b"cross", AAD)
    assert Envelope(RING, suite).decrypt(blob, AAD) == b"cross"


@SUITES
def test_every_flipped_bit_of_the_blob_is_detected(suite: CipherSuite) -> None:
    env = Envelope(RING, suite)
    blob = env.encrypt(b"seed", AAD)
    for bit in range(len(blob) * 8):
        tampered = bytearray(blob)
        tampered[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(DecryptionError):
            env.decrypt(bytes(tampered), AAD)


@SUITES
def test_every_flipped_bit_of_the_aad_is_detected(suite: CipherSuite) -> None:
    env = Envelope(RING, suite)
    blob = env.encrypt(b"seed", AAD)
    for bit in range(len(AAD) * 8):
        aad = bytearray(AAD)
        aad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(DecryptionError):
            env.decrypt(blob, bytes(aad))


@SUITES
def test_truncation_and_extension_are_detected(suite: CipherSuite) -> None:
    env = Envelope(RING, suite)
    blob = env.encrypt(b"seed", AAD)
    for n in range(len(blob)):
        with pytest.raises(DecryptionError):
            env.decrypt(blob[:n], AAD)
    with pytest.raises(DecryptionError):
        env.decrypt(blob + b"\x00", AAD)
    with pytest.raises(DecryptionError):
        env.decrypt(blob, AAD + b"\x00")
    with pytest.raises(DecryptionError):
        env.decrypt(blob, AAD[:-1])


def test_blob_moved_to_another_record_fails() -> None:
    env = Envelope(RING)
    blob = env.encrypt(b"seed of 42", b"table:users/id:42/column:totp_seed")
    with pytest.raises(DecryptionError):
        env.decrypt(blob, b"table:users/id:43/column:totp_seed")


def test_wrapped_key_swapped_between_records_fails() -> None:
    env = Envelope(RING)
    a, b = env.encrypt(b"a", AAD), env.encrypt(b"b", AAD)
    n = header_size(AES_GCM)
    with pytest.raises(DecryptionError):
        env.decrypt(a[:n] + b[n:], AAD)


def test_unknown_master_key_is_a_decryption_error() -> None:
    blob = Envelope(RING).encrypt(b"x", AAD)
    with pytest.raises(UnknownKeyError):
        Envelope(MasterKeyring.generate()).decrypt(blob, AAD)


def test_key_of_same_id_but_wrong_material_fails() -> None:
    # Not reachable with derived ids, but the wrap must fail closed regardless.
    blob = Envelope(RING).encrypt(b"x", AAD)
    other = MasterKeyring.generate()
    forged = blob[:2] + other.active.id_bytes + blob[6:]
    with pytest.raises(DecryptionError):
        Envelope(other).decrypt(forged, AAD)


def test_inputs_must_be_bytes() -> None:
    env = Envelope(RING)
    with pytest.raises(TypeError, match="plaintext must be bytes"):
        env.encrypt("text", AAD)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="aad must be bytes"):
        env.encrypt(b"x", "aad")  # type: ignore[arg-type]
    blob = env.encrypt(b"x", AAD)
    assert env.decrypt(bytearray(blob), memoryview(AAD)) == b"x"


@SUITES
def test_rotation_rewrap_keeps_data_bytes(suite: CipherSuite) -> None:
    old, new = MasterKey(os.urandom(32)), MasterKey(os.urandom(32))
    blob = Envelope(ring_of(old, active=old), suite).encrypt(b"long-lived secret", AAD)

    rotated = Envelope(ring_of(old, new, active=new), suite)
    assert rotated.decrypt(blob, AAD) == b"long-lived secret"  # old records still decrypt
    assert rotated.needs_rewrap(blob)
    rewrapped = rotated.rewrap(blob)
    assert rotated.key_id_of(rewrapped) == new.key_id
    assert not rotated.needs_rewrap(rewrapped)

    n = header_size(suite)
    assert rewrapped[n:] == blob[n:]  # data nonce + ciphertext + tag: byte-identical
    assert rewrapped[:2] == blob[:2]
    assert rewrapped[2:n] != blob[2:n]  # new key id, wrap nonce, wrapped DEK

    only_new = Envelope(ring_of(new, active=new), suite)  # the old key is gone entirely
    assert only_new.decrypt(rewrapped, AAD) == b"long-lived secret"
    with pytest.raises(UnknownKeyError):
        only_new.decrypt(blob, AAD)
    assert rotated.rewrap(rewrapped) == rewrapped  # already current: unchanged


def test_rewrap_refuses_a_tampered_wrapped_key() -> None:
    old, new = MasterKey(os.urandom(32)), MasterKey(os.urandom(32))
    blob = bytearray(Envelope(ring_of(old, active=old)).encrypt(b"x", AAD))
    blob[20] ^= 0x01  # inside the wrapped DEK
    with pytest.raises(DecryptionError):
        Envelope(ring_of(old, new, active=new)).rewrap(bytes(blob))
    with pytest.raises(DecryptionError):
        Envelope(ring_of(old, new, active=new)).rewrap(b"\x01")


def test_rotation_through_the_key_file(tmp_path: Path) -> None:
    path = master_key_path(tmp_path)
    first = create_master_key_file(path)
    blob = Envelope(first).encrypt(b"client secret", AAD)

    new_id = rotate_master_key(path)
    env = Envelope(load_master_key_file(path))
    assert env.decrypt(blob, AAD) == b"client secret"
    rewrapped = env.rewrap(blob)
    assert env.key_id_of(rewrapped) == new_id

    remove_master_key(path, first.active_id)
    after = Envelope(load_master_key_file(path))
    assert after.decrypt(rewrapped, AAD) == b"client secret"
    with pytest.raises(UnknownKeyError):
        after.decrypt(blob, AAD)


def test_use_keyring_swaps_the_ring() -> None:
    old, new = MasterKey(os.urandom(32)), MasterKey(os.urandom(32))
    env = Envelope(ring_of(old, active=old))
    blob = env.encrypt(b"x", AAD)
    env.use_keyring(ring_of(old, new, active=new))
    assert env.keyring.active_id == new.key_id
    assert env.key_id_of(env.encrypt(b"y", AAD)) == new.key_id
    assert env.decrypt(blob, AAD) == b"x"


def test_repr_has_no_key_material() -> None:
    text = repr(Envelope(RING))
    assert RING.active_id in text
    assert RING.active.material.hex() not in text


@settings(max_examples=200, deadline=None)
@given(
    suite=st.sampled_from(["aes", "gm"]),
    plaintext=st.binary(max_size=2048),
    aad=st.binary(max_size=256),
)
def test_round_trip_property(suite: str, plaintext: bytes, aad: bytes) -> None:
    env = ENVELOPES[suite]
    assert env.decrypt(env.encrypt(plaintext, aad), aad) == plaintext


@settings(max_examples=100, deadline=None)
@given(
    suite=st.sampled_from(["aes", "gm"]),
    plaintext=st.binary(max_size=256),
    aad=st.binary(max_size=64),
    other=st.binary(max_size=64),
)
def test_other_aad_never_decrypts_property(suite: str, plaintext: bytes, aad: bytes, other: bytes) -> None:
    env = ENVELOPES[suite]
    blob = env.encrypt(plaintext, aad)
    if other != aad:
        with pytest.raises(DecryptionError):
            env.decrypt(blob, other)
