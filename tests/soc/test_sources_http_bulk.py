"""soc.sources.http_bulk: NDJSON over a real socket (uvicorn) into a real spool and SQLite store;
every refusal with its status, reason, line and event."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from soc.sources.http_bulk import BulkIngest, SourceKeys
from tests.soc.sources_support import Pipeline

PATH = "/api/soc/v1/ingest"
KEYS = {"firewall": "fw-key-0123456789abcdef", "hr-app": "hr-key-0123456789abcdef"}
NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
NDJSON = {"content-type": "application/x-ndjson", "authorization": f"Bearer {KEYS['firewall']}"}


def ndjson(*documents: Any) -> bytes:
    return b"".join(json.dumps(d).encode() + b"\n" for d in documents)


def line(n: int, **fields: Any) -> dict[str, Any]:
    return {
        "@timestamp": f"2026-11-02T09:00:{n:02d}Z",
        "event.id": f"fw{n}",
        "event.action": "deny",
        **fields,
    }


class Served:
    def __init__(self, pipeline: Pipeline, client: httpx.AsyncClient) -> None:
        self.pipeline = pipeline
        self.client = client

    async def post(self, body: bytes, **headers: str) -> httpx.Response:
        return await self.client.post(PATH, content=body, headers={**NDJSON, **headers})


@contextlib.asynccontextmanager
async def serve(pipeline: Pipeline, **options: Any) -> AsyncIterator[Served]:
    bulk = BulkIngest(
        pipeline.ingest, authenticate=SourceKeys(KEYS), events=pipeline.emitted, clock=lambda: NOW, **options
    )
    app = Starlette(routes=[Mount(PATH, app=bulk)])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        # Mount matches the path with a trailing slash; the mounter may also route the bare one.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", follow_redirects=True) as client:
            yield Served(pipeline, client)
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
async def pipeline(tmp_path: Path) -> AsyncIterator[Pipeline]:
    running = await Pipeline(tmp_path).start()
    yield running
    await running.stop()


async def test_documents_are_accepted_stored_and_stamped_with_their_source(pipeline: Pipeline) -> None:
    body = ndjson(
        line(1, **{"source.ip": "203.0.113.9"}),
        {"event": {"id": "fw2", "action": "allow"}, "observer": {"name": "idp", "type": "firewall"}},
        line(3, **{"observer.name": "gateway", "event.module": "onegate"}),
    )
    async with serve(pipeline) as served:
        answer = await served.post(b"\n" + body + b"\r\n")  # blank lines are skipped
    assert answer.status_code == 200 and answer.json() == {"accepted": 3}
    await pipeline.wait_stored(3)
    stored = {d["event.id"]: d for d in await pipeline.stored()}
    assert set(stored) == {"fw1", "fw2", "fw3"}
    # A client cannot pretend to be another source, nested or dotted.
    assert {d["observer.name"] for d in stored.values()} == {"firewall"}
    assert {d["event.module"] for d in stored.values()} == {"firewall"}
    assert stored["fw2"]["observer.type"] == "firewall" and stored["fw2"]["event.action"] == "allow"
    assert stored["fw2"]["@timestamp"] == "2026-11-02T09:30:00.000000Z"  # receipt time when missing
    assert stored["fw1"]["source.ip"] == "203.0.113.9"


async def test_a_gzipped_body_is_accepted(pipeline: Pipeline) -> None:
    first, second = ndjson(line(1), line(2)), ndjson(line(3))
    async with serve(pipeline) as served:
        answer = await served.post(gzip.compress(first), **{"content-encoding": "gzip"})
        # Two gzip members one after another (RFC 1952 §2.2) are one body.
        both = await served.post(gzip.compress(first) + gzip.compress(second), **{"content-encoding": "gzip"})
        truncated = await served.post(gzip.compress(first)[:-6], **{"content-encoding": "gzip"})
    assert answer.json() == {"accepted": 2} and both.json() == {"accepted": 3}
    assert truncated.status_code == 400 and truncated.json()["error"] == "bad_encoding"
    assert sorted(await pipeline.wait_stored(3)) == ["fw1", "fw2", "fw3"]


@pytest.mark.parametrize(
    ("body", "number", "code", "reason"),
    [
        (ndjson(line(1)) + b"{not json}\n" + ndjson(line(3)), 2, "bad_json", "not valid JSON"),
        (ndjson(line(1), line(2)) + b"[1, 2]\n", 3, "bad_json", "one JSON object"),
        (ndjson(line(1)) + b'{"a": 1, "a": 2}\n', 2, "bad_json", "given twice"),
        (ndjson(line(1)) + b'{"x": NaN}\n', 2, "bad_json", "NaN"),
        (ndjson(line(1)) + b'{"x": "\xff"}\n', 2, "bad_json", "not UTF-8"),
        (
            ndjson(line(1)) + b"\n" + ndjson(line(3, **{"@timestamp": "yesterday"})),
            3,
            "bad_document",
            "RFC 3339",
        ),
        (ndjson(line(1), line(2, **{"bad name": 1})), 2, "bad_document", "ECS-style"),
    ],
)
async def test_a_bad_line_refuses_the_request_naming_the_line(
    pipeline: Pipeline, body: bytes, number: int, code: str, reason: str
) -> None:
    async with serve(pipeline) as served:
        answer = await served.post(body)
    assert answer.status_code == 400
    error = answer.json()
    assert error["error"] == code and error["line"] == number
    assert reason in error["message"]["en"] and f"第 {number} 行" in error["message"]["zh"]
    assert pipeline.spool.backlog_documents == 0 and await pipeline.stored_ids() == []  # nothing spooled


@pytest.mark.parametrize(
    ("authorization", "challenge"),
    [
        (None, 'Bearer realm="onegate-soc-ingest"'),
        ("Bearer wrong-key-0123456789abcdef", 'Bearer realm="onegate-soc-ingest", error="invalid_token"'),
        (f"Basic {KEYS['firewall']}", 'Bearer realm="onegate-soc-ingest", error="invalid_token"'),
    ],
    ids=["missing", "unknown", "malformed"],
)
async def test_a_refused_key_is_a_401_and_an_event(
    pipeline: Pipeline, authorization: str | None, challenge: str
) -> None:
    headers = {"content-type": "application/x-ndjson"}
    if authorization is not None:
        headers["authorization"] = authorization
    async with serve(pipeline) as served:
        answer = await served.client.post(PATH, content=ndjson(line(1)), headers=headers)
    assert answer.status_code == 401 and answer.headers["www-authenticate"] == challenge
    assert answer.json()["message"] == {"zh": "需要有效的接入密钥", "en": "a valid ingest key is required"}
    refused = [e for e in pipeline.emitted.events if e.action == "soc-ingest-key-refused"]
    assert len(refused) == 1
    assert refused[0].fields["source.ip"] == "127.0.0.1" and refused[0].fields["onegate.reason"] in {
        "missing",
        "unknown",
        "malformed",
    }
    assert await pipeline.stored_ids() == []


async def test_the_other_key_names_the_other_source(pipeline: Pipeline) -> None:
    async with serve(pipeline) as served:
        answer = await served.post(ndjson(line(1)), authorization=f"Bearer {KEYS['hr-app']}")
    assert answer.json() == {"accepted": 1}
    await pipeline.wait_stored(1)
    assert (await pipeline.stored())[0]["observer.name"] == "hr-app"


async def test_oversize_bodies_and_gzip_bombs_are_413(pipeline: Pipeline) -> None:
    async with serve(pipeline, max_body_bytes=64 * 1024, max_lines=5) as served:
        plain = await served.post(ndjson(*(line(i % 60, message="x" * 1000) for i in range(100))))
        bomb = gzip.compress(b"\n" * (50 << 20))  # 50 MiB of blank lines in about 50 KiB
        bombed = await served.post(bomb, **{"content-encoding": "gzip"})
        lines = await served.post(ndjson(*(line(i) for i in range(6))))
    assert plain.status_code == 413 and plain.json()["error"] == "payload_too_large"
    assert bombed.status_code == 413 and "after decompression" in bombed.json()["message"]["en"]
    assert lines.status_code == 413 and "more than 5 lines" in lines.json()["message"]["en"]
    assert await pipeline.stored_ids() == []


async def test_media_type_encoding_and_method_are_checked(pipeline: Pipeline) -> None:
    async with serve(pipeline) as served:
        as_json = await served.post(ndjson(line(1)), **{"content-type": "application/json"})
        brotli = await served.post(ndjson(line(1)), **{"content-encoding": "br"})
        get = await served.client.get(PATH, headers={"authorization": NDJSON["authorization"]})
    assert as_json.status_code == 415 and brotli.status_code == 415
    assert get.status_code == 405 and get.headers["allow"] == "POST"


async def test_a_full_spool_is_a_503_with_retry_after(tmp_path: Path) -> None:
    full = await Pipeline(tmp_path, max_bytes=16 * 1024).start(writer=False)
    try:
        async with serve(full, retry_after=7) as served:
            statuses = []
            for n in range(40):
                answer = await served.post(
                    ndjson(line(n % 60, **{"event.id": f"f{n}", "message": "x" * 1000}))
                )
                statuses.append(answer.status_code)
                if answer.status_code != 200:
                    break
        assert statuses[0] == 200 and statuses[-1] == 503
        assert answer.headers["retry-after"] == "7" and answer.json()["error"] == "spool_full"
        assert full.spool.backlog_documents == len(statuses) - 1  # the refused request kept nothing
    finally:
        await full.stop()


def test_source_keys_need_some_length() -> None:
    with pytest.raises(ValueError, match="shorter than 16"):
        SourceKeys({"weak": "abc"})
    keys = SourceKeys(KEYS)
    assert keys(KEYS["hr-app"]) == "hr-app" and keys("nope") is None
    assert "fw-key" not in repr(keys)
