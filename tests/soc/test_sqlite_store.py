"""The SQLite event store beyond the shared contract: day partitions and retention, idempotency
across files reopened and days, a locked database, refused documents, SQL-looking input, many
partitions in one query, concurrent writers, and the hot-field shortcut staying exact."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.eventstore import Bucket, Query, QueryError, StoreUnavailable, WriteResult, words
from soc.stores.sqlite import SqliteEventStore, _fts_text
from tests.soc.backends.sqlite import open_store

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def at(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def doc(n: int, moment: datetime, **fields: Any) -> dict[str, Any]:
    return {
        "@timestamp": at(moment),
        "event.id": f"e{n:05d}",
        "event.action": "sign-in",
        "event.outcome": "success",
        "user.name": f"user{n % 7}",
        **fields,
    }


def ids(hits: list[dict[str, Any]]) -> list[str]:
    return [hit["event.id"] for hit in hits]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteEventStore]:
    async with open_store(tmp_path) as opened:  # tmp_path / "events.db"
        yield opened


@contextlib.contextmanager
def peek(path: Path) -> Iterator[sqlite3.Connection]:
    """A second, read-only connection to the store's file."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        yield conn
    finally:
        conn.close()


def tables(path: Path, prefix: str) -> list[str]:
    """The tables named ``prefix`` or ``prefix`` + a day (FTS5's own shadow tables left out)."""
    with peek(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").fetchall()
    return [name for (name,) in rows if name == prefix or name.removeprefix(prefix).isdigit()]


async def everything(store: SqliteEventStore, **options: Any) -> list[str]:
    """Every matching event id, oldest first, read page by page through the cursor."""
    found: list[str] = []
    after = None
    while True:
        page = await store.search(Query(size=7, ascending=True, after=after, **options))
        found.extend(ids(page.hits))
        if len(page.hits) < 7:
            return found
        after = page.cursor


# -- partitions and retention ---------------------------------------------------------------------


async def test_each_utc_day_is_a_partition_and_retention_drops_whole_old_days(
    store: SqliteEventStore, tmp_path: Path
) -> None:
    days = [T0 - timedelta(days=2), T0 - timedelta(days=1), T0]
    events = [
        doc(n, day + timedelta(hours=hour), message=f"entry n{n} of day {i}")
        for i, day in enumerate(days)
        for n, hour in ((i * 10 + 1, 0), (i * 10 + 2, 5), (i * 10 + 3, 10))
    ]
    # Each day newest first, so the morning rows removed below are the last rows written.
    assert (await store.write([e for i in range(0, 9, 3) for e in reversed(events[i : i + 3])])).written == 9
    path = tmp_path / "events.db"
    assert tables(path, "events_") == ["events_20261031", "events_20261101", "events_20261102"]
    assert tables(path, "words_") == ["words_20261031", "words_20261101", "words_20261102"]

    # The cutoff falls inside 1 November: 31 October goes whole, 1 November loses its morning.
    removed = await store.delete_before(T0 - timedelta(days=1) + timedelta(hours=3))
    assert removed == 4
    assert tables(path, "events_") == ["events_20261101", "events_20261102"]
    assert tables(path, "words_") == ["words_20261101", "words_20261102"]
    assert await everything(store) == ["e00012", "e00013", "e00021", "e00022", "e00023"]
    # The full-text index forgot the deleted rows, even for a row written in their place since.
    await store.write([doc(50, T0 - timedelta(hours=22), message="fresh")])
    assert ids((await store.search(Query(text="n11"))).hits) == []
    assert ids((await store.search(Query(text="fresh"))).hits) == ["e00050"]
    assert ids((await store.search(Query(text="n12"))).hits) == ["e00012"]
    # Removed ids are free again; kept ones are still duplicates.
    again = await store.write([events[0], events[3], events[4]])
    assert (again.written, again.duplicates) == (2, 1)


async def test_retention_of_nothing_and_of_everything(store: SqliteEventStore, tmp_path: Path) -> None:
    assert await store.delete_before(T0) == 0
    await store.write([doc(1, T0), doc(2, T0 + timedelta(days=3))])
    assert await store.delete_before(T0 - timedelta(days=1)) == 0
    assert await store.delete_before(T0 + timedelta(days=10)) == 2
    assert tables(tmp_path / "events.db", "events_") == []
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.delete_before(datetime(2026, 11, 2))


# -- idempotency ----------------------------------------------------------------------------------


async def test_event_ids_stay_unique_across_days_and_a_reopened_file(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    first = SqliteEventStore(path)
    try:
        batch = [doc(n, T0 + timedelta(minutes=n), message="original") for n in range(1, 6)]
        assert (await first.write(batch)).written == 5
    finally:
        await first.close()

    second = SqliteEventStore(path)
    try:
        again = [
            *batch[:2],
            {**batch[2], "message": "changed"},  # same id, other content: the first stays
            {**batch[3], "@timestamp": at(T0 + timedelta(days=40))},  # same id, another partition
            doc(6, T0 - timedelta(days=3)),
            doc(6, T0 + timedelta(days=1)),  # twice in one batch: the first of the batch wins
        ]
        result = await second.write(again)
        assert (result.written, result.duplicates) == (1, 5)
        assert await second.count(Query()) == 6
        assert await second.count(Query(text="message:changed")) == 0
        assert (await second.search(Query(text="event.id:e00004"))).hits == [batch[3]]
        assert (await second.search(Query(text="event.id:e00006"))).hits[0]["@timestamp"] == at(
            T0 - timedelta(days=3)
        )
        assert tables(path, "events_") == ["events_20261030", "events_20261102"]
    finally:
        await second.close()


async def test_concurrent_writers_store_every_event_exactly_once(store: SqliteEventStore) -> None:
    # Eight tasks write overlapping slices of the same 400 events at once.
    events = [doc(n, T0 + timedelta(seconds=n % 90, days=n % 3)) for n in range(400)]
    slices = [events[start : start + 100] for start in range(0, 400, 50)] + [events[::3], events[1::3]]
    results = await asyncio.gather(*(store.write(part) for part in slices))
    assert sum(result.written for result in results) == 400
    assert sum(result.duplicates for result in results) == sum(map(len, slices)) - 400
    stored = await everything(store)
    assert len(stored) == 400 and sorted(stored) == sorted(e["event.id"] for e in events)


# -- failures -------------------------------------------------------------------------------------


async def test_a_locked_database_is_unavailable_until_released_and_nothing_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    store = SqliteEventStore(path, busy_timeout=0.05)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        before = [doc(n, T0 + timedelta(seconds=n)) for n in range(10)]
        during = [doc(n, T0 + timedelta(seconds=n)) for n in range(10, 20)]
        assert (await store.write(before)).written == 10

        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreUnavailable) as refused:
            await store.write(during)
        reason = str(refused.value)
        assert "locked" in reason and "\n" not in reason
        assert await store.count(Query()) == 10  # WAL: reading goes on while the lock is held

        other.execute("ROLLBACK")
        assert (await store.write(during)).written == 10
        replay = await store.write(before + during)
        assert (replay.written, replay.duplicates) == (0, 20)
        assert await everything(store) == [e["event.id"] for e in before + during]
    finally:
        other.close()
        await store.close()


async def test_a_database_that_cannot_be_opened_works_once_the_cause_is_gone(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "not-yet" / "events.db")
    try:
        with pytest.raises(StoreUnavailable, match="unable to open"):
            await store.write([doc(1, T0)])
        with pytest.raises(StoreUnavailable):
            await store.ping()
        (tmp_path / "not-yet").mkdir()
        await store.ping()
        assert (await store.write([doc(1, T0)])).written == 1
    finally:
        await store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.write([doc(2, T0)])


async def test_a_file_that_is_not_a_database_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    path.write_bytes(b"not a database, just some text " * 200)
    store = SqliteEventStore(path)
    try:
        with pytest.raises(StoreUnavailable, match="not a database"):
            await store.count(Query())
    finally:
        await store.close()


GOOD = doc(1, T0)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({k: v for k, v in GOOD.items() if k != "@timestamp"}, "has no @timestamp"),
        ({k: v for k, v in GOOD.items() if k != "event.id"}, "has no event.id"),
        ({**GOOD, "event.id": ""}, "event.id must be a non-empty string"),
        ({**GOOD, "event.id": 17}, "event.id must be a non-empty string"),
        ({**GOOD, "@timestamp": "2026-11-02T09:00:00+08:00"}, "not an RFC 3339 UTC time"),
        ({**GOOD, "@timestamp": "2026-11-02T09:00:00"}, "not an RFC 3339 UTC time"),
        ({**GOOD, "@timestamp": "2026-11-02 09:00:00Z"}, "not an RFC 3339 UTC time"),
        ({**GOOD, "@timestamp": "2026-02-30T09:00:00Z"}, "not an RFC 3339 UTC time"),
        ({**GOOD, "@timestamp": "2026-11-02T24:00:00Z"}, "not an RFC 3339 UTC time"),
        ({**GOOD, "@timestamp": 1793610000}, "not an RFC 3339 UTC time"),
        ({**GOOD, "user": {"name": "nested"}}, "user is neither a JSON scalar"),
        ({**GOOD, "tags": ["a", ["b"]]}, "tags holds a list element"),
        ({**GOOD, "score": float("nan")}, "Out of range float"),
        ({**GOOD, 7: "seven"}, "field name '7' is not a string"),
        ({**GOOD, "message": "half a pair \ud800"}, "not valid Unicode"),
        ("not a document", "is not a mapping"),
    ],
)
async def test_a_bad_document_refuses_its_whole_batch(store: SqliteEventStore, bad: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as refused:
        await store.write([doc(0, T0), bad, doc(2, T0)])
    assert str(refused.value).startswith("documents[1]")
    assert await store.count(Query()) == 0
    assert (await store.write([doc(0, T0)])).written == 1  # nothing of the batch was kept


async def test_utc_spellings_of_rfc_3339_are_accepted_and_ordered_by_time(store: SqliteEventStore) -> None:
    spellings = [
        "2026-11-02T09:00:00.5+00:00",
        "2026-11-02t09:00:00z",
        "2026-11-02T09:00:00.123456789Z",
        "2026-11-02T08:59:59-00:00",
    ]
    await store.write([{"@timestamp": s, "event.id": f"s{i}"} for i, s in enumerate(spellings)])
    assert ids((await store.search(Query(ascending=True))).hits) == ["s3", "s1", "s2", "s0"]


# -- queries --------------------------------------------------------------------------------------


SQL_LOOKING = [
    "') OR 1=1 --",
    "x'; DROP TABLE ids; --",
    '"; DELETE FROM partitions; --',
    "' OR '1'='1",
    'NEAR("a" "b") OR * AND -',
]


async def test_sql_and_fts_looking_text_is_only_data(store: SqliteEventStore, tmp_path: Path) -> None:
    events = [doc(n, T0 + timedelta(seconds=n), message=text) for n, text in enumerate(SQL_LOOKING)]
    events.append(doc(99, T0 + timedelta(minutes=9), message="plain", **{"user.name": "it's me"}))
    await store.write(events)
    for n, text in enumerate(SQL_LOOKING):
        quoted = text.replace("\\", "\\\\").replace('"', '\\"')
        assert ids((await store.search(Query(text=f'message:"{quoted}"'))).hits) == [f"e{n:05d}"]
        assert ids((await store.search(Query(filters={"message": [text]}))).hits) == [f"e{n:05d}"]
        assert await store.count(Query(filters={"user.name": [text]})) == 0
    assert ids((await store.search(Query(text="drop table ids"))).hits) == ["e00001"]
    assert ids((await store.search(Query(text='"near"'))).hits) == ["e00004"]
    assert ids((await store.search(Query(text='user.name:"it\'s me"'))).hits) == ["e00099"]
    assert ids((await store.search(Query(text="message:x'*"))).hits) == ["e00001"]
    for field in ['user.name") OR 1=1 --', "a'b", "user name", ""]:
        with pytest.raises(QueryError):
            await store.search(Query(filters={field: ["x"]}))
        with pytest.raises(QueryError):
            await store.terms(Query(), field)
        with pytest.raises(QueryError):
            await store.cardinality(Query(), field)
    with pytest.raises(QueryError, match="list of values"):
        await store.search(Query(filters={"user.name": "lina"}))  # type: ignore[dict-item]
    # Nothing was executed as SQL: every table and row is still there.
    assert await store.count(Query()) == len(events)
    assert tables(tmp_path / "events.db", "ids") == ["ids"]
    assert tables(tmp_path / "events.db", "partitions") == ["partitions"]


async def test_full_text_words_are_exactly_those_of_the_query_language(store: SqliteEventStore) -> None:
    text = "ΟΔΟΣ İstanbul snake_case Straße café 東京都 x_ _ naïve"
    await store.write([doc(1, T0, message=text), doc(2, T0, message="cafe naive")])
    for surface in text.split():
        if words(surface):  # "_" alone is no word
            assert ids((await store.search(Query(text=surface))).hits) == ["e00001"], surface
    assert ids((await store.search(Query(text="οδος İSTANBUL"))).hits) == ["e00001"]  # any case
    assert ids((await store.search(Query(text="cafe"))).hits) == ["e00002"]  # accents are kept
    assert ids((await store.search(Query(text="snake"))).hits) == []  # _ joins a word


async def test_a_hot_field_holding_lists_or_numbers_is_searched_exactly(store: SqliteEventStore) -> None:
    plain = [doc(n, T0 + timedelta(seconds=n), **{"source.ip": "10.0.0.1"}) for n in range(1, 4)]
    odd = [
        doc(4, T0 + timedelta(seconds=4), **{"user.name": ["user4", "ΟΔΟΣΑ"], "source.ip": "10.0.0.9"}),
        doc(5, T0 + timedelta(seconds=5), **{"user.name": 404, "event.outcome": None}),
        doc(6, T0 + timedelta(days=1), **{"user.name": "ΟΔΟΣΑ"}),  # another day, strings only
    ]
    await store.write(plain + odd)

    async def found(text: str) -> list[str]:
        return ids((await store.search(Query(text=text, ascending=True))).hits)

    assert await found("user.name:user4") == ["e00004"]
    assert await found("user.name:ΟΔΟΣΑ") == ["e00004", "e00006"]
    assert await found("user.name:ΟΔΟΣ*") == ["e00004", "e00006"]  # a cut word is not a needle
    assert await found("user.name:404") == ["e00005"]
    assert await found("user.name:[400 TO 500]") == ["e00005"]
    assert await found("event.outcome:*") == ["e00001", "e00002", "e00003", "e00004", "e00006"]
    assert await found("NOT source.ip:10.0.0.1") == ["e00004", "e00005", "e00006"]
    assert await found("source.ip:10.0.0.*") == ["e00001", "e00002", "e00003", "e00004"]
    # Counted per element; ties put text before numbers, then the smaller value first.
    assert await store.terms(Query(), "user.name", size=3) == [
        Bucket("ΟΔΟΣΑ", 2),
        Bucket("user1", 1),
        Bucket("user2", 1),
    ]
    assert (await store.terms(Query(), "user.name", size=10))[-1] == Bucket(404, 1)
    assert await store.cardinality(Query(), "user.name") == 6


async def test_many_partitions_in_one_query(store: SqliteEventStore) -> None:
    # 510 days, beyond SQLite's 500 terms of a compound SELECT; a gap every tenth day.
    first = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    events = [
        doc(n, first + timedelta(days=n, minutes=n % 5), message=f"day {n}")
        for n in range(510)
        if n % 10 != 9
    ]
    await store.write(events)
    everyone = [e["event.id"] for e in events]
    assert await store.count(Query()) == len(events)
    assert await everything(store) == everyone

    newest = await store.search(Query(size=3))
    assert ids(newest.hits) == everyone[-1:-4:-1] and newest.total == len(events)
    older = await store.search(Query(size=3, after=newest.cursor))
    assert ids(older.hits) == everyone[-4:-7:-1]

    # Only the days in [start, end) count, whichever partitions they live in.
    start, end = first + timedelta(days=100), first + timedelta(days=131)
    inside = [e["event.id"] for e in events if start <= first + timedelta(days=int(e["event.id"][1:])) < end]
    assert await everything(store, start=start, end=end) == inside
    assert await store.count(Query(start=start, end=end, text="day")) == len(inside)
    daily = await store.date_histogram(Query(start=start, end=end), 86_400)
    midnight = start.replace(hour=0)
    assert [b.key for b in daily] == [midnight + timedelta(days=d) for d in range(31)]
    assert [b.count for b in daily] == [0 if (100 + d) % 10 == 9 else 1 for d in range(31)]
    assert await store.terms(Query(text="day 300"), "message") == [Bucket("day 300", 1)]


async def test_aggregation_arguments_are_checked(store: SqliteEventStore) -> None:
    await store.write([doc(1, T0), doc(2, T0 + timedelta(days=400))])
    with pytest.raises(QueryError, match="interval"):
        await store.date_histogram(Query(), 0)
    with pytest.raises(QueryError, match="more than"):
        await store.date_histogram(Query(), 1)  # 400 days in seconds
    with pytest.raises(QueryError, match="size"):
        await store.terms(Query(), "user.name", size=-1)
    with pytest.raises(QueryError, match="cursor"):
        await store.search(Query(after=("yesterday", "e00001")))


def _words_version_file(path: Path, documents: list[dict[str, Any]]) -> None:
    """A store file as earlier versions of the store wrote it: the FTS text of a document is the
    words of its string values (now: ASCII values as they are, for the tokenizer to split)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("CREATE TABLE ids (id TEXT PRIMARY KEY) WITHOUT ROWID")
        conn.execute("CREATE TABLE partitions (day INTEGER PRIMARY KEY, mixed INTEGER NOT NULL DEFAULT 0)")
        hot = "user_name TEXT, source_ip TEXT, event_action TEXT, event_outcome TEXT, event_dataset TEXT"
        conn.execute(
            "CREATE TABLE events_20261102 (n INTEGER PRIMARY KEY, ts INTEGER NOT NULL, id TEXT NOT NULL, "
            f"doc TEXT NOT NULL, {hot})"
        )
        conn.execute("CREATE INDEX events_20261102_time ON events_20261102 (ts, id)")
        conn.execute(
            "CREATE VIRTUAL TABLE words_20261102 USING fts5("
            "words, content='', detail=none, tokenize=\"ascii tokenchars '_'\")"
        )
        conn.execute("INSERT INTO partitions (day, mixed) VALUES (20261102, 0)")
        for n, document in enumerate(documents, 1):
            moment = datetime.fromisoformat(document["@timestamp"].replace("Z", "+00:00"))
            ts = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
            names = ("user.name", "source.ip", "event.action", "event.outcome", "event.dataset")
            conn.execute(
                "INSERT INTO events_20261102 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (n, ts, document["event.id"], json.dumps(document), *(document.get(f) for f in names)),
            )
            text = " ".join(w for v in document.values() if isinstance(v, str) for w in words(v))
            conn.execute("INSERT INTO words_20261102 (rowid, words) VALUES (?, ?)", (n, text))
            conn.execute("INSERT INTO ids VALUES (?)", (document["event.id"],))
        conn.execute("PRAGMA user_version = 1")
    finally:
        conn.close()


async def test_a_file_of_indexed_words_is_read_written_and_trimmed(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    _words_version_file(
        path,
        [
            doc(1, T0, message="İstanbul 张伟 signed_in"),
            doc(2, T0 + timedelta(hours=1), message="payroll export"),
        ],
    )
    async with open_store(tmp_path) as store:
        assert ids((await store.search(Query(text="istanbul"))).hits) == []  # İ is i + a dot
        assert ids((await store.search(Query(text="İstanbul 张伟"))).hits) == ["e00001"]
        assert ids((await store.search(Query(text="signed_in"))).hits) == ["e00001"]
        # Written to, the same day and a new one hold the new text: the same words.
        await store.write(
            [
                doc(3, T0 + timedelta(hours=2), message="payroll İstanbul"),
                doc(4, T0 + timedelta(days=1), message="payroll İstanbul"),
            ]
        )
        assert ids((await store.search(Query(text="payroll", ascending=True))).hits) == [
            "e00002",
            "e00003",
            "e00004",
        ]
        assert ids((await store.search(Query(text="İstanbul", ascending=True))).hits) == [
            "e00001",
            "e00003",
            "e00004",
        ]
        assert ids(
            (await store.search(Query(filters={"message": ["payroll İstanbul"]}, ascending=True))).hits
        ) == [
            "e00003",
            "e00004",
        ]
        assert await store.write([doc(1, T0, message="again")]) == WriteResult(0, 1)  # ids kept
        # Retention inside the old day removes rows from its full-text index in its form.
        assert await store.delete_before(T0 + timedelta(minutes=30)) == 1
        assert ids((await store.search(Query(text="İstanbul", ascending=True))).hits) == ["e00003", "e00004"]
    with peek(path) as conn:
        # The removed row's words left the index: its tokens were given back.
        rows = conn.execute(
            "SELECT rowid FROM words_20261102 WHERE words_20261102 MATCH '\"stanbul\"'"
        ).fetchall()
        assert rows == [(3,)]


_VALUE = st.text(
    alphabet=st.sampled_from([*"aZ09_ -./:()", "é", "İ", "张", "，", "\u0301", "\n"]), max_size=12
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_VALUE, max_size=5))
def test_the_full_text_column_gives_fts5_exactly_the_words_of_the_values(values: list[str]) -> None:
    # What the store gives FTS5 for a document's string values, split by the very tokenizer the
    # store's tables use, is the words core.eventstore.words finds in those values, each time
    # as often: the query side (words) and the index agree, and a row is removed by giving back
    # the same tokens whichever text form it went in with.
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("CREATE VIRTUAL TABLE t USING fts5(words, tokenize=\"ascii tokenchars '_'\")")
        conn.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, 'instance')")
        conn.execute("INSERT INTO t (rowid, words) VALUES (1, ?)", (_fts_text(values),))
        tokens = sorted(term for (term,) in conn.execute("SELECT term FROM v"))
    finally:
        conn.close()
    assert tokens == sorted(word for value in values for word in words(value))
