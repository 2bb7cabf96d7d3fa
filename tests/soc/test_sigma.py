"""Sigma rules (soc.sigma): SigmaHQ-format rules written here load, compile to Lucene and SQL, and
fire on every store (the contract suite's backends); correlations; loader errors; the scheduler."""

from __future__ import annotations

import importlib
import textwrap
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from core.eventstore import EventStore, NativeQuery, QueryError
from core.kv import MemoryKV
from soc.detections.model import Severity, Signal
from soc.sigma import ScheduledRunner, SigmaRule, load_folder
from tests.soc.test_store_contract import BACKENDS

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)

SQL_INJECTION = """\
title: SQL Injection Strings In URI
id: 5a5f2b8e-9c1a-4f6e-8a63-2c7e0d7e1a01
status: test
description: Detects SQL injection strings in the requested URI of a GET request
references:
    - https://owasp.org/www-community/attacks/SQL_Injection
author: OneGate tests
date: 2026-11-02
tags:
    - attack.initial-access
    - attack.t1190
logsource:
    category: webserver
detection:
    selection:
        cs-method: 'GET'
        c-uri|contains:
            - 'union select'
            - "' or '1'='1"
            - 'sleep('
    filter_main_internal:
        c-ip|cidr: '10.99.0.0/16'
    condition: selection and not 1 of filter_main_*
falsepositives:
    - Vulnerability scanners run by the security team
level: high
x-onegate-name-zh: URI 中的 SQL 注入字符串
"""

ADMIN_FAILURE = """\
title: Failed Sign-In To An Admin Account
id: 0b6a3f3e-52a8-4f0d-9a44-7d1f5f0c2b02
status: experimental
description: A failed sign-in to an account whose name starts with admin
tags:
    - attack.credential-access
    - attack.t1110.001
logsource:
    category: authentication
    product: onegate
    service: idp
detection:
    selection:
        event.outcome: failure
        user.name|startswith: 'admin'
    condition: selection
level: medium
"""

FAILED_LOGIN = """\
title: Failed Sign-In
id: 9d3c1a7e-1111-4e5b-8c2d-3e4f5a6b7c03
name: onegate_failed_login
status: test
logsource:
    category: authentication
    product: onegate
detection:
    selection:
        event.action: user-login
        event.outcome: failure
    condition: selection
level: low
"""

BRUTE_FORCE = """\
title: Brute Force Against One Account
id: 2c1f0e9d-2222-4a3b-9c8d-7e6f5a4b3c04
status: test
correlation:
    type: event_count
    rules:
        - onegate_failed_login
    group-by:
        - user.name
    timespan: 5m
    condition:
        gte: 10
tags:
    - attack.credential-access
    - attack.t1110.001
level: high
x-onegate-name-zh: 针对单个账号的暴力破解
"""

SPRAY = """\
title: Password Spray From One Address
id: 3d2e1f0a-3333-4b4c-8d9e-0f1a2b3c4d05
status: test
correlation:
    type: value_count
    rules:
        - onegate_failed_login
    group-by:
        - source.ip
    timespan: 5m
    condition:
        field: user.name
        gte: 10
tags:
    - attack.credential-access
    - attack.t1110.003
level: high
"""

LOCK_THEN_RESET = """\
title: Account Locked
id: 4e3f2a1b-4444-4c5d-9e0f-1a2b3c4d5e06
name: onegate_user_locked
status: test
logsource:
    product: onegate
    service: idp
detection:
    selection:
        event.action: user-locked
    condition: selection
level: low
---
title: Password Reset
id: 5f4a3b2c-5555-4d6e-8f0a-2b3c4d5e6f07
name: onegate_password_reset
status: test
logsource:
    product: onegate
    service: idp
detection:
    selection:
        event.action: password-reset
    condition: selection
level: low
---
title: Password Reset Right After A Lockout
id: 6a5b4c3d-6666-4e7f-9a0b-3c4d5e6f7a08
status: test
correlation:
    type: temporal
    rules:
        - onegate_user_locked
        - onegate_password_reset
    group-by:
        - user.name
    timespan: 10m
level: medium
"""


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat(timespec="microseconds").replace("+00:00", "Z")


