"""Cipher suites: known answers, strict input checks, stable ids."""

from __future__ import annotations

import pytest

from keyvault.errors import DecryptionError
from keyvault.suites import AES_GCM, GM_SM4_GCM, SUITES, CipherSuite, get_suite, suite_for_id

# RFC 8998 Appendix A.1 (SM4-GCM).
SM4_KEY = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
SM4_IV = bytes.fromhex("00001234567800000000ABCD")
SM4_AAD = bytes.fromhex("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2")
SM4_PT = bytes.fromhex(
    "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD"
    "EEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFFEEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA"
)
SM4_CT_TAG = bytes.fromhex(
    "17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735"
    "D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D"
    "83DE3541E4C2B58177E065A9BF7B62EC"
)

BOTH = pytest.mark.parametrize("suite", [AES_GCM, GM_SM4_GCM], ids=lambda s: s.name)


def test_sm4_gcm_known_answer_rfc8998() -> None:
    assert GM_SM4_GCM.encrypt(SM4_KEY, SM4_IV, SM4_PT, SM4_AAD) == SM4_CT_TAG
    assert GM_SM4_GCM.decrypt(SM4_KEY, SM4_IV, SM4_CT_TAG, SM4_AAD) == SM4_PT


def test_aes_gcm_known_answer() -> None:
    # McGrew & Viega, "The Galois/Counter Mode of Operation", test case 14.
    ct_tag = AES_GCM.encrypt(bytes(32), bytes(12), bytes(16), b"")
    assert ct_tag.hex() == "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"


def test_hashes_known_answers() -> None:
    assert AES_GCM.digest(b"abc").hex() == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    # GB/T 32905-2016 appendix A example 1.
    assert GM_SM4_GCM.digest(b"abc").hex() == (
        "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    )


def test_ids_are_stable() -> None:
    # Stored in every ciphertext header: changing them breaks existing data.
    assert (AES_GCM.suite_id, GM_SM4_GCM.suite_id) == (0x01, 0x02)
    assert (AES_GCM.key_size, GM_SM4_GCM.key_size) == (32, 16)
    assert suite_for_id(0x01) is AES_GCM
    assert suite_for_id(0x02) is GM_SM4_GCM
    assert suite_for_id(0x00) is None
    assert suite_for_id(0xFF) is None


def test_registry_and_protocol() -> None:
    assert get_suite("aes") is AES_GCM
    assert get_suite("gm") is GM_SM4_GCM
    assert set(SUITES) == {"aes", "gm"}
    assert all(isinstance(s, CipherSuite) for s in SUITES.values())


@pytest.mark.parametrize("name", ["AES", "sm4", "", "aes-128"])
def test_unknown_suite_names_valid_choices(name: str) -> None:
    with pytest.raises(ValueError, match="expected one of 'aes', 'gm'"):
        get_suite(name)


@BOTH
def test_round_trip(suite: CipherSuite) -> None:
    key, nonce = bytes(range(suite.key_size)), bytes(12)
    ct = suite.encrypt(key, nonce, b"secret", b"aad")
    assert len(ct) == len(b"secret") + 16
    assert suite.decrypt(key, nonce, ct, b"aad") == b"secret"


@BOTH
@pytest.mark.parametrize("delta", [-1, 1, 8])
def test_key_length_is_checked(suite: CipherSuite, delta: int) -> None:
    key = bytes(suite.key_size + delta)
    with pytest.raises(ValueError, match="key must be exactly"):
        suite.encrypt(key, bytes(12), b"x", b"")
    with pytest.raises(ValueError, match="key must be exactly"):
        suite.decrypt(key, bytes(12), bytes(17), b"")


@BOTH
@pytest.mark.parametrize("nonce_len", [0, 8, 11, 13, 16])
def test_nonce_length_is_checked(suite: CipherSuite, nonce_len: int) -> None:
    with pytest.raises(ValueError, match="nonce must be exactly 12"):
        suite.encrypt(bytes(suite.key_size), bytes(nonce_len), b"x", b"")


@BOTH
def test_wrong_tag_aad_key_or_short_input(suite: CipherSuite) -> None:
    key, nonce = bytes(suite.key_size), bytes(12)
    ct = suite.encrypt(key, nonce, b"secret", b"aad")
    with pytest.raises(DecryptionError):
        suite.decrypt(key, nonce, ct, b"other")
    with pytest.raises(DecryptionError):
        suite.decrypt(bytes([1]) + key[1:], nonce, ct, b"aad")
    with pytest.raises(DecryptionError):
        suite.decrypt(key, nonce, ct[:-1], b"aad")  # a truncated tag is never accepted
    with pytest.raises(DecryptionError, match="too short"):
        suite.decrypt(key, nonce, ct[:15], b"aad")


@BOTH
def test_derive_key(suite: CipherSuite) -> None:
    secret = bytes(range(32))
    a = suite.derive_key(secret, b"a")
    assert len(a) == suite.key_size
    assert a != suite.derive_key(secret, b"b")
    assert a == suite.derive_key(secret, b"a")
    with pytest.raises(ValueError, match="at least 32"):
        suite.derive_key(bytes(16), b"a")


def test_repr_names_suite() -> None:
    assert repr(GM_SM4_GCM) == "<CipherSuite gm id=0x02>"
