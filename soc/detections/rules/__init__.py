"""The built-in detection rules, with published thresholds as their defaults."""

from __future__ import annotations

from soc.detections.engine import StreamingRule

__all__ = ["builtin_rules"]


def builtin_rules() -> list[StreamingRule]:
    """A fresh instance of every built-in streaming rule."""
    from soc.detections.rules import access, auth, identity

    return [*auth.rules(), *identity.rules(), *access.rules()]
