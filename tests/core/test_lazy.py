"""core.lazy: packages whose re-exports are imported on first use."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

LAZY_PACKAGES = ("mfa", "idp.clients", "idp.directory")


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_every_exported_name_resolves_to_its_module_s_object(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        value = getattr(module, name)
        assert value is not None, name
        origin = getattr(value, "__module__", None)
        if origin is not None and origin.startswith(package + "."):
            assert getattr(sys.modules[origin], name) is value


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_an_unknown_name_is_an_attribute_error_and_submodules_still_import(package: str) -> None:
    module = importlib.import_module(package)
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        module.nothing_here  # noqa: B018 - the access is the test
    errors = importlib.import_module(f"{package}.errors")
    assert errors.__name__ == f"{package}.errors"


def test_one_module_of_a_package_does_not_load_the_rest() -> None:
    # A fresh interpreter: this one has imported everything already.
    code = (
        "import sys, mfa.levels, idp.clients.services, idp.directory.services; "
        "print(' '.join(m for m in ('fido2', 'mfa.webauthn', 'mfa.totp', 'idp.clients.auth', "
        "'idp.directory.csv_import') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
