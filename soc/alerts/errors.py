"""What the alert store raises when it refuses a request.

Every error has a ``code`` from a closed vocabulary and a message in English and in Chinese; the
API that follows maps the classes to HTTP (not found 404, stale 412, refused transition 409,
invalid input 422).
"""

from __future__ import annotations

__all__ = ["AlertConflict", "AlertError", "AlertInvalid", "AlertNotFound", "TransitionRefused"]


class AlertError(Exception):
    """A request the store refused; nothing was changed."""

    code = "alert_error"

    def __init__(self, code: str, message_en: str, message_zh: str) -> None:
        super().__init__(f"{message_en} / {message_zh}")
        self.code = code
        self.message_en = message_en
        self.message_zh = message_zh

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "en": self.message_en, "zh": self.message_zh}


class AlertNotFound(AlertError, LookupError):
    def __init__(self, alert_id: str) -> None:
        shown = alert_id[:64]
        super().__init__("alert_not_found", f"no alert {shown}", f"没有告警 {shown}")
        self.alert_id = alert_id


class AlertConflict(AlertError):
    """The caller changed an older version of the alert than the stored one (If-Match failed)."""

    def __init__(self, alert_id: str, expected: int, stored: int) -> None:
        super().__init__(
            "version_mismatch",
            f"alert {alert_id} has changed since it was read (version {expected}, now {stored}); "
            "read it again",
            f"告警 {alert_id} 在读取后已被修改（读取时版本 {expected}，当前版本 {stored}），请重新读取",
        )
        self.alert_id = alert_id
        self.expected = expected
        self.stored = stored


class TransitionRefused(AlertError):
    """The change does not apply to the alert as it is (``already_acknowledged``,
    ``already_closed``, ``already_open``, ``closed``, ``already_assigned``, ``not_assigned``)."""


class AlertInvalid(AlertError, ValueError):
    """The request itself is wrong (``close_reason_required``, ``unknown_close_reason``,
    ``comment_empty``, ``comment_too_long``, ``note_too_long``, ``invalid_username``,
    ``invalid_cursor``, ``invalid_filter``, ``too_many_alerts``, ``unknown_action``)."""