def access(n: int, seconds: float, **fields: Any) -> dict[str, Any]:
    return {
        "@timestamp": at(seconds),
        "event.id": f"w{n:03d}",
        "event.kind": "event",
        "event.category": ["web"],
        "event.action": "access",
        "event.outcome": "success",
        "event.dataset": "onegate",
        "http.request.method": "GET",
        "http.response.status_code": 200,
        "source.ip": "203.0.113.7",
        "onegate.app": "permits",
        **fields,
    }


def auth(event_id: str, seconds: float, user: str, **fields: Any) -> dict[str, Any]:
    return {
        "@timestamp": at(seconds),
        "event.id": event_id,
        "event.kind": "event",
        "event.category": ["authentication"],
        "event.action": "user-login",
        "event.outcome": "failure",
        "event.dataset": "onegate.idp",
        "user.name": user,
        "source.ip": "10.20.1.5",
        **fields,
    }


WEB_EVENTS = [
    access(1, 10, **{"url.path": "/search", "url.query": "q=1 union select password from users"}),
    access(2, 20, **{"url.path": "/items/1' or '1'='1"}),
    access(3, 30, **{"url.path": "/report", "url.query": "id=sleep(5)", "source.ip": "198.51.100.4"}),
    access(9, 35, **{"url.path": "/Items/1' OR '1'='1", "http.request.method": "get"}),
    # near misses
    access(4, 40, **{"http.request.method": "POST", "url.query": "q=1 union select 1"}),  # not GET
    access(5, 50, **{"url.query": "q=1 union select 1", "source.ip": "10.99.3.4"}),  # internal scanner
    access(6, 60, **{"url.path": "/union/select"}),  # no space: not the string
    access(7, 70, **{"url.query": "q=1 UNION Select 1"}),  # strings match whatever their case
    auth("w008", 80, "guest", **{"url.query": "union select"}),  # not an access event
]

AUTH_EVENTS = [
    auth("a01", 10, "admin-hr"),
    auth("a02", 20, "administrator", **{"event.action": "mfa-failed", "event.dataset": "onegate.idp"}),
    auth("a08", 25, "Admin-Ops", **{"event.outcome": "FAILURE"}),
    # near misses
    auth("a03", 30, "admin-hr", **{"event.outcome": "success"}),
    auth("a04", 40, "lina"),
    auth("a05", 50, "admin-hr", **{"event.dataset": "onegate.mfa"}),  # not the IdP's
    auth("a06", 60, "admin-hr", **{"event.category": ["iam"]}),  # not an authentication event
    auth("a07", 70, "sysadmin"),  # starts with sys
]


def write_rules(folder: Path, **files: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / f"{name}.yml").write_text(textwrap.dedent(text), encoding="utf-8")
    return folder


def loaded(folder: Path) -> dict[str, SigmaRule]:
    rules, errors = load_folder(folder)
    assert errors == []
    return {rule.title: rule for rule in rules}


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventStore]:
    backend = importlib.import_module(f"tests.soc.backends.{request.param}")
    async with backend.open_store(tmp_path) as opened:
        yield opened


def ids(matches: list[Any]) -> list[str]:
    return [match.completing["event.id"] for match in matches]


# The SQL form (soc.sigma.sql): each condition over the elements of its field.
LOWER = (
    "(CASE WHEN type <> 'text' THEN value WHEN length(CAST(value AS BLOB)) = length(value) "
    "THEN lower(value) ELSE onegate_caseless(value) END)"
)


def each(field: str, test: str) -> str:
    return f"EXISTS (SELECT 1 FROM json_each(sigma__doc, '$.\"{field}\"') WHERE {test})"  # noqa: S608 - the expected text


# -- loading and compiling ------------------------------------------------------------------------


