"""check(): names against the directory, apps against the bundle, rules against each other."""

from __future__ import annotations

from policy.check import Catalog, check, check_text, has_errors

CATALOG = Catalog(
    users={"lina", "zhangwei"}, groups={"hr-staff", "auditors"}, departments={"hr"}, roles={"clerk"}
)


def codes(text: str, catalog: Catalog | None = CATALOG) -> list[tuple[str, int, str | None]]:
    bundle, findings = check_text(text, catalog)
    assert bundle is not None, findings
    return [(f.code, f.line, f.rule_id) for f in findings]


def test_unknown_names_are_errors_with_lines() -> None:
    text = """apps:
  hr:
    rules:
      - id: ok
        effect: allow
        subjects: {users: [lina], groups: [hr-staff], departments: [hr], roles: [clerk]}
      - id: typo
        effect: allow
        subjects: {users: [linaa], groups: [hr-staf], departments: [hrr], roles: [clerck]}
rules:
  - {id: elsewhere, effect: deny, apps: [hr, permits], min_risk: 90}
"""
    bundle, findings = check_text(text, CATALOG)
    assert bundle is not None and has_errors(findings)
    errors = {(f.code, f.line, f.rule_id) for f in findings if f.severity == "error"}
    assert errors == {
        ("unknown_user", 7, "typo"),
        ("unknown_group", 7, "typo"),
        ("unknown_department", 7, "typo"),
        ("unknown_role", 7, "typo"),
        ("unknown_app", 11, "elsewhere"),
    }
    # Errors come first, and each message exists in both languages.
    assert findings[0].severity == "error" and all(f.message and f.message_zh for f in findings)
    # Without a directory only what the bundle itself can tell is checked.
    assert {c for c, _, _ in codes(text, None)} >= {"unknown_app"}
    assert "unknown_group" not in {c for c, _, _ in codes(text, None)}


def test_shadowed_redundant_and_overlapping_rules() -> None:
    text = """apps:
  hr:
    rules:
      - {id: no-admin, effect: deny, paths: [/admin]}
      - {id: admin-lina, effect: allow, paths: [/admin/users], subjects: {users: [lina]}}
      - {id: staff, effect: allow, subjects: {groups: [hr-staff]}}
      - {id: staff-reports, effect: allow, paths: [/reports], methods: [GET], subjects: {groups: [hr-staff]}}
      - {id: no-export, effect: deny, paths: [/reports/export], not_networks: [10.0.0.0/8]}
      - {id: audit, effect: allow, paths: [/audit], subjects: {groups: [auditors]}}
"""
    found = codes(text)
    assert ("shadowed", 5, "admin-lina") in found  # /admin/users lies inside the denied /admin
    assert ("redundant", 7, "staff-reports") in found  # staff already admits it
    assert ("overlap", 6, "staff") in found  # staff and no-export meet on /reports/export
    assert ("overlap", 7, "staff-reports") in found
    # Disjoint paths: no overlap is reported for the audit rule.
    assert not [f for f in found if f[2] == "audit"]
    assert not has_errors(check_text(text, CATALOG)[1])  # warnings only: it may become active


def test_identical_allow_rules_report_the_later_one() -> None:
    text = """apps:
  hr:
    rules:
      - {id: one, effect: allow, subjects: {groups: [hr-staff]}}
      - {id: two, effect: allow, subjects: {groups: [hr-staff]}}
"""
    assert codes(text) == [("redundant", 5, "two")]


def test_a_narrower_deny_does_not_shadow() -> None:
    text = """apps:
  hr:
    rules:
      - {id: staff, effect: allow, subjects: {groups: [hr-staff]}}
      - {id: not-at-night, effect: deny, schedule: {hours: "22:00-06:00"}, networks: [10.0.0.0/8]}
"""
    found = codes(text)
    assert ("overlap", 4, "staff") in found and not [f for f in found if f[0] == "shadowed"]


def test_an_application_without_allow_rules_is_flagged_and_the_gateway_list_checked() -> None:
    text = "apps:\n  hr:\n    rules:\n      - {id: d, effect: deny, paths: [/x]}\n  permits: {}\n"
    catalog = Catalog(apps={"hr"})
    found = codes(text, catalog)
    assert ("no_allow", 4, None) in found
    assert [f for f in found if f[0] == "not_configured"] == [("not_configured", 5, None)]


def test_load_errors_come_back_as_findings() -> None:
    bundle, findings = check_text("apps: [\n", CATALOG)
    assert bundle is None and findings[0].code == "yaml" and findings[0].line >= 1
    report = check(check_text("apps:\n  hr: {}\n", None)[0])  # type: ignore[arg-type]
    assert [f.code for f in report] == ["no_allow"]
