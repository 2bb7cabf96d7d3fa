"""The Cedar translation and the cedarpy decider: every condition type, decided by cedarpy, gives
the expected decision (and the compiled evaluator's); raw Cedar per application; errors with
lines; names that would break a naive translation."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import cedarpy
import pytest

from policy.cedar import (
    CedarPolicy,
    RawCedarApp,
    app_cedar,
    cedar_decider,
    cedar_schema,
    cedar_string,
    check_cedar,
    rule_to_cedar,
    to_cedar,
)
from policy.check import check
from policy.compile import compile_bundle
from policy.engine import PolicyEngine
from policy.model import Decision, Effect, Reason, Request, StepUp
from policy.rules import App, Bundle, BundleError, Network, PathPattern, Rule, Window, load_bundle, load_path

SHANGHAI = ZoneInfo("Asia/Shanghai")


def at(text: str, zone: ZoneInfo = SHANGHAI) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=zone).timestamp()


MONDAY_0930 = at("2026-11-30 09:30")  # a Monday

BUNDLE = """
version: 1
timezone: Asia/Shanghai
zones:
  intranet: [10.0.0.0/8, "fd00:6a::/32"]
apps:
  hr:
    rules:
      - {id: staff-read, effect: allow, methods: [GET, HEAD], subjects: {groups: [hr-staff]}}
      - {id: dept-write, effect: allow, methods: [POST], subjects: {departments: [hr]}, networks: [intranet]}
      - {id: role-any, effect: allow, paths: [/reports], subjects: {roles: [auditor]}}
      - {id: lina-admin, effect: allow, paths: [/admin], subjects: {users: [lina]}}
      - {id: admin-outside, effect: deny, paths: [/admin], not_networks: [intranet]}
      - {id: health, effect: allow, paths: [/health], anonymous: true}
      - {id: signed-in, effect: allow, paths: ["/pub/*.pdf"]}
      - id: payroll-mfa
        effect: step_up
        paths: [/payroll]
        acr: mfa
      - id: export-fresh
        effect: step_up
        paths: [/payroll/export]
        max_auth_age: 5m
      - {id: docs, effect: allow, paths: [/docs], not_paths: [/docs/secret], subjects: {groups: [hr-staff]}}
      - {id: not-interns, effect: allow, paths: [/desk], subjects: {groups: [staff]},
         not_subjects: {groups: [interns]}}
  ops:
    rules:
      - {id: strong, effect: allow, paths: [/vault], subjects: {groups: [ops]}, acr: phr}
      - {id: fresh, effect: allow, paths: [/sign], subjects: {groups: [ops]}, max_auth_age: 600}
      - {id: office, effect: allow, paths: [/desk], subjects: {groups: [ops]},
         schedule: {days: mon-fri, hours: "08:30-18:00"}}
      - {id: night, effect: allow, paths: [/night], subjects: {groups: [ops]},
         schedule: {days: [fri], hours: "22:00-06:00"}}
      - {id: v6-lab, effect: allow, paths: [/lab], subjects: {groups: [ops]}, networks: ["2001:db8:1::/48"]}
      - {id: calm, effect: allow, paths: [/api], subjects: {groups: [ops]}, max_risk: 40}
rules:
  - {id: risky, effect: deny, apps: "*", min_risk: 80}
  - {id: root-all, effect: allow, apps: [ops], paths: [/], subjects: {users: [root]}}
