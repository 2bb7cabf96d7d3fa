"""Package re-exports resolved on first use (PEP 562 module ``__getattr__``).

A package ``__init__.py`` that imports all of its modules makes every ``import pkg.module``
load the whole package. A server process then keeps code in memory that its role never runs
(the gateway, for one, needs ``mfa.levels`` but none of TOTP or WebAuthn). With
:func:`lazy_exports` the package names the same public API in ``__all__`` (and imports it under
``TYPE_CHECKING`` for readers and mypy), and each name is imported from its module when first
asked for.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, modules: Mapping[str, Sequence[str]]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``: ``modules`` maps a module to the names it exports.

    A name is imported once, then set on the package; any other name raises ``AttributeError``
    (so ``from package import submodule`` still imports the submodule).
    """
    where = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
