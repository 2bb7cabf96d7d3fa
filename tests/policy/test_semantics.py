"""Policy semantics: default deny, deny overrides, step-up, every condition alone and combined.

Every decision is made twice, by the compiled evaluator and by the plain rule-by-rule reference
that ``explain`` uses, and both must agree.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from policy.engine import PolicyEngine
from policy.model import Decision, Effect, Reason, Request

SHANGHAI = ZoneInfo("Asia/Shanghai")


def at(text: str, zone: ZoneInfo = SHANGHAI) -> float:
    """Epoch seconds of a local wall-clock time, e.g. at("2026-11-30 09:30") (a Monday)."""
    return datetime.fromisoformat(text).replace(tzinfo=zone).timestamp()


MONDAY_0930 = at("2026-11-30 09:30")

BUNDLE = """
version: 1
zones:
  gov-intranet: [10.0.0.0/8, "fd00:6a::/32"]
  branch: [192.168.50.0/24]
apps:
  hr:
    name: 人事管理
    hosts: [hr.example.gov]
    rules:
      - id: hr-read
        effect: allow
        methods: [GET, HEAD]
        subjects: {groups: [hr-staff]}
      - id: hr-write
        effect: allow
        methods: [POST, PUT]
        subjects: {departments: [hr]}
        networks: [gov-intranet]
      - id: hr-admin-deny
        effect: deny
        paths: [/admin]
        not_networks: [gov-intranet]
      - id: hr-admin
        effect: allow
        paths: [/admin]
        subjects: {users: [lina]}
      - id: payroll-mfa
        effect: step_up
        paths: [/payroll]
        acr: mfa
      - id: payroll-fresh
        effect: step_up
        paths: [/payroll/export]
        max_auth_age: 5m
      - id: health
        effect: allow
        paths: [/health]
        anonymous: true
  permits:
    rules:
      - id: office-hours
        effect: allow
        subjects: {roles: [clerk]}
        schedule: {days: mon-fri, hours: "08:30-18:00"}
      - id: night-shift
        effect: allow
        subjects: {groups: [night-duty]}
        schedule: {days: [fri], hours: "22:00-06:00"}
      - id: low-risk-only
        effect: allow
        paths: ["/api/*/status"]
        subjects: {groups: [auditors]}
        max_risk: 40
      - id: strong-export
        effect: allow
        paths: [/export]
        subjects: {groups: [auditors]}
        acr: phr
      - id: fresh-sign
        effect: allow
        paths: [/sign]
        subjects: {groups: [auditors]}
        max_auth_age: 10m
rules:
  - id: risky
    effect: deny
    apps: "*"
    min_risk: 80
  - id: risk-step-up
    effect: step_up
    apps: [hr]
    min_risk: 50
    acr: mfa