"""

STAFF = {"user": "amy", "groups": {"hr-staff"}}
OPS = {"user": "oz", "groups": {"ops"}}

# (request, expected effect, expected rule ids)
CASES: list[tuple[dict[str, object], Effect, tuple[str, ...]]] = [
    # subjects, each kind; methods
    ({"app": "hr", **STAFF}, Effect.ALLOW, ("staff-read",)),
    ({"app": "hr", "method": "DELETE", **STAFF}, Effect.DENY, ()),
    ({"app": "hr", "user": "bo", "groups": {"other"}}, Effect.DENY, ()),
    (
        {"app": "hr", "method": "POST", "user": "d", "departments": ["hr-pay", "hr"], "ip": "10.2.3.4"},
        Effect.ALLOW,
        ("dept-write",),
    ),
    (
        {"app": "hr", "method": "POST", "user": "d", "departments": ["hr"], "ip": "fd00:6a::9"},
        Effect.ALLOW,
        ("dept-write",),
    ),
    ({"app": "hr", "method": "POST", "user": "d", "departments": ["hr"], "ip": "8.8.8.8"}, Effect.DENY, ()),
    ({"app": "hr", "method": "POST", "user": "d", "departments": ["hr"]}, Effect.DENY, ()),  # ip unknown
    (
        {"app": "hr", "method": "POST", "user": "d", "departments": ["hr"], "ip": "::ffff:10.0.0.1"},
        Effect.ALLOW,
        ("dept-write",),
    ),
    ({"app": "hr", "path": "/reports/q3", "user": "r", "roles": {"auditor"}}, Effect.ALLOW, ("role-any",)),
    # prefix paths are segment-wise and case-insensitive (the key is lower case)
    ({"app": "hr", "path": "/ADMIN/x", "user": "lina", "ip": "10.0.0.5"}, Effect.ALLOW, ("lina-admin",)),
    ({"app": "hr", "path": "/administrator", "user": "lina", "ip": "8.8.8.8"}, Effect.DENY, ()),
    ({"app": "hr", "path": "/admin", "user": "lina", "ip": "8.8.8.8"}, Effect.DENY, ("admin-outside",)),
    ({"app": "hr", "path": "/admin/", "user": "lina"}, Effect.DENY, ("admin-outside",)),  # unknown ip
    ({"app": "hr", "path": "/admin", "ip": "8.8.8.8"}, Effect.DENY, ("admin-outside",)),  # anonymous too
    # anonymous
    ({"app": "hr", "path": "/health/live"}, Effect.ALLOW, ("health",)),
    ({"app": "hr", "path": "/healthz"}, Effect.DENY, ()),
    ({"app": "hr", "path": "/pub/a/b.pdf"}, Effect.DENY, ()),  # allow without subjects: signed-in only
    ({"app": "hr", "path": "/pub/a/b.pdf", "user": "x"}, Effect.ALLOW, ("signed-in",)),
    ({"app": "hr", "path": "/pub/a.pdfx", "user": "x"}, Effect.DENY, ()),
    # step-up: acr, max_auth_age, both (strongest level, shortest age)
    ({"app": "hr", "path": "/payroll", "acr": "pwd", **STAFF}, Effect.STEP_UP, ("payroll-mfa",)),
    ({"app": "hr", "path": "/payroll", "acr": "mfa", **STAFF}, Effect.ALLOW, ("staff-read",)),
    (
        {"app": "hr", "path": "/payroll/export", "acr": "pwd", **STAFF},
        Effect.STEP_UP,
        ("payroll-mfa", "export-fresh"),
    ),
    (
        {"app": "hr", "path": "/payroll/export", "acr": "phr", "auth_time": MONDAY_0930 - 300, **STAFF},
        Effect.ALLOW,
        ("staff-read",),
    ),
    (
        {"app": "hr", "path": "/payroll/export", "acr": "phr", "auth_time": MONDAY_0930 - 300.5, **STAFF},
        Effect.STEP_UP,
        ("export-fresh",),
    ),
    ({"app": "hr", "path": "/payroll", "acr": "pwd", "user": "x"}, Effect.DENY, ()),  # no allow: no step-up
    # not_paths, not_subjects
    ({"app": "hr", "path": "/docs/a", **STAFF}, Effect.ALLOW, ("staff-read", "docs")),
    ({"app": "hr", "path": "/docs/secret/a", "method": "POST", **STAFF}, Effect.DENY, ()),
    ({"app": "hr", "path": "/desk", "user": "s", "groups": {"staff"}}, Effect.ALLOW, ("not-interns",)),
    ({"app": "hr", "path": "/desk", "user": "s", "groups": {"staff", "interns"}}, Effect.DENY, ()),
    # acr and max_auth_age as allow conditions
    ({"app": "ops", "path": "/vault", "acr": "mfa", **OPS}, Effect.DENY, ()),
    ({"app": "ops", "path": "/vault", "acr": "urn:onegate:acr:phr", **OPS}, Effect.ALLOW, ("strong",)),
    ({"app": "ops", "path": "/sign", "auth_time": MONDAY_0930 - 599.2, **OPS}, Effect.ALLOW, ("fresh",)),
    ({"app": "ops", "path": "/sign", "auth_time": MONDAY_0930 - 600.2, **OPS}, Effect.DENY, ()),
    ({"app": "ops", "path": "/sign", **OPS}, Effect.DENY, ()),
    # schedules in the bundle's time zone, overnight included
    ({"app": "ops", "path": "/desk", **OPS}, Effect.ALLOW, ("office",)),
    ({"app": "ops", "path": "/desk", "now": at("2026-11-30 18:00"), **OPS}, Effect.DENY, ()),
    ({"app": "ops", "path": "/desk", "now": at("2026-11-30 08:30"), **OPS}, Effect.ALLOW, ("office",)),
    (
        {"app": "ops", "path": "/desk", "now": at("2026-11-30 01:30", ZoneInfo("UTC")), **OPS},
        Effect.ALLOW,
        ("office",),
    ),
    ({"app": "ops", "path": "/desk", "now": at("2026-12-05 10:00"), **OPS}, Effect.DENY, ()),  # Saturday
    ({"app": "ops", "path": "/night", "now": at("2026-12-04 23:00"), **OPS}, Effect.ALLOW, ("night",)),
    ({"app": "ops", "path": "/night", "now": at("2026-12-05 05:59"), **OPS}, Effect.ALLOW, ("night",)),
    ({"app": "ops", "path": "/night", "now": at("2026-12-05 06:00"), **OPS}, Effect.DENY, ()),
    ({"app": "ops", "path": "/night", "now": at("2026-12-04 05:00"), **OPS}, Effect.DENY, ()),  # Fri morning
    ({"app": "ops", "path": "/night", "now": at("2026-12-05 23:00"), **OPS}, Effect.DENY, ()),  # Sat night
    # IPv6 networks; an IPv4 address never matches an IPv6 network
    ({"app": "ops", "path": "/lab", "ip": "2001:db8:1:ffff::1", **OPS}, Effect.ALLOW, ("v6-lab",)),
    ({"app": "ops", "path": "/lab", "ip": "2001:db8:2::1", **OPS}, Effect.DENY, ()),
    ({"app": "ops", "path": "/lab", "ip": "32.1.13.184", **OPS}, Effect.DENY, ()),
    # risk
    ({"app": "ops", "path": "/api", "risk": 40, **OPS}, Effect.ALLOW, ("calm",)),
    ({"app": "ops", "path": "/api", "risk": 41, **OPS}, Effect.DENY, ()),
    ({"app": "ops", "path": "/x", "user": "root", "risk": 79}, Effect.ALLOW, ("root-all",)),
    ({"app": "ops", "path": "/x", "user": "root", "risk": 80}, Effect.DENY, ("risky",)),
    # an application the bundle does not declare
    ({"app": "nope", "user": "root"}, Effect.DENY, ()),
]


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return load_bundle(BUNDLE)


def _request(given: dict[str, object]) -> Request:
    given = {"now": MONDAY_0930, "path": "/", **given}
    return Request.of(**given)  # type: ignore[arg-type]


@pytest.mark.parametrize(("given", "effect", "ids"), CASES, ids=[str(i) for i in range(len(CASES))])
def test_cedar_decides_every_condition_as_expected(
    bundle: Bundle, given: dict[str, object], effect: Effect, ids: tuple[str, ...]
) -> None:
    request = _request(given)
    decision = cedar_decider(bundle).decide(request)
    assert (decision.effect, decision.rule_ids) == (effect, ids)
    assert decision == compile_bundle(bundle).decide(request)
    # The whole translated text, as `compile --cedar` prints it, decides the same.
    assert CedarPolicy(to_cedar(bundle), bundle.timezone, apps=bundle.apps).decide(request) == decision


def test_step_up_obligation_and_reasons(bundle: Bundle) -> None:
    decider = cedar_decider(bundle)
    both = decider.decide(_request({"app": "hr", "path": "/payroll/export", "acr": "pwd", **STAFF}))
    assert both == Decision(
        Effect.STEP_UP,
        Reason.STEP_UP_REQUIRED,
        ("payroll-mfa", "export-fresh"),
        StepUp("urn:onegate:acr:mfa", 300),
    )
    assert decider.decide(_request({"app": "nope"})).reason is Reason.UNKNOWN_APP
    assert decider.decide(_request({"app": "hr", **STAFF})).reason is Reason.ALLOWED
    denied = decider.decide(_request({"app": "hr", "path": "/admin", "ip": "8.8.8.8"}))
    assert denied.reason is Reason.DENIED_BY_RULE
    assert decider.decide(_request({"app": "hr"})).reason is Reason.NO_MATCHING_RULE


def test_translation_reads_as_expected(bundle: Bundle) -> None:
    text = to_cedar(bundle)
    assert (
        'principal in Group::"hr-staff", action in [Action::"GET", Action::"HEAD"], resource == App::"hr"'
        in text
    )
    assert 'context.path == "/admin" || context.path like "/admin/*"' in text
    assert 'context.path like "/pub/*.pdf"' in text
    assert 'context.ip.isInRange(ip("fd00:6a::/32"))' in text
    assert (
        "(context.weekday == 4 && context.minute >= 1320) || (context.weekday == 5 && context.minute < 360)"
        in text
    )
    assert '@step_up("mfa")' in text and '@max_auth_age("300")' in text
    # One Cedar policy per YAML rule, each with its id.
    policies = cedarpy.PolicySet.from_str(text)
    assert len(policies) == len(bundle.all_rules())
    for rule in bundle.all_rules():
        assert f"@id({cedar_string(rule.id)})" in text
    # The translation is well typed against the schema raw Cedar is checked with.
    methods = {m for rule in bundle.all_rules() for m in rule.methods or ()}
    assert cedarpy.validate_policies(text, cedar_schema(methods)).errors == []
    # The root matches every path: no path condition at all.
    root = bundle.rule("root-all")
    assert root is not None and "context.path" not in rule_to_cedar(root)


def _rule(**fields: object) -> Rule:
    fields.setdefault("effect", Effect.ALLOW)
    fields.setdefault("apps", frozenset({"app"}))
    return Rule(**fields)  # type: ignore[arg-type]


AWKWARD = ['a"b', "a\\b", '"] || true || principal in [Group::"x', "人事处", "x\ny", "tab\there", "*star*"]


@pytest.mark.parametrize("name", AWKWARD)
def test_names_cannot_inject_cedar(name: str) -> None:
    rules = (
        _rule(
            id=f"allow {name}",
            groups=frozenset({name}),
            description=f"desc {name}\n}}; permit(principal, action, resource);",
        ),
        _rule(
            id=f"deny {name}",
            effect=Effect.DENY,
            users=frozenset({name}),
            paths=(PathPattern(name, "/" + name, False),),
        ),
    )
    bundle = Bundle(apps={"app": App("app", rules=rules)})
    text = to_cedar(bundle)
    assert len(cedarpy.PolicySet.from_str(text)) == 2
    decider = cedar_decider(bundle)
    member = decider.decide(Request(app="app", path="/", user="u", groups=frozenset({name})))
    assert member == Decision(Effect.ALLOW, Reason.ALLOWED, (f"allow {name}",))
    outsider = decider.decide(Request(app="app", path="/", user="u", groups=frozenset({"x"})))
    assert outsider.effect is Effect.DENY and outsider.rule_ids == ()
    named = decider.decide(Request(app="app", path="/" + name + "/sub", user=name, groups=frozenset({name})))
    assert named == Decision(Effect.DENY, Reason.DENIED_BY_RULE, (f"deny {name}",))


def test_glob_keeps_literal_characters_literal() -> None:
    # Only "*" is a wildcard; a backslash or quote in a key is a plain character.
    rule = _rule(id="g", users=frozenset({"u"}), paths=(PathPattern("", '/a\\*"b/*', True),))
    decider = cedar_decider(Bundle(apps={"app": App("app", rules=(rule,))}))
    assert decider.decide(Request(app="app", path='/a\\x"b/c', user="u")).allowed
    assert decider.decide(Request(app="app", path='/a\\"b/', user="u")).allowed
    assert not decider.decide(Request(app="app", path='/ax"b/c', user="u")).allowed


def test_ipv6_text_cedar_accepts() -> None:
    # Cedar refuses IPv4 embedded in IPv6 text; such an address still decides (as IPv6).
    rule = _rule(
        id="n", users=frozenset({"u"}), networks=(Network("m", (ipaddress.ip_network("::ffff:0:0/96"),)),)
    )
    bundle = Bundle(apps={"app": App("app", rules=(rule,))})
    decider, compiled = cedar_decider(bundle), compile_bundle(bundle)
    mapped = Request(app="app", path="/", user="u", ip=ipaddress.IPv6Address("::ffff:10.1.2.3"))
    assert decider.decide(mapped).allowed and compiled.decide(mapped).allowed
    v4 = Request(app="app", path="/", user="u", ip=ipaddress.IPv4Address("10.1.2.3"))
    assert not decider.decide(v4).allowed and not compiled.decide(v4).allowed


def test_time_zone_of_the_bundle_is_used() -> None:
    rule = _rule(id="w", users=frozenset({"u"}), schedule=(Window(frozenset({0}), 9 * 60, 10 * 60),))
    apps = {"app": App("app", rules=(rule,))}
    new_york = Bundle(apps=apps, timezone="America/New_York")
    shanghai = Bundle(apps=apps, timezone="Asia/Shanghai")
    now = at("2026-11-30 09:30", ZoneInfo("America/New_York"))
    request = Request(app="app", path="/", user="u", now=now)
    assert cedar_decider(new_york).decide(request).allowed
    assert not cedar_decider(shanghai).decide(request).allowed
    assert "(America/New_York)" in to_cedar(new_york)


# -- raw Cedar per application -----------------------------------------------------------------

RAW = """
version: 1
apps:
  wiki:
    rules:
      - {id: wiki-staff, effect: allow, paths: [/], subjects: {groups: [staff]}}
    cedar: |
      // editors may write from the intranet
      @id("wiki-edit")
      permit (principal in Group::"editors", action in [Action::"POST", Action::"PUT"], resource)
      when { context has ip && context.ip.isInRange(ip("10.0.0.0/8")) };

      @id("wiki-history-mfa")
      @step_up("mfa")
      forbid (principal, action, resource)
      when { context.path like "/history/*" };

      @max_auth_age("15m")
      forbid (principal, action == Action::"DELETE", resource);

      @id("wiki-night")
      forbid (principal, action, resource)
      when { context.minute < 360 && !(principal in Department::"it") };
  other:
    rules:
      - {id: other-all, effect: allow, subjects: {groups: [staff]}}
