"""`onegate policy ...`: check, compile, explain, test and simulate bundles; apply, history, diff,
show and rollback the active one.

A bundle is a YAML file or a folder of them (docs/policy.md). ``check`` checks the names a bundle
uses against the directory of the data dir (``--offline``: the bundle alone). Findings print one
per line as ``file:line: severity: code [rule]: English / 中文``. Exit status: 0 fine (warnings
allowed), 1 the bundle or a test case failed, 2 a usage or dependency problem (one line,
``onegate: ...``, never a traceback).
"""

from __future__ import annotations

import asyncio
import re
import sys
import zoneinfo
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from onegate.cli_common import (
    ConfigFile,
    DataDir,
    Json,
    emit_json,
    fail,
    settings_from,
    table,
    with_runtime,
)
from onegate.cli_policy_store import (
    data_dir_settings,
    directory_catalog,
    load_or_exit,
    policy_store,
    print_findings,
    register,
)
from policy.check import Catalog, check, has_errors
from policy.engine import PolicyEngine
from policy.model import Request, acr_rank
from policy.normalize import PathRejected
from policy.rules import BundleError, load_bundle, parse_duration

if TYPE_CHECKING:
    from core.access_log import NdjsonAccessLog, StoreAccessLog
    from onegate.runtime import Runtime
    from policy.simulate import SimulationReport

__all__ = ["policy_app"]

policy_app = typer.Typer(
    help="Access policies: check, compile, explain, test and simulate bundles; apply, history, diff, "
    "show and rollback the active one. / 访问策略：检查、编译、解释、测试、模拟。",
    no_args_is_help=True,
)

BundlePath = Annotated[Path, typer.Argument(help="A policy file, or a folder of them.", show_default=False)]
Offline = Annotated[bool, typer.Option("--offline", help="Do not read the directory of the data dir.")]
# Progress bar for simulate: on a terminal, from this many events on.
LONG_RUN = 20_000


# -- check -----------------------------------------------------------------------------------


@policy_app.command("check")
def check_command(
    path: BundlePath,
    offline: Offline = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    as_json: Json = False,
) -> None:
    """Check a bundle: structure, names against the directory, rules against each other."""
    bundle = load_or_exit(path, err=False)
    if offline:
        catalog = Catalog()
    else:
        settings = data_dir_settings(data_dir, config, "check the structure only with --offline")

        async def work(runtime: Runtime) -> Catalog:
            return await directory_catalog(runtime, bundle)

        catalog = with_runtime(settings, work)
    findings = check(bundle, catalog)
    errors = sum(f.severity == "error" for f in findings)
    warnings = len(findings) - errors
    if as_json:
        emit_json(
            {
                "ok": not has_errors(findings),
                "apps": len(bundle.apps),
                "rules": len(bundle.all_rules()),
                "errors": errors,
                "warnings": warnings,
                "findings": [f.as_dict() for f in findings],
            }
        )
    else:
        print_findings(findings, err=False)
        scope = "structure only (--offline)" if offline else "names checked against the directory"
        typer.echo(
            f"{len(bundle.apps)} application(s), {len(bundle.all_rules())} rule(s); "
            f"{errors} error(s), {warnings} warning(s); {scope} / "
            f"{len(bundle.apps)} 个应用，{len(bundle.all_rules())} 条规则；{errors} 个错误，{warnings} 个警告"
        )
    if has_errors(findings):
        raise typer.Exit(1)


# -- compile ---------------------------------------------------------------------------------