"""


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine.from_text(BUNDLE)


def decide(engine: PolicyEngine, **given: object) -> Decision:
    given.setdefault("now", MONDAY_0930)
    given.setdefault("path", "/")
    request = Request.of(**given)  # type: ignore[arg-type]
    decision = engine.decide(request)
    assert engine.explain(request).decision == decision, "compiled and reference evaluators disagree"
    return decision


def test_default_deny(engine: PolicyEngine) -> None:
    d = decide(engine, app="hr", user="nobody", groups={"other"})
    assert (d.effect, d.reason, d.rule_ids) == (Effect.DENY, Reason.NO_MATCHING_RULE, ())
    d = decide(engine, app="unknown-app", user="lina", groups={"hr-staff"})
    assert (d.effect, d.reason) == (Effect.DENY, Reason.UNKNOWN_APP)
    assert decide(engine, app="hr", path="/x").effect is Effect.DENY  # no signed-in user


def test_an_empty_bundle_denies_everything() -> None:
    d = PolicyEngine.deny_all().decide(Request.of(app="hr", path="/", user="lina"))
    assert d.effect is Effect.DENY


def test_subjects_each_kind(engine: PolicyEngine) -> None:
    assert decide(engine, app="hr", user="a", groups={"hr-staff"}).rule_ids == ("hr-read",)
    ip = "10.1.2.3"
    assert decide(engine, app="hr", method="POST", user="b", departments=["hr"], ip=ip).allowed
    # Departments: the request carries the chain, so a sub-department is covered.
    assert decide(engine, app="hr", method="POST", user="b", departments=["hr-payroll", "hr"], ip=ip).allowed
    assert not decide(engine, app="hr", method="POST", user="b", departments=["finance"], ip=ip).allowed
    assert decide(engine, app="hr", path="/admin", user="lina", ip=ip).rule_ids == ("hr-admin",)
    assert not decide(engine, app="hr", path="/admin", user="LINA", ip=ip).allowed  # user names are exact
    clerk = {"app": "permits", "user": "c", "roles": {"clerk"}}
    assert decide(engine, **clerk).rule_ids == ("office-hours",)


def test_methods(engine: PolicyEngine) -> None:
    staff = {"app": "hr", "user": "a", "groups": {"hr-staff"}}
    assert decide(engine, method="head", **staff).allowed
    assert not decide(engine, method="DELETE", **staff).allowed
    assert not decide(engine, method="POST", **staff).allowed


def test_deny_overrides_allow(engine: PolicyEngine) -> None:
    # lina is allowed /admin, but from outside the intranet the deny rule wins.
    outside = decide(engine, app="hr", path="/admin/users", user="lina", ip="8.8.8.8")
    assert (outside.effect, outside.reason, outside.rule_ids) == (
        Effect.DENY,
        Reason.DENIED_BY_RULE,
        ("hr-admin-deny",),
    )
    assert decide(engine, app="hr", path="/admin/users", user="lina", ip="10.9.9.9").allowed
    # Prefixes are segment-wise: /administrator is not /admin.
    assert decide(
        engine, app="hr", path="/administrator", user="a", groups={"hr-staff"}, ip="8.8.8.8"
    ).allowed


def test_deny_without_subjects_holds_for_anonymous_requests(engine: PolicyEngine) -> None:
    d = decide(engine, app="hr", path="/admin", ip="8.8.8.8")
    assert d.reason is Reason.DENIED_BY_RULE


def test_anonymous_allow_only_where_said(engine: PolicyEngine) -> None:
    assert decide(engine, app="hr", path="/health").allowed
    assert decide(engine, app="hr", path="/health/live").allowed
    assert not decide(engine, app="hr", path="/healthz").allowed


def test_step_up_obligation(engine: PolicyEngine) -> None:
    staff = {"app": "hr", "user": "a", "groups": {"hr-staff"}, "ip": "10.0.0.1"}
    d = decide(engine, path="/payroll/2026-11", acr="urn:onegate:acr:pwd", **staff)
    assert (d.effect, d.reason, d.rule_ids) == (Effect.STEP_UP, Reason.STEP_UP_REQUIRED, ("payroll-mfa",))
    assert d.obligations == {"acr_values": "urn:onegate:acr:mfa"}
    ok = decide(engine, path="/payroll/2026-11", acr="urn:onegate:acr:mfa", **staff)
    assert ok.allowed and ok.rule_ids == ("hr-read",)
    assert decide(engine, path="/payroll/x", acr="urn:onegate:acr:phr", **staff).allowed  # stronger is fine

    # Two step-up rules: the strongest level and the shortest age are asked for together.
    both = decide(engine, path="/payroll/export", acr="pwd", auth_time=MONDAY_0930 - 3600, **staff)
    assert both.rule_ids == ("payroll-mfa", "payroll-fresh")
    assert both.obligations == {"acr_values": "urn:onegate:acr:mfa", "max_age": 300}
    fresh = decide(engine, path="/payroll/export", acr="mfa", auth_time=MONDAY_0930 - 60, **staff)
    assert fresh.allowed
    stale = decide(engine, path="/payroll/export", acr="mfa", auth_time=MONDAY_0930 - 301, **staff)
    assert stale.obligations == {"max_age": 300}
    unknown_age = decide(engine, path="/payroll/export", acr="mfa", **staff)
    assert unknown_age.effect is Effect.STEP_UP


def test_step_up_never_grants_access_by_itself(engine: PolicyEngine) -> None:
    # No allow rule for this user: a step-up would only lead to a denial, so deny straight away.
    d = decide(engine, app="hr", path="/payroll", user="x", groups={"visitors"}, acr="pwd")
    assert (d.effect, d.reason) == (Effect.DENY, Reason.NO_MATCHING_RULE)


def test_risk(engine: PolicyEngine) -> None:
    staff = {"app": "hr", "user": "a", "groups": {"hr-staff"}}
    assert decide(engine, risk=49, **staff).allowed
    raised = decide(engine, risk=50, acr="pwd", **staff)
    assert raised.effect is Effect.STEP_UP and raised.rule_ids == ("risk-step-up",)
    assert decide(engine, risk=50, acr="mfa", **staff).allowed
    assert decide(engine, risk=80, acr="phr", **staff).rule_ids == ("risky",)
    auditor = {"app": "permits", "path": "/api/v2/status", "user": "d", "groups": {"auditors"}}
    assert decide(engine, risk=40, **auditor).allowed
    assert not decide(engine, risk=41, **auditor).allowed


def test_acr_and_auth_age_as_allow_conditions(engine: PolicyEngine) -> None:
    auditor = {"app": "permits", "user": "d", "groups": {"auditors"}}
    assert not decide(engine, path="/export", acr="urn:onegate:acr:mfa", **auditor).allowed
    assert decide(engine, path="/export", acr="urn:onegate:acr:phr", **auditor).allowed
    assert not decide(engine, path="/export", acr="urn:example:unknown", **auditor).allowed
    assert decide(engine, path="/sign", auth_time=MONDAY_0930 - 600, **auditor).allowed
    assert not decide(engine, path="/sign", auth_time=MONDAY_0930 - 601, **auditor).allowed
    assert not decide(engine, path="/sign", **auditor).allowed  # age unknown


def test_globs(engine: PolicyEngine) -> None:
    auditor = {"app": "permits", "user": "d", "groups": {"auditors"}}
    assert decide(engine, path="/api/v1/status", **auditor).allowed
    assert decide(engine, path="/API/V1/STATUS", **auditor).allowed  # the case rule
    assert decide(engine, path="/api/a/b/status", **auditor).allowed  # "*" spans segments, as Cedar's like
    assert not decide(engine, path="/api/v1/status/x", **auditor).allowed
    assert not decide(engine, path="/api/status", **auditor).allowed


@pytest.mark.parametrize(
    ("local", "allowed"),
    [
        ("2026-11-30 08:29", False),  # Monday, before opening
        ("2026-11-30 08:30", True),
        ("2026-11-30 17:59", True),
        ("2026-11-30 18:00", False),  # the end is exclusive
        ("2026-12-05 10:00", False),  # Saturday
    ],
)
def test_schedule_in_the_bundle_time_zone(engine: PolicyEngine, local: str, allowed: bool) -> None:
    d = decide(engine, app="permits", user="c", roles={"clerk"}, now=at(local))
    assert d.allowed is allowed


def test_schedule_is_read_in_the_configured_zone_not_utc(engine: PolicyEngine) -> None:
    # 02:00 UTC on a Monday is 10:00 in Shanghai: inside office hours.
    now = at("2026-11-30 02:00", ZoneInfo("UTC"))
    assert decide(engine, app="permits", user="c", roles={"clerk"}, now=now).allowed
    utc_bundle = PolicyEngine.from_text(BUNDLE.replace("version: 1", "version: 1\ntimezone: UTC"))
    request = Request.of(app="permits", path="/", user="c", roles={"clerk"}, now=now)
    assert not utc_bundle.decide(request).allowed


@pytest.mark.parametrize(
    ("local", "allowed"),
    [
        ("2026-12-04 21:59", False),  # Friday before the shift
        ("2026-12-04 22:00", True),  # Friday night
        ("2026-12-05 05:59", True),  # Saturday morning: still Friday's shift
        ("2026-12-05 06:00", False),
        ("2026-12-05 23:00", False),  # Saturday night: no shift starts on Saturday
        ("2026-12-04 03:00", False),  # Friday early morning belongs to Thursday's night
    ],
)
def test_schedule_across_midnight(engine: PolicyEngine, local: str, allowed: bool) -> None:
    d = decide(engine, app="permits", user="n", groups={"night-duty"}, now=at(local))
    assert d.allowed is allowed


@pytest.mark.parametrize(
    ("ip", "allowed"),
    [
        ("10.20.30.40", True),
        ("10.255.255.255", True),
        ("11.0.0.0", False),
        ("9.255.255.255", False),
        ("fd00:6a::1", True),
        ("fd00:6a:ffff::1", True),
        ("fd00:6b::1", False),
        ("::ffff:10.1.2.3", True),  # IPv4-mapped: the IPv4 address
        ("::a01:203", False),  # not mapped: an IPv6 address, even if its bits spell 10.1.2.3
        (None, False),
    ],
)
def test_networks_cidr_zone_and_ipv6(engine: PolicyEngine, ip: str | None, allowed: bool) -> None:
    d = decide(engine, app="hr", method="PUT", user="b", departments=["hr"], ip=ip)
    assert d.allowed is allowed


def test_conditions_combined(engine: PolicyEngine) -> None:
    base = {"app": "hr", "method": "POST", "user": "b", "departments": ["hr"], "ip": "10.0.0.9"}
    assert decide(engine, **base).allowed
    assert not decide(engine, **{**base, "ip": "8.8.8.8"}).allowed  # network fails
    assert not decide(engine, **{**base, "departments": ["it"]}).allowed  # subject fails
    assert not decide(engine, **{**base, "method": "DELETE"}).allowed  # method fails
    assert decide(engine, **{**base, "risk": 85}).reason is Reason.DENIED_BY_RULE


def test_rule_ids_come_in_bundle_order() -> None:
    engine = PolicyEngine.from_text(
        """