def test_a_web_rule_compiles_to_lucene_and_sql(tmp_path: Path) -> None:
    rule = loaded(write_rules(tmp_path / "rules", sqli=SQL_INJECTION))["SQL Injection Strings In URI"]
    info = rule.info
    assert info.id == "sigma.5a5f2b8e-9c1a-4f6e-8a63-2c7e0d7e1a01"
    assert (info.name.en, info.name.zh) == ("SQL Injection Strings In URI", "URI 中的 SQL 注入字符串")
    assert (info.severity, info.risk_score) == (Severity.HIGH, 73)
    assert (info.technique, info.tactic) == ("T1190", "initial-access")
    assert info.kind == "scheduled" and info.suppress_by == ("source.ip",)
    assert info.params == {"interval_s": 300, "lookback_s": 900}
    lucene = (
        "event.action:access AND ((http.request.method.caseless:get AND "
        r"((url.path.caseless:(*union\ select* OR *'\ or\ '1'\='1* OR *sleep\(*)) OR "
        r"(url.query.caseless:(*union\ select* OR *'\ or\ '1'\='1* OR *sleep\(*)))) AND "
        r"(NOT source.ip.ip:10.99.0.0\/16))"
    )
    assert rule.queries["opensearch"] == lucene
    assert rule.queries["elasticsearch"] == lucene  # the two Lucene backends agree today
    escape = " ESCAPE '\\'"
    likes = ("%union select%", "%'' or ''1''=''1%", "%sleep(%")
    uri = "(" + " OR ".join(LOWER + " LIKE '" + like + "'" + escape for like in likes) + ")"
    action = each("event.action", "value='access'")
    method = each("http.request.method", LOWER + "='get'")
    paths = "((" + each("url.path", uri) + ") OR (" + each("url.query", uri) + "))"
    internal = each("source.ip", "value LIKE '10.99.%'" + escape)
    assert rule.queries["sqlite"] == (
        action + " AND ((" + method + " AND " + paths + ") AND (NOT COALESCE((" + internal + "), 0)))"
    )
    assert rule.native is not None
    assert set(rule.native.fields) == {
        "event.action",
        "http.request.method.caseless",
        "url.path.caseless",
        "url.query.caseless",
        "source.ip",
    }


def test_strings_compile_to_caseless_fields_and_the_rest_stays(tmp_path: Path) -> None:
    text = CASES.replace("sc-status: '418'", "sc-status: [403, 'Teapot', '418']")
    rule = loaded(write_rules(tmp_path / "rules", cases=text))["Scanner Or Odd Agent"]
    assert rule.queries["opensearch"] == (
        "event.action:access AND (user_agent.original.caseless:*sqlmap* OR "
        r"user_agent.original:*Nikto* OR user_agent.original.caseless:*привет* OR "
        "(http.response.status_code.caseless:teapot OR (http.response.status_code:(403 OR 418))))"
    )
    agent, status, escape = "user_agent.original", "http.response.status_code", " ESCAPE '\\'"
    parts = [
        each(agent, LOWER + " LIKE '%sqlmap%'" + escape),
        each(agent, "value LIKE '%Nikto%'" + escape),
        each(agent, LOWER + " LIKE '%привет%'" + escape),
        "("
        + each(status, LOWER + "='teapot'")
        + " OR ("
        + each(status, "(value=403 OR value='418' OR value=418)")
        + "))",
    ]
    action = each("event.action", "value='access'")
    assert rule.queries["sqlite"] == action + " AND (" + " OR ".join(parts) + ")"


def test_an_authentication_rule_selects_the_idp_s_authentication_events(tmp_path: Path) -> None:
    rule = loaded(write_rules(tmp_path / "rules", admin=ADMIN_FAILURE))["Failed Sign-In To An Admin Account"]
    assert rule.queries["opensearch"] == (
        "event.dataset:onegate.idp AND (event.category:authentication AND "
        "(event.outcome.caseless:failure AND user.name.caseless:admin*))"
    )
    dataset = each("event.dataset", "value='onegate.idp'")
    category = each("event.category", "value='authentication'")
    outcome = each("event.outcome", LOWER + "='failure'")
    user = each("user.name", LOWER + " LIKE 'admin%' ESCAPE '\\'")
    assert (
        rule.queries["sqlite"] == dataset + " AND (" + category + " AND (" + outcome + " AND " + user + "))"
    )
    assert (rule.info.technique, rule.info.tactic) == ("T1110.001", "credential-access")
    assert (rule.info.severity, rule.info.name.zh) == (Severity.MEDIUM, "Failed Sign-In To An Admin Account")


