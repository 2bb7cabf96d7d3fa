"""Policy test cases: YAML files of "given this request, expect this decision".

::

    cases:
      - name: 张伟 is refused Permits / 张伟无权访问审批系统
        given: {user: zhangwei, groups: [hr-staff], departments: [hrss, city], app: permits,
                path: /apply, method: POST, ip: 10.1.2.3, time: "mon 10:00", acr: mfa}
        expect: deny
      - name: 王芳 steps up for /admin
        given: {user: wangfang, groups: [hr-admins], app: hr, path: /admin, acr: mfa, auth_age: 5m}
        expect: {effect: step_up, rules: [hr-admin-passkey], acr: phr, max_age: 30m}

``given``: ``app`` (required), ``path`` (as sent, canonicalised like a real request; default
``/``), ``method`` (default GET), ``user`` (absent: anonymous), ``groups``, ``departments``
(nearest first), ``roles`` (a name or a list), ``ip``, ``time``, ``acr`` (``pwd``/``mfa``/``phr`` or
the URN), ``auth_age`` (seconds, or ``90s`` / ``30m`` / ``8h``), ``risk`` (0-100, default 0).

``time`` is ISO 8601 with an offset (``2026-11-30T09:30:00+08:00``), ISO 8601 without one (read
in the bundle's time zone), or a weekday and a wall-clock time in the bundle's zone
(``mon 09:30``, ``Sat 23:00``; the week of Monday 1 January 2024, :data:`REFERENCE_MONDAY`).
Without ``time`` the case is decided at the moment the tests run: give one whenever a rule has a
schedule.

``expect``: an effect (``allow``, ``deny`` or ``step_up``), or a mapping with ``effect`` and
optionally ``rules`` (the deciding rule ids, in bundle order; ``[]`` for a default deny),
``acr`` (the level a step-up asks for) and ``max_age`` (the sign-in age it asks for).

Loading checks every case and reports every problem at once with its line
(:class:`policy.rules.BundleError`); a failing case reports its line, what was expected, what
was decided and the explanation (:meth:`policy.engine.PolicyEngine.explain`).
"""

from __future__ import annotations

import ipaddress
import re
import time as _time
import zoneinfo
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import yaml

from policy.model import ACR_NAMES, Decision, Effect, Request, acr_rank, acr_urn
from policy.normalize import PathRejected, canonical_path
from policy.rules import BundleError, Finding, _List, _Loader, _Map, parse_duration

if TYPE_CHECKING:
    from policy.engine import PolicyEngine

__all__ = [
    "REFERENCE_MONDAY",
    "Case",
    "CaseResult",
    "TestReport",
    "load_cases",
    "parse_time",
    "run_cases",
]

# "mon 09:30" means that Monday's 09:30 in the bundle's zone, in this week.
REFERENCE_MONDAY = date(2024, 1, 1)
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WEEKDAY_TIME = re.compile(r"^([a-z]{3})[a-z]*\s+(\d{1,2}):(\d{2})$")

_GIVEN = (
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
)
_EXPECT = ("effect", "rules", "acr", "max_age")
_CASE = ("name", "given", "expect")
_METHOD = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")


