"""Policy test cases (YAML): the demo's cases pass; a failing case names its line, what was expected,
what was decided and why; a malformed file is refused with every problem at its line."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from onegate import demo_data
from policy.engine import PolicyEngine
from policy.model import Effect
from policy.rules import BundleError, load_path
from policy.testing import REFERENCE_MONDAY, load_cases, parse_time, run_cases

POLICIES = Path(demo_data.__file__).parent / "policies"
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def demo() -> PolicyEngine:
    return PolicyEngine(load_path(POLICIES / "demo.yaml"))


def test_the_demo_cases_pass(demo: PolicyEngine) -> None:
    cases = load_cases((POLICIES / "demo_tests.yaml").read_text(encoding="utf-8"))
    report = run_cases(demo, cases)
    assert report.passed == len(cases) >= 10 and report.ok


def test_the_fixture_cases_pass_on_the_baseline_and_fail_on_the_proposal() -> None:
    text = (FIXTURES / "sim_baseline_tests.yaml").read_text(encoding="utf-8")
    cases = load_cases(text, "sim_baseline_tests.yaml")
    baseline = run_cases(PolicyEngine(load_path(FIXTURES / "sim_baseline.yaml")), cases)
    assert baseline.ok and baseline.passed == len(cases)
    proposed = run_cases(PolicyEngine(load_path(FIXTURES / "sim_proposed.yaml")), cases)
    # The proposal closes the public wiki pages, payroll asks for mfa, finance keeps office hours.
    assert [(r.case.name, r.mismatches) for r in proposed.failed] == [
        ("alice reads payroll with a password", ("effect", "rules")),
        ("anyone reads the public wiki", ("effect", "rules")),
        ("carol on a Saturday in the office", ("effect",)),
        ("bob needs a passkey for reports", ("effect", "rules", "acr")),
        ("erin from a cafe is refused", ("effect",)),
    ]
    assert proposed.failed[3].actual == "deny [hr-reports-interns]"


CASES = """\
cases:
  - name: right
    given: {user: zhangwei, groups: [hr-staff], departments: [hrss], app: hr, path: /}
    expect: allow
  - name: wrong effect
    given: {user: zhangwei, groups: [hr-staff], departments: [hrss], app: permits, path: /}
    expect: allow
  - name: wrong rule
    given: {user: zhangwei, groups: [hr-staff], departments: [hrss], app: hr, path: /}
    expect: {effect: allow, rules: [grid-read]}
  - name: step-up level and age
    given: {user: wangfang, groups: [hr-admins], departments: [hrss], app: hr, path: /admin, acr: mfa}
    expect: {effect: step_up, rules: [hr-admin-passkey], acr: phr, max_age: 30m}
  - name: stale sign-in
    given: {user: wangfang, groups: [hr-admins], departments: [hrss], app: hr, path: /admin, acr: phr,
            auth_age: 1h}
    expect: {effect: step_up, acr: mfa}
  - name: fresh sign-in
    given: {user: wangfang, groups: [hr-admins], departments: [hrss], app: hr, path: /admin, acr: phr,
            auth_age: 600}
    expect: {effect: allow, rules: [hr-admin-only]}
  - name: default deny has no rules
    given: {user: nobody, app: grid, path: /}
    expect: {effect: deny, rules: []}
