"""The event-store contract (core.eventstore), run against every store.

Each store's set-up lives in ``tests/soc/backends/<name>.py`` as ``open_store(tmp_path)``: an
async context manager that yields a fresh, empty store (a new SQLite file; a new index prefix
on a running search server) and cleans up after it. The same documents and queries must give
the same answers on every store.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from core.eventstore import Bucket, EventStore, Query, QueryError

# A real Elasticsearch joins when ELASTICSEARCH_URL names one (tests/soc/backends/elasticsearch_real.py).
BACKENDS = ("sqlite", "opensearch", "elasticsearch") + (
    ("elasticsearch_real",) if os.environ.get("ELASTICSEARCH_URL") else ()
)
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat(timespec="microseconds").replace("+00:00", "Z")


def doc(n: int, seconds: float, **fields: Any) -> dict[str, Any]:
    return {
        "@timestamp": at(seconds),
        "event.id": f"e{n:04d}",
        "event.kind": "event",
        "event.category": ["authentication"],
        "event.action": "sign-in",
        "event.outcome": "success",
        "event.dataset": "onegate.idp",
        **fields,
    }


# Twelve events of a morning: sign-ins, failures, a spray from one address, gateway requests.
EVENTS = [
    doc(1, 0, **{"user.name": "zhangwei", "source.ip": "10.20.1.5", "message": "Password accepted"}),
    doc(
        2,
        30,
        **{
            "user.name": "lina",
            "source.ip": "10.20.1.6",
            "event.outcome": "failure",
            "message": "Wrong password for lina",
        },
    ),
    doc(
        3,
        60,
        **{
            "user.name": "lina",
            "source.ip": "203.0.113.9",
            "event.outcome": "failure",
            "message": "Wrong password for lina",
        },
    ),
    doc(
        4,
        61,
        **{
            "user.name": "wangfang",
            "source.ip": "203.0.113.9",
            "event.outcome": "failure",
            "message": "Wrong password, account wangfang",
        },
    ),
    doc(5, 62, **{"user.name": "zhaolei", "source.ip": "203.0.113.9", "event.outcome": "failure"}),
    doc(6, 120, **{"user.name": "admin", "source.ip": "10.20.1.7", "user.roles": ["sys-admins", "auditors"]}),
    doc(
        7,
        180,
        **{
            "event.category": ["web"],
            "event.action": "access",
            "event.dataset": "onegate.gateway",
            "user.name": "zhangwei",
            "url.path": "/hr/payroll",
            "http.response.status_code": 200,
            "onegate.app": "hr",
            "onegate.rule_ids": ["hr-staff"],
            "http.response.bytes": 5120,
        },
    ),
    doc(
        8,
        181,
        **{
            "event.category": ["web"],
            "event.action": "access",
            "event.dataset": "onegate.gateway",
            "user.name": "zhangwei",
            "url.path": "/hr/payroll/2026",
            "http.response.status_code": 200,
            "onegate.app": "hr",
            "onegate.rule_ids": ["hr-staff"],
            "http.response.bytes": 10240,
        },
    ),
    doc(
        9,
        240,
        **{
            "event.category": ["web"],
            "event.action": "access",
            "event.dataset": "onegate.gateway",
            "user.name": "lina",
            "url.path": "/permits/admin",
            "http.response.status_code": 403,
            "onegate.app": "permits",
            "onegate.rule_ids": ["default-deny"],
            "event.outcome": "failure",
        },
    ),
    doc(
        10,
        241,
        **{
            "event.category": ["web"],
            "event.action": "access",
            "event.dataset": "onegate.gateway",
            "user.name": "lina",
            "url.path": "/permits/a b",
            "http.response.status_code": 404,
            "onegate.app": "permits",
            "event.outcome": "failure",
        },
    ),
    doc(
        11,
        300,
        **{
            "user.name": "张伟",
            "source.ip": "10.20.1.5",
            "message": "登录成功 sign-in ok",
            "user.full_name": "张伟",
        },
    ),
    doc(12, 3600, **{"user.name": "zhangwei", "source.ip": "10.20.1.5", "event.action": "sign-out"}),
]


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventStore]:
    backend = importlib.import_module(f"tests.soc.backends.{request.param}")
    async with backend.open_store(tmp_path) as opened:
        yield opened


@pytest.fixture
async def filled(store: EventStore) -> EventStore:
    result = await store.write(EVENTS)
    assert (result.written, result.duplicates) == (len(EVENTS), 0)
    return store


def ids(hits: list[dict[str, Any]]) -> list[int]:
    return [int(h["event.id"][1:]) for h in hits]


async def found(store: EventStore, text: str | None = None, **options: Any) -> list[int]:
    result = await store.search(Query(text=text, size=100, ascending=True, **options))
    return ids(result.hits)


# -- writing --------------------------------------------------------------------------------------


async def test_writing_is_idempotent_by_event_id(store: EventStore) -> None:
    assert (await store.write(EVENTS[:3])).written == 3
    again = await store.write([EVENTS[1], {**EVENTS[2], "user.name": "changed"}, EVENTS[3]])
    assert (again.written, again.duplicates) == (1, 2)
    assert await store.count(Query()) == 4
    (kept,) = (await store.search(Query(text="event.id:e0003"))).hits
    assert kept["user.name"] == "lina"  # the first write stays
    assert (await store.write([])).written == 0


async def test_documents_come_back_as_written(filled: EventStore) -> None:
    hits = (await filled.search(Query(size=100, ascending=True))).hits
    assert hits == EVENTS  # every field, type and list, the Chinese text too


# -- ordering, paging and time --------------------------------------------------------------------


async def test_newest_first_unless_ascending_and_paged_by_cursor(filled: EventStore) -> None:
    newest = await filled.search(Query(size=5))
    assert newest.total == 12 and ids(newest.hits) == [12, 11, 10, 9, 8]
    page2 = await filled.search(Query(size=5, after=newest.cursor))
    assert page2.total == 12 and ids(page2.hits) == [7, 6, 5, 4, 3]
    page3 = await filled.search(Query(size=5, after=page2.cursor))
    assert ids(page3.hits) == [2, 1] and page3.cursor is not None
    assert (await filled.search(Query(size=5, after=page3.cursor))).hits == []
    oldest = await filled.search(Query(size=3, ascending=True))
    assert ids(oldest.hits) == [1, 2, 3]
    assert ids((await filled.search(Query(size=3, ascending=True, after=oldest.cursor))).hits) == [4, 5, 6]
    assert (await filled.search(Query(size=0))).total == 12


async def test_equal_timestamps_are_ordered_by_event_id(store: EventStore) -> None:
    same = [doc(n, 0, **{"user.name": "x"}) for n in (3, 1, 2)]
    await store.write(same)
    assert await found(store) == [1, 2, 3]
    first = await store.search(Query(size=1, ascending=True))
    assert ids((await store.search(Query(size=5, ascending=True, after=first.cursor))).hits) == [2, 3]


async def test_the_time_range_includes_its_start_and_excludes_its_end(filled: EventStore) -> None:
    start, end = T0 + timedelta(seconds=60), T0 + timedelta(seconds=180)
    assert await found(filled, start=start, end=end) == [3, 4, 5, 6]
    assert await found(filled, start=T0 + timedelta(seconds=301)) == [12]
    assert await found(filled, end=T0 + timedelta(seconds=1)) == [1]


# -- filters and the query language ---------------------------------------------------------------


async def test_filters_allow_any_of_their_values(filled: EventStore) -> None:
    assert await found(filled, filters={"user.name": ["lina"]}) == [2, 3, 9, 10]
    assert await found(filled, filters={"user.name": ["lina", "admin"], "event.outcome": ["success"]}) == [6]
    assert await found(filled, filters={"event.category": ["web"]}) == [7, 8, 9, 10]  # a list field
    assert await found(filled, filters={"http.response.status_code": [403, 404]}) == [9, 10]
    assert await found(filled, filters={"user.name": ["nobody"]}) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("user.name:lina", [2, 3, 9, 10]),
        ("user.name:Lina", []),  # values are exact, case included
        ("user.name:张伟", [11]),
        ('url.path:"/permits/a b"', [10]),
        ("http.response.status_code:403", [9]),
        ("user.roles:auditors", [6]),  # any element of a list
        ("onegate.rule_ids:hr-staff", [7, 8]),
        ("url.path:/hr/payroll*", [7, 8]),
        ("source.ip:203.0.113.*", [3, 4, 5]),
        ("http.response.status_code:[400 TO 499]", [9, 10]),
        ("http.response.status_code:[* TO 299]", [7, 8]),
        ("http.response.bytes:[6000 TO *]", [8]),
        ("message:*", [1, 2, 3, 4, 11]),
        ("password", [1, 2, 3, 4]),  # full text, any field, case-insensitive
        ("WRONG password", [2, 3, 4]),  # every word
        ('"wrong password"', [2, 3, 4]),
        ("wangfang", [4]),  # a word inside a message, and a field value
        ("登录成功", [11]),
        ("event.outcome:failure AND source.ip:203.0.113.9", [3, 4, 5]),
        ("event.outcome:failure source.ip:203.0.113.9", [3, 4, 5]),  # side by side: AND
        ("user.name:admin OR user.name:zhaolei", [5, 6]),
        ("event.outcome:failure AND NOT user.name:lina", [4, 5]),
        ("event.outcome:failure -user.name:lina", [4, 5]),
        ("(user.name:lina OR user.name:wangfang) AND source.ip:203.0.113.9", [3, 4]),
        ("NOT event.category:authentication", [7, 8, 9, 10]),
        ("event.dataset:onegate.gateway AND NOT onegate.rule_ids:*", [10]),
    ],
)
async def test_the_query_language(filled: EventStore, text: str, expected: list[int]) -> None:
    assert await found(filled, text) == expected
    assert await filled.count(Query(text=text)) == len(expected)


@pytest.mark.parametrize("text", ["user.name:", "(a", "a)", "user.name:a*b", "x:[1 2]", "AND", "a" * 5000])
def test_queries_outside_the_language_are_refused_before_any_store(text: str) -> None:
    with pytest.raises(QueryError):
        Query(text=text)


# -- aggregations ---------------------------------------------------------------------------------


async def test_terms_count_each_value_most_frequent_first(filled: EventStore) -> None:
    assert await filled.terms(Query(), "user.name", size=3) == [
        Bucket("lina", 4),
        Bucket("zhangwei", 4),
        Bucket("admin", 1),
    ]
    assert await filled.terms(Query(text="event.outcome:failure"), "source.ip") == [
        Bucket("203.0.113.9", 3),
        Bucket("10.20.1.6", 1),
    ]
    assert await filled.terms(Query(), "onegate.rule_ids") == [
        Bucket("hr-staff", 2),
        Bucket("default-deny", 1),
    ]
    assert await filled.terms(Query(), "http.response.status_code") == [
        Bucket(200, 2),
        Bucket(403, 1),
        Bucket(404, 1),
    ]
    assert await filled.terms(Query(text="user.name:nobody"), "user.name") == []


async def test_cardinality_counts_distinct_values(filled: EventStore) -> None:
    assert await filled.cardinality(Query(), "user.name") == 6
    assert await filled.cardinality(Query(text="event.outcome:failure"), "user.name") == 3
    assert await filled.cardinality(Query(), "user.roles") == 2
    assert await filled.cardinality(Query(), "no.such.field") == 0


async def test_date_histogram_buckets_are_aligned_and_gaps_are_kept(filled: EventStore) -> None:
    buckets = await filled.date_histogram(Query(end=T0 + timedelta(seconds=301)), 60)
    assert buckets == [
        Bucket(T0, 2),
        Bucket(T0 + timedelta(seconds=60), 3),
        Bucket(T0 + timedelta(seconds=120), 1),
        Bucket(T0 + timedelta(seconds=180), 2),
        Bucket(T0 + timedelta(seconds=240), 2),
        Bucket(T0 + timedelta(seconds=300), 1),
    ]
    hourly = await filled.date_histogram(Query(), 3600)
    assert hourly == [Bucket(T0, 11), Bucket(T0 + timedelta(hours=1), 1)]
    assert await filled.date_histogram(Query(text="user.name:nobody"), 60) == []


# -- retention ------------------------------------------------------------------------------------


async def test_retention_removes_what_is_older_than_the_cutoff(filled: EventStore) -> None:
    await filled.delete_before(T0 + timedelta(seconds=121))
    assert await found(filled) == [7, 8, 9, 10, 11, 12]
    await filled.delete_before(T0 + timedelta(days=1))
    assert await filled.count(Query()) == 0
    assert (await filled.write(EVENTS[:1])).written == 1  # writable again, even an old id
