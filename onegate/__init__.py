"""OneGate, the product: CLI, app assembly per role and the demo stack."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("onegate")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
