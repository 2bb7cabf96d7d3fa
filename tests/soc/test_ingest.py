"""soc.ingest: sources -> spool -> SQLite store, in order and exactly once, through a store
outage and a killed process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from core.events import Category, Event, EventBus, Outcome, RecordingEmitter
from core.eventstore import Query
from soc.ingest import MAX_DOCUMENT_BYTES, REDACTED, DocumentRefused, Ingest, normalise
from soc.spool import Spool, SpoolFull
from soc.stores.sqlite import SqliteEventStore

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[2]


def event(n: int, **fields: Any) -> dict[str, Any]:
    return {
        "@timestamp": (T0 + timedelta(seconds=n)).isoformat().replace("+00:00", "Z"),
        "event.id": f"i{n:05d}",
        "event.action": "sign-in",
        "user.name": f"user{n % 5}",
        **fields,
    }


class Pipeline:
    def __init__(self, root: Path, *, max_bytes: int = 64 << 20) -> None:
        self.spool = Spool(root / "spool", max_bytes=max_bytes, segment_bytes=64 << 10)
        self.store_path = root / "events.db"
        self.store = SqliteEventStore(self.store_path)
        self.emitted = RecordingEmitter()
        self.ingest = Ingest(self.spool, self.store, events=self.emitted, batch_size=100, max_backoff=0.2)
        self.writer: asyncio.Task[None] | None = None

    async def start(self, *, writer: bool = True) -> Pipeline:
        await self.spool.open()
        if writer:
            self.writer = asyncio.create_task(self.ingest.run())
        return self

    async def stop(self) -> None:
        if self.writer is not None:
            self.writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.writer
        await self.spool.close()
        await self.store.close()

    async def stored_ids(self) -> list[str]:
        ids: list[str] = []
        after = None
        while True:
            page = await self.store.search(Query(size=1000, ascending=True, after=after))
            ids += [h["event.id"] for h in page.hits]
            if len(page.hits) < 1000:
                return ids
            after = page.cursor


@pytest.fixture
async def pipeline(tmp_path: Path) -> AsyncIterator[Pipeline]:
    running = await Pipeline(tmp_path).start()
    yield running
    await running.stop()


# -- normalising --------------------------------------------------------------------------------------


def test_documents_are_normalised_to_flat_utc_ecs() -> None:
    nested = {
        "@timestamp": "2026-11-02T17:00:00+08:00",
        "event": {"action": "login", "id": "x1"},
        "user": {"name": "张伟", "password": "hunter2", "roles": ["a", "b"]},
        "http": {"request": {"headers": {"Authorization": "Bearer abc"}}},
    }
    flat = normalise(nested)
    assert flat == {
        "@timestamp": "2026-11-02T09:00:00.000000Z",
        "event.action": "login",
        "event.id": "x1",
        "user.name": "张伟",
        "user.password": REDACTED,
        "user.roles": ["a", "b"],
        "http.request.headers.Authorization": REDACTED,
    }
    received = datetime(2026, 11, 2, 1, 2, 3, tzinfo=UTC)
    assert normalise({"message": "no time"}, received=received)["@timestamp"] == "2026-11-02T01:02:03.000000Z"


def test_an_id_is_derived_from_the_content_when_missing() -> None:
    a = normalise({"@timestamp": "2026-11-02T09:00:00Z", "message": "same"})
    b = normalise({"message": "same", "@timestamp": "2026-11-02T09:00:00.000000Z"})
    c = normalise({"@timestamp": "2026-11-02T09:00:00Z", "message": "other"})
    assert a["event.id"] == b["event.id"] != c["event.id"]


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ({"message": "x"}, "@timestamp is missing"),
        ({"@timestamp": "yesterday"}, "is not RFC 3339"),
        ({"@timestamp": "2026-11-02T09:00:00"}, "needs a time zone"),
        ({"@timestamp": 1700000000}, "must be an RFC 3339 string"),
        ({"@timestamp": "2026-11-02T09:00:00Z", "bad name": 1}, "is not an ECS-style name"),
        ({"@timestamp": "2026-11-02T09:00:00Z", "x": [{"a": 1}]}, "a list holds only"),
        ({"@timestamp": "2026-11-02T09:00:00Z", "x": float("nan")}, "not a JSON scalar"),
        ({"@timestamp": "2026-11-02T09:00:00Z", "event.id": 7}, "event.id must be a string"),
        ({"@timestamp": "2026-11-02T09:00:00Z", "message": "x" * 70_000}, "more than 65536"),
        ({"@timestamp": "2026-11-02T09:00:00Z", **{f"f{i}": i for i in range(600)}}, "more than 512 fields"),
        (["not", "an", "object"], "a document is a JSON object"),
    ],
)
def test_bad_documents_are_refused_with_a_reason(document: Any, reason: str) -> None:
    with pytest.raises(DocumentRefused, match=reason):
        normalise(document, 3)


async def test_a_refused_document_refuses_its_batch(pipeline: Pipeline) -> None:
    with pytest.raises(DocumentRefused, match="document 1: @timestamp is missing"):
        await pipeline.ingest.accept([event(1), {"message": "no time"}])
    assert pipeline.spool.backlog_documents == 0


# -- the pipeline --------------------------------------------------------------------------------------


@pytest.mark.parametrize("batched", [False, True], ids=["one-by-one", "batched"])
async def test_bus_events_reach_the_store_in_order(pipeline: Pipeline, batched: bool) -> None:
    bus = EventBus()
    if batched:
        bus.subscribe_batch("soc-ingest", pipeline.ingest.handle_batch, max_batch=64)
    else:
        bus.subscribe("soc-ingest", pipeline.ingest.handle)
    await bus.start()
    sent = [
        Event(action="access", category=Category.WEB, outcome=Outcome.SUCCESS, fields={"user.name": f"u{i}"})
        for i in range(300)
    ]
    for e in sent:
        bus.emit(e)
    await bus.drain()
    assert await pipeline.ingest.drain()
    await bus.stop()
    assert await pipeline.stored_ids() == [e.id for e in sorted(sent, key=lambda e: (e.timestamp, e.id))]
    assert pipeline.ingest.written == 300 and pipeline.ingest.duplicates == 0


async def test_a_resent_batch_is_stored_once(pipeline: Pipeline) -> None:
    batch = [{"@timestamp": "2026-11-02T09:00:00Z", "message": f"line {i}"} for i in range(50)]
    await pipeline.ingest.accept(batch)
    await pipeline.ingest.accept(batch)  # the source timed out and sent it again
    assert await pipeline.ingest.drain()
    assert await pipeline.store.count(Query()) == 50 and pipeline.ingest.duplicates == 50


async def test_a_locked_store_delays_nothing_loses_nothing_doubles_nothing(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    await pipeline.ingest.accept([event(n) for n in range(100)])
    assert await pipeline.ingest.drain()
    # Another process takes the database: the writer fails, the sources are still acknowledged.
    blocker = sqlite3.connect(tmp_path / "events.db", timeout=0.1)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        for start in range(100, 1000, 100):
            await pipeline.ingest.accept([event(n) for n in range(start, start + 100)])
        deadline = time.monotonic() + 10
        while pipeline.ingest.store_failures == 0:
            assert time.monotonic() < deadline, "the writer never met the locked store"
            await asyncio.sleep(0.02)
        assert pipeline.spool.backlog_documents > 0 and pipeline.ingest.store_down_since is not None
    finally:
        blocker.rollback()
        blocker.close()
    assert await pipeline.ingest.drain(20)
    assert await pipeline.stored_ids() == [f"i{n:05d}" for n in range(1000)]
    assert pipeline.ingest.store_down_since is None


async def test_a_filling_spool_warns_then_refuses(tmp_path: Path) -> None:
    stalled = await Pipeline(tmp_path, max_bytes=64 << 10).start(writer=False)  # nothing drains it
    try:
        with pytest.raises(SpoolFull):
            for n in range(10_000):
                await stalled.ingest.accept([event(n, message="x" * 200)])
        assert "spool-filling" in stalled.emitted.actions()
        kept = stalled.spool.backlog_documents
        assert kept > 0
        stalled.writer = asyncio.create_task(stalled.ingest.run())
        assert await stalled.ingest.drain()
        assert len(await stalled.stored_ids()) == kept
        await stalled.ingest.accept([event(99_999)])  # room again, and the warning is withdrawn
        assert stalled.emitted.actions()[-1] == "spool-recovered"
    finally:
        await stalled.stop()


def test_a_killed_ingest_process_loses_no_acknowledged_event(tmp_path: Path) -> None:
    acknowledged: list[str] = []
    with subprocess.Popen(
        [sys.executable, "-m", "tests.soc.ingest_child", str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None and child.stderr is not None
        deadline = time.monotonic() + 30
        while len(acknowledged) < 2000:
            line = child.stdout.readline()
            assert line, child.stderr.read()
            acknowledged += line.split()
            assert time.monotonic() < deadline
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        acknowledged += child.stdout.read().split()  # whole lines written before the kill

    async def restart() -> list[str]:
        restarted = await Pipeline(tmp_path).start()
        try:
            assert await restarted.ingest.drain(30)
            return await restarted.stored_ids()
        finally:
            await restarted.stop()

    stored = asyncio.run(restart())
    assert len(stored) == len(set(stored))  # once each
    assert set(acknowledged) <= set(stored)  # nothing acknowledged is lost
    assert stored == sorted(stored)  # in order


def test_an_ordinary_flat_document_is_normalised_as_any_other() -> None:
    nested = {
        "@timestamp": "2026-11-02T09:00:00.250000Z",
        "event": {"id": "f1", "action": "access"},
        "user": {"name": "lina", "roles": ("a", "b")},
        "http": {"response": {"status_code": 200}},
        "labels": {"ratio": 0.5, "flag": True, "none": None},
    }
    flat = normalise(nested)  # the general path teaches it the names
    again = normalise(dict(flat))  # a flat dict of known names: the quick path
    assert again == flat and again is not flat
    roles = ["a"]
    copied = normalise({**flat, "user.roles": roles})
    roles.append("b")  # the caller's later change does not reach the normalised document
    assert copied["user.roles"] == ["a"]
    # A secret name, a nested value or a bad time still take the checks.
    assert normalise({**flat, "user.password": "x"})["user.password"] == REDACTED
    with pytest.raises(DocumentRefused, match="not RFC 3339"):
        normalise({**flat, "@timestamp": "2026-13-02T09:00:00.000000Z"})
    with pytest.raises(DocumentRefused, match="a list holds only"):
        normalise({**flat, "user.roles": [{"a": 1}]})
    for bad in (float("nan"), float("inf")):  # JSON has neither: refused, not written as null
        with pytest.raises(DocumentRefused, match="not a JSON scalar"):
            normalise({**flat, "labels.ratio": bad})
        with pytest.raises(DocumentRefused, match="a list holds only"):
            normalise({**flat, "user.roles": ["a", bad]})
    with pytest.raises(DocumentRefused, match="not a JSON scalar"):
        normalise({**flat, "labels.flag": {1, 2}})
    assert normalise({**flat, "user.roles": ("x",)})["user.roles"] == ["x"]  # a tuple becomes a list


def test_a_document_larger_than_the_limit_is_refused_with_its_size() -> None:
    base = {"@timestamp": "2026-11-02T09:00:00.000000Z", "event.id": "big", "message": ""}
    room = MAX_DOCUMENT_BYTES - len(json.dumps(base, separators=(",", ":")).encode())
    assert normalise({**base, "message": "x" * room})["message"] == "x" * room  # exactly the limit
    with pytest.raises(DocumentRefused, match=f"{MAX_DOCUMENT_BYTES + 1} bytes of JSON, more than"):
        normalise({**base, "message": "x" * (room + 1)})
    # Counted in UTF-8 bytes: a Chinese character is three.
    with pytest.raises(DocumentRefused, match="more than"):
        normalise({**base, "message": "张" * (room // 3 + 1)})
    with pytest.raises(DocumentRefused, match="more than"):  # the general path counts alike
        normalise({**base, "labels": {"note": "x" * (room + 1)}})


async def test_documents_are_stored_exactly_whatever_their_characters(pipeline: Pipeline) -> None:
    documents = [
        event(1, message="张伟 signed in"),
        event(2, message="C:\\users\\lina\\u0041"),  # a backslash before u, not an escape
        event(3, message='tab\there, quote " and \u2028'),
        event(4, message="plain"),
    ]
    await pipeline.ingest.accept(documents)
    assert await pipeline.ingest.drain()
    found = await pipeline.store.search(Query(size=10, ascending=True))
    assert found.hits == [normalise(d) for d in documents]
    raw = sqlite3.connect(pipeline.store_path)
    try:
        (text,) = raw.execute("SELECT doc FROM events_20261102 WHERE id = 'i00001'").fetchone()
    finally:
        raw.close()
    assert "张伟" in text  # kept as UTF-8, not as \\u escapes
