"""The directory: users, groups and departments.

:class:`Directory` (services.py) is the one entry point; :class:`PasswordPolicy` (policy.py)
judges new passwords; :class:`PasswordHashing` (passwords.py) hashes them with argon2id;
csv_import.py imports users from a spreadsheet. The values the directory returns and the
field rules are in values.py, its errors (:class:`DirectoryError`) in errors.py.

The names below are imported from their modules when first used (core.lazy): a process
that needs one of these modules does not load the others.
"""

from typing import TYPE_CHECKING

from core.lazy import lazy_exports

if TYPE_CHECKING:
    from idp.directory.csv_import import (
        BadRow,
        CsvFormatError,
        ImportReport,
        RowOutcome,
        apply_import,
        decode_csv,
        import_users,
        parse_csv,
    )
    from idp.directory.errors import (
        DepartmentExists,
        DirectoryError,
        InvalidValue,
        PasswordRejected,
        UnknownDepartment,
        UnknownGroup,
        UnknownUser,
        UserExists,
    )
    from idp.directory.models import Department, Group, Membership, User, UserStatus
    from idp.directory.passwords import PasswordHashing, generate_password
    from idp.directory.policy import PasswordPolicy, PolicyReason, PolicyResult, common_passwords
    from idp.directory.services import Directory
    from idp.directory.values import (
        DepartmentNode,
        GroupSummary,
        StatusChange,
        UserProfile,
        sign_in_blocked,
    )

__getattr__ = lazy_exports(
    __name__,
    {
        "idp.directory.csv_import": (
            "BadRow",
            "CsvFormatError",
            "ImportReport",
            "RowOutcome",
            "apply_import",
            "decode_csv",
            "import_users",
            "parse_csv",
        ),
        "idp.directory.errors": (
            "DepartmentExists",
            "DirectoryError",
            "InvalidValue",
            "PasswordRejected",
            "UnknownDepartment",
            "UnknownGroup",
            "UnknownUser",
            "UserExists",
        ),
        "idp.directory.models": ("Department", "Group", "Membership", "User", "UserStatus"),
        "idp.directory.passwords": ("PasswordHashing", "generate_password"),
        "idp.directory.policy": ("PasswordPolicy", "PolicyReason", "PolicyResult", "common_passwords"),
        "idp.directory.services": ("Directory",),
        "idp.directory.values": (
            "DepartmentNode",
            "GroupSummary",
            "StatusChange",
            "UserProfile",
            "sign_in_blocked",
        ),
    },
)

__all__ = [
    "BadRow",
    "CsvFormatError",
    "Department",
    "DepartmentExists",
    "DepartmentNode",
    "Directory",
    "DirectoryError",
    "Group",
    "GroupSummary",
    "ImportReport",
    "InvalidValue",
    "Membership",
    "PasswordHashing",
    "PasswordPolicy",
    "PasswordRejected",
    "PolicyReason",
    "PolicyResult",
    "RowOutcome",
    "StatusChange",
    "UnknownDepartment",
    "UnknownGroup",
    "UnknownUser",
    "User",
    "UserExists",
    "UserProfile",
    "UserStatus",
    "apply_import",
    "common_passwords",
    "decode_csv",
    "generate_password",
    "import_users",
    "parse_csv",
    "sign_in_blocked",
]
