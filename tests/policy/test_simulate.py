"""simulate: recorded access events replayed against a proposed bundle report exactly who gains and
who loses access to what.

The fixture (tests/policy/fixtures/): sim_baseline.yaml, the policy active while
sim_access.ndjson was recorded (40 access events in the window, out of time order, plus events
outside it, a sign-in event and four unreadable lines), and sim_proposed.yaml with five changes.
The expected figures below were worked out by hand from the two bundles, request by request:

=======  ====================================  =========================  =====================
app      requests (user, what)                 change                     why
=======  ====================================  =========================  =====================
hr       alice GET /payroll pwd (2)            loss: allow -> step_up     hr-payroll-mfa
hr       bob GET /payroll/2026 pwd (1)         loss: allow -> step_up     hr-payroll-mfa
hr       bob GET /reports* mfa (2)             change: step_up -> deny    hr-reports-interns
wiki     dave POST /pages/* (3)                gain: deny -> allow        wiki-edit
wiki     anonymous GET /public/notice (2)      loss: allow -> deny        wiki-public removed
finance  carol Saturday 11:00 (2), Tue 22:30   loss: allow -> deny        office hours
mail     frank GET /inbox* (2)                 loss: allow -> deny        mail-no-contractors
vault    erin from a cafe, mfa (2)             change: deny -> step_up    vault-offsite step_up
vault    erin from a cafe, phr, /keys (1)      gain: deny -> allow        step-up met
=======  ====================================  =========================  =====================

and 18 requests decided alike (among them one to an application neither bundle knows), 4 skipped.
"""

from __future__ import annotations

import ipaddress
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.access_log import NdjsonAccessLog
from core.events import Category, Event, Outcome
from policy.engine import PolicyEngine
from policy.model import Effect
from policy.normalize import PathRejected
from policy.rules import load_path
from policy.simulate import ANONYMOUS, EventRejected, SimulationReport, request_from_event, simulate

FIXTURES = Path(__file__).parent / "fixtures"
SINCE = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)  # Monday 10:00 in Shanghai
UNTIL = SINCE + timedelta(days=7)


@pytest.fixture(scope="module")
def baseline() -> PolicyEngine:
    return PolicyEngine(load_path(FIXTURES / "sim_baseline.yaml"))


@pytest.fixture(scope="module")
def proposed() -> PolicyEngine:
    return PolicyEngine(load_path(FIXTURES / "sim_proposed.yaml"))


async def replay(baseline: PolicyEngine, proposed: PolicyEngine, path: Path) -> SimulationReport:
    return await simulate(baseline, proposed, NdjsonAccessLog(path), SINCE, UNTIL)


async def test_the_fixture_reports_exact_gains_losses_and_changes(
    baseline: PolicyEngine, proposed: PolicyEngine
) -> None:
    source = NdjsonAccessLog(FIXTURES / "sim_access.ndjson")
    calls: list[int] = []
    report = await simulate(baseline, proposed, source, SINCE, UNTIL, progress=calls.append)
    assert (report.events, report.replayed, report.unchanged, report.changed) == (40, 36, 18, 18)
    assert sum(calls) == 40
    assert report.skipped == {
        "path_encoded_separator": 1,
        "path_double_encoding": 1,
        "malformed:onegate.acr": 1,
        "malformed:onegate.risk": 1,
    }
    # One alice/mail event was recorded as denied; the baseline allows it.
    assert report.recorded_differs == 1
    assert [p.line for p in source.problems] == [8, 20, 31, 48] and source.other_events == 1

    gains = report.gains.as_dict()
    assert (gains["requests"], gains["users"], gains["anonymous_requests"]) == (4, 2, 0)
    assert gains["transitions"] == {"deny->allow": 4}
    assert gains["by_app"] == {"vault": 1, "wiki": 3}
    assert gains["by_user_app"] == [
        {"user": "dave", "app": "wiki", "requests": 3},
        {"user": "erin", "app": "vault", "requests": 1},
    ]
    assert report.gains.users == ["dave", "erin"]

    losses = report.losses.as_dict()
    assert (losses["requests"], losses["users"], losses["anonymous_requests"]) == (10, 4, 2)
    assert losses["transitions"] == {"allow->deny": 7, "allow->step_up": 3}
    assert losses["by_app"] == {"finance": 3, "hr": 3, "mail": 2, "wiki": 2}
    assert losses["by_user_app"] == [
        {"user": ANONYMOUS, "app": "wiki", "requests": 2},
        {"user": "alice", "app": "hr", "requests": 2},
        {"user": "bob", "app": "hr", "requests": 1},
        {"user": "carol", "app": "finance", "requests": 3},
        {"user": "frank", "app": "mail", "requests": 2},
    ]
    assert report.losses.users == ["alice", "bob", "carol", "frank"]

    changes = report.changes.as_dict()
    assert (changes["requests"], changes["users"]) == (4, 2)
    assert changes["transitions"] == {"deny->step_up": 2, "step_up->deny": 2}
    assert changes["by_user_app"] == [
        {"user": "bob", "app": "hr", "requests": 2},
        {"user": "erin", "app": "vault", "requests": 2},
    ]