def parse_time(value: Any, timezone: str) -> float:
    """Epoch seconds from a test case's or the CLI's ``time``: an aware datetime, ISO 8601 (without
    an offset: in ``timezone``), or ``"mon 09:30"`` (in ``timezone``, the week of
    :data:`REFERENCE_MONDAY`). ValueError when it is none of these."""
    zone = zoneinfo.ZoneInfo(timezone)
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        text = value.strip()
        match = _WEEKDAY_TIME.match(text.lower())
        if match:
            day, hour, minute = match.group(1), int(match.group(2)), int(match.group(3))
            if day not in _DAYS or hour > 23 or minute > 59:
                raise ValueError(f"not a weekday and time: {value!r}")
            when = REFERENCE_MONDAY + timedelta(days=_DAYS.index(day))
            return datetime(when.year, when.month, when.day, hour, minute, tzinfo=zone).timestamp()
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"not an ISO 8601 time or 'mon 09:30': {value!r}") from None
    else:
        raise ValueError(f"not a time: {value!r}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.timestamp()


@dataclass(frozen=True)
class Case:
    """One test case as loaded: ``given`` and ``expect`` checked and normalised."""

    name: str
    source: str
    line: int
    given: dict[str, Any]
    effect: Effect
    rules: tuple[str, ...] | None = None
    acr: str | None = None  # URN
    max_age: int | None = None

    @property
    def expected(self) -> str:
        """The expectation as one line (``step_up [rule] acr=phr max_age=1800``)."""
        return _describe(self.effect, self.rules, self.acr, self.max_age)

    def request(self, timezone: str, now: float | None = None) -> Request:
        """The request this case describes; ``time`` read in ``timezone``."""
        g = self.given
        moment = parse_time(g["time"], timezone) if "time" in g else (_time.time() if now is None else now)
        request = Request.of(
            app=g["app"],
            path=g.get("path", "/"),
            method=g.get("method", "GET"),
            user=g.get("user"),
            groups=g.get("groups", ()),
            departments=g.get("departments", ()),
            roles=g.get("roles", ()),
            acr=g.get("acr"),
            ip=g.get("ip"),
            now=moment,
            risk=g.get("risk", 0),
        )
        if "auth_age" in g:
            request = replace(request, auth_time=moment - g["auth_age"])
        return request


def _describe(effect: Effect, rules: tuple[str, ...] | None, acr: str | None, max_age: int | None) -> str:
    out = effect.value
    if rules is not None:
        out += f" [{', '.join(rules)}]"
    if acr:
        out += f" acr={acr.rsplit(':', 1)[-1]}"
    if max_age is not None:
        out += f" max_age={max_age}"
    return out


def describe(decision: Decision) -> str:
    """A decision as one line, in the form of :attr:`Case.expected`."""
    step = decision.step_up
    return _describe(
        decision.effect,
        decision.rule_ids,
        step.acr if step else None,
        step.max_age if step else None,
    )


@dataclass(frozen=True)
class CaseResult:
    case: Case
    passed: bool
    actual: str  # the decision as one line, or why the case could not be decided
    mismatches: tuple[str, ...] = ()  # what differs: "effect", "rules", "acr", "max_age"
    explanation_en: str = ""
    explanation_zh: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.case.name,
            "source": self.case.source,
            "line": self.case.line,
            "passed": self.passed,
            "expected": self.case.expected,
            "actual": self.actual,
            "mismatches": list(self.mismatches),
            "explanation": self.explanation_en,
            "explanation_zh": self.explanation_zh,
        }


@dataclass
class TestReport:
    __test__ = False  # not a pytest test class

    results: list[CaseResult] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if not r.passed]

    @property
    def ok(self) -> bool:
        return not self.failed

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failed": len(self.failed),
            "cases": [r.as_dict() for r in self.results],
        }


# -- loading ---------------------------------------------------------------------------------