rules:
  - {id: global-risk, effect: deny, apps: "*", min_risk: 90}
"""


@pytest.fixture(scope="module")
def raw_bundle() -> Bundle:
    return load_bundle(RAW)


def test_raw_cedar_application_decisions(raw_bundle: Bundle) -> None:
    app = raw_bundle.apps["wiki"]
    wiki = RawCedarApp(app, raw_bundle.timezone, raw_bundle.rules_for("wiki"))
    editor = {"app": "wiki", "user": "e", "groups": {"editors"}, "departments": ["it"]}
    assert wiki.decide(_request({**editor, "method": "POST", "ip": "10.1.1.1"})).rule_ids == ("wiki-edit",)
    assert not wiki.decide(_request({**editor, "method": "POST", "ip": "8.8.8.8"})).allowed
    assert not wiki.decide(_request({**editor, "method": "POST"})).allowed  # "has" guards the ip
    staff = {"app": "wiki", "user": "s", "groups": {"staff"}, "departments": ["it"]}
    assert wiki.decide(_request(staff)) == Decision(Effect.ALLOW, Reason.ALLOWED, ("wiki-staff",))
    history = wiki.decide(_request({**staff, "path": "/history/1", "acr": "pwd"}))
    assert (history.effect, history.rule_ids) == (Effect.STEP_UP, ("wiki-history-mfa",))
    assert history.obligations == {"acr_values": "urn:onegate:acr:mfa"}
    # The forbid names no condition on acr: the annotation is the requirement, met here.
    assert wiki.decide(_request({**staff, "path": "/history/1", "acr": "mfa"})).allowed
    # An unannotated policy is named after its application and position.
    delete = wiki.decide(_request({**staff, "method": "DELETE", "acr": "mfa"}))
    assert delete.rule_ids == ("wiki:policy2",) and delete.obligations == {"max_age": 900}
    assert wiki.decide(_request({**staff, "method": "DELETE", "auth_time": MONDAY_0930 - 60})).allowed
    night = wiki.decide(_request({**staff, "departments": ["hr"], "now": at("2026-11-30 05:00")}))
    assert night == Decision(Effect.DENY, Reason.DENIED_BY_RULE, ("wiki-night",))
    # Bundle-wide YAML rules hold for a Cedar application as well.
    assert wiki.decide(_request({**staff, "risk": 95})).rule_ids == ("global-risk",)
    assert wiki.decide(_request({**staff, "app": "other"})).reason is Reason.UNKNOWN_APP


def test_raw_cedar_through_the_whole_bundle(raw_bundle: Bundle) -> None:
    engine = PolicyEngine(raw_bundle)
    whole = CedarPolicy(to_cedar(raw_bundle), raw_bundle.timezone, apps=raw_bundle.apps)
    per_app = cedar_decider(raw_bundle)
    # The raw policies are limited to their application in the whole text.
    assert 'resource == App::"wiki"' in app_cedar(raw_bundle, "wiki")
    for given in (
        {"app": "other", "user": "e", "groups": {"editors", "staff"}, "method": "DELETE"},
        {"app": "wiki", "user": "e", "groups": {"editors"}, "method": "PUT", "ip": "10.0.0.1"},
        {"app": "wiki", "user": "s", "groups": {"staff"}, "path": "/history/2"},
        {"app": "wiki", "user": "s", "groups": {"staff"}, "now": at("2026-11-30 02:00")},
    ):
        request = _request(given)
        assert whole.decide(request) == per_app.decide(request)
        assert engine.decide(request) == per_app.decide(request)  # the engine routes wiki to cedarpy
    # Bundle-wide YAML rules hold for the raw-Cedar application inside the engine too.
    risky = _request({"app": "wiki", "user": "s", "groups": {"staff"}, "risk": 95})
    assert engine.decide(risky).rule_ids == ("global-risk",)
    other = per_app.decide(_request({"app": "other", "user": "e", "groups": {"staff"}, "method": "DELETE"}))
    assert other.rule_ids == ("other-all",)


def test_a_failing_forbid_denies() -> None:
    # context.ip without "has": evaluation fails when the address is unknown; the forbid still holds.
    app = App(
        "a",
        rules=(_rule(id="all", apps=frozenset({"a"})),),
        cedar="""
        @id("block")
        forbid (principal, action, resource) when { context.ip.isInRange(ip("10.0.0.0/8")) };
    """,
    )
    decider = CedarPolicy(app_cedar(Bundle(apps={"a": app}), "a"), "UTC")
    request = Request(app="a", path="/", user="u")
    assert decider.decide(request) == Decision(Effect.DENY, Reason.DENIED_BY_RULE, ("block",))
    assert decider.decide(Request(app="a", path="/", user="u", ip=ipaddress.ip_address("8.8.8.8"))).allowed
    # check_cedar says so before it is ever active.
    assert [f.code for f in check_cedar(app)] == ["cedar_schema"]


def test_syntax_error_is_an_error_finding_with_a_line() -> None:
    cedar = (
        "permit (principal, action, resource);\n\n// fine so far\n"
        "forbid (principal, action, resource)\nwhen { context.risk > };\n"
    )
    app = App("wiki", cedar=cedar, source="policy.yaml", line=7)
    findings = check_cedar(app)
    assert [(f.severity, f.code) for f in findings] == [("error", "cedar_syntax")]
    assert "Cedar line 5" in findings[0].message and "第 5 行" in findings[0].message_zh
    assert findings[0].line == 7  # the application's line: App carries no line for its Cedar text
    with pytest.raises(BundleError) as e:
        RawCedarApp(app, "UTC")
    assert e.value.findings == findings


def test_cedar_findings_name_the_bundle_line() -> None:
    text = RAW.replace("when { context.minute < 360", "when { context.minute < ")
    findings = check(load_bundle(text, "wiki.yaml"))
    (syntax,) = [f for f in findings if f.code == "cedar_syntax"]
    broken = next(i for i, line in enumerate(text.splitlines(), 1) if "context.minute" in line)
    # The line of the bundle file that holds the error, not the application's line.
    assert (syntax.source, syntax.line) == ("wiki.yaml", broken)
    assert "Cedar line 16" in syntax.message


@pytest.mark.parametrize(
    ("cedar", "line"),
    [
        ("permit (principal, action, resource)\nwhen { true }\n", 2),  # missing ";": the end
        ("permit (principal, action, resource);\npermit (principal, acton, resource);\n", 2),
        ('\n\n@id("a")\n@id("b")\npermit (principal, action, resource);\n', 3),  # refused as a whole
        ('permit (principal, action, resource) when { context.path == "/x\n', 1),
    ],
)
def test_syntax_error_lines(cedar: str, line: int) -> None:
    (finding,) = check_cedar(App("a", cedar=cedar))
    assert finding.code == "cedar_syntax"
    assert f"Cedar line {line}:" in finding.message


def test_check_cedar_findings() -> None:
    cedar = """
