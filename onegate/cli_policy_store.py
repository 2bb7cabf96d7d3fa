"""`onegate policy apply|history|show|diff|rollback`: the versions of the active policy bundle.

``register(policy_app)`` adds the commands to the ``policy`` sub-app. Each opens the data dir's
runtime (database, KV, event bus) like every other command (``--data-dir`` / ``--config``).

``apply`` checks the bundle against the directory of the data dir (groups, departments and
every user a rule names; roles and applications are not checked) and stores it as the newest
version; every running instance reloads it (policy.versions). A bundle with an error prints
every finding, one per line, and exits 1 with the active policy unchanged; so does a rollback
to a version that no longer passes check. Usage and dependency problems are one line
(``onegate: ...``) and exit 2. Never a traceback.
"""

from __future__ import annotations

from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from onegate.cli_common import (
    ConfigFile,
    DataDir,
    Json,
    actor,
    emit_json,
    fail,
    settings_from,
    table,
    with_runtime,
)
from policy.check import Catalog
from policy.rules import Bundle, BundleError, Finding, load_bundle, load_path
from policy.versions import PolicyRejected, PolicyStore, UnknownVersion, Version

if TYPE_CHECKING:
    from core.settings import Settings
    from onegate.runtime import Runtime

__all__ = [
    "data_dir_settings",
    "directory_catalog",
    "load_or_exit",
    "policy_store",
    "print_findings",
    "register",
]

Comment = Annotated[str, typer.Option("--comment", "-m", help="Why (kept with the version).")]
Author = Annotated[
    str | None, typer.Option("--author", help="Who, for the record [default: the account running this].")
]


def register(policy_app: typer.Typer) -> None:
    """Add apply, history, show, diff and rollback to ``policy_app``."""
    policy_app.command("apply")(apply_command)
    policy_app.command("history")(history_command)
    policy_app.command("show")(show_command)
    policy_app.command("diff")(diff_command)
    policy_app.command("rollback")(rollback_command)


async def directory_catalog(runtime: Runtime, bundle: Bundle | None) -> Catalog:
    """The names ``bundle`` may use, from the directory: every group and department, and the
    users among those its rules name (roles and applications are not checked)."""
    directory = runtime.directory
    groups = {g.name for g in await directory.list_groups()}
    departments = {d.code for d in await directory.departments()}
    named = {u for rule in bundle.all_rules() for u in rule.users | rule.not_users} if bundle else set()
    users = {u for u in named if await directory.get_user(u) is not None}
    return Catalog(users=users, groups=groups, departments=departments)


def data_dir_settings(data_dir: Path | None, config: Path | None, instead: str | None = None) -> Settings:
    """The data dir's settings; one without a database is one clear line (``instead``: what the
    operator can do without one), never an empty database created on the way."""
    settings = settings_from(data_dir, config)
    if settings.database.url is None and not (settings.data_dir / "onegate.db").is_file():
        raise fail(
            f"no OneGate data dir at {settings.data_dir}: run `onegate init`, pass --data-dir"
            + (f", or {instead}" if instead else "")
            + f" / {settings.data_dir} 不是 OneGate 数据目录"
        )
    return settings


def policy_store(runtime: Runtime) -> PolicyStore:
    return PolicyStore(runtime.sessions, runtime.kv, runtime.bus)


def print_findings(findings: list[Finding], *, err: bool) -> None:
    for finding in findings:
        typer.echo(str(finding), err=err)


def _rejected(findings: list[Finding], message: str, *, err: bool = True) -> typer.Exit:
    print_findings(findings, err=err)
    errors = sum(f.severity == "error" for f in findings)
    typer.echo(f"{errors} error(s); {message}", err=True)
    return typer.Exit(1)


def load_or_exit(
    path: Path, why: str = "the bundle does not load / 策略无法加载", *, err: bool = True
) -> Bundle:
    """The bundle at ``path``; one that does not load prints every finding (to stderr, or
    stdout with ``err=False``) and ``N error(s); why``, and exits 1."""
    if not path.exists():
        raise fail(f"no such file or folder: {path} / 文件或目录不存在")
    try:
        return load_path(path)
    except BundleError as e:
        raise _rejected(e.findings, why, err=err) from None
    except (OSError, UnicodeDecodeError) as e:
        raise fail(f"cannot read {path}: {e} / 无法读取") from None


def _result(version: Version, findings: list[Finding], changed: bool, as_json: bool, what: str) -> None:
    if as_json:
        emit_json(version.summary() | {"changed": changed, "warnings": [f.as_dict() for f in findings]})
        return
    print_findings(findings, err=False)
    if changed:
        typer.echo(
            f"active: v{version.number}{what} by {version.author} (digest {version.digest[:12]}); "
            "every instance reloads it / 已生效，所有实例将重新加载"
        )
    else:
        typer.echo(
            f"unchanged: v{version.number} ({version.digest[:12]}) is already the active text; "
            "nothing stored / 未变：该内容已是生效版本"
        )


