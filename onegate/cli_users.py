"""`onegate user ...`: the directory from the command line.

Every command takes ``--data-dir`` and ``--config`` like the rest of ``onegate``; commands
that print records take ``--json``. A problem (unknown user, bad value, unreachable
database) ends the command with one line ``onegate: ...`` on stderr and exit status 2.
``import`` exits 1 when it reported bad rows (the good ones were imported).

One-time passwords (``add``, ``reset-password``, ``import``) are printed once and stored only
as argon2id hashes. Administrative changes emit IAM events on the runtime's bus, naming the
operating-system account that ran the command as ``labels.actor``.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from core.events import Event
from idp.directory.csv_import import (
    CsvFormatError,
    ImportReport,
    ParsedCsv,
    RowOutcome,
    apply_import,
    decode_csv,
    parse_csv,
)
from idp.directory.models import User, UserStatus
from idp.directory.services import (
    DepartmentNode,
    Directory,
    DirectoryError,
    StatusChange,
    UnknownUser,
    UserProfile,
    as_utc,
)
from idp.events import auth_event
from onegate.cli_common import (
    ConfigFile,
    DataDir,
    Json,
    actor,
    emit_json,
    fail,
    iam_event,
    settings_from,
    table,
    with_runtime,
)
from onegate.cli_mfa import app as mfa_app
from onegate.sessions import end_user_sessions

if TYPE_CHECKING:
    from core.settings import Settings
    from onegate.runtime import Runtime

T = TypeVar("T")

app = typer.Typer(
    help="Users: add, list, lock, unlock, disable, reset passwords, import CSV, second factors.",
    no_args_is_help=True,
)
groups_app = typer.Typer(help="Groups: list, add, members, add-member, remove-member.", no_args_is_help=True)
departments_app = typer.Typer(help="Departments (a tree): list, add.", no_args_is_help=True)
app.add_typer(groups_app, name="groups")
app.add_typer(departments_app, name="departments")
app.add_typer(mfa_app, name="mfa")

# The same options as onegate/cli.py (which imports this module, so they cannot come from there).
Username = Annotated[str, typer.Argument(help="The user name (3-64 characters a-z 0-9 . _ -).")]


# -- plumbing ---------------------------------------------------------------------------------


def _with_runtime(settings: Settings, work: Callable[[Runtime], Awaitable[T]]) -> T:
    return with_runtime(settings, work, errors=(DirectoryError,))


def _when(value: Any) -> str | None:
    moment = as_utc(value)
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


def _user_record(user: User, *, department: str | None = None) -> dict[str, Any]:
    return {
        "username": user.username,
        "display_name": user.display_name,
        "sub": user.sub,
        "email": user.email,
        "phone": user.phone,
        "status": user.status.value,
        "department": department,
        "must_change_password": user.must_change_password,
        "last_login_at": _when(user.last_login_at),
        "locked_until": _when(user.locked_until),
        "lockout_count": user.lockout_count,
        "created_at": _when(user.created_at),
    }


# -- users ------------------------------------------------------------------------------------


@app.command("add")
def add(
    *,
    username: Username,
    name: Annotated[str, typer.Option("--name", "-n", help="Display name, e.g. 张伟.")],
    email: Annotated[str | None, typer.Option("--email", help="E-mail address.")] = None,
    phone: Annotated[str | None, typer.Option("--phone", help="Phone number.")] = None,
    department: Annotated[str | None, typer.Option("--department", help="Department code.")] = None,
    group: Annotated[list[str] | None, typer.Option("--group", "-g", help="A group (repeatable).")] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    as_json: Json = False,
) -> None:
    """Add a user with a one-time password, printed once; it must be changed at first sign-in."""
    settings = settings_from(data_dir, config)

    async def work(runtime: Runtime) -> tuple[User, str]:
        user, password = await runtime.directory.add_user_with_one_time_password(
            username=username,
            display_name=name,
            email=email,
            phone=phone,
            department=department,
            groups=tuple(group or ()),
        )
        runtime.bus.emit(iam_event("user-created", user, types=("user", "creation"), user__roles=group or []))
        return user, password

    user, password = _with_runtime(settings, work)
    if as_json:
        emit_json({"username": user.username, "display_name": user.display_name, "password": password})
        return
    typer.echo(f"created user {user.username} ({user.display_name})")
    typer.echo(f"one-time password (shown once; change it at first sign-in): {password}")


@app.command("list")
def list_users(
    *,
    status: Annotated[
        str | None, typer.Option("--status", help="Only users in this status: active, locked, disabled.")
    ] = None,
    department: Annotated[
        str | None, typer.Option("--department", help="Only this department (code).")
    ] = None,
    group: Annotated[str | None, typer.Option("--group", help="Only members of this group.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10000, help="Users per page.")] = 100,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Users to skip.")] = 0,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    as_json: Json = False,
) -> None:
    """List users by user name, with filters and paging."""
    settings = settings_from(data_dir, config)
    try:
        wanted = UserStatus(status.strip().lower()) if status is not None else None
    except ValueError:
        raise fail(
            f"unknown status {status!r}; choose one of {', '.join(s.value for s in UserStatus)}"
        ) from None

    async def work(runtime: Runtime) -> tuple[list[dict[str, Any]], int]:
        directory = runtime.directory
        codes = {d.id: d.code for d in await directory.departments()}
        users = await directory.list_users(
            status=wanted, department=department, group=group, offset=offset, limit=limit
        )
        total = await directory.count_users(status=wanted, department=department, group=group)
        return [_user_record(u, department=codes.get(u.department_id or 0)) for u in users], total

    records, total = _with_runtime(settings, work)
    if as_json:
        emit_json(records)
        return
    table(
        ["username", "name", "status", "department", "last login"],
        [
            [r["username"], r["display_name"], r["status"], r["department"] or "-", r["last_login_at"] or "-"]
            for r in records
        ],
    )
    shown = f"{offset + 1}-{offset + len(records)} of {total}" if records else f"none of {total}"
    typer.echo(f"({shown} users)", err=True)


@app.command("show")
def show(
    username: Username, data_dir: DataDir = None, config: ConfigFile = None, as_json: Json = False
) -> None:
    """Show one user: profile, status, department path, groups, sign-in state."""
    settings = settings_from(data_dir, config)

    async def work(runtime: Runtime) -> dict[str, Any]:
        directory = runtime.directory
        user = await directory.get_user(username)
        if user is None:
            raise UnknownUser(username)
        profile: UserProfile | None = await directory.profile(user.id)
        record = _user_record(user, department=profile.department_code if profile else None)
        record["department_name"] = profile.department if profile else None
        record["department_path"] = (
            await directory.department_path(profile.department_code)
            if profile and profile.department_code
            else None
        )
        record["groups"] = list(profile.groups) if profile else []
        record["password_changed_at"] = _when(user.password_changed_at)
        return record

    record = _with_runtime(settings, work)
    if as_json:
        emit_json(record)
        return
    labels = {
        "username": "user name",
        "display_name": "name",
        "department_path": "department",
        "groups": "groups",
        "status": "status",
        "email": "e-mail",
        "phone": "phone",
        "must_change_password": "must change password",
        "password_changed_at": "password changed",
        "last_login_at": "last sign-in",
        "locked_until": "locked out until",
        "lockout_count": "lockouts",
        "created_at": "created",
        "sub": "subject (sub)",
    }
    for key, label in labels.items():
        value = record[key]
        if isinstance(value, list):
            value = ", ".join(value) or "-"
        elif isinstance(value, bool):
            value = "yes" if value else "no"
        typer.echo(f"{label + ':':<22} {'-' if value is None else value}")


def _status_command(
    *,
    username: str,
    data_dir: Path | None,
    config: Path | None,
    as_json: bool,
    change: Callable[[Directory, str], Awaitable[StatusChange]],
    event: Callable[[StatusChange], Event],
) -> None:
    settings = settings_from(data_dir, config)

    async def work(runtime: Runtime) -> StatusChange:
        result = await change(runtime.directory, username)
        runtime.bus.emit(event(result))
        user = result.user
        if user.status in (UserStatus.LOCKED, UserStatus.DISABLED):
            # Continuous evaluation: the account's sessions end now, not when they expire.
            await end_user_sessions(
                runtime,
                user_id=user.id,
                sub=user.sub,
                username=user.username,
                reason=user.status.value,
                actor=actor(),
                events=runtime.bus,
            )
        return result

    result = _with_runtime(settings, work)
    user = result.user
    if as_json:
        emit_json(
            {
                "username": user.username,
                "status": user.status.value,
                "previous_status": result.previous.value,
                "locked_until": _when(user.locked_until),
            }
        )
        return
    if result.changed:
        typer.echo(f"{user.username}: {user.status.value} (was {result.previous.value})")
    else:
        typer.echo(f"{user.username}: {user.status.value} (unchanged)")


def _auth_status_event(action: str, reason: str) -> Callable[[StatusChange], Event]:
    def make(result: StatusChange) -> Event:
        return auth_event(
            action,
            success=True,
            reason=reason,
            username=result.user.username,
            user_id=result.user.id,
            event__type=["user", "change"],
            labels__actor=actor(),
            labels__previous_status=result.previous.value,
        )

    return make


def _cli_status_event(action: str) -> Callable[[StatusChange], Event]:
    def make(result: StatusChange) -> Event:
        return iam_event(
            action, result.user, types=("user", "change"), labels__previous_status=result.previous.value
        )

    return make


@app.command("lock")
def lock(
    username: Username, data_dir: DataDir = None, config: ConfigFile = None, as_json: Json = False
) -> None:
    """Lock an account: no sign-in until `onegate user unlock`."""
    _status_command(
        username=username,
        data_dir=data_dir,
        config=config,
        as_json=as_json,
        change=Directory.lock,
        event=_auth_status_event("user-locked", "admin"),
    )


@app.command("unlock")
def unlock(
    username: Username, data_dir: DataDir = None, config: ConfigFile = None, as_json: Json = False
) -> None:
    """Unlock an account: lifts an administrator's lock and any automatic lockout."""
    _status_command(
        username=username,
        data_dir=data_dir,
        config=config,
        as_json=as_json,
        change=Directory.unlock,
        event=_auth_status_event("user-unlocked", "admin"),
    )