async def test_examples_are_the_first_of_each_user_app_and_transition_in_time_order(
    baseline: PolicyEngine, proposed: PolicyEngine
) -> None:
    report = await replay(baseline, proposed, FIXTURES / "sim_access.ndjson")
    # Five at most, the earliest change of each (user, app, transition), though the file is shuffled.
    assert [(c.user, c.app, c.transition, c.time.isoformat()) for c in report.losses.examples] == [
        (None, "wiki", "allow->deny", "2026-11-24T00:00:00+00:00"),
        ("alice", "hr", "allow->step_up", "2026-11-24T01:20:00+00:00"),
        ("bob", "hr", "allow->step_up", "2026-11-24T02:30:00+00:00"),
        ("carol", "finance", "allow->deny", "2026-11-24T14:30:00+00:00"),
        ("frank", "mail", "allow->deny", "2026-11-26T00:00:00+00:00"),
    ]
    first_gain = report.gains.examples[0].as_dict()
    assert first_gain == {
        "time": "2026-11-25T06:00:00+00:00",
        "user": "dave",
        "app": "wiki",
        "method": "POST",
        "path": "/pages/1",
        "before": "deny",
        "before_rules": [],
        "after": "allow",
        "after_rules": ["wiki-edit"],
    }
    erin = report.changes.examples[1]
    assert (erin.before.rule_ids, erin.after.rule_ids) == (("vault-offsite",), ("vault-offsite",))
    assert erin.after.step_up is not None and erin.after.step_up.acr == "urn:onegate:acr:phr"
    bob = report.changes.examples[0]
    assert (bob.before.effect, bob.after.effect, bob.after.rule_ids) == (
        Effect.STEP_UP,
        Effect.DENY,
        ("hr-reports-interns",),
    )


async def test_the_replay_is_deterministic_whatever_the_line_order(
    baseline: PolicyEngine, proposed: PolicyEngine, tmp_path: Path
) -> None:
    lines = (FIXTURES / "sim_access.ndjson").read_text(encoding="utf-8").splitlines()
    reshuffled = tmp_path / "reshuffled.ndjson"
    random.Random(11).shuffle(lines)
    reshuffled.write_text("\n".join(lines) + "\n", encoding="utf-8")
    first = await replay(baseline, proposed, FIXTURES / "sim_access.ndjson")
    again = await replay(baseline, proposed, FIXTURES / "sim_access.ndjson")
    shuffled = await replay(baseline, proposed, reshuffled)
    assert first.as_dict() == again.as_dict() == shuffled.as_dict()


async def test_a_bundle_against_itself_changes_nothing(baseline: PolicyEngine) -> None:
    report = await replay(baseline, baseline, FIXTURES / "sim_access.ndjson")
    assert (report.replayed, report.unchanged, report.changed) == (36, 36, 0)
    assert report.gains.requests == report.losses.requests == report.changes.requests == 0


async def test_the_window_bounds_the_replay(baseline: PolicyEngine, proposed: PolicyEngine) -> None:
    source = NdjsonAccessLog(FIXTURES / "sim_access.ndjson")
    # Saturday 28 November (Shanghai) only: carol's two weekend requests, legacy and the four skipped.
    saturday = await simulate(
        baseline,
        proposed,
        source,
        datetime(2026, 11, 27, 16, 0, tzinfo=UTC),
        datetime(2026, 11, 28, 16, 0, tzinfo=UTC),
    )
    assert (saturday.events, saturday.replayed, saturday.changed) == (7, 3, 2)
    assert saturday.losses.by_user_app == {("carol", "finance"): 2}
    # Without an end: the event an hour after UNTIL is read too (frank, mail: a loss).
    open_ended = await simulate(baseline, proposed, source, SINCE)
    assert open_ended.events == 41 and open_ended.losses.by_user_app[("frank", "mail")] == 3


