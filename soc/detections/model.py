"""What a detection rule is and what it reports.

A rule (:class:`RuleInfo` plus the code that evaluates it) watches ECS documents as ingest
writes them. When it matches it produces a :class:`Signal`: the rule, the moment (event time),
the entity it is about (user, source address, session ...), the evidence (event ids) and a
reason in zh-CN and en. The engine turns signals into alerts, one per suppression key and
window: a rule that keeps matching the same entity adds evidence to its open alert instead of
raising a new one (Elastic Security calls this alert suppression).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = ["RuleInfo", "Severity", "Signal", "Text"]


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


@dataclass(frozen=True, slots=True)
class Text:
    """A sentence in both languages of the consoles."""

    en: str
    zh: str

    def __getitem__(self, locale: str) -> str:
        return self.zh if locale.lower().startswith("zh") else self.en

    def as_dict(self) -> dict[str, str]:
        return {"en": self.en, "zh": self.zh}


@dataclass(frozen=True, slots=True)
class RuleInfo:
    """A rule's identity and how its alerts are handled.

    ``suppress_by`` names the 1-3 fields of a signal's entity that make its suppression key;
    signals with the same key within ``suppress_for`` seconds (event time of the first) join
    one alert. ``technique`` is a MITRE ATT&CK technique id (``T1110.003``), ``tactic`` its
    tactic (``credential-access``). ``params`` are the published defaults of the rule's
    thresholds and windows; a site overrides them by name in configuration."""

    id: str
    name: Text
    description: Text
    severity: Severity
    risk_score: int
    technique: str
    tactic: str
    suppress_by: tuple[str, ...]
    suppress_for: float = 3600.0
    kind: str = "streaming"  # or "scheduled"
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= len(self.suppress_by) <= 3:
            raise ValueError(f"{self.id}: suppress_by names one to three fields")
        if not 0 <= self.risk_score <= 100:
            raise ValueError(f"{self.id}: risk_score is 0-100")
        if self.kind not in ("streaming", "scheduled"):
            raise ValueError(f"{self.id}: kind is streaming or scheduled")
        if self.suppress_for <= 0:
            raise ValueError(f"{self.id}: suppress_for must be positive")


@dataclass(frozen=True, slots=True)
class Signal:
    """One match of a rule.

    ``at`` is the event time (epoch seconds) of the event that completed the match; ``entity``
    holds the ECS fields the match is about (``user.name``, ``source.ip``, ``session.id`` ...),
    among them every field of the rule's ``suppress_by``; ``events`` are the ids of the events
    that make the evidence, the completing one last; ``values`` the measured figures
    (``{"failures": 12, "threshold": 10, "window_s": 300}``)."""

    rule: RuleInfo
    at: float
    entity: Mapping[str, str]
    events: tuple[str, ...]
    reason: Text
    values: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [name for name in self.rule.suppress_by if not self.entity.get(name)]
        if missing:
            raise ValueError(f"{self.rule.id}: the signal's entity lacks {', '.join(missing)}")
        if not self.events:
            raise ValueError(f"{self.rule.id}: a signal names at least one event")

    @property
    def suppression_key(self) -> str:
        """The rule and the values of its ``suppress_by`` fields, as one stable string."""
        parts = [self.rule.id, *(f"{name}={self.entity[name]}" for name in self.rule.suppress_by)]
        return "\x1f".join(parts)

    @property
    def suppression_hash(self) -> str:
        return hashlib.sha256(self.suppression_key.encode()).hexdigest()[:32]