@policy_app.command("compile")
def compile_command(
    path: BundlePath,
    cedar: Annotated[bool, typer.Option("--cedar", help="Print the bundle as Cedar policies.")] = False,
    as_json: Json = False,
) -> None:
    """Show what a bundle compiles to: the index per application, or (--cedar) Cedar policies."""
    bundle = load_or_exit(path)
    if cedar:
        try:
            from policy.cedar import to_cedar
        except ImportError as e:
            raise fail(f"the Cedar translation is not available: {e} / Cedar 转换不可用") from None
        text = to_cedar(bundle)
        if as_json:
            emit_json({"digest": bundle.digest, "cedar": text})
        else:
            typer.echo(text, nl=not text.endswith("\n"))
        return
    engine = PolicyEngine(bundle)
    apps: list[dict[str, Any]] = []
    for name, app in sorted(bundle.apps.items()):
        rules = bundle.rules_for(name)
        apps.append(
            {
                "app": name,
                "title": app.title,
                "hosts": list(app.hosts),
                "rules": len(rules),
                "decided_by": "cedar" if name in engine.deciders else "compiled",
                "rule_ids": [r.id for r in rules],
            }
        )
    if as_json:
        emit_json(
            {
                "timezone": bundle.timezone,
                "digest": bundle.digest,
                "zones": sorted(bundle.zones),
                "global_rules": [r.id for r in bundle.global_rules],
                "apps": apps,
            }
        )
        return
    table(
        ["app", "hosts", "rules", "decided by"],
        [[a["app"], ",".join(a["hosts"]) or "-", str(a["rules"]), a["decided_by"]] for a in apps],
    )
    typer.echo(
        f"{len(apps)} application(s), {len(bundle.all_rules())} rule(s) "
        f"({len(bundle.global_rules)} for several applications), zone {bundle.timezone}, "
        f"digest {bundle.digest[:12]}"
    )


# -- explain ---------------------------------------------------------------------------------


def _moment(value: str | None, timezone: str) -> float | None:
    if value is None:
        return None
    from policy.testing import parse_time

    try:
        return parse_time(value, timezone)
    except ValueError:
        raise fail(
            f"--time: not an ISO 8601 time or 'mon 09:30': {value!r} / --time 须为 ISO 8601 时间或“mon 09:30”"
        ) from None


async def _subject(runtime: Runtime, username: str) -> tuple[list[str], list[str]] | None:
    """The user's groups and department chain (nearest first), or None for an unknown user."""
    directory = runtime.directory
    user = await directory.get_user(username)
    if user is None:
        return None
    groups = await directory.groups_of(user.username)
    by_id = {d.id: d for d in await directory.departments()}
    chain: list[str] = []
    node = by_id.get(user.department_id) if user.department_id is not None else None
    while node is not None and len(chain) <= len(by_id):
        chain.append(node.code)
        node = by_id.get(node.parent_id) if node.parent_id is not None else None
    return groups, chain


