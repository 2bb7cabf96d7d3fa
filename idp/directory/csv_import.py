"""Import users from a CSV file: a dry-run report, then an idempotent import that keeps good rows.

Columns (header required, any order; Chinese headers accepted, see :data:`HEADER_ALIASES`)::

    username,display_name,email,phone,department,groups

``department`` is a department *code*; ``groups`` are group names separated by ``;`` or ``|``.
Only ``username`` and ``display_name`` are required; an empty cell leaves an existing user's
value as it is (an import never clears data), and groups are only ever added.

Encoding: UTF-8 with or without a byte-order mark, or GB18030 (Excel's "CSV" on a Chinese
Windows), told apart automatically; ``encoding=`` overrides the guess.

Every bad row is reported with its line number and the reason, and never stops the import:
the good rows are imported. A new user gets a random one-time password (in the report, once)
and must change it at the first sign-in. Importing the same file again changes nothing.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from idp.directory.errors import DirectoryError, UnknownDepartment
from idp.directory.services import Directory
from idp.directory.values import (
    clean_display_name,
    clean_email,
    clean_phone,
    normalise_code,
    normalise_username,
)

__all__ = [
    "COLUMNS",
    "HEADER_ALIASES",
    "BadRow",
    "CsvFormatError",
    "CsvRow",
    "ImportReport",
    "ParsedCsv",
    "RowOutcome",
    "apply_import",
    "decode_csv",
    "import_users",
    "parse_csv",
]

COLUMNS = ("username", "display_name", "email", "phone", "department", "groups")
HEADER_ALIASES = {
    "用户名": "username",
    "账号": "username",
    "帐号": "username",
    "姓名": "display_name",
    "显示名": "display_name",
    "邮箱": "email",
    "电子邮箱": "email",
    "电子邮件": "email",
    "手机": "phone",
    "手机号": "phone",
    "电话": "phone",
    "部门": "department",
    "部门编码": "department",
    "组": "groups",
    "用户组": "groups",
}
"""Chinese column names an admin's spreadsheet may carry, and the column each one means."""

_GROUP_SEPARATORS = re.compile(r"[;|；]")
_MAX_BYTES = 32 * 1024 * 1024  # a city's staff list is a few MB; more is a mistake


class CsvFormatError(DirectoryError):
    """The file as a whole cannot be read (encoding, header); no row was looked at."""


@dataclass(frozen=True, slots=True)
class CsvRow:
    """One well-formed data row (values cleaned, not yet checked against the directory)."""

    line: int
    username: str
    display_name: str
    email: str | None
    phone: str | None
    department: str | None
    groups: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BadRow:
    line: int
    reason: str
    username: str | None = None


@dataclass(frozen=True, slots=True)
class ParsedCsv:
    encoding: str
    rows: tuple[CsvRow, ...]
    bad: tuple[BadRow, ...]


@dataclass(frozen=True, slots=True)
class RowOutcome:
    """What happened (or, in a dry run, would happen) to one row's user."""

    line: int
    username: str
    action: Literal["create", "update", "unchanged"]
    changes: tuple[str, ...] = ()  # field names, and "+group:<name>" for each membership added
    # The one-time password of a created user (real imports only); never printed by repr.
    password: str | None = field(default=None, repr=False)


@dataclass
class ImportReport:
    dry_run: bool
    encoding: str
    created: list[RowOutcome] = field(default_factory=list)
    updated: list[RowOutcome] = field(default_factory=list)
    unchanged: list[RowOutcome] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)
    groups_created: list[str] = field(default_factory=list)

    @property
    def passwords(self) -> list[tuple[str, str]]:
        """``(username, one-time password)`` of every created user (empty for a dry run)."""
        return [(o.username, o.password) for o in self.created if o.password is not None]

    def summary(self) -> dict[str, object]:
        """Counts and details without any password: safe to print, log or keep."""
        return {
            "dry_run": self.dry_run,
            "encoding": self.encoding,
            "created": [o.username for o in self.created],
            "updated": {o.username: list(o.changes) for o in self.updated},
            "unchanged": [o.username for o in self.unchanged],
            "groups_created": list(self.groups_created),
            "bad": [{"line": b.line, "username": b.username, "reason": b.reason} for b in self.bad],
        }


# -- reading the file -------------------------------------------------------------------------


