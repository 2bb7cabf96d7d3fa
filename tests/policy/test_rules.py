"""Loading bundles: every problem reported at once, each with its line; paths meet requests in one form."""

from __future__ import annotations

from pathlib import Path

import pytest

from policy.engine import PolicyEngine
from policy.model import Effect, Request
from policy.rules import BundleError, load_bundle, load_path, parse_duration


def errors(text: str) -> list[tuple[int, str]]:
    with pytest.raises(BundleError) as caught:
        load_bundle(text)
    return [(f.line, f.code) for f in caught.value.findings]


def test_every_error_is_reported_with_its_line() -> None:
    text = """apps:
  hr:
    rules:
      - id: a
        effect: permit
      - id: b
        effect: allow
        group: [hr-staff]
      - id: a
        effect: allow
        methods: [GET, "BAD METHOD"]
      - id: c
        effect: deny
        acr: mfa
      - id: d
        effect: step_up
      - id: e
        effect: allow
        networks: [10.0.0.0/33, nowhere]
        schedule: {days: mon-fri, hours: "9-17"}
        max_risk: 101
"""
    found = errors(text)
    assert (5, "bad_effect") in found
    assert (8, "unknown_key") in found  # "group" instead of "groups": refused, never ignored
    assert (9, "duplicate_id") in found
    assert (11, "bad_method") in found
    assert (14, "bad_condition") in found  # acr on a deny rule
    assert (15, "bad_step_up") in found  # step_up without acr / max_auth_age
    assert (19, "unknown_network") in found and len([f for f in found if f[1] == "unknown_network"]) == 2
    assert (20, "bad_schedule") in found
    assert (21, "bad_value") in found


def test_duplicate_yaml_keys_are_refused() -> None:
    # PyYAML would keep the last "effect" silently; a reviewer would read the first.
    assert errors(
        "apps:\n  hr:\n    rules:\n      - id: a\n        effect: deny\n        effect: allow\n"
    ) == [(6, "yaml")]


def test_yaml_syntax_error_has_a_line() -> None:
    assert errors("apps:\n  hr:\n    rules: [\n")[0][1] == "yaml"


def test_bundle_wide_rules_need_apps_and_known_keys() -> None:
    found = errors("rules:\n  - {id: x, effect: deny}\nextra: 1\n")
    assert (2, "missing_apps") in found and (3, "unknown_key") in found


def test_rule_paths_are_canonicalised_like_requests() -> None:
    bundle = load_bundle(
        """apps:
  hr:
    rules:
      - {id: zh, effect: deny, paths: ["/人事/档案/"]}
      - {id: dots, effect: deny, paths: ["/a/./b/../c"]}
      - {id: bad, effect: deny, paths: ["/a%2Fb"]}
""".replace('      - {id: bad, effect: deny, paths: ["/a%2Fb"]}\n', "")
    )
    rules = {r.id: r for r in bundle.all_rules()}
    assert rules["zh"].paths[0].key == "/%e4%ba%ba%e4%ba%8b/%e6%a1%a3%e6%a1%88"
    assert rules["dots"].paths[0].key == "/a/c"
    engine = PolicyEngine(bundle)
    # The request a browser sends for /人事/档案/x is matched by the rule written in Chinese.
    request = Request.of(app="hr", path="/%E4%BA%BA%E4%BA%8B/%E6%A1%A3%E6%A1%88/x", user="u")
    assert engine.decide(request).rule_ids == ("zh",)
    assert errors('apps:\n  hr:\n    rules:\n      - {id: bad, effect: deny, paths: ["/a%2Fb"]}\n') == [
        (4, "bad_path")
    ]


def test_durations() -> None:
    assert [parse_duration(v) for v in (900, "90s", "15m", "8h", "1d", "30")] == [
        900,
        90,
        900,
        28800,
        86400,
        30,
    ]
    for bad in (-1, "soon", True, "5w", None):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


def test_one_file_per_application(tmp_path: Path) -> None:
    (tmp_path / "00-common.yaml").write_text(
        "zones:\n  intranet: [10.0.0.0/8]\nrules:\n  - {id: risky, effect: deny, apps: '*', min_risk: 90}\n"
    )
    (tmp_path / "hr.yaml").write_text(
        "app: hr\nhosts: [hr.example.gov]\nrules:\n  - {id: hr-in, effect: allow, networks: [intranet]}\n"
    )
    (tmp_path / "permits.yml").write_text("app: permits\nrules:\n  - {id: p-all, effect: allow}\n")
    (tmp_path / "notes.txt").write_text("not a policy")
    bundle = load_path(tmp_path)
    assert sorted(bundle.apps) == ["hr", "permits"]
    assert [r.id for r in bundle.rules_for("hr")] == ["risky", "hr-in"]
    # The folder is kept as one multi-document text, which loads back to the same bundle.
    again = load_bundle(bundle.text)
    assert sorted(again.apps) == ["hr", "permits"] and [r.id for r in again.rules_for("hr")] == [
        "risky",
        "hr-in",
    ]
    (tmp_path / "other.yaml").write_text("app: hr2\nhosts: [hr.example.gov]\n")
    with pytest.raises(BundleError) as caught:
        load_path(tmp_path)
    assert [f.code for f in caught.value.findings] == ["duplicate_host"]


@pytest.mark.parametrize(
    "raw",
    [
        "/admin",
        "/admin/../admin",
        "/x/../admin/users",
        "/%61dmin",
        "/%41DMIN/users",
        "//admin",
        "/./admin",
        "/admin;x=y",
        "/admin;jsessionid=1/users",
        "/ADMIN",
        "/Admin/Users",
        "/%2e%2e/admin",
        "/x/%2E%2E/admin",
        "/..;/admin",
        "/public/..%3b/admin",
    ],
)
def test_path_tricks_never_reach_a_denied_path(raw: str) -> None:
    engine = PolicyEngine.from_text(
        "apps:\n  hr:\n    rules:\n"
        "      - {id: everyone, effect: allow}\n"
        "      - {id: no-admin, effect: deny, paths: [/admin]}\n"
    )
    from policy.normalize import PathRejected

    try:
        request = Request.of(app="hr", path=raw, user="u")
    except PathRejected:
        return  # refused with 400 before any rule: also never reaches /admin
    decision = engine.decide(request)
    assert decision.effect is Effect.DENY and decision.rule_ids == ("no-admin",), raw


@pytest.mark.parametrize("raw", ["/%252e%252e/admin", "/%2561dmin", "/admin%2F..", "/%C0%AE%C0%AE/admin"])
def test_double_and_ambiguous_encodings_are_refused(raw: str) -> None:
    from policy.normalize import PathRejected

    with pytest.raises(PathRejected):
        Request.of(app="hr", path=raw, user="u")
