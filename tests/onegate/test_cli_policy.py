"""`onegate policy ...` as an operator runs it: check, compile, explain, test, simulate, and the
versions of the active bundle (apply, history, diff, show, rollback).

Most commands run in-process through typer's CliRunner (fast); the first test runs the real
command in a subprocess for the exit status and the one-line errors."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from core.db import create_engine, session_factory
from idp.directory.services import Directory
from onegate import demo_data
from onegate.cli import app
from onegate.cli_policy import _when
from tests.onegate.conftest import Run

POLICIES = Path(demo_data.__file__).parent / "policies"
DEMO = str(POLICIES / "demo.yaml")
FIXTURES = Path(__file__).parent.parent / "policy" / "fixtures"
BASELINE = str(FIXTURES / "sim_baseline.yaml")
PROPOSED = str(FIXTURES / "sim_proposed.yaml")
EVENTS = str(FIXTURES / "sim_access.ndjson")
# The fixture's week, in the bundles' zone (Asia/Shanghai).
WINDOW = ("--since", "2026-11-23T10:00", "--until", "2026-11-30T10:00")

GOOD = """apps:
  console:
    hosts: [admin.localhost]
    rules:
      - {id: admins, effect: allow, subjects: {groups: [sys-admins, sec-admins]}}
      - {id: keys-mfa, effect: step_up, paths: [/keys], acr: mfa}
