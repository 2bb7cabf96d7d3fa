"""`onegate policy ...`: check, compile, explain, test and simulate bundles; apply, history, diff,
show and rollback the active one.

A bundle is a YAML file or a folder of them (docs/policy.md). ``check`` and ``apply`` check names
against the directory of the data dir (``check --offline``: the bundle alone). Findings print one
per line as ``file:line: severity: code [rule]: English / 中文``. Exit status: 0 fine (warnings
allowed), 1 the bundle or a test case failed, 2 a usage or dependency problem (one line).
"""

from __future__ import annotations

import asyncio
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from core.access_log import NdjsonAccessLog
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
from policy.check import Catalog, check, has_errors
from policy.engine import PolicyEngine
from policy.model import Request
from policy.normalize import PathRejected
from policy.rules import Bundle, BundleError, Finding, load_bundle, load_path
from policy.simulate import simulate
from policy.testing import load_cases, run_cases
from policy.versions import PolicyRejected, PolicyStore, UnknownVersion

if TYPE_CHECKING:
    from onegate.runtime import Runtime

__all__ = ["policy_app"]

policy_app = typer.Typer(
    help="Access policies: check, compile, explain, test, simulate, apply, history, diff, show, rollback.",
    no_args_is_help=True,
)

BundlePath = Annotated[Path, typer.Argument(help="A policy file, or a folder of them.", exists=True)]
Offline = Annotated[bool, typer.Option("--offline", help="Do not check names against the directory.")]


def _print_findings(findings: list[Finding]) -> None:
    for finding in findings:
        typer.echo(str(finding), err=finding.severity == "error")


def _load(path: Path) -> Bundle:
    try:
        return load_path(path)
    except BundleError as e:
        _print_findings(e.findings)
        raise typer.Exit(1) from None
    except (OSError, UnicodeDecodeError) as e:
        raise fail(f"cannot read {path}: {e}") from None


async def _catalog(runtime: Runtime, bundle: Bundle | None) -> Catalog:
    directory = runtime.directory
    groups = {g.name for g in await directory.list_groups()}
    departments = {d.code for d in await directory.departments()}
    named = {u for rule in bundle.all_rules() for u in rule.users | rule.not_users} if bundle else set()
    users = {u for u in named if await directory.get_user(u) is not None}
    return Catalog(users=users, groups=groups, departments=departments)


def _store(runtime: Runtime) -> PolicyStore:
    return PolicyStore(runtime.sessions, runtime.kv, runtime.bus)


@policy_app.command("check")
def check_command(
    path: BundlePath,
    offline: Offline = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    as_json: Json = False,
) -> None:
    """Check a bundle: structure, names against the directory, rules against each other."""
    bundle = _load(path)
    if offline:
        catalog = Catalog()
    else:
        settings = settings_from(data_dir, config)

        async def work(runtime: Runtime) -> Catalog:
            return await _catalog(runtime, bundle)

        catalog = with_runtime(settings, work)
    findings = check(bundle, catalog)
    if as_json:
        emit_json({"ok": not has_errors(findings), "findings": [f.as_dict() for f in findings]})
    else:
        _print_findings(findings)
        rules = len(bundle.all_rules())
        typer.echo(
            f"{len(bundle.apps)} application(s), {rules} rule(s); "
            f"{sum(f.severity == 'error' for f in findings)} error(s), "
            f"{sum(f.severity == 'warning' for f in findings)} warning(s)"
        )
    if has_errors(findings):
        raise typer.Exit(1)


@policy_app.command("compile")
def compile_command(
    path: BundlePath,
    cedar: Annotated[bool, typer.Option("--cedar", help="Print the bundle as Cedar policies.")] = False,
    as_json: Json = False,
) -> None:
    """Show what a bundle compiles to: the index per application, or (--cedar) Cedar policies."""
    bundle = _load(path)
    if cedar:
        from policy.cedar import to_cedar

        typer.echo(to_cedar(bundle))
        return
    engine = PolicyEngine(bundle)
    apps: list[dict[str, Any]] = []
    for name, app in sorted(bundle.apps.items()):
        rules = bundle.rules_for(name)
        apps.append(
            {
                "app": name,
                "hosts": list(app.hosts),
                "rules": len(rules),
                "decided_by": "cedar" if name in engine.deciders else "compiled",
                "rule_ids": [r.id for r in rules],
            }
        )
    if as_json:
        emit_json({"timezone": bundle.timezone, "digest": bundle.digest, "apps": apps})
        return
    table(
        ["app", "hosts", "rules", "decided by"],
        [[a["app"], ",".join(a["hosts"]) or "-", str(a["rules"]), a["decided_by"]] for a in apps],
    )