def access(**fields: object) -> Event:
    values: dict[str, object] = {"onegate.app": "hr", "url.path": "/"}
    values.update(fields)
    return Event(
        action="access-decided",
        category=Category.WEB,
        outcome=Outcome.SUCCESS,
        timestamp=datetime(2026, 11, 30, 2, 0, tzinfo=UTC),
        fields=values,
    )


def test_request_from_event_reads_the_contract_fields() -> None:
    request = request_from_event(
        access(
            **{
                "user.name": "alice",
                "onegate.groups": ["hr-staff", "interns"],
                "onegate.departments": ["hrss", "city"],
                "user.roles": ["auditor"],
                "url.path": "/Payroll/./2026/",
                "http.request.method": "post",
                "source.ip": "::ffff:10.1.2.3",
                "onegate.acr": "urn:onegate:acr:mfa",
                "onegate.auth_age": 90,
                "onegate.risk": 40,
            }
        )
    )
    now = datetime(2026, 11, 30, 2, 0, tzinfo=UTC).timestamp()
    assert (request.app, request.path, request.method, request.user) == (
        "hr",
        "/payroll/2026/",
        "POST",
        "alice",
    )
    assert request.groups == {"hr-staff", "interns"} and request.departments == ("hrss", "city")
    assert request.roles == {"auditor"} and request.acr_rank == 2 and request.risk == 40
    assert request.ip == ipaddress.ip_address("10.1.2.3")  # an IPv4-mapped address is the IPv4 one
    assert request.now == now and request.auth_age == 90


def test_request_from_event_defaults_and_refusals() -> None:
    anonymous = request_from_event(access())
    assert (anonymous.user, anonymous.groups, anonymous.method, anonymous.ip) == (
        None,
        frozenset(),
        "GET",
        None,
    )
    assert anonymous.auth_time is None and anonymous.risk == 0
    # A path recorded decoded is encoded as it was sent, then canonicalised.
    assert (
        request_from_event(access(**{"url.path": "/人事/档案"})).path
        == "/%e4%ba%ba%e4%ba%8b/%e6%a1%a3%e6%a1%88"
    )
    with pytest.raises(PathRejected):
        request_from_event(access(**{"url.path": "/a/..%2f..%2fadmin"}))
    for name, value in [
        ("onegate.acr", "gold"),
        ("onegate.risk", 101),
        ("onegate.risk", "high"),
        ("onegate.auth_age", -5),
        ("onegate.groups", [1, 2]),
        ("user.name", 7),
    ]:
        with pytest.raises(EventRejected) as caught:
            request_from_event(access(**{name: value}))
        assert caught.value.reason == f"malformed:{name}"


async def test_an_anonymous_change_is_counted_apart_from_users(
    baseline: PolicyEngine, tmp_path: Path
) -> None:
    documents = [
        access(**{"onegate.app": "wiki", "url.path": "/public/a", "source.ip": "203.0.113.1"}).to_ecs(),
        access(**{"onegate.app": "wiki", "url.path": "/public/b", "user.name": "x"}).to_ecs(),
    ]
    path = tmp_path / "events.ndjson"
    path.write_text("".join(json.dumps(d) + "\n" for d in documents), encoding="utf-8")
    closed = PolicyEngine.from_text(
        (FIXTURES / "sim_baseline.yaml")
        .read_text(encoding="utf-8")
        .replace("anonymous: true", "anonymous: false")
    )
    report = await simulate(baseline, closed, NdjsonAccessLog(path), SINCE, UNTIL + timedelta(days=1))
    # x is signed in: a rule with no subjects admits any signed-in user, anonymous or not.
    assert (report.losses.requests, report.losses.anonymous, report.losses.users) == (1, 1, [])
    assert report.losses.by_user_app == {(ANONYMOUS, "wiki"): 1} and report.unchanged == 1