def test_a_correlation_takes_its_suppression_from_group_by(tmp_path: Path) -> None:
    rules = loaded(write_rules(tmp_path / "rules", failed=FAILED_LOGIN, brute=BRUTE_FORCE, spray=SPRAY))
    brute, base = rules["Brute Force Against One Account"], rules["Failed Sign-In"]
    assert brute.info.suppress_by == ("user.name",) and brute.info.name.zh == "针对单个账号的暴力破解"
    assert brute.correlation is not None and brute.correlation.timespan_s == 300
    assert rules["Password Spray From One Address"].info.suppress_by == ("source.ip",)
    assert not base.standalone  # referenced without generate: runs only inside the correlations
    assert brute.queries == {f"{base.info.id} {store}": text for store, text in base.queries.items()}


def test_loader_errors_name_the_file_and_do_not_stop_the_others(tmp_path: Path) -> None:
    folder = write_rules(
        tmp_path / "rules",
        good=ADMIN_FAILURE,
        broken_yaml="title: x\ndetection: [unclosed\n",
        unknown_field=SQL_INJECTION.replace("cs-method", "CommandLine").replace(
            "5a5f2b8e-9c1a-4f6e-8a63-2c7e0d7e1a01", "7b6c5d4e-7777-4f8a-9b0c-4d5e6f7a8b09"
        ),
        unknown_modifier=ADMIN_FAILURE.replace("startswith", "beginswith"),
        windows="title: w\nlogsource:\n  product: windows\ndetection:\n  s:\n    Image: x\n  condition: s\n",
        orphan=BRUTE_FORCE,
    )
    (folder / "notes.txt").write_text("not a rule")
    rules, errors = load_folder(folder)
    assert [rule.title for rule in rules] == ["Failed Sign-In To An Admin Account"]
    by_file = {error.file: error.message for error in errors}
    assert set(by_file) == {
        "broken_yaml.yml",
        "unknown_field.yml",
        "unknown_modifier.yml",
        "windows.yml",
        "orphan.yml",
    }
    assert by_file["broken_yaml.yml"].startswith("not a readable Sigma YAML file")
    assert "'CommandLine' has no mapping" in by_file["unknown_field.yml"]
    assert "beginswith" in by_file["unknown_modifier.yml"]
    assert "log source {product: windows}" in by_file["windows.yml"]
    assert "onegate_failed_login" in by_file["orphan.yml"]
    assert str(errors[0]).startswith(f"{errors[0].file}: ")


def test_a_web_field_outside_a_web_log_source_is_refused(tmp_path: Path) -> None:
    folder = write_rules(tmp_path / "rules", odd=ADMIN_FAILURE.replace("user.name|startswith", "c-ip"))
    _, errors = load_folder(folder)
    assert len(errors) == 1 and "'c-ip' has no mapping" in errors[0].message


# -- firing on every store ------------------------------------------------------------------------


async def test_the_web_rule_fires_on_every_store(store: EventStore, tmp_path: Path) -> None:
    rule = loaded(write_rules(tmp_path / "rules", sqli=SQL_INJECTION))["SQL Injection Strings In URI"]
    await store.write(WEB_EVENTS)
    matches = await rule.test(store, T0, T0 + timedelta(hours=1))
    assert ids(matches) == ["w001", "w002", "w003", "w009", "w007"]
    # the time range: start included, end excluded
    assert ids(await rule.test(store, T0 + timedelta(seconds=20), T0 + timedelta(seconds=30))) == ["w002"]


async def test_the_authentication_rule_fires_on_every_store(store: EventStore, tmp_path: Path) -> None:
    rules = loaded(write_rules(tmp_path / "rules", admin=ADMIN_FAILURE))
    await store.write(AUTH_EVENTS)
    matches = await rules["Failed Sign-In To An Admin Account"].test(store, T0, T0 + timedelta(hours=1))
    assert ids(matches) == ["a01", "a02", "a08"]


async def test_a_native_query_without_the_store_s_form_is_refused(store: EventStore) -> None:
    with pytest.raises(QueryError):
        await store.native_search(NativeQuery(texts={"other": "x"}), T0, T0 + timedelta(hours=1))