def decode_csv(data: bytes, encoding: str | None = None) -> tuple[str, str]:
    """The text of ``data`` and the encoding used: BOM -> UTF-8, else UTF-8, else GB18030."""
    if len(data) > _MAX_BYTES:
        raise CsvFormatError(f"the file is larger than {_MAX_BYTES // (1024 * 1024)} MiB")
    if encoding:
        try:
            name = codecs.lookup(encoding).name
        except LookupError as e:
            raise CsvFormatError(f"unknown encoding {encoding!r}") from e
        if name == "utf-8":
            name = "utf-8-sig"  # tolerate a BOM whether or not the admin said so
        try:
            return data.decode(name), name
        except UnicodeDecodeError as e:
            raise CsvFormatError(f"the file is not valid {encoding} (byte {e.start})") from e
    if data.startswith(codecs.BOM_UTF8):
        candidates: tuple[str, ...] = ("utf-8-sig",)
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        candidates = ("utf-16",)  # Excel's "Unicode text"
    else:
        # Valid UTF-8 is almost never valid-looking GB18030 by accident and vice versa, so try
        # the strict UTF-8 decoder first and fall back to GB18030 (a superset of GBK and GB2312).
        candidates = ("utf-8", "gb18030")
    for candidate in candidates:
        try:
            return data.decode(candidate), candidate
        except UnicodeDecodeError:
            continue
    raise CsvFormatError("cannot tell the file's encoding (not UTF-8 or GB18030): pass --encoding")


def _header(cells: list[str]) -> list[str]:
    names = []
    for cell in cells:
        name = cell.strip().lstrip("\ufeff").lower().replace(" ", "_")
        name = HEADER_ALIASES.get(name, name)
        if name not in COLUMNS:
            raise CsvFormatError(
                f"unknown column {cell.strip()!r} in the header; columns: {', '.join(COLUMNS)}"
            )
        if name in names:
            raise CsvFormatError(f"column {name!r} appears twice in the header")
        names.append(name)
    for required in ("username", "display_name"):
        if required not in names:
            raise CsvFormatError(f"the header has no {required!r} column; columns: {', '.join(COLUMNS)}")
    return names


def _row(line: int, values: dict[str, str]) -> CsvRow:
    department = values.get("department", "").strip()
    groups = tuple(
        dict.fromkeys(
            normalise_code("group name", g)
            for g in _GROUP_SEPARATORS.split(values.get("groups", ""))
            if g.strip()
        )
    )
    display_name = values.get("display_name", "")
    if not display_name.strip():
        raise DirectoryError("display_name is empty")
    return CsvRow(
        line=line,
        username=normalise_username(values.get("username", "")),
        display_name=clean_display_name(display_name),
        email=clean_email(values.get("email")),
        phone=clean_phone(values.get("phone")),
        department=normalise_code("department code", department) if department else None,
        groups=groups,
    )


def parse_csv(text: str, encoding: str = "utf-8") -> ParsedCsv:
    """Check every row's form; rows that break a rule become :class:`BadRow` with their line."""
    first_line = text.split("\n", 1)[0]
    delimiter = "\t" if "\t" in first_line and "," not in first_line else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header_cells = next(reader, None)
    except csv.Error as e:
        raise CsvFormatError(f"line 1: {e}") from e
    if header_cells is None or not any(c.strip() for c in header_cells):
        raise CsvFormatError("the file is empty: it needs a header line and one line per user")
    columns = _header(header_cells)
    rows: list[CsvRow] = []
    bad: list[BadRow] = []
    first_seen: dict[str, int] = {}
    while True:
        line = reader.line_num + 1  # the line this record starts on (a quoted cell may span lines)
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            bad.append(BadRow(line, f"not CSV: {e}"))
            break  # the reader cannot find the next record reliably after this
        if not any(c.strip() for c in cells):
            continue  # blank lines, also the ",,,,," Excel leaves behind
        username = (
            cells[columns.index("username")].strip() if len(cells) > columns.index("username") else None
        )
        if len(cells) > len(columns) and any(c.strip() for c in cells[len(columns) :]):
            bad.append(BadRow(line, f"{len(cells)} cells, the header has {len(columns)}", username or None))
            continue
        try:
            row = _row(line, dict(zip(columns, cells, strict=False)))
        except DirectoryError as e:
            bad.append(BadRow(line, str(e), username or None))
            continue
        if row.username in first_seen:
            bad.append(
                BadRow(
                    line,
                    f"user {row.username!r} appears again (first on line {first_seen[row.username]})",
                    row.username,
                )
            )
            continue
        first_seen[row.username] = line
        rows.append(row)
    return ParsedCsv(encoding=encoding, rows=tuple(rows), bad=tuple(bad))


