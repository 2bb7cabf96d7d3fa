"""Policy test cases (YAML): the demo's cases pass; a failing case names its line and explains."""

from __future__ import annotations

from pathlib import Path

import pytest

from onegate import demo_data
from policy.engine import PolicyEngine
from policy.rules import BundleError, load_path
from policy.testing import load_cases, run_cases

POLICIES = Path(demo_data.__file__).parent / "policies"


def test_the_demo_cases_pass() -> None:
    engine = PolicyEngine(load_path(POLICIES / "demo.yaml"))
    cases = load_cases((POLICIES / "demo_tests.yaml").read_text(encoding="utf-8"))
    report = run_cases(engine, cases)
    assert report.passed == len(cases) >= 10 and not report.failed


def test_a_failing_case_has_its_line_and_an_explanation() -> None:
    engine = PolicyEngine(load_path(POLICIES / "demo.yaml"))
    cases = load_cases(
        """cases:
  - name: right
    given: {user: zhangwei, groups: [hr-staff], departments: [hrss], app: hr, path: /}
    expect: {effect: allow}
  - name: wrong effect
    given: {user: zhangwei, groups: [hr-staff], departments: [hrss], app: permits, path: /}
    expect: {effect: allow}
  - name: wrong rule
    given: {user: zhangwei, groups: [hr-staff], departments: [hrss], app: hr, path: /}
    expect: {effect: allow, rules: [grid-read]}
  - name: step-up level
    given: {user: wangfang, groups: [hr-admins], departments: [hrss], app: hr, path: /admin, acr: mfa}
    expect: {effect: step_up, acr: phr}
  - name: stale sign-in
    given: {user: wangfang, groups: [hr-admins], departments: [hrss], app: hr, path: /admin, acr: phr,
            auth_age: 3600}
    expect: {effect: step_up}
  - name: night, local time
    given: {user: liuyang, groups: [approval-staff], app: permits, ip: 10.0.0.1, time: "2026-11-30 23:30"}
    expect: {effect: deny}
"""
    )
    report = run_cases(engine, cases)
    assert [(r.case.name, r.case.line) for r in report.failed] == [("wrong effect", 5), ("wrong rule", 8)]
    wrong = report.failed[0]
    assert wrong.actual == "deny" and "Denied" in wrong.explanation_en and "拒绝" in wrong.explanation_zh
    assert report.failed[1].actual == "allow ['hr-staff']"
    assert report.as_dict()["failed"] == 2


def test_malformed_cases_are_refused_with_lines() -> None:
    with pytest.raises(BundleError) as caught:
        load_cases(
            "cases:\n  - {given: {path: /}, expect: {effect: allow}}\n"
            "  - {given: {app: hr}, expect: {effect: maybe}}\n"
        )
    assert [f.line for f in caught.value.findings] == [2, 3]
    with pytest.raises(BundleError):
        load_cases("nothing: here\n")