apps:
  a:
    rules:
      - {id: third, effect: allow, paths: [/x]}
      - {id: first, effect: allow}
      - {id: second, effect: allow, paths: ["/*"]}
rules:
  - {id: zero, effect: allow, apps: [a]}
"""
    )
    assert decide(engine, app="a", path="/x/y", user="u").rule_ids == ("zero", "third", "first", "second")
    assert decide(engine, app="a", path="/y", user="u").rule_ids == ("zero", "first", "second")


def test_explain_names_rules_and_reasons(engine: PolicyEngine) -> None:
    denied = engine.explain(Request.of(app="hr", path="/admin", user="lina", ip="8.8.8.8", now=MONDAY_0930))
    assert "hr-admin-deny" in denied.text_en and "hr-admin-deny" in denied.text_zh
    assert "拒绝" in denied.text_zh and "Denied" in denied.text_en
    nearest = engine.explain(Request.of(app="hr", path="/x", method="POST", user="b", departments=["hr"]))
    assert "hr-write" in nearest.text_en and "networks" in nearest.text_en and "来源网络" in nearest.text_zh
    traces = {t.rule.id: t for t in nearest.traces}
    assert traces["hr-write"].failed == ("networks",)
    assert traces["hr-read"].failed == ("methods", "subjects")
    step = engine.explain(Request.of(app="hr", path="/payroll", user="a", groups={"hr-staff"}, acr="pwd"))
    assert "mfa" in step.text_en and "增强认证" in step.text_zh


def test_exceptions_not_paths_and_not_subjects() -> None:
    engine = PolicyEngine.from_text(
        """