@policy_app.command("explain")
def explain_command(
    path: BundlePath,
    *,
    app: Annotated[str, typer.Option("--app", help="The application.")],
    request_path: Annotated[str, typer.Option("--path", help="The request path, as sent.")] = "/",
    method: Annotated[str, typer.Option("--method")] = "GET",
    user: Annotated[str | None, typer.Option("--user", help="Absent: an anonymous request.")] = None,
    group: Annotated[list[str] | None, typer.Option("--group", help="Repeatable.")] = None,
    department: Annotated[
        list[str] | None, typer.Option("--department", help="Repeatable, nearest first.")
    ] = None,
    role: Annotated[list[str] | None, typer.Option("--role", help="Repeatable.")] = None,
    ip: Annotated[str | None, typer.Option("--ip", help="The client address.")] = None,
    time: Annotated[
        str | None,
        typer.Option("--time", help="ISO 8601, or 'mon 09:30' in the bundle's zone; default: now."),
    ] = None,
    acr: Annotated[str | None, typer.Option("--acr", help="pwd, mfa, phr or the URN.")] = None,
    auth_age: Annotated[
        str | None, typer.Option("--auth-age", help="Since the last sign-in: seconds, or 90s / 30m / 8h.")
    ] = None,
    risk: Annotated[int, typer.Option("--risk", min=0, max=100)] = 0,
    lang: Annotated[str, typer.Option("--lang", help="zh or en.")] = "zh",
    offline: Annotated[
        bool,
        typer.Option("--offline", help="With --user: do not read groups and departments from the directory."),
    ] = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    as_json: Json = False,
) -> None:
    """Decide one request and say why, naming the rules.

    With --user and neither --group nor --department, the user's groups and departments are read
    from the directory of the data dir (unless --offline)."""
    if lang not in ("zh", "en"):
        raise fail(f"--lang: zh or en, not {lang!r} / --lang 须为 zh 或 en")
    if acr is not None and not acr_rank(acr):
        raise fail(f"--acr: pwd, mfa, phr or the URN, not {acr!r} / --acr 无效")
    try:
        age = parse_duration(auth_age) if auth_age is not None else None
    except ValueError:
        raise fail(f"--auth-age: seconds, or 90s / 30m / 8h, not {auth_age!r} / --auth-age 无效") from None
    engine = PolicyEngine(load_or_exit(path))
    groups, departments = list(group or ()), list(department or ())
    looked_up = False
    if user and not groups and not departments and not offline:
        settings = data_dir_settings(data_dir, config, "give --group / --department, or --offline")

        async def work(runtime: Runtime) -> tuple[list[str], list[str]] | None:
            return await _subject(runtime, user)

        found = with_runtime(settings, work)
        if found is None:
            raise fail(
                f"no user {user!r} in the directory; give --group/--department or --offline / "
                f"目录中没有用户 {user!r}"
            )
        groups, departments = found
        looked_up = True
    try:
        request = Request.of(
            app=app,
            path=request_path,
            method=method,
            user=user,
            groups=groups,
            departments=departments,
            roles=role or (),
            acr=acr,
            ip=ip,
            now=_moment(time, engine.bundle.timezone),
            risk=risk,
        )
    except PathRejected as e:
        raise fail(f"--path refused: {e.reason.value} / 路径被拒绝：{e.reason.value}") from None
    except ValueError as e:
        raise fail(f"bad request value: {e} / 请求参数无效") from None
    if age is not None:
        request = replace(request, auth_time=request.now - age)
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
                "request": {
                    "app": request.app,
                    "path": request.path,
                    "method": request.method,
                    "user": request.user,
                    "groups": sorted(request.groups),
                    "departments": list(request.departments),
                    "from_directory": looked_up,
                },
                "rules": [
                    {
                        "id": t.rule.id,
                        "effect": t.rule.effect.value,
                        "line": t.rule.line,
                        "matched": t.matched,
                        "failed": list(t.failed),
                        "unmet": t.unmet,
                    }
                    for t in explanation.traces
                ],
            }
        )
        return
    if looked_up:
        typer.echo(
            f"{user}: groups {', '.join(groups) or '-'}; departments {' > '.join(departments) or '-'} "
            "(from the directory / 来自目录)"
        )
    typer.echo(f"{decision.effect.value}: {explanation.text('en' if lang == 'en' else 'zh_CN')}")
    for trace in explanation.traces:
        if trace.unmet:
            state = "match, sign-in requirement not met" if lang == "en" else "匹配，认证要求未满足"
        elif trace.matched:
            state = "match" if lang == "en" else "匹配"
        else:
            state = ("no: " if lang == "en" else "不匹配：") + ", ".join(trace.failed)
        typer.echo(f"  {trace.rule.id:<24} {trace.rule.effect.value:<8} line {trace.rule.line:<5} {state}")


# -- test ------------------------------------------------------------------------------------


@policy_app.command("test")
def test_command(
    path: BundlePath,
    tests: Annotated[Path, typer.Argument(help="YAML test cases.", show_default=False)],
    as_json: Json = False,
) -> None:
    """Run YAML test cases against a bundle; exit 1 when any fails."""
    from policy.testing import load_cases, run_cases

    engine = PolicyEngine(load_or_exit(path))
    if not tests.is_file():
        raise fail(f"no such file: {tests} / 文件不存在")
    try:
        cases = load_cases(tests.read_text(encoding="utf-8"), str(tests))
    except BundleError as e:
        print_findings(e.findings, err=True)
        typer.echo(f"{tests}: {len(e.findings)} error(s); no case was run / 测试用例有误，未运行", err=True)
        raise typer.Exit(1) from None
    except (OSError, UnicodeDecodeError) as e:
        raise fail(f"cannot read {tests}: {e} / 无法读取") from None
    report = run_cases(engine, cases)
    if as_json:
        emit_json(report.as_dict())
    else:
        for result in report.results:
            mark = "ok  " if result.passed else "FAIL"
            typer.echo(f"{mark} {result.case.source}:{result.case.line} {result.case.name}")
            if not result.passed:
                typer.echo(f"       expected / 期望: {result.case.expected}")
                typer.echo(
                    f"       got / 实际:      {result.actual} (differs in {', '.join(result.mismatches)})"
                )
                typer.echo(f"       {result.explanation_en}")
                typer.echo(f"       {result.explanation_zh}")
        typer.echo(
            f"{report.passed} passed, {len(report.failed)} failed / "
            f"通过 {report.passed}，失败 {len(report.failed)}"
        )
    if report.failed:
        raise typer.Exit(1)


