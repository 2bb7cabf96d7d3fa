"""What the sources share: the ingest they feed, strict JSON, and the events they emit."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from core.events import Category, Event, EventEmitter, Outcome

__all__ = ["Acceptor", "emit", "loads_strict"]


class Acceptor(Protocol):
    """The part of :class:`soc.ingest.Ingest` a source uses: ``accept`` returns once the documents
    are on disk (the acknowledgement), raises ``DocumentRefused`` (nothing spooled) or
    ``SpoolFull`` (nothing spooled; the source keeps its events and retries)."""

    async def accept(
        self, documents: Sequence[Mapping[str, Any]], *, received: datetime | None = None
    ) -> int: ...


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise ValueError(f"the key {key[:40]!r} is given twice")
        data[key] = value
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def loads_strict(data: bytes | str) -> Any:
    """JSON, refusing a key given twice and ``NaN`` / ``Infinity`` (parsers disagree on both, so
    a document could mean one thing to us and another to the store). ``ValueError`` otherwise."""
    try:
        return json.loads(data, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def emit(
    events: EventEmitter | None,
    action: str,
    fields: dict[str, Any],
    *,
    category: Category = Category.CONFIGURATION,
    outcome: Outcome = Outcome.FAILURE,
) -> None:
    """An ``onegate.soc`` event about a source (a refused key, peer or entry)."""
    if events is not None:
        events.emit(
            Event(action=action, category=category, outcome=outcome, dataset="onegate.soc", fields=fields)
        )