async def test_event_count_fires_at_ten_failures_in_five_minutes(store: EventStore, tmp_path: Path) -> None:
    rules = loaded(write_rules(tmp_path / "rules", failed=FAILED_LOGIN, brute=BRUTE_FORCE))
    lina = [auth(f"l{n:02d}", 25 * n, "lina") for n in range(10)]  # ten in 225 s
    # wangfang: nine in five minutes, the tenth eleven minutes later (near miss)
    wang = [auth(f"w{n:02d}", 30 * n, "wangfang") for n in range(9)] + [auth("w09", 900, "wangfang")]
    success = [auth(f"s{n:02d}", 5 * n, "zhaolei", **{"event.outcome": "success"}) for n in range(12)]
    await store.write(lina + wang + success)
    matches = await rules["Brute Force Against One Account"].test(store, T0, T0 + timedelta(hours=1))
    assert [(m.group, m.count, m.completing["event.id"]) for m in matches] == [
        ({"user.name": "lina"}, 10, "l09")
    ]
    assert [doc["event.id"] for doc in matches[0].events] == [f"l{n:02d}" for n in range(10)]


async def test_value_count_fires_at_ten_users_from_one_address(store: EventStore, tmp_path: Path) -> None:
    rules = loaded(write_rules(tmp_path / "rules", failed=FAILED_LOGIN, spray=SPRAY))
    spray = [auth(f"p{n:02d}", 10 * n, f"user{n}", **{"source.ip": "203.0.113.9"}) for n in range(10)]
    # near miss: ten failures from another address, but only nine distinct users
    near = [auth(f"q{n:02d}", 10 * n, f"user{min(n, 8)}", **{"source.ip": "198.51.100.4"}) for n in range(10)]
    await store.write(spray + near)
    matches = await rules["Password Spray From One Address"].test(store, T0, T0 + timedelta(hours=1))
    assert [(m.group, m.count, m.completing["event.id"]) for m in matches] == [
        ({"source.ip": "203.0.113.9"}, 10, "p09")
    ]


async def test_temporal_fires_when_both_rules_match_within_the_timespan(
    store: EventStore, tmp_path: Path
) -> None:
    rules = loaded(write_rules(tmp_path / "rules", lock=LOCK_THEN_RESET))
    assert {rule.title for rule in rules.values() if rule.standalone} == {
        "Password Reset Right After A Lockout"
    }

    def idp(event_id: str, seconds: float, user: str, action: str) -> dict[str, Any]:
        return auth(event_id, seconds, user, **{"event.action": action, "event.category": ["iam"]})

    await store.write(
        [
            idp("k1", 0, "zhaolei", "user-locked"),
            idp("k2", 120, "zhaolei", "password-reset"),
            idp("k3", 0, "lina", "user-locked"),
            idp("k4", 1200, "lina", "password-reset"),  # twenty minutes later: near miss
            idp("k5", 30, "wangfang", "password-reset"),  # only one of the two rules
        ]
    )
    matches = await rules["Password Reset Right After A Lockout"].test(store, T0, T0 + timedelta(hours=1))
    assert [(m.group, m.count, [d["event.id"] for d in m.events]) for m in matches] == [
        ({"user.name": "zhaolei"}, 2, ["k1", "k2"])
    ]


# -- the scheduler --------------------------------------------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.signals: list[Signal] = []

    async def raise_signal(self, signal: Signal, *, drill_id: str | None = None) -> None:
        self.signals.append(signal)


class Clock:
    def __init__(self, moment: datetime) -> None:
        self.now = moment.timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def test_a_scheduled_run_raises_each_match_once(tmp_path: Path) -> None:
    from tests.soc.backends.sqlite import open_store

    rules, errors = load_folder(
        write_rules(tmp_path / "rules", sqli=SQL_INJECTION, failed=FAILED_LOGIN, brute=BRUTE_FORCE)
    )
    assert errors == []
    async with open_store(tmp_path) as store:
        await store.write(WEB_EVENTS + [auth(f"l{n:02d}", 25 * n, "lina") for n in range(10)])
        sink, clock, kv = Sink(), Clock(T0 + timedelta(minutes=10)), MemoryKV()
        runner = ScheduledRunner(rules, store, sink, clock, kv=kv)
        assert {rule.title for rule in runner.rules} == {
            "SQL Injection Strings In URI",
            "Brute Force Against One Account",
        }
        first = await runner.run_due()
        by_rule = {signal.rule.name.en: signal for signal in first}
        assert len(first) == 3  # two attacking addresses, one brute-forced account
        web = [s for s in first if s.rule.name.en == "SQL Injection Strings In URI"]
        assert sorted((s.entity["source.ip"], s.events) for s in web) == [
            ("198.51.100.4", ("w003",)),
            ("203.0.113.7", ("w001", "w002", "w009", "w007")),
        ]
        brute = by_rule["Brute Force Against One Account"]
        assert brute.entity == {"user.name": "lina", "source.ip": "10.20.1.5"}
        assert brute.events[-1] == "l09" and brute.values["count"] == 10
        assert "10 matching events for user.name=lina within 300 s" in brute.reason.en
        assert "user.name=lina 在 300 秒内有 10 个匹配事件" in brute.reason.zh

        clock.advance(60)  # not due yet: nothing runs
        assert await runner.run_due() == []
        clock.advance(300)  # due; the look-back still covers the old events: none raised again
        assert await runner.run_due() == []
        await store.write([access(20, 16 * 60, **{"url.query": "a=sleep(3)"})])  # a new one
        clock.advance(300)
        (again,) = await runner.run_due()
        assert again.events == ("w020",)


