"""Policy test cases: YAML files of "given this request, expect this decision".

::

    cases:
      - name: 张伟 is refused Permits
        given: {user: zhangwei, groups: [hr-staff], departments: [hrss, city], app: permits,
                path: /, method: GET, ip: 10.1.2.3, time: "2026-11-30T10:00:00+08:00",
                acr: mfa, auth_age: 60, risk: 0, roles: []}
        expect: {effect: deny, rules: [some-rule], acr: mfa}

``time`` is ISO 8601 (with an offset; without one it is read in the bundle's time zone); it
defaults to the moment the tests run. ``expect.rules`` (the deciding rule ids, in order) and
``expect.acr`` (the level a step-up asks for) are checked when given.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from policy.engine import PolicyEngine
from policy.model import Effect, Request, acr_urn
from policy.normalize import PathRejected
from policy.rules import BundleError, Finding, _List, _Loader, _Map

__all__ = ["CaseResult", "TestReport", "load_cases", "run_cases"]

_GIVEN = frozenset(
    {
        "user",
        "groups",
        "departments",
        "roles",
        "app",
        "path",
        "method",
        "ip",
        "time",
        "acr",
        "auth_age",
        "risk",
    }
)
_EXPECT = frozenset({"effect", "rules", "acr"})


@dataclass(frozen=True)
class Case:
    name: str
    line: int
    given: dict[str, Any]
    expect: dict[str, Any]


@dataclass(frozen=True)
class CaseResult:
    case: Case
    passed: bool
    actual: str
    explanation_en: str = ""
    explanation_zh: str = ""


@dataclass
class TestReport:
    results: list[CaseResult] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if not r.passed]

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failed": len(self.failed),
            "failures": [
                {
                    "name": r.case.name,
                    "line": r.case.line,
                    "expected": r.case.expect,
                    "actual": r.actual,
                    "explanation": r.explanation_en,
                    "explanation_zh": r.explanation_zh,
                }
                for r in self.failed
            ],
        }


def _error(source: str, line: int, en: str, zh: str) -> Finding:
    return Finding("error", "bad_test", en, zh, source, line)


def load_cases(text: str, source: str = "tests.yaml") -> list[Case]:
    """The cases of a test file (BundleError listing every malformed case, with lines)."""
    import yaml

    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise BundleError(
            [_error(source, mark.line + 1 if mark else 0, f"not valid YAML: {e}", "不是有效的 YAML")]
        ) from None
    cases = data.get("cases") if isinstance(data, _Map) else None
    if not isinstance(cases, _List):
        raise BundleError([_error(source, 1, "a test file has a 'cases' list", "测试文件须包含 cases 列表")])
    out: list[Case] = []
    problems: list[Finding] = []
    for index, raw in enumerate(cases):
        line = cases.lines[index]
        given = raw.get("given") if isinstance(raw, _Map) else None
        expect = raw.get("expect") if isinstance(raw, _Map) else None
        if not isinstance(given, _Map) or not isinstance(expect, _Map) or "app" not in given:
            problems.append(
                _error(
                    source,
                    line,
                    "a case has 'given' (with 'app') and 'expect'",
                    "每个用例须有 given（含 app）和 expect",
                )
            )
            continue
        unknown = (set(given) - _GIVEN) | (set(expect) - _EXPECT)
        if unknown or expect.get("effect") not in {e.value for e in Effect}:
            problems.append(
                _error(
                    source,
                    line,
                    f"unknown keys {sorted(map(str, unknown))} or bad expect.effect",
                    f"未知的键 {sorted(map(str, unknown))}，或 expect.effect 无效",
                )
            )
            continue
        out.append(Case(str(raw.get("name") or f"case {index + 1}"), line, dict(given), dict(expect)))
    if problems:
        raise BundleError(problems)
    return out


def _request(given: dict[str, Any], timezone: str) -> Request:
    when = given.get("time")
    now: float | None = None
    if when is not None:
        moment = when if isinstance(when, datetime) else datetime.fromisoformat(str(when))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=zoneinfo.ZoneInfo(timezone))
        now = moment.timestamp()
    request = Request.of(
        app=str(given["app"]),
        path=str(given.get("path", "/")),
        method=str(given.get("method", "GET")),
        user=given.get("user"),
        groups=given.get("groups") or (),
        departments=given.get("departments") or (),
        roles=given.get("roles") or (),
        acr=given.get("acr"),
        ip=str(given["ip"]) if given.get("ip") is not None else None,
        now=now,
        risk=int(given.get("risk", 0)),
    )
    if given.get("auth_age") is not None:
        from dataclasses import replace

        request = replace(request, auth_time=request.now - float(given["auth_age"]))
    return request


def run_cases(engine: PolicyEngine, cases: list[Case]) -> TestReport:
    report = TestReport()
    for case in cases:
        try:
            request = _request(case.given, engine.bundle.timezone)
        except (PathRejected, ValueError, TypeError) as e:
            report.results.append(CaseResult(case, False, f"invalid request: {e}"))
            continue
        decision = engine.decide(request)
        expect = case.expect
        ok = decision.effect.value == expect["effect"]
        if ok and "rules" in expect:
            ok = list(decision.rule_ids) == list(expect["rules"] or [])
        if ok and "acr" in expect:
            ok = decision.step_up is not None and decision.step_up.acr == acr_urn(str(expect["acr"]))
        actual = decision.effect.value + (f" {list(decision.rule_ids)}" if decision.rule_ids else "")
        if decision.step_up is not None and decision.step_up.acr:
            actual += f" acr={decision.step_up.acr.rsplit(':', 1)[-1]}"
        explanation = engine.explain(request) if not ok else None
        report.results.append(
            CaseResult(
                case,
                ok,
                actual,
                explanation.text_en if explanation else "",
                explanation.text_zh if explanation else "",
            )
        )
    return report