def apply_command(
    path: Annotated[Path, typer.Argument(help="A policy file, or a folder of them.", show_default=False)],
    *,
    comment: Comment = "",
    author: Author = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    as_json: Json = False,
) -> None:
    """Check a bundle against the directory and make it the active one (a new version)."""
    bundle = load_or_exit(
        path, "the bundle does not load; the active policy is unchanged / 策略无法加载，生效策略未变"
    )
    settings = data_dir_settings(data_dir, config)

    async def work(runtime: Runtime) -> tuple[Version, list[Finding], bool] | PolicyRejected:
        store = policy_store(runtime)
        catalog = await directory_catalog(runtime, bundle)
        before = await store.active()
        try:
            version, findings = await store.apply(
                bundle, author=author or actor(), comment=comment, catalog=catalog
            )
        except PolicyRejected as e:
            return e
        return version, findings, before is None or before.number != version.number

    outcome = with_runtime(settings, work)
    if isinstance(outcome, PolicyRejected):
        raise _rejected(outcome.findings, "rejected: the active policy is unchanged / 已拒绝：生效策略未变")
    _result(*outcome, as_json, "")


def rollback_command(
    version: Annotated[int, typer.Argument(help="The version to make active again.", show_default=False)],
    *,
    comment: Comment = "",
    author: Author = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    as_json: Json = False,
) -> None:
    """Make an earlier version's text active again, as a new version (checked again first)."""
    settings = data_dir_settings(data_dir, config)

    async def work(runtime: Runtime) -> tuple[Version, list[Finding], bool] | PolicyRejected:
        store = policy_store(runtime)
        old = await store.get(version)
        try:
            bundle: Bundle | None = load_bundle(old.text, f"v{version}")
        except BundleError:
            bundle = None  # the rollback's own check reports why
        catalog = await directory_catalog(runtime, bundle)
        before = await store.active()
        try:
            new, findings = await store.rollback(
                version, author=author or actor(), comment=comment, catalog=catalog
            )
        except PolicyRejected as e:
            return e
        return new, findings, before is None or before.number != new.number

    outcome = with_runtime(settings, work, errors=(UnknownVersion,))
    if isinstance(outcome, PolicyRejected):
        raise _rejected(
            outcome.findings,
            f"v{version} no longer passes check; the active policy is unchanged / "
            f"v{version} 已无法通过检查，生效策略未变",
        )
    _result(*outcome, as_json, f" (the text of v{version})")


def history_command(
    limit: Annotated[int, typer.Option("--limit", min=1, help="How many, newest first.")] = 20,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    as_json: Json = False,
) -> None:
    """The stored versions, newest (the active one, marked *) first."""
    settings = data_dir_settings(data_dir, config)

    async def work(runtime: Runtime) -> list[Version]:
        return await policy_store(runtime).history(limit)

    versions = with_runtime(settings, work)
    if as_json:
        emit_json([v.summary() | {"active": i == 0} for i, v in enumerate(versions)])
        return
    if not versions:
        typer.echo("no policy has been applied yet / 尚未应用任何策略")
        return
    table(
        ["version", "time (UTC)", "author", "action", "digest", "comment"],
        [
            [
                f"v{v.number}" + (" *" if i == 0 else ""),
                v.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
                v.author,
                v.action + (f" v{v.based_on}" if v.based_on is not None else ""),
                v.digest[:12],
                v.comment,
            ]
            for i, v in enumerate(versions)
        ],
    )


def show_command(
    version: Annotated[
        int | None, typer.Argument(help="[default: the active one]", show_default=False)
    ] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Print a stored version's text (a folder is one text: a YAML document per file)."""
    settings = data_dir_settings(data_dir, config)

    async def work(runtime: Runtime) -> Version | None:
        store = policy_store(runtime)
        return await (store.get(version) if version is not None else store.active())

    found = with_runtime(settings, work, errors=(UnknownVersion,))
    if found is None:
        raise fail("no policy has been applied yet / 尚未应用任何策略")
    typer.echo(found.text, nl=not found.text.endswith("\n"))


def diff_command(
    old: Annotated[int, typer.Argument(help="From this version.", show_default=False)],
    new: Annotated[int, typer.Argument(help="To this version.", show_default=False)],
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """A unified diff between two stored versions."""
    settings = data_dir_settings(data_dir, config)

    async def work(runtime: Runtime) -> str:
        return await policy_store(runtime).diff(old, new)

    text = with_runtime(settings, work, errors=(UnknownVersion,))
    if text:
        typer.echo(text, nl=False)
    else:
        typer.echo(f"v{old} and v{new} are the same text / 内容相同", err=True)
