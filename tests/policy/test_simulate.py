"""simulate: recorded access events replayed against a proposed bundle report exactly who gains and
who loses access to what."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.access_log import NdjsonAccessLog
from core.events import Category, Event, Outcome
from onegate import demo_data
from policy.engine import PolicyEngine
from policy.rules import load_path
from policy.simulate import simulate

POLICIES = Path(demo_data.__file__).parent / "policies"
NOW = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)  # Monday 10:00 in Shanghai

PEOPLE = {
    "zhangwei": (["civil-servants", "hr-staff"], ["hrss", "city"]),
    "chenjing": (["civil-servants", "app-owners"], ["bigdata", "city"]),
    "liuyang": (["civil-servants", "approval-staff"], ["approval", "city"]),
}


def access(
    user: str,
    app: str,
    path: str,
    *,
    ip: str = "10.1.2.3",
    method: str = "GET",
    acr: str = "mfa",
    at: datetime = NOW,
) -> dict:  # type: ignore[type-arg]
    groups, departments = PEOPLE[user]
    return Event(
        action="http-request",
        category=Category.WEB,
        outcome=Outcome.SUCCESS,
        dataset="onegate.access",
        timestamp=at,
        fields={
            "user.name": user,
            "onegate.groups": groups,
            "onegate.departments": departments,
            "onegate.app": app,
            "url.path": path,
            "http.request.method": method,
            "source.ip": ip,
            "onegate.acr": f"urn:onegate:acr:{acr}",
            "onegate.auth_age": 120,
            "onegate.risk": 0,
        },
    ).to_ecs()


def proposed_text() -> str:
    text = (POLICIES / "demo.yaml").read_text(encoding="utf-8")
    # 1. HR staff may now use Permits too; 2. the dashboard only from the government network;
    # 3. HR reports ask for a second factor.
    text = text.replace(
        "        subjects: {groups: [approval-staff]}\n        networks: [gov-network]",
        "        subjects: {groups: [approval-staff, hr-staff]}\n        networks: [gov-network]",
    )
    text = text.replace(
        "        methods: [GET, HEAD]\n        subjects: {groups: [civil-servants]}",
        "        methods: [GET, HEAD]\n        subjects: {groups: [civil-servants]}\n"
        "        networks: [gov-network]",
    )
    text = text.replace(
        "      - id: hr-health",
        "      - {id: hr-reports-mfa, effect: step_up, paths: [/reports], acr: phr}\n      - id: hr-health",
    )
    return text


@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    lines = [
        *[access("zhangwei", "permits", f"/apply/{i}") for i in range(3)],  # gains
        *[access("chenjing", "grid", "/", ip="203.0.113.7", at=NOW + timedelta(minutes=i)) for i in range(2)],
        *[access("chenjing", "grid", "/", ip="10.9.9.9") for _ in range(2)],  # unchanged
        access("zhangwei", "hr", "/reports/2026"),  # step-up (mfa < phr)
        access("zhangwei", "hr", "/"),  # unchanged
        *[access("liuyang", "permits", "/apply", method="POST") for _ in range(4)],  # unchanged
        access("zhangwei", "hr", "/a%2Fb"),  # an ambiguous path: skipped, with the reason
        access("zhangwei", "permits", "/old", at=NOW - timedelta(days=8)),  # outside the window
        Event(action="login", category=Category.AUTHENTICATION, outcome=Outcome.SUCCESS).to_ecs(),
    ]
    path = tmp_path / "access.ndjson"
    body = "\n".join(json.dumps(line, ensure_ascii=False) for line in lines)
    path.write_text(body + "\n{not json\n", encoding="utf-8")
    return path


async def test_simulate_reports_exact_gains_and_losses(recorded: Path) -> None:
    baseline = PolicyEngine(load_path(POLICIES / "demo.yaml"))
    proposed = PolicyEngine.from_text(proposed_text())
    source = NdjsonAccessLog(recorded)
    seen: list[int] = []
    report = await simulate(baseline, proposed, source, since=NOW - timedelta(days=7), progress=seen.append)
    assert source.bad_lines == [17] and source.skipped == 1  # the broken line; the login event
    assert report.events == 14 and sum(seen) == 14
    assert report.unchanged == 7
    assert report.skipped == {"path_encoded_separator": 1}

    gains = report.gains.as_dict()
    assert gains["requests"] == 3 and gains["users"] == 1
    assert gains["by_user_app"] == [{"user": "zhangwei", "app": "permits", "requests": 3}]
    example = gains["examples"][0]
    assert (example["before"], example["after"], example["after_rules"]) == (
        "deny",
        "allow",
        ["permits-office-hours"],
    )

    losses = report.losses.as_dict()
    assert losses["by_user_app"] == [{"user": "chenjing", "app": "grid", "requests": 2}]
    assert losses["examples"][0]["before_rules"] == ["grid-read"]

    step_ups = report.step_ups.as_dict()
    assert step_ups["by_user_app"] == [{"user": "zhangwei", "app": "hr", "requests": 1}]
    assert step_ups["examples"][0]["after_rules"] == ["hr-reports-mfa"]
    assert report.other.count == 0

    # Replaying the baseline against itself changes nothing.
    same = await simulate(baseline, baseline, source, since=NOW - timedelta(days=7))
    assert same.unchanged == 13 and same.gains.count == same.losses.count == 0


async def test_the_window_bounds_the_replay(recorded: Path) -> None:
    baseline = PolicyEngine(load_path(POLICIES / "demo.yaml"))
    source = NdjsonAccessLog(recorded)
    assert await source.count(NOW - timedelta(days=30)) == 15
    report = await simulate(
        baseline, baseline, source, since=NOW + timedelta(seconds=30), until=NOW + timedelta(minutes=1)
    )
    assert report.events == 0