class _CaseReader:
    def __init__(self, source: str) -> None:
        self.source = source
        self.findings: list[Finding] = []

    def error(self, line: int, en: str, zh: str) -> None:
        self.findings.append(Finding("error", "bad_test", en, zh, self.source, line))

    @staticmethod
    def line_of(owner: _Map, key: str) -> int:
        return owner.lines.get(key, owner.line)

    def keys(self, owner: _Map, allowed: tuple[str, ...], what: str) -> None:
        for key in owner:
            if key not in allowed:
                self.error(
                    self.line_of(owner, key),
                    f"unknown key {key!r} in {what} (allowed: {', '.join(allowed)})",
                    f"{what} 中有未知的键“{key}”（允许：{', '.join(allowed)}）",
                )

    def names(self, owner: _Map, key: str) -> tuple[str, ...] | None:
        value = owner[key]
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) and i.strip() for i in items):
            self.error(
                self.line_of(owner, key),
                f"given.{key} must be a name or a list of names",
                f"given.{key} 须为名称或名称列表",
            )
            return None
        return tuple(i.strip() for i in items)

    def given(self, raw: _Map) -> dict[str, Any] | None:
        self.keys(raw, _GIVEN, "given")
        out: dict[str, Any] = {}
        ok = True

        def bad(key: str, en: str, zh: str) -> None:
            nonlocal ok
            ok = False
            self.error(self.line_of(raw, key), f"given.{key}: {en}", f"given.{key}：{zh}")

        app = raw.get("app")
        if not isinstance(app, str) or not app.strip():
            ok = False
            self.error(raw.line, "a case's given needs an 'app'", "用例的 given 须包含 app")
        else:
            out["app"] = app.strip()
        for key in ("groups", "departments", "roles"):
            if key in raw:
                names = self.names(raw, key)
                ok = ok and names is not None
                out[key] = names
        if raw.get("user") is not None:
            user = raw["user"]
            if isinstance(user, str) and user.strip():
                out["user"] = user.strip()
            else:
                bad("user", "must be a user name", "须为用户名")
        if "path" in raw:
            path = raw["path"]
            try:
                if not isinstance(path, str):
                    raise ValueError
                canonical_path(path)
                out["path"] = path
            except PathRejected as e:
                bad("path", f"refused ({e.reason.value})", f"路径被拒绝（{e.reason.value}）")
            except ValueError:
                bad("path", "must be a path as sent, e.g. /admin/users", "须为请求路径，如 /admin/users")
        if "method" in raw:
            method = raw["method"]
            if isinstance(method, str) and _METHOD.match(method):
                out["method"] = method.upper()
            else:
                bad("method", "must be an HTTP method", "须为 HTTP 方法")
        if raw.get("ip") is not None:
            try:
                out["ip"] = ipaddress.ip_address(str(raw["ip"]))
            except ValueError:
                bad("ip", "must be an IPv4 or IPv6 address", "须为 IPv4 或 IPv6 地址")
        if raw.get("time") is not None:
            try:
                parse_time(raw["time"], "UTC")
                out["time"] = raw["time"]
            except ValueError:
                bad(
                    "time",
                    "must be ISO 8601 (2026-11-30T09:30:00+08:00) or a weekday and time (mon 09:30)",
                    "须为 ISO 8601 时间或“星期 时:分”（如 mon 09:30）",
                )
        if raw.get("acr") is not None:
            if isinstance(raw["acr"], str) and acr_rank(raw["acr"]):
                out["acr"] = raw["acr"]
            else:
                bad("acr", f"must be one of {', '.join(ACR_NAMES)}", f"须为 {', '.join(ACR_NAMES)} 之一")
        if raw.get("auth_age") is not None:
            try:
                out["auth_age"] = parse_duration(raw["auth_age"])
            except ValueError:
                bad("auth_age", "must be seconds, or 90s / 30m / 8h", "须为秒数，或 90s / 30m / 8h")
        if "risk" in raw:
            risk = raw["risk"]
            if isinstance(risk, int) and not isinstance(risk, bool) and 0 <= risk <= 100:
                out["risk"] = risk
            else:
                bad("risk", "must be a whole number from 0 to 100", "须为 0 至 100 的整数")
        return out if ok else None

    def expect(self, raw: Any, line: int) -> dict[str, Any] | None:
        effects = ", ".join(e.value for e in Effect)
        if isinstance(raw, str):
            raw_map = _Map({"effect": raw})
            raw_map.line, raw_map.lines = line, {"effect": line}
        elif isinstance(raw, _Map):
            raw_map = raw
            self.keys(raw_map, _EXPECT, "expect")
        else:
            self.error(line, f"expect must be {effects} or a mapping", f"expect 须为 {effects} 或映射")
            return None
        out: dict[str, Any] = {}
        ok = True
        try:
            out["effect"] = Effect(str(raw_map.get("effect")))
        except ValueError:
            ok = False
            self.error(
                self.line_of(raw_map, "effect"),
                f"expect.effect must be one of {effects}",
                f"expect.effect 须为 {effects} 之一",
            )
        if "rules" in raw_map:
            rules = raw_map["rules"]
            if isinstance(rules, str):
                rules = [rules]
            if rules is None:
                rules = []
            if isinstance(rules, list) and all(isinstance(r, str) for r in rules):
                out["rules"] = tuple(rules)
            else:
                ok = False
                self.error(
                    self.line_of(raw_map, "rules"),
                    "expect.rules must be a list of rule ids",
                    "expect.rules 须为规则 id 列表",
                )
        if raw_map.get("acr") is not None:
            acr = raw_map["acr"]
            if isinstance(acr, str) and acr_rank(acr):
                out["acr"] = acr_urn(acr)
            else:
                ok = False
                self.error(
                    self.line_of(raw_map, "acr"),
                    f"expect.acr must be one of {', '.join(ACR_NAMES)}",
                    f"expect.acr 须为 {', '.join(ACR_NAMES)} 之一",
                )
        if raw_map.get("max_age") is not None:
            try:
                out["max_age"] = parse_duration(raw_map["max_age"])
            except ValueError:
                ok = False
                self.error(
                    self.line_of(raw_map, "max_age"),
                    "expect.max_age must be seconds, or 90s / 30m / 8h",
                    "expect.max_age 须为秒数，或 90s / 30m / 8h",
                )
        if ok and ("acr" in out or "max_age" in out) and out["effect"] is not Effect.STEP_UP:
            ok = False
            self.error(
                raw_map.line,
                "expect.acr and expect.max_age belong to a step_up",
                "expect.acr 和 expect.max_age 仅用于 step_up",
            )
        return out if ok else None

    def case(self, raw: Any, index: int, line: int) -> Case | None:
        if not isinstance(raw, _Map):
            self.error(
                line, "a case is a mapping with given and expect", "用例须为包含 given 和 expect 的映射"
            )
            return None
        self.keys(raw, _CASE, "a case")
        name = raw.get("name")
        if name is not None and not isinstance(name, str | int | float):
            self.error(self.line_of(raw, "name"), "name must be text", "name 须为文本")
        given = raw.get("given")
        if not isinstance(given, _Map):
            self.error(
                self.line_of(raw, "given"),
                "a case needs 'given' (a mapping with at least 'app')",
                "用例须包含 given（至少含 app 的映射）",
            )
            checked_given = None
        else:
            checked_given = self.given(given)
        if "expect" not in raw:
            self.error(line, "a case needs 'expect'", "用例须包含 expect")
            checked_expect = None
        else:
            checked_expect = self.expect(raw["expect"], self.line_of(raw, "expect"))
        if checked_given is None or checked_expect is None:
            return None
        return Case(
            name=str(name) if name is not None else f"case {index + 1}",
            source=self.source,
            line=line,
            given=checked_given,
            effect=checked_expect["effect"],
            rules=checked_expect.get("rules"),
            acr=checked_expect.get("acr"),
            max_age=checked_expect.get("max_age"),
        )


