"""Small helpers the built-in rules share: reading flat ECS documents."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["action", "event_id", "failed", "field", "succeeded"]


def field(doc: Mapping[str, Any], name: str) -> str | None:
    """A string field of ``doc`` (the first value of a list), or None when absent or empty."""
    value = doc.get(name)
    if type(value) is str:  # the common case first
        return value or None
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    if value is None or value == "":
        return None
    return str(value)


def action(doc: Mapping[str, Any]) -> str | None:
    return field(doc, "event.action")


def event_id(doc: Mapping[str, Any]) -> str:
    return str(doc["event.id"])


def failed(doc: Mapping[str, Any]) -> bool:
    return doc.get("event.outcome") == "failure"


def succeeded(doc: Mapping[str, Any]) -> bool:
    return doc.get("event.outcome") == "success"