"""


def test_failures_name_their_line_expectation_and_explanation(demo: PolicyEngine) -> None:
    cases = load_cases(CASES, "cases.yaml")
    report = run_cases(demo, cases)
    assert report.passed == 4
    failed = {r.case.name: r for r in report.failed}
    assert [(r.case.source, r.case.line) for r in report.failed] == [
        ("cases.yaml", 5),
        ("cases.yaml", 8),
        ("cases.yaml", 14),
    ]
    wrong = failed["wrong effect"]
    assert (wrong.case.expected, wrong.actual, wrong.mismatches) == ("allow", "deny []", ("effect",))
    assert "Denied by default" in wrong.explanation_en and "默认拒绝" in wrong.explanation_zh
    assert "permits-office-hours" in wrong.explanation_en  # the nearest allow rule is named
    rule = failed["wrong rule"]
    assert (rule.case.expected, rule.actual, rule.mismatches) == (
        "allow [grid-read]",
        "allow [hr-staff]",
        ("rules",),
    )
    stale = failed["stale sign-in"]
    assert stale.actual == "step_up [hr-admin-passkey] acr=phr max_age=1800" and stale.mismatches == ("acr",)
    as_dict = report.as_dict()
    assert (as_dict["passed"], as_dict["failed"]) == (4, 3)
    assert as_dict["cases"][1] | {"explanation": "", "explanation_zh": ""} == {
        "name": "wrong effect",
        "source": "cases.yaml",
        "line": 5,
        "passed": False,
        "expected": "allow",
        "actual": "deny []",
        "mismatches": ["effect"],
        "explanation": "",
        "explanation_zh": "",
    }


def test_times_are_read_in_the_bundle_zone(demo: PolicyEngine) -> None:
    # permits-office-hours: approval staff, weekdays 08:00-20:00 Shanghai, from the government network.
    given = "{user: liuyang, groups: [approval-staff], app: permits, path: /apply, ip: 10.0.0.1, time: %s}"
    times = {
        '"mon 09:30"': "allow",
        '"Friday 19:59"': "allow",
        '"sat 10:00"': "deny",
        '"mon 07:59"': "deny",
        '"2026-11-30T09:30:00+08:00"': "allow",
        '"2026-11-30T09:30:00Z"': "allow",  # 17:30 in Shanghai
        '"2026-11-30T13:30:00Z"': "deny",  # 21:30 in Shanghai
        "2026-11-30 21:00:00": "deny",  # a YAML timestamp with no zone: Shanghai wall-clock time
        '"2026-11-30T12:00"': "allow",
    }
    body = "cases:\n" + "".join(
        f"  - name: {i}\n    given: {given % when}\n    expect: {effect}\n"
        for i, (when, effect) in enumerate(times.items())
    )
    report = run_cases(demo, load_cases(body))
    assert report.ok, [(r.case.given["time"], r.actual) for r in report.failed]


def test_parse_time() -> None:
    monday = datetime(REFERENCE_MONDAY.year, REFERENCE_MONDAY.month, REFERENCE_MONDAY.day, tzinfo=UTC)
    assert monday.weekday() == 0
    shanghai = parse_time("mon 09:30", "Asia/Shanghai")
    assert shanghai == monday.timestamp() + 1.5 * 3600  # 09:30 at +08:00 is 01:30 UTC
    assert parse_time("Mon 9:30", "UTC") - shanghai == 8 * 3600
    assert parse_time("sun 23:59", "UTC") == monday.timestamp() + 6 * 86400 + 23 * 3600 + 59 * 60
    assert parse_time("2026-11-30T10:00:00+08:00", "UTC") == datetime(2026, 11, 30, 2, tzinfo=UTC).timestamp()
    assert (
        parse_time("2026-11-30T10:00:00", "Asia/Shanghai")
        == datetime(2026, 11, 30, 2, tzinfo=UTC).timestamp()
    )
    for bad in ("someday 09:30", "mon 25:00", "mon 09:61", "noon", 42):
        with pytest.raises(ValueError):
            parse_time(bad, "UTC")


def test_malformed_cases_are_refused_with_every_line() -> None:
    text = """\
cases:
  - {given: {path: /}, expect: allow}
  - given: {app: hr}
    expect: {effect: maybe}
  - given: {app: hr, ip: 10.0.0.300, colour: red}
    expect: allow
  - given:
      app: hr
      time: "next tuesday"
      path: /a%2fb
      risk: 101
      auth_age: soon
    expect: {effect: allow, acr: mfa}
  - name: no expectation
    given: {app: hr}
  - given: {app: hr, acr: gold, groups: [ok, 3]}
    expect: {effect: deny, rules: {a: b}, extra: 1}
"""
    with pytest.raises(BundleError) as caught:
        load_cases(text, "bad.yaml")
    found = [(f.line, f.message.split(" (")[0].split(":")[0]) for f in caught.value.findings]
    assert found == [
        (2, "a case's given needs an 'app'"),
        (4, "expect.effect must be one of allow, deny, step_up"),
        (5, "unknown key 'colour' in given"),
        (5, "given.ip"),
        (9, "given.time"),
        (10, "given.path"),
        (11, "given.risk"),
        (12, "given.auth_age"),
        (13, "expect.acr and expect.max_age belong to a step_up"),
        (14, "a case needs 'expect'"),
        (16, "given.groups must be a name or a list of names"),
        (16, "given.acr"),
        (17, "unknown key 'extra' in expect"),
        (17, "expect.rules must be a list of rule ids"),
    ]
    assert all(
        f.source == "bad.yaml" and f.code == "bad_test" and f.message_zh for f in caught.value.findings
    )


def test_a_file_that_is_not_a_case_list() -> None:
    for text, line in [("nothing: here\n", 1), ("cases: []\n", 1), ("cases:\n  - [unclosed\n", 3)]:
        with pytest.raises(BundleError) as caught:
            load_cases(text)
        assert [f.line for f in caught.value.findings] == [line]


def test_a_case_without_time_uses_the_given_moment(demo: PolicyEngine) -> None:
    [case] = load_cases(
        "cases:\n  - given: {user: liuyang, groups: [approval-staff], app: permits, ip: 10.0.0.1}\n"
        "    expect: allow\n"
    )
    monday = datetime(2026, 11, 30, 2, tzinfo=UTC).timestamp()  # 10:00 in Shanghai
    assert run_cases(demo, [case], now=monday).ok
    saturday = monday - 2 * 86400
    result = run_cases(demo, [case], now=saturday).results[0]
    assert not result.passed and result.case.effect is Effect.ALLOW and "schedule" in result.explanation_en
