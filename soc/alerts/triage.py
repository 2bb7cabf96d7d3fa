"""The triage changes: what each one needs, and what it does to an alert in each status.

The statuses::

    open ──acknowledge──> acknowledged ──close──> closed
      │  <───reopen───────────┘                     │
      └──────────close───────────────> closed       │
      <─────────────────reopen──────────────────────┘

Acknowledging or closing records the first response (``acknowledged_at``) once; reopening
clears the close and its reason, not the first response. Assigning and commenting leave the
status alone and apply in any status (a closed alert still takes the post-mortem's comments).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from soc.alerts.alert import UNASSIGNED, CloseReason, HistoryAction, Status
from soc.alerts.errors import AlertConflict, AlertInvalid, TransitionRefused
from soc.alerts.models import AlertRecord

__all__ = ["ACTIONS", "MAX_COMMENT", "Request", "check_actor", "check_request", "refused", "transition"]

# The changes ``bulk`` applies.
ACTIONS = ("acknowledge", "close", "reopen", "assign", "comment")
MAX_COMMENT = 4000
_NAME = re.compile(r"[^\s\x00-\x1f\x7f]{1,200}")  # an actor or assignee: no spaces, no controls


@dataclass(frozen=True, slots=True)
class Request:
    """A checked triage change, before it meets an alert."""

    action: str  # one of ACTIONS
    close_reason: CloseReason | None = None
    assignee: str | None = None
    note: str | None = None  # the comment's text for ``comment``


def check_request(
    action: str,
    *,
    reason: CloseReason | str | None = None,
    note: str | None = None,
    assignee: str | None = None,
) -> Request:
    """Check the parts of a change that do not depend on the alert."""
    if action == "comment":
        if note is None or not note.strip():
            raise AlertInvalid("comment_empty", "a comment needs some text", "评论内容不能为空")
        if len(note) > MAX_COMMENT:
            raise AlertInvalid(
                "comment_too_long",
                f"a comment has at most {MAX_COMMENT} characters ({len(note)} given)",
                f"评论最多 {MAX_COMMENT} 个字符（当前 {len(note)} 个）",
            )
        return Request(action, note=note)
    if note is not None and len(note) > MAX_COMMENT:
        raise AlertInvalid(
            "note_too_long",
            f"a note has at most {MAX_COMMENT} characters ({len(note)} given)",
            f"备注最多 {MAX_COMMENT} 个字符（当前 {len(note)} 个）",
        )
    note = note if note and note.strip() else None
    if action == "close":
        if reason is None or reason == "":
            raise AlertInvalid(
                "close_reason_required",
                "closing an alert needs a reason: " + ", ".join(CloseReason),
                "关闭告警须说明原因：" + "、".join(CloseReason),
            )
        try:
            close_reason = CloseReason(reason)
        except ValueError:
            raise AlertInvalid(
                "unknown_close_reason",
                f"unknown close reason {str(reason)[:40]!r} (one of {', '.join(CloseReason)})",
                f"未知的关闭原因 {str(reason)[:40]!r}（可选：{'、'.join(CloseReason)}）",
            ) from None
        return Request(action, close_reason=close_reason, note=note)
    if action == "assign":
        if assignee is not None and (not _NAME.fullmatch(assignee) or assignee == UNASSIGNED):
            raise AlertInvalid(
                "invalid_username",
                f"not a username: {assignee[:64]!r}",
                f"用户名无效：{assignee[:64]!r}",
            )
        return Request(action, assignee=assignee)
    return Request(action, note=note)


def check_actor(actor: str) -> str:
    if not _NAME.fullmatch(actor):
        raise AlertInvalid("invalid_actor", f"not a username: {actor[:64]!r}", f"操作人无效：{actor[:64]!r}")
    return actor


_STATUS_ZH = {Status.OPEN: "待处理", Status.ACKNOWLEDGED: "已确认", Status.CLOSED: "已关闭"}


def refused(alert_id: str, status: Status, action: str) -> TransitionRefused:
    """Why ``action`` does not apply to an alert in ``status``."""
    if action == "acknowledge" and status is Status.ACKNOWLEDGED:
        return TransitionRefused(
            "already_acknowledged", f"alert {alert_id} is acknowledged already", f"告警 {alert_id} 已确认"
        )
    if action == "acknowledge":  # closed
        return TransitionRefused(
            "closed",
            f"alert {alert_id} is closed; reopen it first",
            f"告警 {alert_id} 已关闭，请先重新打开",
        )
    if action == "close":
        return TransitionRefused(
            "already_closed", f"alert {alert_id} is closed already", f"告警 {alert_id} 已关闭"
        )
    return TransitionRefused(
        "already_open",
        f"alert {alert_id} is {status.value}; only an acknowledged or closed alert can be reopened",
        f"告警 {alert_id} 当前为{_STATUS_ZH[status]}，只有已确认或已关闭的告警可以重新打开",
    )


def transition(
    row: AlertRecord, request: Request, *, expected: int | None, now: datetime
) -> tuple[HistoryAction, dict[str, Any]]:
    """Check ``request`` against the alert and apply it to ``row`` (not yet written): the
    history action and the fields of its entry. Raises before changing anything."""
    if expected is not None and row.version != expected:
        raise AlertConflict(row.id, expected, row.version)
    status = Status(row.status)
    entry: dict[str, Any] = {"note": request.note}
    if request.action == "acknowledge":
        if status is not Status.OPEN:
            raise refused(row.id, status, "acknowledge")
        action = HistoryAction.ACKNOWLEDGED
        row.status = Status.ACKNOWLEDGED.value
        row.acknowledged_at = row.acknowledged_at or now
    elif request.action == "close":
        if status is Status.CLOSED:
            raise refused(row.id, status, "close")
        assert request.close_reason is not None  # noqa: S101 - check_request() requires it
        action = HistoryAction.CLOSED
        row.status = Status.CLOSED.value
        row.close_reason = request.close_reason.value
        row.closed_at = now
        row.acknowledged_at = row.acknowledged_at or now  # closing is a response too
        entry["close_reason"] = request.close_reason.value
    elif request.action == "reopen":
        if status is Status.OPEN:
            raise refused(row.id, status, "reopen")
        action = HistoryAction.REOPENED
        row.status = Status.OPEN.value
        row.close_reason = None
        row.closed_at = None
    elif request.action == "assign":
        if request.assignee is None:
            if row.assignee is None:
                raise TransitionRefused(
                    "not_assigned", f"alert {row.id} has no assignee", f"告警 {row.id} 尚未指派"
                )
            action = HistoryAction.UNASSIGNED
            entry["assignee"] = row.assignee  # whom it was taken from
        else:
            if row.assignee == request.assignee:
                raise TransitionRefused(
                    "already_assigned",
                    f"alert {row.id} is assigned to {request.assignee} already",
                    f"告警 {row.id} 已指派给 {request.assignee}",
                )
            action = HistoryAction.ASSIGNED
            entry["assignee"] = request.assignee
        row.assignee = request.assignee
    else:  # comment
        action = HistoryAction.COMMENTED
    if action in (HistoryAction.ACKNOWLEDGED, HistoryAction.CLOSED, HistoryAction.REOPENED):
        entry["from_status"], entry["to_status"] = status.value, row.status
    return action, entry
