"""Alerts: what the detections raise and the analysts triage (statuses, close reasons, assignee,
comments, history, response targets, bulk changes)."""

from soc.alerts.alert import (
    NO_DRILL,
    SEVERITY_SCORE,
    UNASSIGNED,
    Alert,
    AlertPage,
    BulkResult,
    CloseReason,
    HistoryAction,
    HistoryEntry,
    Refusal,
    Status,
)
from soc.alerts.errors import AlertConflict, AlertError, AlertInvalid, AlertNotFound, TransitionRefused
from soc.alerts.services import MAX_BULK, AlertStore
from soc.alerts.sla import DEFAULT_SLA, Sla, SlaTargets
from soc.alerts.triage import ACTIONS, MAX_COMMENT

__all__ = [
    "ACTIONS",
    "DEFAULT_SLA",
    "MAX_BULK",
    "MAX_COMMENT",
    "NO_DRILL",
    "SEVERITY_SCORE",
    "UNASSIGNED",
    "Alert",
    "AlertConflict",
    "AlertError",
    "AlertInvalid",
    "AlertNotFound",
    "AlertPage",
    "AlertStore",
    "BulkResult",
    "CloseReason",
    "HistoryAction",
    "HistoryEntry",
    "Refusal",
    "Sla",
    "SlaTargets",
    "Status",
    "TransitionRefused",
]