def _moment(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise fail(f"--time: not an ISO 8601 time: {text!r} / 不是 ISO 8601 时间") from None
    if moment.tzinfo is None:  # a wall-clock time is read in the bundle's zone by the caller
        raise fail("--time needs an offset, e.g. 2026-11-30T09:30:00+08:00 / --time 须带时区偏移")
    return moment.timestamp()


@policy_app.command("explain")
def explain_command(
    path: BundlePath,
    *,
    app: Annotated[str, typer.Option("--app", help="The application.")],
    request_path: Annotated[str, typer.Option("--path", help="The request path, as sent.")] = "/",
    method: Annotated[str, typer.Option("--method")] = "GET",
    user: Annotated[str | None, typer.Option("--user")] = None,
    group: Annotated[list[str] | None, typer.Option("--group", help="Repeatable.")] = None,
    department: Annotated[
        list[str] | None, typer.Option("--department", help="Repeatable, nearest first.")
    ] = None,
    role: Annotated[list[str] | None, typer.Option("--role", help="Repeatable.")] = None,
    ip: Annotated[str | None, typer.Option("--ip")] = None,
    time: Annotated[str | None, typer.Option("--time", help="ISO 8601; default: now.")] = None,
    acr: Annotated[str | None, typer.Option("--acr", help="pwd, mfa, phr or the URN.")] = None,
    auth_age: Annotated[int | None, typer.Option("--auth-age", help="Seconds since sign-in.")] = None,
    risk: Annotated[int, typer.Option("--risk", min=0, max=100)] = 0,
    lang: Annotated[str, typer.Option("--lang", help="zh or en.")] = "zh",
    as_json: Json = False,
) -> None:
    """Decide one request and say why, naming the rules."""
    engine = PolicyEngine(_load(path))
    try:
        request = Request.of(
            app=app,
            path=request_path,
            method=method,
            user=user,
            groups=group or (),
            departments=department or (),
            roles=role or (),
            acr=acr,
            ip=ip,
            now=_moment(time),
            risk=risk,
        )
    except PathRejected as e:
        raise fail(f"--path refused: {e.reason.value} / 路径被拒绝") from None
    except ValueError as e:
        raise fail(f"bad request value: {e}") from None
    if auth_age is not None:
        from dataclasses import replace

        request = replace(request, auth_time=request.now - auth_age)
    explanation = engine.explain(request)
    decision = explanation.decision
    if as_json:
        emit_json(
            {
                "effect": decision.effect.value,
                "reason": decision.reason.value,
                "rule_ids": list(decision.rule_ids),
                "obligations": decision.obligations,
                "text_en": explanation.text_en,
                "text_zh": explanation.text_zh,
                "rules": [
                    {"id": t.rule.id, "line": t.rule.line, "matched": t.matched, "failed": list(t.failed)}
                    for t in explanation.traces
                ],
            }
        )
        return
    typer.echo(f"{decision.effect.value}: {explanation.text('en' if lang == 'en' else 'zh_CN')}")
    for trace in explanation.traces:
        state = "match" if trace.matched else "no: " + ", ".join(trace.failed)
        if trace.unmet:
            state = "match, requirement not met"
        typer.echo(f"  {trace.rule.id:<24} {trace.rule.effect.value:<8} line {trace.rule.line:<5} {state}")


@policy_app.command("test")
def test_command(
    path: BundlePath,
    tests: Annotated[Path, typer.Argument(help="YAML test cases.", exists=True)],
    as_json: Json = False,
) -> None:
    """Run YAML test cases against a bundle; exit 1 when any fails."""
    engine = PolicyEngine(_load(path))
    try:
        cases = load_cases(tests.read_text(encoding="utf-8"), str(tests))
    except BundleError as e:
        _print_findings(e.findings)
        raise typer.Exit(1) from None
    report = run_cases(engine, cases)
    if as_json:
        emit_json(report.as_dict())
    else:
        for result in report.results:
            mark = "ok  " if result.passed else "FAIL"
            typer.echo(f"{mark} {tests}:{result.case.line} {result.case.name}")
            if not result.passed:
                typer.echo(f"       expected {result.case.expect}, got {result.actual}")
                typer.echo(f"       {result.explanation_en}")
                typer.echo(f"       {result.explanation_zh}")
        typer.echo(f"{report.passed} passed, {len(report.failed)} failed")
    if report.failed:
        raise typer.Exit(1)


_SINCE = re.compile(r"^(\d+)([dhm])$")


def _since(text: str) -> datetime:
    match = _SINCE.match(text.strip())
    now = datetime.now(UTC)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        return now - timedelta(**{{"d": "days", "h": "hours", "m": "minutes"}[unit]: amount})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise fail(f"--since: 7d, 24h, 30m or an ISO 8601 time, not {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@policy_app.command("simulate")
def simulate_command(
    path: BundlePath,
    *,
    events: Annotated[
        Path, typer.Option("--events", help="Recorded access events (ECS NDJSON).", exists=True)
    ],
    since: Annotated[str, typer.Option("--since", help="7d, 24h, 30m or an ISO 8601 time.")] = "7d",
    until: Annotated[str | None, typer.Option("--until", help="ISO 8601; default: now.")] = None,
    baseline: Annotated[
        Path | None, typer.Option("--baseline", help="Compare with this bundle instead of the active one.")
    ] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    as_json: Json = False,
) -> None:
    """Replay recorded traffic against a proposed bundle: who would gain or lose access to what."""
    proposed = PolicyEngine(_load(path))
    if baseline is not None:
        before = PolicyEngine(_load(baseline))
    else:
        settings = settings_from(data_dir, config)

        async def active(runtime: Runtime) -> str | None:
            version = await _store(runtime).active()
            return version.text if version else None

        text = with_runtime(settings, active)
        if text is None:
            raise fail(
                "no active policy to compare with; pass --baseline FILE / 没有生效的策略，请指定 --baseline"
            )
        before = PolicyEngine(load_bundle(text))
    source = NdjsonAccessLog(events)
    start, end = _since(since), _since(until) if until else None
    total = asyncio.run(source.count(start, end)) or 0
    show_bar = sys.stderr.isatty() and total > 10_000 and not as_json
    if show_bar:
        with typer.progressbar(length=total, label="replaying", file=sys.stderr) as bar:
            report = asyncio.run(
                simulate(before, proposed, source, since=start, until=end, progress=bar.update)
            )
    else:
        report = asyncio.run(simulate(before, proposed, source, since=start, until=end))
    if as_json:
        emit_json(report.as_dict() | {"bad_lines": source.bad_lines})
        return
    typer.echo(f"{report.events} request(s) replayed, {report.unchanged} decided alike")
    labels = (
        ("gains", "would gain access / 将获得访问权限"),
        ("losses", "would lose access / 将失去访问权限"),
        ("step_ups", "would be asked to step up / 将被要求增强认证"),
        ("other", "other changes / 其他变化"),
    )
    for attr, label in labels:
        kind = getattr(report, attr)
        if not kind.count:
            continue
        typer.echo(f"\n{kind.count} request(s) of {len(kind.users)} user(s) {label}:")
        for (user, app), count in sorted(kind.user_apps.items()):
            typer.echo(f"  {user:<16} {app:<16} {count}")
        for change in kind.examples:
            rules = ", ".join(change.after.rule_ids) or "-"
            typer.echo(
                f"    e.g. {change.time.isoformat()} {change.user} {change.method} {change.app}"
                f"{change.path}: {change.before.effect.value} -> {change.after.effect.value} ({rules})"
            )
    if report.skipped:
        typer.echo(f"\nskipped: {dict(report.skipped)}")
    if source.bad_lines:
        typer.echo(f"unreadable lines in {events}: {source.bad_lines[:20]}")


# -- versions of the active bundle ---------------------------------------------------------------


def _stored(settings_args: tuple[Path | None, Path | None], work: Any) -> Any:
    return with_runtime(settings_from(*settings_args), work, errors=(UnknownVersion,))


@policy_app.command("apply")
def apply_command(
    path: BundlePath,
    *,
    comment: Annotated[str, typer.Option("--comment", "-m", help="Why (kept with the version).")] = "",
    author: Annotated[str | None, typer.Option("--author", help="Default: the account running this.")] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    as_json: Json = False,
) -> None:
    """Check a bundle against the directory and make it the active one (every gateway reloads)."""
    bundle = _load(path)

    async def work(runtime: Runtime) -> Any:
        catalog = await _catalog(runtime, bundle)
        try:
            return await _store(runtime).apply(
                bundle.text, author=author or actor(), comment=comment, catalog=catalog
            )
        except PolicyRejected as e:
            return e

    result = with_runtime(settings_from(data_dir, config), work)
    if isinstance(result, PolicyRejected):
        _print_findings(result.findings)
        typer.echo("rejected: the active policy is unchanged / 已拒绝：生效策略未变", err=True)
        raise typer.Exit(1)
    version, findings = result
    _print_findings(findings)
    if as_json:
        emit_json(version.summary())
    else:
        typer.echo(f"active: v{version.number} ({version.digest[:12]}) by {version.author}")


@policy_app.command("rollback")
def rollback_command(
    version: Annotated[int, typer.Argument(help="The version to make active again.")],
    comment: Annotated[str, typer.Option("--comment", "-m")] = "",
    data_dir: DataDir = None,
    config: ConfigFile = None,
    as_json: Json = False,
) -> None:
    """Make an earlier version active again (stored as a new version)."""

    async def work(runtime: Runtime) -> Any:
        store = _store(runtime)
        old = await store.get(version)
        catalog = await _catalog(runtime, load_bundle(old.text))
        try:
            return await store.rollback(version, author=actor(), comment=comment, catalog=catalog)
        except PolicyRejected as e:
            return e

    result = _stored((data_dir, config), work)
    if isinstance(result, PolicyRejected):
        _print_findings(result.findings)
        typer.echo(
            f"v{version} no longer passes check; nothing changed / v{version} 已无法通过检查，未做更改",
            err=True,
        )
        raise typer.Exit(1)
    new, _ = result
    if as_json:
        emit_json(new.summary())
    else:
        typer.echo(f"active: v{new.number} (the text of v{version})")


@policy_app.command("history")
def history_command(
    limit: Annotated[int, typer.Option("--limit", min=1)] = 20,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    as_json: Json = False,
) -> None:
    """The stored versions, newest (active) first."""

    async def work(runtime: Runtime) -> Any:
        return await _store(runtime).history(limit)

    versions = _stored((data_dir, config), work)
    if as_json:
        emit_json([v.summary() for v in versions])
        return
    table(
        ["version", "time", "author", "action", "comment"],
        [
            [
                f"v{v.number}" + (" *" if i == 0 else ""),
                v.created_at.isoformat(timespec="seconds"),
                v.author,
                v.action + (f" v{v.based_on}" if v.based_on else ""),
                v.comment,
            ]
            for i, v in enumerate(versions)
        ],
    )


@policy_app.command("show")
def show_command(
    version: Annotated[int | None, typer.Argument(help="Default: the active one.")] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Print a stored version's text."""

    async def work(runtime: Runtime) -> Any:
        store = _store(runtime)
        return await (store.get(version) if version is not None else store.active())

    found = _stored((data_dir, config), work)
    if found is None:
        raise fail("no policy has been applied yet / 尚未应用任何策略")
    typer.echo(found.text, nl=not found.text.endswith("\n"))


@policy_app.command("diff")
def diff_command(
    old: Annotated[int, typer.Argument()],
    new: Annotated[int, typer.Argument()],
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """A unified diff between two stored versions."""

    async def work(runtime: Runtime) -> Any:
        return await _store(runtime).diff(old, new)

    typer.echo(_stored((data_dir, config), work), nl=False)