# -- simulate --------------------------------------------------------------------------------

_AGO = re.compile(r"^(\d+)\s*([wdhm])$")
_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes"}


def _when(option: str, text: str, timezone: str, now: datetime) -> datetime:
    """``7d`` / ``24h`` / ``30m`` / ``2w`` before ``now``, or ISO 8601 (no offset: the bundle's zone)."""
    match = _AGO.match(text.strip().lower())
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise fail(
            f"{option}: 7d, 24h, 30m or an ISO 8601 time, not {text!r} / "
            f"{option} 须为 7d、24h、30m 或 ISO 8601 时间"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=zoneinfo.ZoneInfo(timezone))


def _active_baseline(data_dir: Path | None, config: Path | None) -> PolicyEngine:
    settings = data_dir_settings(data_dir, config, "compare with a file: --baseline FILE")

    async def active(runtime: Runtime) -> tuple[int, str] | None:
        version = await policy_store(runtime).active()
        return (version.number, version.text) if version else None

    found = with_runtime(settings, active)
    if found is None:
        raise fail(
            "no active policy to compare with; pass --baseline FILE / 没有生效的策略，请指定 --baseline"
        )
    number, text = found
    try:
        return PolicyEngine(load_bundle(text, f"v{number}"), version=number)
    except BundleError as e:
        raise fail(f"the active policy v{number} does not load: {e.findings[0]} / 生效策略无法加载") from None


def _replay(
    *,
    baseline: PolicyEngine,
    proposed: PolicyEngine,
    source: NdjsonAccessLog | StoreAccessLog,
    since: datetime,
    until: datetime | None,
    show_progress: bool,
) -> SimulationReport:
    from core.access_log import count_events
    from policy.simulate import simulate

    async def run() -> SimulationReport:
        total = await count_events(source, since, until) if show_progress else None
        if not total or total < LONG_RUN:
            return await simulate(baseline, proposed, source, since, until)
        with typer.progressbar(length=total, label="replaying / 重放", file=sys.stderr) as bar:
            report = await simulate(baseline, proposed, source, since, until, progress=bar.update)
            bar.update(total - report.events)  # the lines that were not access events
            return report

    return asyncio.run(run())


def _simulation_text(
    report: SimulationReport, source: NdjsonAccessLog | StoreAccessLog, timezone: str, limit: int
) -> None:
    from policy.simulate import ANONYMOUS

    zone = zoneinfo.ZoneInfo(timezone)

    def local(moment: datetime) -> str:
        return moment.astimezone(zone).isoformat(timespec="seconds")

    until = local(report.until) if report.until else "now / 现在"
    typer.echo(f"window / 时间范围: {local(report.since)} .. {until}")
    typer.echo(
        f"{report.events} access event(s) read, {report.replayed} replayed, "
        f"{report.unchanged} decided alike, {report.changed} changed / "
        f"读取 {report.events} 个访问事件，重放 {report.replayed} 个，"
        f"{report.unchanged} 个决定不变，{report.changed} 个有变化"
    )
    if report.skipped:
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(report.skipped.items()))
        typer.echo(f"skipped / 跳过 {sum(report.skipped.values())}: {reasons}")
    if source.problems:
        shown = ", ".join(str(p.line) for p in source.problems[:20])
        more = f" (+{len(source.problems) - 20})" if len(source.problems) > 20 else ""
        typer.echo(
            f"unreadable lines in {source.path} / 无法读取的行: {shown}{more}; first: line "
            f"{source.problems[0].line}: {source.problems[0].reason}"
        )
    if report.recorded_differs:
        typer.echo(
            f"note: the baseline decides {report.recorded_differs} event(s) differently "
            "from what was recorded / "
            f"注意：基线策略对 {report.recorded_differs} 个事件的决定与当时记录的不同"
        )
    kinds = (
        ("gains", "would gain access / 将获得访问权限", report.gains),
        ("losses", "would lose access / 将失去访问权限", report.losses),
        ("changes", "refused differently (deny <-> step_up) / 拒绝方式改变", report.changes),
    )
    for name, label, kind in kinds:
        typer.echo("")
        if not kind.requests:
            typer.echo(f"{name}: none / 无")
            continue
        transitions = ", ".join(f"{t} {n}" for t, n in sorted(kind.transitions.items()))
        anonymous = f" and {kind.anonymous} anonymous request(s)" if kind.anonymous else ""
        typer.echo(
            f"{name}: {kind.requests} request(s) of {len(kind.users)} user(s){anonymous} "
            f"{label} ({transitions})"
        )
        typer.echo(
            "  per application / 按应用: " + ", ".join(f"{a} {n}" for a, n in sorted(kind.by_app.items()))
        )
        rows = sorted(kind.by_user_app.items())
        table(
            ["  user / 用户", "app / 应用", "requests / 请求数"],
            [[f"  {user}", app, str(n)] for (user, app), n in rows[:limit]],
        )
        if len(rows) > limit:
            typer.echo(
                f"  ... {len(rows) - limit} more (--json lists all) / 其余 {len(rows) - limit} 项见 --json"
            )
        typer.echo("  examples / 示例:")
        for c in kind.examples:
            before = ", ".join(c.before.rule_ids)
            after = ", ".join(c.after.rule_ids)
            typer.echo(
                f"    {local(c.time)} {c.user or ANONYMOUS} {c.method} {c.app} {c.path}: "
                f"{c.transition}, rules [{before}] -> [{after}]"
            )