def load_cases(text: str, source: str = "tests.yaml") -> list[Case]:
    """The cases of a test file, or :class:`policy.rules.BundleError` listing every problem with
    its line (code ``bad_test``)."""
    reader = _CaseReader(source)
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is the safe loader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        reader.error(
            mark.line + 1 if mark else 0, f"not valid YAML: {problem}", f"不是有效的 YAML：{problem}"
        )
        raise BundleError(reader.findings) from None
    cases = data.get("cases") if isinstance(data, _Map) else None
    if not isinstance(cases, _List) or not cases:
        line = data.lines.get("cases", data.line) if isinstance(data, _Map) else 1
        reader.error(line, "a test file has a non-empty 'cases' list", "测试文件须包含非空的 cases 列表")
        raise BundleError(reader.findings)
    if isinstance(data, _Map):
        reader.keys(data, ("cases",), "the test file")
    out = [reader.case(raw, i, cases.lines[i]) for i, raw in enumerate(cases)]
    if reader.findings:
        raise BundleError(sorted(reader.findings, key=lambda f: f.line))
    return [case for case in out if case is not None]


# -- running ---------------------------------------------------------------------------------


def run_case(engine: PolicyEngine, case: Case, *, now: float | None = None) -> CaseResult:
    request = case.request(engine.bundle.timezone, now)
    decision = engine.decide(request)
    mismatches: list[str] = []
    if decision.effect is not case.effect:
        mismatches.append("effect")
    if case.rules is not None and tuple(decision.rule_ids) != case.rules:
        mismatches.append("rules")
    step = decision.step_up
    if case.acr is not None and (step is None or step.acr != case.acr):
        mismatches.append("acr")
    if case.max_age is not None and (step is None or step.max_age != case.max_age):
        mismatches.append("max_age")
    if not mismatches:
        return CaseResult(case, True, describe(decision))
    explanation = engine.explain(request)
    return CaseResult(
        case,
        False,
        describe(decision),
        tuple(mismatches),
        explanation.text_en,
        explanation.text_zh,
    )


def run_cases(engine: PolicyEngine, cases: list[Case], *, now: float | None = None) -> TestReport:
    """Decide every case with ``engine``; ``now`` (epoch seconds) is the time of the cases that give
    none (default: the current time)."""
    moment = _time.time() if now is None else now
    return TestReport([run_case(engine, case, now=moment) for case in cases])