apps:
  hr:
    rules:
      - id: staff-but-admin
        effect: allow
        subjects: {departments: [hrss]}
        not_paths: [/admin, "/export/*.csv"]
      - id: admins
        effect: allow
        paths: [/admin]
        subjects: {groups: [hr-admins]}
      - id: no-contractors
        effect: deny
        paths: [/payroll]
        not_subjects: {groups: [payroll-team], users: [boss]}
"""
    )
    clerk = {"app": "hr", "user": "zhangwei", "departments": ["hrss", "city"], "groups": {"hr-staff"}}
    assert decide(engine, path="/", **clerk).rule_ids == ("staff-but-admin",)
    assert not decide(engine, path="/admin/users", **clerk).allowed
    assert not decide(engine, path="/Admin", **clerk).allowed
    assert not decide(engine, path="/export/2026/all.csv", **clerk).allowed
    assert decide(engine, path="/export/2026/all.pdf", **clerk).allowed
    admin = {**clerk, "user": "wangfang", "groups": {"hr-staff", "hr-admins"}}
    assert decide(engine, path="/admin/users", **admin).rule_ids == ("admins",)
    # The deny applies to everyone except the payroll team and the named user.
    assert decide(engine, path="/payroll", **clerk).rule_ids == ("no-contractors",)
    assert decide(engine, path="/payroll", **{**clerk, "groups": {"payroll-team"}}).allowed
    assert decide(engine, path="/payroll", **{**clerk, "user": "boss"}).allowed
    # A deny with exceptions still holds for requests with no signed-in user.
    assert decide(engine, app="hr", path="/payroll").rule_ids == ("no-contractors",)