# -- applying it ------------------------------------------------------------------------------


async def apply_import(
    directory: Directory,
    parsed: ParsedCsv,
    *,
    dry_run: bool = False,
    create_groups: bool = False,
    progress: Callable[[int], None] | None = None,
    on_created: Callable[[RowOutcome], None] | None = None,
) -> ImportReport:
    """Create or update the users of ``parsed``; ``progress(n)`` after each of the n rows done.

    ``on_created`` sees each created user's outcome (with its one-time password) at once, so a
    caller can save the password before anything else can go wrong.

    A dry run reads the directory and writes nothing. Unknown departments are bad rows; unknown
    groups too, unless ``create_groups``. A row that fails while being written (a concurrent
    change) becomes a bad row as well: one row's trouble never undoes or stops the others.
    """
    report = ImportReport(dry_run=dry_run, encoding=parsed.encoding, bad=list(parsed.bad))
    groups = {g.name for g in await directory.list_groups()}
    departments = {d.code: d.id for d in await directory.departments()}
    would_create: set[str] = set()
    for done, row in enumerate(parsed.rows, start=1):
        try:
            outcome = await _apply_row(
                directory,
                row,
                groups=groups,
                departments=departments,
                new_groups=would_create,
                dry_run=dry_run,
                create_groups=create_groups,
            )
        except DirectoryError as e:
            report.bad.append(BadRow(row.line, str(e), row.username))
        else:
            if on_created is not None and outcome.action == "create" and not dry_run:
                on_created(outcome)
            {"create": report.created, "update": report.updated, "unchanged": report.unchanged}[
                outcome.action
            ].append(outcome)
        if progress is not None:
            progress(done)
    report.bad.sort(key=lambda b: b.line)
    report.groups_created = sorted(would_create)
    return report


async def _apply_row(
    directory: Directory,
    row: CsvRow,
    *,
    groups: set[str],
    departments: dict[str, int],
    new_groups: set[str],
    dry_run: bool,
    create_groups: bool,
) -> RowOutcome:
    if row.department is not None and row.department not in departments:
        raise UnknownDepartment(row.department)
    missing = [g for g in row.groups if g not in groups]
    if missing and not create_groups:
        raise DirectoryError(f"no group {', '.join(repr(g) for g in missing)} (--create-groups creates them)")
    for name in missing:
        if not dry_run:
            await directory.ensure_group(name)
            groups.add(name)
        new_groups.add(name)

    user = await directory.get_user(row.username)
    if user is None:
        if dry_run:
            return RowOutcome(row.line, row.username, "create")
        created, password = await directory.add_user_with_one_time_password(
            username=row.username,
            display_name=row.display_name,
            groups=row.groups,
            email=row.email,
            phone=row.phone,
            department=row.department,
        )
        return RowOutcome(row.line, created.username, "create", password=password)

    changes: dict[str, Any] = {}
    if row.display_name != user.display_name:
        changes["display_name"] = row.display_name
    if row.email is not None and row.email != user.email:
        changes["email"] = row.email
    if row.phone is not None and row.phone != user.phone:
        changes["phone"] = row.phone
    if row.department is not None and departments[row.department] != user.department_id:
        changes["department"] = row.department
    current = set(await directory.groups_of(row.username)) if row.groups else set()
    added = [g for g in row.groups if g not in current]
    if not dry_run:
        if changes:
            await directory.update_user(row.username, **changes)
        for name in added:
            await directory.add_member(name, row.username)
    described = (*changes, *(f"+group:{g}" for g in added))
    return RowOutcome(row.line, row.username, "update" if described else "unchanged", described)


async def import_users(
    directory: Directory,
    data: bytes,
    *,
    encoding: str | None = None,
    dry_run: bool = False,
    create_groups: bool = False,
    progress: Callable[[int], None] | None = None,
    on_created: Callable[[RowOutcome], None] | None = None,
) -> ImportReport:
    """Decode, parse and apply in one call (the CLI uses the steps to size its progress bar)."""
    text, used = decode_csv(data, encoding)
    return await apply_import(
        directory,
        parse_csv(text, used),
        dry_run=dry_run,
        create_groups=create_groups,
        progress=progress,
        on_created=on_created,
    )
