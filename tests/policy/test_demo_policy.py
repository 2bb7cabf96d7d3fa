"""The demo city's policy (onegate/policies/demo.yaml) passes check against the demo directory and
decides the stories of shared/STORIES.md as told."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
import yaml

from onegate import demo_data
from policy.check import Catalog, check
from policy.engine import PolicyEngine
from policy.model import Effect, Request
from policy.rules import load_path

POLICIES = Path(demo_data.__file__).parent / "policies"


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine(load_path(POLICIES / "demo.yaml"))


def test_the_demo_policy_checks_clean_against_the_demo_directory(engine: PolicyEngine) -> None:
    catalog = Catalog(
        users={u.username for u in demo_data.DEMO_USERS},
        groups=set(demo_data.GROUPS) | {"sys-admins", "sec-admins", "auditors"},
        departments={code for code, *_ in demo_data.DEPARTMENTS},
        roles=set(),
    )
    findings = check(engine.bundle, catalog)
    assert [f for f in findings if f.severity == "error"] == []
    assert {f.code for f in findings} <= {"overlap"}, [str(f) for f in findings]


def _request(given: dict) -> Request:  # type: ignore[type-arg]
    when = given.get("time")
    return Request.of(
        app=given["app"],
        path=given.get("path", "/"),
        method=given.get("method", "GET"),
        user=given.get("user"),
        groups=given.get("groups", ()),
        departments=given.get("departments", ()),
        acr=given.get("acr"),
        ip=given.get("ip"),
        risk=given.get("risk", 0),
        now=datetime.fromisoformat(when).timestamp() if when else None,
    )


CASES = yaml.safe_load((POLICIES / "demo_tests.yaml").read_text(encoding="utf-8"))["cases"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_demo_stories(engine: PolicyEngine, case: dict) -> None:  # type: ignore[type-arg]
    request = _request(case["given"])
    decision = engine.decide(request)
    expect = case["expect"]
    assert decision.effect is Effect(expect["effect"]), engine.explain(request).text_en
    if "rules" in expect:
        assert list(decision.rule_ids) == expect["rules"]
    if "acr" in expect:
        assert decision.step_up is not None and decision.step_up.acr == f"urn:onegate:acr:{expect['acr']}"
