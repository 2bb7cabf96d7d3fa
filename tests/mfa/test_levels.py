"""mfa.levels: amr values (RFC 8176) combine into the three OneGate authentication classes."""

from __future__ import annotations

import pytest

from mfa.levels import ACR_MFA, ACR_PHR, ACR_PWD, acr_for, combine, level, lowest_known, satisfies


@pytest.mark.parametrize(
    ("methods", "amr", "acr"),
    [
        ((("pwd",),), ("pwd",), ACR_PWD),
        ((("pwd",), ("otp",)), ("pwd", "otp", "mfa"), ACR_MFA),
        ((("pwd",), ("hwk", "user")), ("pwd", "hwk", "user", "mfa"), ACR_PHR),
        ((("pwd", "otp", "mfa"), ("hwk", "user")), ("pwd", "otp", "hwk", "user", "mfa"), ACR_PHR),
        # A passkey with user verification is two factors on its own (possession + PIN/biometric).
        ((("hwk", "user", "pin"),), ("hwk", "user", "pin", "mfa"), ACR_PHR),
        ((("swk", "user", "pin"),), ("swk", "user", "pin", "mfa"), ACR_PHR),
        # Without user verification a key is one factor: not even mfa.
        ((("hwk", "user"),), ("hwk", "user"), ACR_PWD),
        # One-time codes alone are one factor, however many.
        ((("otp",), ("otp",)), ("otp",), ACR_PWD),
        # "pin" means nothing without the key that checked it; a claimed "mfa" is never taken as given.
        ((("pwd", "pin", "mfa"),), ("pwd", "pin"), ACR_PWD),
    ],
)
def test_methods_combine_into_a_class(
    methods: tuple[tuple[str, ...], ...], amr: tuple[str, ...], acr: str
) -> None:
    assert combine(*methods) == amr
    assert acr_for(combine(*methods)) == acr


def test_classes_are_ordered() -> None:
    assert [level(a) for a in (ACR_PWD, ACR_MFA, ACR_PHR)] == [0, 1, 2]
    assert level("urn:other:acr") == -1 and level(None) == -1
    assert satisfies(ACR_PHR, ACR_MFA) and satisfies(ACR_MFA, ACR_MFA) and satisfies(ACR_PWD, None)
    assert not satisfies(ACR_MFA, ACR_PHR) and not satisfies(ACR_PWD, ACR_MFA)
    # Unknown classes are never satisfied and never satisfy.
    assert not satisfies("urn:other:acr", ACR_PWD) and not satisfies(ACR_PHR, "urn:other:acr")


def test_acr_values_ask_for_any_of_them() -> None:
    assert lowest_known([ACR_PHR, ACR_MFA]) == ACR_MFA
    assert lowest_known(["urn:other", ACR_PHR]) == ACR_PHR
    assert lowest_known(["urn:other"]) is None and lowest_known([]) is None