async def test_a_restart_resumes_from_the_last_run_end(tmp_path: Path) -> None:
    from tests.soc.backends.sqlite import open_store

    rules, _ = load_folder(write_rules(tmp_path / "rules", sqli=SQL_INJECTION))
    async with open_store(tmp_path) as store:
        await store.write(WEB_EVENTS[:1])
        sink, clock, kv = Sink(), Clock(T0 + timedelta(minutes=5)), MemoryKV()
        await ScheduledRunner(rules, store, sink, clock, kv=kv).run_due()
        assert [s.events for s in sink.signals] == [("w001",)]
        ended = clock.now
        # down for an hour: events written meanwhile lie before the next run's look-back
        await store.write([access(30, 20 * 60, **{"url.query": "x=sleep(1)"})])
        clock.advance(3600)
        restarted = ScheduledRunner(rules, store, sink, clock, kv=kv)
        assert await restarted.last_end(rules[0].info.id) == ended
        (signal,) = await restarted.run_due()
        assert signal.events == ("w030",)  # the gap was searched, the first event not raised again
        assert await restarted.last_end(rules[0].info.id) == clock.now


LINA = "EXISTS (SELECT 1 FROM json_each(sigma__doc, '$.\"user.name\"') WHERE value = 'lina')"


@pytest.mark.parametrize(
    "condition",
    [
        f"{LINA} OR (SELECT count(*) FROM ids) > 0",  # another table  # noqa: S608
        "load_extension('x') IS NULL",  # a function outside the list
        f"{LINA}) UNION SELECT id, id, id FROM ids --",  # noqa: S608
        "EXISTS (SELECT 1 FROM json_each(sigma__doc, '$.\"user.name\"') WHERE value = ",  # not SQL
    ],
)
async def test_the_sqlite_store_runs_native_conditions_read_only_on_its_own_table(
    tmp_path: Path, condition: str
) -> None:
    from tests.soc.backends.sqlite import open_store

    async with open_store(tmp_path) as store:
        await store.write(AUTH_EVENTS)
        native = NativeQuery(texts={"sqlite": condition}, fields=("user.name",))
        with pytest.raises(QueryError, match="sqlite cannot run the native query"):
            await store.native_search(native, T0, T0 + timedelta(hours=1))
        assert (
            await store.native_search(
                NativeQuery({"sqlite": LINA}, ("user.name",)), T0, T0 + timedelta(hours=1)
            )
        ).total == 1


def test_temporal_ordered_needs_the_rules_in_their_order() -> None:
    from soc.sigma import Correlation, correlate

    ordered = Correlation("temporal_ordered", ("a", "b"), ("user.name",), 600, "gte", 2)
    hits = {
        "a": [auth("x1", 100, "lina"), auth("y2", 0, "zhaolei")],
        "b": [auth("x2", 200, "lina"), auth("y1", 50, "wangfang"), auth("y3", -60, "zhaolei")],
    }
    assert [(m.group, [d["event.id"] for d in m.events]) for m in correlate(ordered, hits)] == [
        ({"user.name": "lina"}, ["x1", "x2"])  # zhaolei's b came before his a
    ]