@app.command("disable")
def disable(
    username: Username, data_dir: DataDir = None, config: ConfigFile = None, as_json: Json = False
) -> None:
    """Disable an account (a leaver): no sign-in, no token refresh, until enabled."""
    _status_command(
        username=username,
        data_dir=data_dir,
        config=config,
        as_json=as_json,
        change=Directory.disable,
        event=_cli_status_event("user-disabled"),
    )


@app.command("enable")
def enable(
    username: Username, data_dir: DataDir = None, config: ConfigFile = None, as_json: Json = False
) -> None:
    """Enable a disabled account again (a locked one stays locked: use unlock)."""
    _status_command(
        username=username,
        data_dir=data_dir,
        config=config,
        as_json=as_json,
        change=Directory.enable,
        event=_cli_status_event("user-enabled"),
    )


@app.command("reset-password")
def reset_password(
    username: Username, data_dir: DataDir = None, config: ConfigFile = None, as_json: Json = False
) -> None:
    """Give the user a new one-time password, printed once; it must be changed at next sign-in."""
    settings = settings_from(data_dir, config)

    async def work(runtime: Runtime) -> tuple[User, str]:
        user, password = await runtime.directory.reset_password(username)
        runtime.bus.emit(iam_event("password-reset", user, types=("user", "change")))
        return user, password

    user, password = _with_runtime(settings, work)
    if as_json:
        emit_json({"username": user.username, "password": password})
        return
    typer.echo(
        f"new one-time password for {user.username} (shown once; change it at next sign-in): {password}"
    )


