"""The directory's errors: one family, :class:`DirectoryError`, each naming the offending value.

A refused password raises :class:`PasswordRejected` with the policy's reason codes (never the
password); :class:`InvalidValue` names the field and the rule it breaks.
"""

from __future__ import annotations

from collections.abc import Iterable

from idp.directory.policy import PolicyReason

__all__ = [
    "DepartmentExists",
    "DirectoryError",
    "InvalidValue",
    "PasswordRejected",
    "UnknownDepartment",
    "UnknownGroup",
    "UnknownUser",
    "UserExists",
]


class DirectoryError(Exception):
    """A directory operation that cannot be done; the message names the offending value."""


class UserExists(DirectoryError):
    def __init__(self, username: str) -> None:
        super().__init__(f"user {username!r} already exists")
        self.username = username


class UnknownUser(DirectoryError):
    def __init__(self, user: str | int) -> None:
        what = f"id {user}" if isinstance(user, int) else repr(user)
        super().__init__(f"no user {what}")
        self.user = user


class UnknownGroup(DirectoryError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no group {name!r}")
        self.name = name


class UnknownDepartment(DirectoryError):
    def __init__(self, code: str) -> None:
        super().__init__(f"no department with code {code!r}")
        self.code = code


class DepartmentExists(DirectoryError):
    def __init__(self, code: str) -> None:
        super().__init__(f"department {code!r} already exists")
        self.code = code


class InvalidValue(DirectoryError):
    """A field value that breaks its rule (``field`` names it: username, email, ...)."""

    def __init__(self, field: str, value: str, rule: str) -> None:
        super().__init__(f"invalid {field} {value!r}: {rule}")
        self.field = field
        self.value = value
        self.rule = rule


class PasswordRejected(DirectoryError):
    """The password policy refused a new password; ``reason_code`` is the first reason."""

    def __init__(self, reasons: Iterable[str]) -> None:
        self.reasons = tuple(reasons) or (PolicyReason.COMMON_PASSWORD.value,)
        self.reason_code = self.reasons[0]
        super().__init__(f"password refused by the password policy: {', '.join(self.reasons)}")
