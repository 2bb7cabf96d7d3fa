"""The password policy: a table of passwords and the reasons they are refused."""

from __future__ import annotations

import pytest

from idp.directory.policy import (
    REASON_MESSAGES,
    PasswordPolicy,
    PolicyReason,
    PolicyResult,
    common_passwords,
)

POLICY = PasswordPolicy()


@pytest.mark.parametrize(
    ("password", "username", "reasons"),
    [
        # Long enough, not common, not built on the user name: accepted.
        ("correct horse battery", "zhangwei", ()),
        ("Tr0ub4dor&3-staple", "zhangwei", ()),
        ("张伟的密码非常安全而且很长", "zhangwei", ()),  # Chinese passphrase, 13 characters
        ("kV9#mQ2$xL7!", None, ()),
        # Length.
        ("kV9#mQ2$xL7", None, ("too_short",)),
        ("", None, ("too_short",)),
        ("x7" * 129, None, ("too_long",)),
        # The user name, in any case.
        ("zhangwei-2024-spring", "zhangwei", ("contains_username",)),
        ("My.ZhangWei.Secret", "zhangwei", ("contains_username",)),
        # The bundled list, case-insensitively, including composed and pinyin entries.
        ("password1234", None, ("common_password",)),
        ("PASSWORD1234", None, ("common_password",)),
        ("1qaz2wsx3edc", None, ("common_password",)),
        ("woaini5201314", None, ("common_password",)),
        ("qwertyuiop[]", None, ("common_password",)),
        # Repetition and runs.
        ("aaaaaaaaaaaaaa", None, ("repeated",)),
        ("abcabcabcabc", None, ("repeated",)),
        ("horsebatteryhorsebattery", None, ("repeated",)),
        ("bcdefghijklmn", None, ("sequential",)),
        ("onmlkjihgfedcba", None, ("sequential",)),
        # Digits only: a phone number, an ID-card fragment or a date.
        ("839274610385", None, ("digits_only",)),
        ("456789012345", None, ("sequential", "digits_only")),
        # Several reasons at once, in rule order.
        ("zhangwei", "zhangwei", ("too_short", "contains_username")),
        ("password", "wangfang", ("too_short", "common_password")),
        ("111111111111", None, ("common_password", "repeated", "digits_only")),
    ],
)
def test_policy_table(password: str, username: str | None, reasons: tuple[str, ...]) -> None:
    result = POLICY.check(password, username=username)
    assert result.reasons == reasons
    assert result.ok is (not reasons)


def test_full_width_characters_count_as_their_ascii_forms() -> None:
    # A Chinese input method in full-width mode types "ｐａｓｓｗｏｒｄ１２３４".
    assert POLICY.check("ｐａｓｓｗｏｒｄ１２３４").reasons == ("common_password",)
    assert POLICY.check("８３９２７４６１０３８５").reasons == ("digits_only",)


def test_minimum_length_comes_from_settings() -> None:
    strict = PasswordPolicy(min_length=16)
    assert strict.check("kV9#mQ2$xL7!abc").reasons == ("too_short",)
    assert strict.check("kV9#mQ2$xL7!abcd").ok
    relaxed = PasswordPolicy(min_length=8)
    assert relaxed.check("kV9#mQ2$").ok
    with pytest.raises(ValueError, match="min"):
        PasswordPolicy(min_length=300)


def test_the_bundled_list_is_loaded_once_and_well_formed() -> None:
    common = common_passwords()
    assert common is common_passwords()
    assert 9_000 <= len(common) <= 12_000
    assert {"password", "woaini1314", "1qaz2wsx", "zhangwei123456", "p@ssw0rd123"} <= common
    assert all(entry == entry.lower() and len(entry) >= 8 for entry in common)
    assert not any(entry.startswith("# ") for entry in common)


def test_a_custom_list_replaces_the_bundled_one() -> None:
    policy = PasswordPolicy(common=frozenset({"onegate-demo-2026"}))
    assert policy.check("OneGate-Demo-2026").reasons == ("common_password",)
    assert policy.check("password1234").ok


def test_every_reason_has_a_message_id() -> None:
    assert set(REASON_MESSAGES) == {reason.value for reason in PolicyReason}
    assert "%(min_length)s" in REASON_MESSAGES[PolicyReason.TOO_SHORT]


def test_refused_results_carry_reason_codes() -> None:
    result = PolicyResult.refused("too_short", "common_password")
    assert not result.ok
    assert result.reasons == ("too_short", "common_password")
