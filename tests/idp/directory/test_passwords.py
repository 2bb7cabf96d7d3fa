"""argon2id hashing: OWASP parameters, NFKC normalisation, rehash detection, equal work."""

from __future__ import annotations

import time

from idp.directory.passwords import PasswordHashing, generate_password

HASHING = PasswordHashing()


def test_hashes_are_argon2id_with_owasp_parameters() -> None:
    stored = HASHING.hash("春眠不觉晓，处处闻啼鸟")
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert HASHING.verify(stored, "春眠不觉晓，处处闻啼鸟")
    assert not HASHING.verify(stored, "春眠不觉晓,处处闻啼鸟!")
    assert not HASHING.needs_rehash(stored)


def test_full_width_input_matches_the_ascii_password() -> None:
    # NIST SP 800-63B §5.1.1.2: NFKC, so an input method's full-width mode does not lock people out.
    stored = HASHING.hash("Correct-Horse-2026")
    assert HASHING.verify(stored, "Ｃｏｒｒｅｃｔ－Ｈｏｒｓｅ－２０２６")


def test_older_parameters_and_foreign_hashes_need_a_rehash() -> None:
    weak = PasswordHashing(time_cost=1, memory_cost_kib=8 * 1024).hash("x")
    assert HASHING.needs_rehash(weak)
    assert HASHING.needs_rehash("$2b$12$notargon")
    assert not HASHING.verify("$2b$12$notargon", "x")


def test_unknown_user_costs_the_same_and_fails() -> None:
    stored = HASHING.hash("a real password here")
    started = time.perf_counter()
    assert not HASHING.verify(stored, "wrong guess for real")
    known = time.perf_counter() - started
    started = time.perf_counter()
    assert not HASHING.verify(None, "a real password here")
    unknown = time.perf_counter() - started
    assert unknown > known / 4  # a real argon2 verify, not an early return


def test_generated_passwords_are_random_and_long() -> None:
    passwords = {generate_password() for _ in range(50)}
    assert len(passwords) == 50
    assert all(len(p) == 20 and p.isalnum() for p in passwords)
