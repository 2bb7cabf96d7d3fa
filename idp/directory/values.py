"""The directory's plain values and the rules its fields follow.

The frozen dataclasses :class:`Directory <idp.directory.services.Directory>` returns
(:class:`UserProfile`, :class:`StatusChange`, :class:`GroupSummary`, :class:`DepartmentNode`),
the normalisers that check and clean a username, code, display name, email or phone (raising
:class:`~idp.directory.errors.InvalidValue`), :func:`as_utc`, and :func:`sign_in_blocked`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime

from idp.directory.errors import InvalidValue
from idp.directory.models import User, UserStatus

__all__ = [
    "DepartmentNode",
    "GroupSummary",
    "StatusChange",
    "UserProfile",
    "as_utc",
    "clean_display_name",
    "clean_email",
    "clean_phone",
    "normalise_code",
    "normalise_username",
    "sign_in_blocked",
]


@dataclass(frozen=True, slots=True)
class UserProfile:
    """What tokens and userinfo say about a user (OIDC Core §5.1 claims are built from it)."""

    sub: str
    username: str
    display_name: str
    email: str | None
    phone: str | None
    department: str | None  # the department's name (市人力资源和社会保障局)
    department_code: str | None
    groups: tuple[str, ...]
    status: UserStatus
    # The department's code and the codes of every department above it, nearest first.
    departments: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StatusChange:
    """The result of lock / unlock / disable / enable: the user after, and the status before."""

    user: User
    previous: UserStatus

    @property
    def changed(self) -> bool:
        return self.user.status is not self.previous


@dataclass(frozen=True, slots=True)
class GroupSummary:
    name: str
    description: str | None
    members: int


@dataclass(frozen=True, slots=True)
class DepartmentNode:
    """A department in the tree, with its sub-departments (sorted by code)."""

    code: str
    name: str
    name_en: str | None
    children: tuple[DepartmentNode, ...] = ()


# -- value rules ------------------------------------------------------------------------------

_USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{2,63}")
_CODE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# Light checks only: one @, a dot in the domain, no spaces. Delivery proves the rest.
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]+\.[^@\s.]{2,63}")
_PHONE = re.compile(r"\+?[0-9][0-9 ()-]{4,30}")


def normalise_username(username: str) -> str:
    """Lower-cased and checked: 3-64 characters of a-z 0-9 . _ -, starting with a letter or digit."""
    value = username.strip().lower()
    if not _USERNAME.fullmatch(value):
        raise InvalidValue(
            "username", username, "3 to 64 characters a-z 0-9 . _ -, starting with a letter or digit"
        )
    return value


def normalise_code(kind: str, code: str) -> str:
    """Group names and department codes: 1-64 characters a-z 0-9 . _ -, lower-cased."""
    value = code.strip().lower()
    if not _CODE.fullmatch(value):
        raise InvalidValue(kind, code, "1 to 64 characters a-z 0-9 . _ -, starting with a letter or digit")
    return value


def clean_display_name(value: str) -> str:
    """Any Unicode (张伟, Zhang Wei), NFC-normalised, 1-200 characters, no control characters."""
    name = unicodedata.normalize("NFC", value.strip())
    if not name or len(name) > 200:
        raise InvalidValue("display name", value, "1 to 200 characters")
    # Control and format characters forge lines in logs and flip text direction in pages.
    if any(unicodedata.category(ch) in {"Cc", "Cf"} for ch in name):
        raise InvalidValue("display name", value, "no control characters")
    return name


def clean_email(value: str | None) -> str | None:
    """A stripped address, or None for empty; raises :class:`InvalidValue` when malformed."""
    if value is None or not value.strip():
        return None
    email = value.strip()
    if len(email) > 254 or not _EMAIL.fullmatch(email):
        raise InvalidValue("email", value, "an address like name@example.gov.cn")
    return email


def clean_phone(value: str | None) -> str | None:
    """A stripped number (+86 138-0013-8000), or None for empty."""
    if value is None or not value.strip():
        return None
    phone = value.strip()
    if len(phone) > 32 or not _PHONE.fullmatch(phone) or sum(c.isdigit() for c in phone) < 5:
        raise InvalidValue("phone", value, "digits, spaces, ( ) - and a leading +, 5 digits at least")
    return phone


def as_utc(value: datetime | None) -> datetime | None:
    """An aware UTC datetime: SQLite hands timestamps back naive (they were stored as UTC)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def sign_in_blocked(user: User, now: datetime) -> str | None:
    """Why ``user`` may not sign in or keep using tokens now, or None.

    ``disabled`` and ``locked`` are the administrator's statuses; ``locked_out`` is the automatic
    lockout after repeated failures, which ends by itself at ``locked_until``.
    """
    if user.status is UserStatus.DISABLED:
        return "disabled"
    if user.status is UserStatus.LOCKED:
        return "locked"
    until = as_utc(user.locked_until)
    if until is not None and until > now:
        return "locked_out"
    return None