"""
BAD = "apps:\n  hr:\n    rules:\n      - id: x\n        effect: permit\n        group: [a]\n"


def policy(*args: str) -> Result:
    return CliRunner().invoke(app, ["policy", *args])


@pytest.fixture
def initialised(onegate: Run, data_dir: Path) -> Path:
    result = onegate("init", "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr
    return data_dir


@pytest.fixture
def demo_city(initialised: Path) -> Path:
    """A data dir whose directory holds the demo city (departments, groups, people)."""

    async def seed() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{initialised / 'onegate.db'}")
        try:
            await demo_data.seed_demo(Directory(session_factory(engine)), initialised)
        finally:
            await engine.dispose()

    asyncio.run(seed())
    return initialised


def test_the_real_command_exit_status_and_one_line_errors(onegate: Run, tmp_path: Path) -> None:
    ok = onegate("policy", "check", "--offline", DEMO)
    assert ok.returncode == 0, ok.stderr
    assert "3 application(s), 9 rule(s); 0 error(s), 0 warning(s)" in ok.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    result = onegate("policy", "check", "--offline", str(bad))
    assert result.returncode == 1
    assert (
        f"{bad}:5: error: bad_effect [x]" in result.stdout and f"{bad}:6: error: unknown_key" in result.stdout
    )
    assert "effect 须为" in result.stdout and "Traceback" not in result.stderr

    missing = onegate("policy", "compile", str(tmp_path / "nothing.yaml"))
    assert missing.returncode == 2 and missing.stderr.startswith("onegate: no such file")
    usage = onegate(
        "policy", "simulate", DEMO, "--events", EVENTS, "--baseline", DEMO, "--since", "last week"
    )
    assert usage.returncode == 2 and usage.stderr.count("\n") == 1 and "--since" in usage.stderr


def test_check_with_warnings_only_passes_and_json_lists_findings() -> None:
    result = policy("check", "--offline", BASELINE, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["ok"], report["apps"], report["rules"], report["errors"], report["warnings"]) == (
        True,
        5,
        9,
        0,
        1,
    )
    [finding] = report["findings"]
    assert (finding["severity"], finding["code"], finding["line"], finding["rule_id"]) == (
        "warning",
        "overlap",
        31,
        "vault-sec",
    )


def test_check_against_the_directory(demo_city: Path, tmp_path: Path) -> None:
    d = ["--data-dir", str(demo_city)]
    assert policy("check", DEMO, *d).exit_code == 0
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    assert policy("check", str(good), *d).exit_code == 0
    typo = tmp_path / "typo.yaml"
    typo.write_text(
        GOOD.replace("sec-admins", "sec-admin")
        + "      - {id: u, effect: allow, subjects: {users: [ghost]}}\n"
    )
    result = policy("check", str(typo), *d, "--json")
    assert result.exit_code == 1
    findings = json.loads(result.stdout)["findings"]
    assert [(f["code"], f["line"], f["rule_id"]) for f in findings] == [
        ("unknown_group", 5, "admins"),
        ("unknown_user", 7, "u"),
    ]
    # Offline, the same bundle is structurally fine.
    assert policy("check", str(typo), "--offline").exit_code == 0


def test_a_bundle_that_does_not_load_lists_every_finding(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    for command in (["compile", str(bad)], ["test", str(bad), str(FIXTURES / "sim_baseline_tests.yaml")]):
        result = policy(*command)
        assert result.exit_code == 1
        assert (
            f"{bad}:5: error: bad_effect" in result.stderr and f"{bad}:6: error: unknown_key" in result.stderr
        )
        assert "2 error(s); the bundle does not load" in result.stderr


def test_compile_summary_and_cedar() -> None:
    compiled = json.loads(policy("compile", DEMO, "--json").stdout)
    assert [a["app"] for a in compiled["apps"]] == ["grid", "hr", "permits"]
    assert compiled["timezone"] == "Asia/Shanghai"
    assert compiled["global_rules"] == ["high-risk-deny", "raised-risk-step-up"]
    hr = compiled["apps"][1]
    assert (hr["hosts"], hr["rules"], hr["decided_by"]) == (["hr.localhost"], 6, "compiled")
    # Bundle order: the rules for several applications first, then the application's own.
    assert hr["rule_ids"] == [
        "high-risk-deny",
        "raised-risk-step-up",
        "hr-staff",
        "hr-admin-only",
        "hr-admin-passkey",
        "hr-health",
    ]
    table = policy("compile", BASELINE)
    assert table.exit_code == 0
    assert "vault    vault.example.gov    2      compiled" in table.stdout
    assert "5 application(s), 9 rule(s)" in table.stdout

    cedar = policy("compile", BASELINE, "--cedar")
    assert cedar.exit_code == 0, cedar.output
    for rule_id in ("hr-staff", "hr-admin", "hr-reports-phr", "wiki-read", "wiki-public", "vault-offsite"):
        assert f'@id("{rule_id}")' in cedar.stdout
    assert 'forbid (principal, action, resource == App::"vault")' in cedar.stdout
    as_json = json.loads(policy("compile", BASELINE, "--cedar", "--json").stdout)
    assert as_json["cedar"].rstrip("\n") == cedar.stdout.rstrip("\n")


def test_explain_names_the_rules() -> None:
    explained = policy(
        "explain",
        DEMO,
        "--app",
        "hr",
        "--path",
        "/%61dmin/users",
        "--user",
        "wangfang",
        "--group",
        "hr-admins",
        "--department",
        "hrss",
        "--acr",
        "mfa",
        "--json",
    )
    assert explained.exit_code == 0, explained.output
    answer = json.loads(explained.stdout)
    assert answer["effect"] == "step_up" and answer["obligations"] == {
        "acr_values": "urn:onegate:acr:phr",
        "max_age": 1800,
    }
    assert answer["rule_ids"] == ["hr-admin-passkey"] and "hr-admin-passkey" in answer["text_zh"]
    assert answer["request"]["path"] == "/admin/users" and answer["request"]["from_directory"] is False
    traces = {r["id"]: r for r in answer["rules"]}
    assert traces["hr-staff"]["failed"] == ["not_paths"] and traces["hr-admin-passkey"]["unmet"] is True

    # A fresh passkey sign-in passes; the text names the allowing rule, in the language asked for.
    fresh = policy(
        "explain",
        DEMO,
        "--app=hr",
        "--path=/admin/users",
        "--user=wangfang",
        "--group=hr-admins",
        "--acr=phr",
        "--auth-age=5m",
        "--lang=en",
    )
    assert fresh.exit_code == 0, fresh.output
    lines = fresh.stdout.splitlines()
    assert lines[0].startswith("allow: Allowed by rule hr-admin-only")
    assert any(line.split()[:2] == ["hr-staff", "allow"] and "no: not_paths" in line for line in lines)
    stale = policy("explain", DEMO, "--app=hr", "--path=/admin", "--user=w", "--group=hr-admins", "--acr=phr")
    assert stale.stdout.startswith("step_up: 需要增强认证")  # no --auth-age: the sign-in age is unknown

    # Weekday times are read in the bundle's zone.
    base = ["explain", DEMO, "--app=permits", "--user=l", "--group=approval-staff", "--ip=10.1.2.3"]
    assert policy(*base, "--time", "mon 09:30").stdout.startswith("allow")
    assert policy(*base, "--time", "sat 09:30").stdout.startswith("deny")
    assert policy(*base, "--time", "2026-11-30T21:00:00+08:00").stdout.startswith("deny")


def test_explain_refusals_are_one_line() -> None:
    refused = policy("explain", DEMO, "--app", "hr", "--path", "/a%2fb", "--user=x", "--offline")
    assert refused.exit_code == 2 and "encoded_separator" in refused.stderr
    for option, value in [("--time", "teatime"), ("--acr", "gold"), ("--auth-age", "soon"), ("--lang", "fr")]:
        result = policy("explain", DEMO, "--app", "hr", option, value)
        assert result.exit_code == 2 and result.stderr.startswith(f"onegate: {option}"), result.output
    unknown_app = policy("explain", DEMO, "--app", "payroll", "--lang", "en")
    assert unknown_app.exit_code == 0 and unknown_app.stdout.startswith("deny: Denied: application 'payroll'")


def test_explain_reads_groups_and_departments_from_the_directory(demo_city: Path) -> None:
    d = ["--data-dir", str(demo_city)]
    result = policy("explain", DEMO, "--app", "hr", "--path", "/", "--user", "zhangwei", *d, "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["request"]["groups"] == ["civil-servants", "hr-staff"]
    assert answer["request"]["departments"] == ["hrss", "city"]  # nearest first
    assert answer["request"]["from_directory"] is True
    assert (answer["effect"], answer["rule_ids"]) == ("allow", ["hr-staff"])
    text = policy("explain", DEMO, "--app", "grid", "--user", "chenjing", *d, "--lang", "en")
    assert text.stdout.splitlines()[:2] == [
        "chenjing: groups app-owners, civil-servants; departments bigdata > city "
        "(from the directory / 来自目录)",
        f"allow: Allowed by rule grid-read ({DEMO}:54); no deny rule matched.",
    ]
    # Offline, the user has no groups: a default deny.
    assert policy("explain", DEMO, "--app", "hr", "--user", "zhangwei", "--offline").stdout.startswith("deny")
    ghost = policy("explain", DEMO, "--app", "hr", "--user", "ghost", *d)
    assert ghost.exit_code == 2 and "no user 'ghost' in the directory" in ghost.stderr


def test_commands_that_read_the_data_dir_need_one(tmp_path: Path) -> None:
    nowhere = tmp_path / "nowhere"
    d = ["--data-dir", str(nowhere)]
    for command in (
        ["check", DEMO],
        ["explain", DEMO, "--app", "hr", "--user", "zhangwei"],
        ["simulate", DEMO, "--events", EVENTS],
    ):
        result = policy(*command, *d)
        assert result.exit_code == 2 and result.stderr.startswith(
            f"onegate: no OneGate data dir at {nowhere}"
        )
    assert "--offline" in policy("check", DEMO, *d).stderr
    assert "--baseline FILE" in policy("simulate", DEMO, "--events", EVENTS, *d).stderr
    assert not nowhere.exists()  # nothing was created on the way


def test_test_runs_cases_and_fails_with_lines(tmp_path: Path) -> None:
    cases = str(FIXTURES / "sim_baseline_tests.yaml")
    passed = policy("test", BASELINE, cases)
    assert passed.exit_code == 0, passed.output
    assert passed.stdout.splitlines()[-1] == "7 passed, 0 failed / 通过 7，失败 0"
    failed = policy("test", PROPOSED, cases)
    assert failed.exit_code == 1
    lines = failed.stdout.splitlines()
    assert f"FAIL {cases}:4 alice reads payroll with a password" in lines
    assert f"ok   {cases}:16 carol from home is refused" in lines
    at = lines.index(f"FAIL {cases}:4 alice reads payroll with a password")
    assert lines[at + 1].split() == ["expected", "/", "期望:", "allow", "[hr-staff]"]
    assert "step_up [hr-payroll-mfa] acr=mfa (differs in effect, rules)" in lines[at + 2]
    assert lines[at + 3].strip().startswith("Step-up required by rule hr-payroll-mfa")
    assert lines[at + 4].strip().startswith("需要增强认证")
    assert lines[-1] == "2 passed, 5 failed / 通过 2，失败 5"
    report = json.loads(policy("test", PROPOSED, cases, "--json").stdout)
    assert (report["passed"], report["failed"]) == (2, 5)
    assert [c["line"] for c in report["cases"] if not c["passed"]] == [4, 7, 10, 13, 22]

    broken = tmp_path / "broken.yaml"
    broken.write_text("cases:\n  - given: {app: hr, ip: 999.1.1.1}\n    expect: perhaps\n")
    result = policy("test", BASELINE, str(broken))
    assert result.exit_code == 1
    assert f"{broken}:2: error: bad_test: given.ip" in result.stderr
    assert f"{broken}:3: error: bad_test: expect.effect" in result.stderr
    assert "no case was run" in result.stderr
    missing = policy("test", BASELINE, str(tmp_path / "none.yaml"))
    assert missing.exit_code == 2 and "no such file" in missing.stderr


def test_simulate_reports_the_fixture(tmp_path: Path) -> None:
    replay = ["simulate", PROPOSED, "--events", EVENTS, "--baseline", BASELINE, *WINDOW]
    result = policy(*replay, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["events"], report["replayed"], report["unchanged"], report["changed"]) == (40, 36, 18, 18)
    assert (report["gains"]["requests"], report["gains"]["users"]) == (4, 2)
    assert (
        report["losses"]["requests"],
        report["losses"]["users"],
        report["losses"]["anonymous_requests"],
    ) == (
        10,
        4,
        2,
    )
    assert report["changes"]["transitions"] == {"deny->step_up": 2, "step_up->deny": 2}
    assert [p["line"] for p in report["unreadable_lines"]] == [8, 20, 31, 48]
    assert report["since"] == "2026-11-23T10:00:00+08:00" and report["other_events"] == 1

    text = policy(*replay)
    assert text.exit_code == 0, text.output
    out = text.stdout
    assert "40 access event(s) read, 36 replayed, 18 decided alike, 18 changed" in out
    assert "gains: 4 request(s) of 2 user(s) would gain access / 将获得访问权限 (deny->allow 4)" in out
    assert (
        "losses: 10 request(s) of 4 user(s) and 2 anonymous request(s) would lose access / 将失去访问权限 "
        "(allow->deny 7, allow->step_up 3)"
    ) in out
    assert "  per application / 按应用: finance 3, hr 3, mail 2, wiki 2" in out
    assert "2026-11-25T14:00:00+08:00 dave POST wiki /pages/1: deny->allow, rules [] -> [wiki-edit]" in out
    assert "unreadable lines in" in out and ": 8, 20, 31, 48;" in out
    assert "skipped / 跳过 4: malformed:onegate.acr 1" in out

    # --until before --since, an unreadable events file, and a limit on the table rows.
    backwards = policy(
        "simulate", PROPOSED, "--events", EVENTS, "--baseline", BASELINE, "--since", "1h", "--until", "2d"
    )
    assert backwards.exit_code == 2 and "--until must be later than --since" in backwards.stderr
    none = policy("simulate", PROPOSED, "--events", str(tmp_path / "none.ndjson"), "--baseline", BASELINE)
    assert none.exit_code == 2 and "--events: no such file" in none.stderr
    short = policy(*replay, "--limit", "2")
    assert "  ... 3 more (--json lists all)" in short.stdout


def test_simulate_windows() -> None:
    now = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
    zone = "Asia/Shanghai"
    assert _when("--since", "7d", zone, now) == now - timedelta(days=7)
    assert _when("--since", "24H", zone, now) == now - timedelta(hours=24)
    assert _when("--since", "30m", zone, now) == now - timedelta(minutes=30)
    assert _when("--since", "2w", zone, now) == now - timedelta(weeks=2)
    assert _when("--since", "2026-11-23T10:00", zone, now) == datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
    assert _when("--until", "2026-11-23T10:00:00Z", zone, now) == datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    with pytest.raises(typer.Exit):
        _when("--since", "a week", zone, now)


def test_simulate_compares_with_the_active_version(initialised: Path) -> None:
    d = ["--data-dir", str(initialised)]
    replay = ["simulate", PROPOSED, "--events", EVENTS, *WINDOW, *d]
    none = policy(*replay)
    assert none.exit_code == 2 and "no active policy to compare with; pass --baseline FILE" in none.stderr

    async def names() -> None:  # what the baseline names, so that apply's check passes
        engine = create_engine(f"sqlite+aiosqlite:///{initialised / 'onegate.db'}")
        try:
            directory = Directory(session_factory(engine))
            await directory.add_department("city", "市政府")
            for group in ("hr-staff", "hr-admins", "finance", "sec"):
                await directory.ensure_group(group)
        finally:
            await engine.dispose()

    asyncio.run(names())
    applied = policy("apply", BASELINE, "-m", "the fixture's baseline", *d)
    assert applied.exit_code == 0, applied.output
    report = json.loads(policy(*replay, "--json").stdout)
    assert report["baseline"] == "v1"
    assert (report["gains"]["requests"], report["losses"]["requests"], report["changes"]["requests"]) == (
        4,
        10,
        4,
    )


def test_a_long_replay_shows_progress_on_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from core.access_log import NdjsonAccessLog
    from onegate import cli_policy
    from policy.engine import PolicyEngine
    from policy.rules import load_path

    baseline, proposed = (PolicyEngine(load_path(Path(p))) for p in (BASELINE, PROPOSED))
    source = NdjsonAccessLog(EVENTS)
    since, until = datetime(2026, 11, 23, 2, tzinfo=UTC), datetime(2026, 11, 30, 2, tzinfo=UTC)
    args = {"baseline": baseline, "proposed": proposed, "source": source, "since": since, "until": until}
    quiet = cli_policy._replay(**args, show_progress=True)  # 44 candidate lines: not a long run
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(cli_policy, "LONG_RUN", 10)
    shown = cli_policy._replay(**args, show_progress=True)
    assert "replaying / 重放" in capsys.readouterr().err
    assert shown.as_dict() == quiet.as_dict() and shown.events == 40


def test_simulate_replays_the_soc_event_store_like_the_export(tmp_path: Path) -> None:
    """The same recorded week read from the SOC's store (--from-store) gives the same report as
    the NDJSON export it came from (its lines that are not JSON never reached the store)."""
    import asyncio

    from soc.ingest import DocumentRefused, normalise
    from soc.stores.sqlite import SqliteEventStore

    documents = []
    for line in Path(EVENTS).read_text(encoding="utf-8").splitlines():
        try:
            document = json.loads(line)
            documents.append(normalise(document.get("_source", document)))  # an export's wrapper
        except (ValueError, AttributeError, DocumentRefused):
            continue

    async def fill() -> None:
        (tmp_path / "soc").mkdir()
        store = SqliteEventStore(tmp_path / "soc" / "events.db")
        await store.write(documents)
        await store.close()

    asyncio.run(fill())
    common = [PROPOSED, "--baseline", BASELINE, *WINDOW, "--json"]
    from_file = json.loads(policy("simulate", "--events", EVENTS, *common).stdout)
    result = CliRunner().invoke(
        app, ["policy", "simulate", "--from-store", *common], env={"ONEGATE_DATA_DIR": str(tmp_path)}
    )
    assert result.exit_code == 0, result.output
    from_store = json.loads(result.stdout)
    for key in ("events", "replayed", "unchanged", "changed", "gains", "losses", "changes", "skipped"):
        assert from_store[key] == from_file[key], key
    # The export's one stored-but-invalid event is reported by its place in the window.
    [bad] = from_store["unreadable_lines"]
    assert "source.ip must be an IP address" in bad["reason"]
    both = policy("simulate", "--events", EVENTS, "--from-store", *common)
    assert both.exit_code == 2 and "one of them" in both.stderr