@id("dup")
permit (principal, action, resource) when { context.pth == "/" };

@id("dup")
@step_up("otp")
forbid (principal, action, resource);

@max_auth_age("soon")
permit (principal, action == Action::"PURGE", resource == App::"other");

@id("wiki-staff")
forbid (principal, action, resource) when { context.acr < 2 && principal in Role::"r" };
"""
    app = App("wiki", rules=(_rule(id="wiki-staff", apps=frozenset({"wiki"})),), cedar=cedar)
    found = {(f.code, f.message.split(":")[0]) for f in check_cedar(app)}
    assert found == {
        ("cedar_schema", "application wiki, Cedar line 2"),  # context.pth
        ("duplicate_id", "application wiki, Cedar line 5"),
        ("cedar_annotation", "application wiki, Cedar line 5"),  # @step_up("otp")
        ("cedar_annotation", "application wiki, Cedar line 9"),  # on a permit, not a duration
        ("cedar_other_app", "application wiki, Cedar line 9"),  # a warning
        ("duplicate_id", "application wiki, Cedar line 12"),  # same id as a YAML rule
    }
    # A method outside the usual list is fine (the schema declares what the text names).
    assert all("PURGE" not in f.message for f in check_cedar(app))
    severities = {f.code: f.severity for f in check_cedar(app)}
    assert severities["cedar_other_app"] == "warning" and severities["cedar_schema"] == "error"


def test_templates_are_refused() -> None:
    (finding,) = check_cedar(App("a", cedar="permit (principal == ?principal, action, resource);"))
    assert finding.code == "cedar_template"


def test_demo_policy_decided_by_cedar_as_by_the_engine() -> None:
    demo = Path(__file__).resolve().parents[2] / "onegate" / "policies" / "demo.yaml"
    if not demo.exists():
        pytest.skip("no demo policy")
    bundle = load_path(demo)
    engine, decider = PolicyEngine(bundle), cedar_decider(bundle)
    users = [None, "u"]
    groups = sorted({g for rule in bundle.all_rules() for g in rule.groups})
    paths = sorted(
        {"/" + p.key.strip("/*").replace("*", "x") for rule in bundle.all_rules() for p in rule.paths}
    )
    count = 0
    for app in bundle.apps:
        for path in paths[:20]:
            for user in users:
                for group in groups[:8]:
                    for ip in (None, "10.1.2.3", "203.0.113.9"):
                        request = Request.of(
                            app=app,
                            path=path,
                            user=user,
                            groups=[group] if user else [],
                            ip=ip,
                            now=MONDAY_0930,
                        )
                        assert decider.decide(request) == engine.compiled.decide(request), request
                        count += 1
    assert count > 100