async def test_exists_reads_absent_fields_as_absent(store: EventStore, tmp_path: Path) -> None:
    text = ADMIN_FAILURE.replace("user.name|startswith: 'admin'", "session.id|exists: false")
    (rule,) = loaded(write_rules(tmp_path / "rules", nosession=text)).values()
    await store.write([auth("n1", 1, "lina"), auth("n2", 2, "lina", **{"session.id": "s-1"})])
    assert ids(await rule.test(store, T0, T0 + timedelta(hours=1))) == ["n1"]


CASES = """\
title: Scanner Or Odd Agent
id: 3e2d1c0b-8888-4a9b-8c7d-6e5f4a3b2c10
status: test
logsource:
    category: webserver
detection:
    scanner:
        cs-user-agent|contains: 'SQLMap'
    exact:
        cs-user-agent|contains|cased: 'Nikto'
    cyrillic:
        cs-user-agent|contains: 'привет'
    status:
        sc-status: '418'
    condition: scanner or exact or cyrillic or status
level: medium
"""


async def test_strings_match_whatever_their_case_unless_cased(store: EventStore, tmp_path: Path) -> None:
    # Sigma compares strings case-insensitively (|cased opts out): a scanner does not evade a
    # rule by changing the case of its user agent. Values without a letter that has a case
    # (a status written as a string) still match a number field.
    (rule,) = loaded(write_rules(tmp_path / "rules", cases=CASES)).values()
    agents = {
        "c1": "sqlmap/1.7.2#stable (https://sqlmap.org)",
        "c2": "SQLMAP/1.7",
        "c3": "Mozilla/5.0 sQlMaP",
        "c4": "Mozilla/5.0 (Nikto/2.5.0)",
        "c5": "Mozilla/5.0 (nikto/2.5.0)",  # |cased: Nikto only
        "c6": "ПРИВЕТ-бот/1.0",  # Cyrillic upper case, lower-cased by every store
        "c7": "Mozilla/5.0 sql map",  # near miss
        "c8": "curl/8.4",  # near miss
    }
    events = [
        access(n, n, **{"event.id": event_id, "user_agent.original": agent})
        for n, (event_id, agent) in enumerate(agents.items(), start=1)
    ]
    events.append(access(9, 9, **{"event.id": "c9", "http.response.status_code": 418}))
    await store.write(events)
    assert ids(await rule.test(store, T0, T0 + timedelta(hours=1))) == ["c1", "c2", "c3", "c4", "c6", "c9"]
    assert rule.native is not None and "user_agent.original" in rule.native.fields  # the |cased item


LIST_RULES = """\
title: Two Roles At Once
id: 4f3e2d1c-9999-4b8a-9d7e-5f6a4b3c2d11
status: test
logsource:
    category: authentication
detection:
    selection:
        user.roles|all: ['hr-staff', 'auditors']
    condition: selection
level: low
---
title: Failure Of A Non-Admin
id: 5a4f3e2d-aaaa-4c9b-8e7f-6a5b4c3d2e12
status: test
logsource:
    category: authentication
detection:
    selection:
        event.outcome: failure
    admins:
        user.roles: sys-admins
    condition: selection and not admins
level: low
"""


async def test_list_fields_are_read_element_by_element_on_every_store(
    store: EventStore, tmp_path: Path
) -> None:
    # As the search stores read a list: a condition holds when some element satisfies it, so
    # |all asks each value of some element and `not` means no element matches.
    rules = loaded(write_rules(tmp_path / "rules", lists=LIST_RULES))
    await store.write(
        [
            auth("r1", 1, "lina", **{"user.roles": ["hr-staff", "auditors"]}),
            auth("r2", 2, "zhangwei", **{"user.roles": ["hr-staff"]}),
            auth("r3", 3, "sysadmin", **{"user.roles": ["hr-staff", "sys-admins"]}),
            auth("r4", 4, "guest"),  # no roles at all
            auth("r5", 5, "root", **{"user.roles": "sys-admins"}),  # one value, not a list
        ]
    )
    end = T0 + timedelta(hours=1)
    assert ids(await rules["Two Roles At Once"].test(store, T0, end)) == ["r1"]
    assert ids(await rules["Failure Of A Non-Admin"].test(store, T0, end)) == ["r1", "r2", "r4"]