@policy_app.command("simulate")
def simulate_command(
    path: BundlePath,
    *,
    events: Annotated[
        Path | None, typer.Option("--events", help="Recorded access events (ECS NDJSON).", show_default=False)
    ] = None,
    from_store: Annotated[
        bool, typer.Option("--from-store", help="Replay the SOC's event store (soc.store) instead of a file.")
    ] = False,
    since: Annotated[str, typer.Option("--since", help="7d, 24h, 30m or an ISO 8601 time.")] = "7d",
    until: Annotated[
        str | None, typer.Option("--until", help="7d, 24h, 30m (ago) or an ISO 8601 time; default: now.")
    ] = None,
    baseline: Annotated[
        Path | None,
        typer.Option(
            "--baseline", help="Compare with this bundle instead of the active one.", show_default=False
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Rows per table in the text output.")] = 20,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    as_json: Json = False,
) -> None:
    """Replay recorded traffic against a proposed bundle: who would gain or lose access to what."""
    from core.access_log import NdjsonAccessLog, StoreAccessLog
    from core.eventstore import StoreUnavailable

    proposed = PolicyEngine(load_or_exit(path))
    if (events is None) == (not from_store):
        raise fail("give --events FILE or --from-store (one of them) / 请指定 --events 文件或 --from-store")
    if events is not None and not events.is_file():
        raise fail(f"--events: no such file: {events} / 事件文件不存在")
    before = (
        PolicyEngine(load_or_exit(baseline)) if baseline is not None else _active_baseline(data_dir, config)
    )
    zone = proposed.bundle.timezone
    now = datetime.now(UTC)
    start = _when("--since", since, zone, now)
    end = _when("--until", until, zone, now) if until is not None else None
    if end is not None and end <= start:
        raise fail("--until must be later than --since / --until 须晚于 --since")
    source: NdjsonAccessLog | StoreAccessLog
    if events is not None:
        source = NdjsonAccessLog(events)
    else:
        from onegate.soc_app import open_event_store

        settings = settings_from(data_dir, config)
        source = StoreAccessLog(
            open_event_store(settings), name=f"the SOC event store ({settings.soc.store})"
        )
    show_progress = sys.stderr.isatty() and not as_json
    try:
        report = _replay(
            baseline=before,
            proposed=proposed,
            source=source,
            since=start,
            until=end,
            show_progress=show_progress,
        )
    except (OSError, StoreUnavailable) as e:
        raise fail(f"cannot read {source.path}: {e} / 无法读取") from None
    if as_json:
        emit_json(
            report.as_dict()
            | {
                "baseline": f"v{before.version}" if before.version is not None else str(baseline),
                "proposed": str(path),
                "other_events": source.other_events,
                "unreadable_lines": [{"line": p.line, "reason": p.reason} for p in source.problems],
            }
        )
        return
    _simulation_text(report, source, zone, limit)


register(policy_app)
