"""Sigma correlation rules evaluated here, over the matches of the rules they reference.

Lucene has no aggregation and the SQL backend's correlation form needs tables laid out its own
way, so the stores only find the base rules' matching events (``native_search``) and this module
does the counting, the same way for every store: per group (the ``group-by`` values), a window of
``timespan`` seconds slides over the events in time order; where the condition first holds the
window's events make one match, and the next match starts after its last event (so a long attack
yields one match per threshold's worth of events, not one per event).

* ``event_count``: events in the window;
* ``value_count``: distinct values of the condition's ``field`` in the window;
* ``temporal``: distinct referenced rules with a match in the window;
* ``temporal_ordered``: referenced rules matched in the listed order (each later than the last).

An event that lacks a group-by field belongs to no group and is left out.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from soc.detections.engine import event_time

__all__ = ["OPERATORS", "Correlation", "Match", "correlate"]

OPERATORS: dict[str, Callable[[int, int], bool]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
    "eq": operator.eq,
    "neq": operator.ne,
}
KINDS = ("event_count", "value_count", "temporal", "temporal_ordered")


@dataclass(frozen=True)
class Match:
    """One finding: the events (oldest first, the completing one last), the group-by values it is
    about (empty for a plain rule) and the measured figure (events, distinct values, rules)."""

    events: tuple[dict[str, Any], ...]
    group: Mapping[str, str] = field(default_factory=dict)
    count: int = 1

    @property
    def completing(self) -> dict[str, Any]:
        return self.events[-1]


@dataclass(frozen=True)
class Correlation:
    """A correlation rule, its field names already ECS. ``rules`` are the referenced rules'
    ids, in the listed order."""

    kind: str
    rules: tuple[str, ...]
    group_by: tuple[str, ...]
    timespan_s: int
    op: str
    count: int
    field: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"correlation type {self.kind} is not supported ({', '.join(KINDS)})")
        if self.op not in OPERATORS:
            raise ValueError(f"correlation condition {self.op} is not supported")
        if self.kind == "value_count" and not self.field:
            raise ValueError("a value_count correlation names a field in its condition")

    def holds(self, measured: int) -> bool:
        return OPERATORS[self.op](measured, self.count)


def _value(doc: Mapping[str, Any], name: str) -> str | None:
    value = doc.get(name)
    if value is None or isinstance(value, list | dict):
        return None
    return str(value)


def _measure(correlation: Correlation, window: Sequence[tuple[float, str, str, dict[str, Any]]]) -> int:
    if correlation.kind == "event_count":
        return len({event_id for _, event_id, _, _ in window})
    if correlation.kind == "value_count":
        name = correlation.field or ""
        return len({v for _, _, _, doc in window if (v := _value(doc, name)) is not None})
    if correlation.kind == "temporal":
        return len({rule for _, _, rule, _ in window})
    # temporal_ordered: how many of the rules, in their order, match one after another
    reached = 0
    for _, _, rule, _ in window:
        if reached < len(correlation.rules) and rule == correlation.rules[reached]:
            reached += 1
    return reached


def correlate(correlation: Correlation, hits: Mapping[str, Sequence[dict[str, Any]]]) -> list[Match]:
    """The matches of ``correlation`` among ``hits`` (referenced rule id -> its matching events)."""
    groups: dict[tuple[str, ...], list[tuple[float, str, str, dict[str, Any]]]] = {}
    for rule in correlation.rules:
        for doc in hits.get(rule, ()):
            key = tuple(_value(doc, name) for name in correlation.group_by)
            if any(part is None for part in key):
                continue
            item = (event_time(doc), str(doc.get("event.id", "")), rule, doc)
            groups.setdefault(tuple(str(part) for part in key), []).append(item)
    found: list[Match] = []
    for key, items in sorted(groups.items()):
        items.sort(key=lambda item: (item[0], item[1], correlation.rules.index(item[2])))
        start = 0
        for end in range(len(items)):
            while items[start][0] < items[end][0] - correlation.timespan_s:
                start += 1
            window = items[start : end + 1]
            measured = _measure(correlation, window)
            if not correlation.holds(measured):
                continue
            events: dict[str, dict[str, Any]] = {}
            for _, event_id, _, doc in window:
                events.pop(event_id, None)  # an event two rules matched: kept once, at its last place
                events[event_id] = doc
            completing = items[end][1]
            ordered = [doc for event_id, doc in events.items() if event_id != completing]
            ordered.append(events[completing])
            found.append(Match(tuple(ordered), dict(zip(correlation.group_by, key, strict=True)), measured))
            start = end + 1
            if start >= len(items):
                break
    found.sort(key=lambda match: (event_time(match.completing), str(match.completing.get("event.id"))))
    return found