# -- import -----------------------------------------------------------------------------------


@contextmanager
def _password_sink(path: Path | None) -> Iterator[IO[str] | None]:
    """The admin's password file, created now with mode 0600 (never over an existing file)."""
    if path is None:
        yield None
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise fail(f"{path} exists: choose a new file for the one-time passwords") from None
    except OSError as e:
        raise fail(f"cannot create {path}: {e.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
        yield handle


@app.command("import")
def import_users(
    *,
    file: Annotated[Path, typer.Argument(help="CSV: username,display_name,email,phone,department,groups")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what would change; change nothing.")
    ] = False,
    encoding: Annotated[
        str | None,
        typer.Option("--encoding", help="The file's encoding (default: UTF-8 or GB18030, detected)."),
    ] = None,
    create_groups: Annotated[
        bool, typer.Option("--create-groups", help="Create groups named in the file that do not exist.")
    ] = False,
    passwords_file: Annotated[
        Path | None,
        typer.Option(
            "--passwords-file", help="Write new users' one-time passwords here (mode 0600), not stdout."
        ),
    ] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    as_json: Json = False,
) -> None:
    """Create and update users from a CSV file; bad rows are reported by line, good rows kept.

    Run with --dry-run first. Importing the same file again changes nothing. Exit status 1
    when some rows were bad.
    """
    settings = settings_from(data_dir, config)
    try:
        data = file.read_bytes()
    except OSError as e:
        raise fail(f"cannot read {file}: {e.strerror}") from None
    try:
        text, used = decode_csv(data, encoding)
        parsed = parse_csv(text, used)
    except CsvFormatError as e:
        raise fail(f"{file}: {e}") from None

    with _password_sink(None if dry_run else passwords_file) as sink:
        writer = csv.writer(sink) if sink is not None else None
        if writer is not None:
            writer.writerow(["username", "password"])

        def save(outcome: RowOutcome) -> None:
            if writer is not None and sink is not None:
                writer.writerow([outcome.username, outcome.password])
                sink.flush()  # on disk before the next user is created

        report = _run_import(settings, parsed, dry_run=dry_run, create_groups=create_groups, on_created=save)
    _print_import(report, to_file=None if dry_run else passwords_file, as_json=as_json)
    if report.bad:
        raise typer.Exit(1)


def _run_import(
    settings: Settings,
    parsed: ParsedCsv,
    *,
    dry_run: bool,
    create_groups: bool,
    on_created: Callable[[RowOutcome], None],
) -> ImportReport:
    with typer.progressbar(
        length=len(parsed.rows),
        label="checking" if dry_run else "importing",
        file=sys.stderr,
        hidden=not sys.stderr.isatty(),  # a bar only on a terminal, not in logs or pipes
    ) as bar:
        position = 0

        def progress(done: int) -> None:
            nonlocal position
            bar.update(done - position)
            position = done

        async def work(runtime: Runtime) -> ImportReport:
            report = await apply_import(
                runtime.directory,
                parsed,
                dry_run=dry_run,
                create_groups=create_groups,
                progress=progress,
                on_created=on_created,
            )
            if not dry_run:
                for name in report.groups_created:
                    runtime.bus.emit(
                        iam_event("group-created", types=("group", "creation"), onegate__group=name)
                    )
                for outcome in report.created:
                    runtime.bus.emit(
                        iam_event(
                            "user-created",
                            types=("user", "creation"),
                            user__name=outcome.username,
                            labels__source="csv-import",
                        )
                    )
                for outcome in report.updated:
                    runtime.bus.emit(
                        iam_event(
                            "user-updated",
                            types=("user", "change"),
                            user__name=outcome.username,
                            onegate__changes=list(outcome.changes),
                            labels__source="csv-import",
                        )
                    )
            return report

        return _with_runtime(settings, work)


def _print_import(report: ImportReport, *, to_file: Path | None, as_json: bool) -> None:
    passwords = [] if to_file is not None else report.passwords
    if as_json:
        summary = report.summary()
        summary["passwords"] = [{"username": u, "password": p} for u, p in passwords]
        summary["passwords_file"] = str(to_file) if to_file is not None else None
        emit_json(summary)
        return
    verb = "would be " if report.dry_run else ""
    if report.dry_run:
        typer.echo("dry run: nothing was changed")
    for outcome in report.created:
        typer.echo(f"line {outcome.line}: {outcome.username} {verb}created")
    for outcome in report.updated:
        typer.echo(f"line {outcome.line}: {outcome.username} {verb}updated ({', '.join(outcome.changes)})")
    for name in report.groups_created:
        typer.echo(f"group {name} {verb}created")
    for bad in report.bad:
        typer.echo(f"line {bad.line}: bad row: {bad.reason}")
    typer.echo(
        f"{len(report.created)} {verb}created, {len(report.updated)} {verb}updated, "
        f"{len(report.unchanged)} unchanged, {len(report.bad)} bad row(s) [encoding {report.encoding}]"
    )
    if to_file is not None and report.created:
        typer.echo(f"one-time passwords written to {to_file}")
    elif passwords:
        typer.echo("one-time passwords (shown once; each must be changed at first sign-in):")
        for username, password in passwords:
            typer.echo(f"  {username},{password}")


# -- groups -----------------------------------------------------------------------------------


@groups_app.command("list")
def groups_list(data_dir: DataDir = None, config: ConfigFile = None, as_json: Json = False) -> None:
    """List groups with their member counts."""
    settings = settings_from(data_dir, config)

    async def work(runtime: Runtime) -> list[dict[str, Any]]:
        return [
            {"name": g.name, "description": g.description, "members": g.members}
            for g in await runtime.directory.list_groups()
        ]

    records = _with_runtime(settings, work)
    if as_json:
        emit_json(records)
        return
    table(
        ["group", "members", "description"],
        [[r["name"], str(r["members"]), r["description"] or ""] for r in records],
    )


@groups_app.command("add")
def groups_add(
    name: Annotated[str, typer.Argument(help="Group name (a-z 0-9 . _ -).")],
    description: Annotated[str | None, typer.Option("--description", help="What the group is for.")] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Add a group (nothing happens if it exists)."""
    settings = settings_from(data_dir, config)

    async def work(runtime: Runtime) -> tuple[str, bool]:
        existed = await runtime.directory.get_group(name) is not None
        group = await runtime.directory.ensure_group(name, description)
        if not existed:
            runtime.bus.emit(
                iam_event("group-created", types=("group", "creation"), onegate__group=group.name)
            )
        return group.name, existed

    group_name, existed = _with_runtime(settings, work)
    typer.echo(f"group {group_name} {'exists already' if existed else 'created'}")


@groups_app.command("members")
def groups_members(
    name: Annotated[str, typer.Argument(help="Group name.")],
    data_dir: DataDir = None,
    config: ConfigFile = None,
    as_json: Json = False,
) -> None:
    """List the members of a group."""
    settings = settings_from(data_dir, config)

    async def work(runtime: Runtime) -> list[dict[str, Any]]:
        return [
            {"username": u.username, "display_name": u.display_name, "status": u.status.value}
            for u in await runtime.directory.members(name)
        ]

    records = _with_runtime(settings, work)
    if as_json:
        emit_json(records)
        return
    table(["username", "name", "status"], [[r["username"], r["display_name"], r["status"]] for r in records])


def _membership(group: str, username: str, data_dir: Path | None, config: Path | None, *, add: bool) -> None:
    settings = settings_from(data_dir, config)

    async def work(runtime: Runtime) -> tuple[User | None, bool]:
        directory = runtime.directory
        changed = await (directory.add_member if add else directory.remove_member)(group, username)
        user = await directory.get_user(username)
        if changed:
            runtime.bus.emit(
                iam_event(
                    "group-member-added" if add else "group-member-removed",
                    user,
                    types=("group", "change"),
                    user__group__name=group.strip().lower(),
                )
            )
        return user, changed

    user, changed = _with_runtime(settings, work)
    name = user.username if user is not None else username
    if add:
        typer.echo(f"{name} {'added to' if changed else 'is already in'} group {group}")
    else:
        typer.echo(f"{name} {'removed from' if changed else 'was not in'} group {group}")


@groups_app.command("add-member")
def groups_add_member(
    group: Annotated[str, typer.Argument(help="Group name.")],
    username: Username,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Put a user in a group."""
    _membership(group, username, data_dir, config, add=True)


@groups_app.command("remove-member")
def groups_remove_member(
    group: Annotated[str, typer.Argument(help="Group name.")],
    username: Username,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Take a user out of a group."""
    _membership(group, username, data_dir, config, add=False)


# -- departments ------------------------------------------------------------------------------


def _node_record(node: DepartmentNode) -> dict[str, Any]:
    return {
        "code": node.code,
        "name": node.name,
        "name_en": node.name_en,
        "children": [_node_record(child) for child in node.children],
    }


def _print_tree(nodes: tuple[DepartmentNode, ...], depth: int = 0) -> None:
    for node in nodes:
        english = f" ({node.name_en})" if node.name_en else ""
        typer.echo(f"{'  ' * depth}{node.name}{english}  [{node.code}]")
        _print_tree(node.children, depth + 1)


@departments_app.command("list")
def departments_list(data_dir: DataDir = None, config: ConfigFile = None, as_json: Json = False) -> None:
    """Show the department tree."""
    settings = settings_from(data_dir, config)

    async def work(runtime: Runtime) -> tuple[DepartmentNode, ...]:
        return await runtime.directory.department_tree()

    tree = _with_runtime(settings, work)
    if as_json:
        emit_json([_node_record(node) for node in tree])
        return
    _print_tree(tree)


@departments_app.command("add")
def departments_add(
    *,
    code: Annotated[str, typer.Argument(help="Department code (a-z 0-9 . _ -), used by imports.")],
    name: Annotated[str, typer.Argument(help="Name, e.g. 市人力资源和社会保障局.")],
    parent: Annotated[str | None, typer.Option("--parent", help="The parent department's code.")] = None,
    name_en: Annotated[str | None, typer.Option("--name-en", help="English name.")] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Add a department, at the top of the tree or under --parent."""
    settings = settings_from(data_dir, config)

    async def work(runtime: Runtime) -> str:
        department = await runtime.directory.add_department(code, name, parent=parent, name_en=name_en)
        runtime.bus.emit(
            iam_event(
                "department-created",
                types=("group", "creation"),
                onegate__department=department.code,
                onegate__department_name=department.name,
            )
        )
        return await runtime.directory.department_path(department.code)

    path = _with_runtime(settings, work)
    typer.echo(f"created department {path}")
