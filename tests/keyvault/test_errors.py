"""The keyvault exception family: one base, tampering and unknown keys in one branch."""

from __future__ import annotations

import pytest

from keyvault import errors


@pytest.mark.parametrize(
    ("cls", "parent"),
    [
        (errors.MasterKeyError, errors.KeyvaultError),
        (errors.KeyFileError, errors.MasterKeyError),
        (errors.DecryptionError, errors.KeyvaultError),
        (errors.UnknownKeyError, errors.DecryptionError),
        (errors.SigningKeyError, errors.KeyvaultError),
        (errors.TokenInvalid, errors.KeyvaultError),
        (errors.TokenExpired, errors.TokenInvalid),
        (errors.TokenNotYetValid, errors.TokenInvalid),
    ],
)
def test_hierarchy(cls: type[Exception], parent: type[Exception]) -> None:
    assert issubclass(cls, parent)


def test_all_exported() -> None:
    exported = {getattr(errors, name) for name in errors.__all__}
    assert all(issubclass(cls, errors.KeyvaultError) for cls in exported)
    assert len(exported) == 9
