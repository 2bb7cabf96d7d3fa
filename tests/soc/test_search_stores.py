"""soc.stores.search: what the Elasticsearch and OpenSearch stores do beyond the shared contract
(tests/soc/test_store_contract.py) — the index template and daily indices, idempotency across
store objects, refused documents, an unreachable or silent server and the recovery after it,
the header hop for the official client, and query text that only looks like SQL or Lucene.

Both stores run against osmem-server: opensearch-py directly, the ``elasticsearch`` client
through the header hop (tests/soc/search_servers.py).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from opensearchpy import AsyncOpenSearch

from core.eventstore import Bucket, NativeQuery, Query, QueryError, StoreUnavailable
from soc.stores.search import (
    WORDS_FIELD,
    DocumentsRefused,
    ElasticsearchEventStore,
    OpenSearchEventStore,
    PartialWrite,
    compile_query,
)
from tests.soc import search_servers

BACKENDS = ("opensearch", "elasticsearch")
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
SearchStore = OpenSearchEventStore | ElasticsearchEventStore


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat(timespec="microseconds").replace("+00:00", "Z")


def event(n: int, stamp: str, **fields: Any) -> dict[str, Any]:
    return {"@timestamp": stamp, "event.id": f"e{n:04d}", "event.action": "sign-in", **fields}


def ids(hits: list[dict[str, Any]]) -> list[str]:
    return [h["event.id"] for h in hits]


def same_kind(store: SearchStore, url: str, **options: Any) -> SearchStore:
    """Another store object of the same kind and prefix as ``store``, on ``url``."""
    return type(store)(url, prefix=store.prefix, **options)


def url_of(backend: str) -> str:
    return search_servers.osmem_url() if backend == "opensearch" else search_servers.elasticsearch_url()


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SearchStore]:
    backend = importlib.import_module(f"tests.soc.backends.{request.param}")
    async with backend.open_store(tmp_path) as opened:
        yield opened


@pytest.fixture
async def raw() -> AsyncIterator[AsyncOpenSearch]:
    """A plain client on the session's osmem-server, to look at what the stores made."""
    client = AsyncOpenSearch(hosts=[search_servers.osmem_url()], max_retries=0)
    yield client
    await client.close()


async def index_names(raw: AsyncOpenSearch, prefix: str) -> list[str]:
    rows = await raw.cat.indices(index=f"{prefix}-events-*", params={"format": "json", "h": "index"})
    return sorted(row["index"] for row in rows)


def field_mapping(mapping: dict[str, Any], dotted: str) -> dict[str, Any]:
    node: dict[str, Any] = {"properties": mapping}
    for part in dotted.split("."):
        node = node["properties"][part]
    return node


# -- the index template and daily indices ---------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
async def test_indices_made_before_caseless_sub_fields_get_them_for_new_events(
    backend: str, raw: AsyncOpenSearch
) -> None:
    # An index as an earlier version made it: strings are keywords without a .caseless sub-field.
    prefix = f"test-{secrets.token_hex(6)}"
    index = f"{prefix}-events-2026.11.02"
    old_strings = {"match_mapping_type": "string", "mapping": {"type": "keyword", "ignore_above": 8191}}
    await raw.indices.create(
        index=index,
        body={
            "mappings": {
                "dynamic_templates": [{"strings": old_strings}],
                "properties": {
                    "@timestamp": {"type": "date_nanos"},
                    "event": {"properties": {"id": {"type": "keyword"}}},
                },
            }
        },
    )
    before = event(1, at(0), **{"user_agent.original": "SQLMap/1.6"})
    await raw.index(index=index, body=before, id="e0001", params={"refresh": "true"})
    # An older one the server will not change: left as it is, and no reason to refuse events.
    frozen = f"{prefix}-events-2026.10.01"
    await raw.indices.create(
        index=frozen, body={"mappings": {"dynamic_templates": [{"strings": old_strings}]}}
    )
    await raw.index(index=frozen, body=event(9, "2026-10-01T00:00:00Z", **{"user.name": "lina"}), id="e0009")
    await raw.indices.put_settings(index=frozen, body={"index": {"blocks": {"read_only": True}}})
    kind = OpenSearchEventStore if backend == "opensearch" else ElasticsearchEventStore
    store = kind(url_of(backend), prefix=prefix)
    try:
        await store.open()  # installs the template and brings the old index up to it
        unchanged = (await raw.indices.get_mapping(index=frozen))[frozen]["mappings"]
        assert "fields" not in field_mapping(unchanged["properties"], "user.name")
        mapping = (await raw.indices.get_mapping(index=index))[index]["mappings"]
        for name in ("user_agent.original", "event.id", "event.action"):
            assert (
                field_mapping(mapping["properties"], name)["fields"]["caseless"]["normalizer"] == "lowercase"
            )
        assert field_mapping(mapping["properties"], "user_agent.original")["ignore_above"] == 8191
        assert "caseless" in json.dumps(mapping["dynamic_templates"])
        after = [
            event(2, at(1), **{"user_agent.original": "SQLMAP/1.7"}),
            event(3, at(2), **{"url.path": "/Admin/Users"}),  # a field the index has not seen
        ]
        assert (await store.write(after)).written == 2
        for text, found in [
            ("user_agent.original.caseless:*sqlmap*", ["e0002"]),  # e0001 was indexed before
            (r"url.path.caseless:\/admin*", ["e0003"]),
            ("user_agent.original:*SQLMap*", ["e0001"]),  # the field itself keeps case
        ]:
            native = NativeQuery(texts={backend: text})
            assert ids((await store.native_search(native, T0, T0 + timedelta(hours=1), 10)).hits) == found
        settled = (await raw.indices.get_mapping(index=index))[index]["mappings"]
        assert "caseless" in field_mapping(settled["properties"], "url.path")["fields"]
        await store.close()
        store = kind(url_of(backend), prefix=prefix)
        await store.open()  # opened again: the mapping is left as it is
        assert (await raw.indices.get_mapping(index=index))[index]["mappings"] == settled
    finally:
        await store.close()
        await raw.indices.put_settings(index=frozen, body={"index": {"blocks": {"read_only": False}}})
        await search_servers.remove_opensearch_prefix(search_servers.osmem_url(), prefix)


async def test_the_template_maps_strings_as_keywords_and_keeps_documents_flat(
    store: SearchStore, raw: AsyncOpenSearch
) -> None:
    template = (await raw.indices.get_index_template(name=f"{store.prefix}-events"))["index_templates"][0]
    assert template["index_template"]["index_patterns"] == [f"{store.prefix}-events-*"]
    document = event(
        1,
        at(0),
        **{
            "source.ip": "203.0.113.9",
            "user.name": "张伟",
            "http.response.status_code": 403,
            "risk.score": 0.75,
            "event.created": "2026-11-02T09:00:00Z",  # looks like a time, stays a string
            "user.roles": ["hr-staff", "auditors"],
            "onegate.mfa": True,
        },
    )
    assert (await store.write([document])).written == 1

    (index,) = await index_names(raw, store.prefix)
    assert index == f"{store.prefix}-events-2026.11.02"
    mapping = (await raw.indices.get_mapping(index=index))[index]["mappings"]["properties"]
    assert field_mapping(mapping, "@timestamp")["type"] == "date_nanos"
    assert field_mapping(mapping, "user.name")["type"] == "keyword"
    assert field_mapping(mapping, "event.created")["type"] == "keyword"
    assert field_mapping(mapping, "user.roles")["type"] == "keyword"
    assert field_mapping(mapping, "http.response.status_code")["type"] == "long"
    assert field_mapping(mapping, "risk.score")["type"] == "double"
    assert field_mapping(mapping, "onegate.mfa")["type"] == "boolean"
    address = field_mapping(mapping, "source.ip")
    assert address["type"] == "keyword" and address["fields"]["ip"]["type"] == "ip"
    # Every string's lower-cased twin, for Sigma rules (core.eventstore.CASELESS)
    for name in ("user.name", "user.roles", "source.ip"):
        assert (
            field_mapping(mapping, name)["fields"]["caseless"] | {"normalizer": "lowercase"}
            == (field_mapping(mapping, name)["fields"]["caseless"])
        )
    assert "fields" not in field_mapping(mapping, "http.response.status_code")
    assert mapping[WORDS_FIELD] | {"type": "text", "analyzer": "whitespace"} == mapping[WORDS_FIELD]

    # The words of every string value (each once) are stored for searching, never handed back.
    stored = (await raw.search(index=index, body={"query": {"match_all": {}}}))["hits"]["hits"][0]
    assert stored["_source"][WORDS_FIELD] == (
        "2026 11 02t09 00 000000z e0001 sign in 203 0 113 9 张伟 00z hr staff auditors"
    )
    (hit,) = (await store.search(Query())).hits
    assert hit == document and list(hit) == list(document)
    # Terms come back typed: booleans as booleans, decimals as floats, numbers as ints.
    assert await store.terms(Query(), "onegate.mfa") == [Bucket(True, 1)]
    assert await store.terms(Query(), "risk.score") == [Bucket(0.75, 1)]
    assert [type(b.key) for b in await store.terms(Query(), "http.response.status_code")] == [int]
    # The address sub-field answers address ranges (for rules that need them).
    cidr = await raw.count(index=index, body={"query": {"term": {"source.ip.ip": "203.0.113.0/24"}}})
    assert cidr["count"] == 1


async def test_each_utc_day_has_its_own_index_and_retention_drops_whole_days(
    store: SearchStore, raw: AsyncOpenSearch
) -> None:
    day = timedelta(days=1)
    await store.write(
        [
            event(1, at(0)),
            event(2, at(3600)),
            event(3, "2026-11-03T07:30:00+08:00"),  # still 2 November in UTC
            event(4, at(86400 + 60)),
            event(5, at(86400 + 7200)),
            event(6, at(2 * 86400)),
        ]
    )
    stem = f"{store.prefix}-events-"
    assert await index_names(raw, store.prefix) == [
        stem + "2026.11.02",
        stem + "2026.11.03",
        stem + "2026.11.04",
    ]
    first_day = await raw.search(index=stem + "2026.11.02", body={"query": {"match_all": {}}})
    assert sorted(h["_id"] for h in first_day["hits"]["hits"]) == ["e0001", "e0002", "e0003"]

    # The cutoff in the middle of 3 November: 2 November goes whole, 3 November by query.
    assert await store.delete_before(T0 + day + timedelta(hours=1)) == 4
    assert await index_names(raw, store.prefix) == [stem + "2026.11.03", stem + "2026.11.04"]
    assert ids((await store.search(Query(ascending=True))).hits) == ["e0005", "e0006"]
    assert await store.delete_before(T0) == 0  # nothing older: nothing removed


async def test_events_are_ordered_by_their_time_to_the_microsecond_whatever_their_offset(
    store: SearchStore,
) -> None:
    shanghai = "2026-11-02T17:00:00.000250+08:00"  # T0 + 250 microseconds
    await store.write(
        [event(1, at(0.000200)), event(2, at(0.000100)), event(3, at(0.000300)), event(4, shanghai)]
    )
    assert ids((await store.search(Query(ascending=True))).hits) == ["e0002", "e0001", "e0004", "e0003"]
    assert ids((await store.search(Query())).hits) == ["e0003", "e0004", "e0001", "e0002"]
    assert ids((await store.search(Query(ascending=True, after=(shanghai, "e0004")))).hits) == ["e0003"]
    later = Query(start=T0 + timedelta(microseconds=150), end=T0 + timedelta(microseconds=300))
    assert ids((await store.search(later)).hits) == ["e0004", "e0001"]
    with pytest.raises(QueryError, match="cursor"):
        await store.search(Query(after=("yesterday", "e0001")))


# -- writing --------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
async def test_writes_are_idempotent_across_store_objects(backend: str, tmp_path: Path) -> None:
    module = importlib.import_module(f"tests.soc.backends.{backend}")
    async with module.open_store(tmp_path) as first:
        batch = [event(n, at(n), **{"user.name": f"user{n}"}) for n in range(1, 4)]
        assert (await first.write(batch)).written == 3
        second = same_kind(first, url_of(backend))
        try:
            again = await second.write([*batch[:2], {**batch[2], "user.name": "changed"}, event(4, at(4))])
            assert (again.written, again.duplicates) == (1, 3)
            assert await second.count(Query()) == 4
            kept = (await first.search(Query(text="event.id:e0003"))).hits
            assert [h["user.name"] for h in kept] == ["user3"]  # the first copy stays
        finally:
            await second.close()


async def test_a_batch_larger_than_one_bulk_request_is_written_whole(store: SearchStore) -> None:
    batch = [event(n, at(n / 1000)) for n in range(1, 1202)]
    assert (await store.write(batch)).written == 1201
    assert await store.count(Query()) == 1201
    assert (await store.write(batch[-10:])).duplicates == 10


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        ({"@timestamp": at(0)}, "event.id"),
        (event(9, "2026-11-02 09:00:00"), "RFC 3339"),
        (event(9, "2026-11-02T09:00:00"), "RFC 3339"),  # no offset
        (event(9, "1969-12-31T23:59:59Z"), "between 1970 and 2262"),
        (event(9, at(0), **{WORDS_FIELD: "x"}), "reserved"),
        (event(9, at(0), **{"risk.score": float("nan")}), "not JSON"),
        ({"@timestamp": at(0), "event.id": "x" * 513}, "512 bytes"),
    ],
)
async def test_documents_we_cannot_store_are_refused_before_anything_is_written(
    store: SearchStore, document: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        await store.write([event(1, at(0)), document])
    assert await store.count(Query()) == 0


async def test_documents_the_server_refuses_are_named_and_the_rest_are_written(store: SearchStore) -> None:
    await store.write([event(1, at(0), **{"http.response.status_code": 200})])
    batch = [
        event(2, at(1), **{"http.response.status_code": 404}),
        event(3, at(2), **{"http.response.status_code": "not a number"}),
        event(1, at(0)),
        event(4, at(3)),
    ]
    with pytest.raises(DocumentsRefused) as refused:
        await store.write(batch)
    assert refused.value.refused == ("e0003",)
    assert (refused.value.result.written, refused.value.result.duplicates) == (2, 1)
    assert "e0003" in str(refused.value) and "\n" not in str(refused.value)
    assert ids((await store.search(Query(ascending=True))).hits) == ["e0001", "e0002", "e0004"]


# -- queries --------------------------------------------------------------------------------------

LOOKALIKES = [
    event(1, at(0), **{"user.name": "*", "message": "x' OR '1'='1"}),
    event(2, at(1), **{"user.name": "admin OR 1=1", "url.path": "/a:b AND c"}),
    event(3, at(2), **{"user.name": "admin", "url.path": "/a", "message": "DROP TABLE events; --"}),
    event(4, at(3), **{"user.name": "*:*", "url.path": "/a:b"}),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('user.name:"*"', ["e0001"]),  # a quoted star is a value, not a wildcard
        ('user.name:"*:*"', ["e0004"]),
        ('user.name:"admin OR 1=1"', ["e0002"]),
        ("user.name:admin", ["e0003"]),
        ('url.path:"/a:b AND c"', ["e0002"]),
        ('url.path:"/a:b"', ["e0004"]),
        ("message:\"x' OR '1'='1\"", ["e0001"]),
        ('message:"DROP TABLE events; --"', ["e0003"]),
        ('"drop table"', ["e0003"]),  # full text: words, not syntax
        ("url.path:/a*", ["e0002", "e0003", "e0004"]),
    ],
)
async def test_query_text_that_looks_like_sql_or_lucene_is_data(
    store: SearchStore, text: str, expected: list[str]
) -> None:
    await store.write(LOOKALIKES)
    assert ids((await store.search(Query(text=text, ascending=True))).hits) == expected
    compiled = json.dumps(compile_query(Query(text=text)))
    assert "query_string" not in compiled and "wildcard" not in compiled and "regexp" not in compiled


async def test_filter_values_are_data_too(store: SearchStore) -> None:
    await store.write(LOOKALIKES)
    assert ids((await store.search(Query(filters={"user.name": ["*:*"]}))).hits) == ["e0004"]
    assert (await store.search(Query(filters={"user.name": ["admin*"]}))).hits == []
    assert (await store.search(Query(filters={"user.name": []}))).hits == []
    with pytest.raises(QueryError):
        await store.search(Query(filters={"user.name OR 1": ["x"]}))


async def test_a_query_the_data_cannot_answer_is_a_query_error(store: SearchStore) -> None:
    await store.write([event(1, at(0), **{"http.response.status_code": 403})])
    # A value of the wrong type only fails to match ...
    assert await store.count(Query(text="http.response.status_code:forbidden")) == 0
    # ... but a prefix of a number, or a range of words over numbers, cannot be asked.
    for text in ("http.response.status_code:40*", "http.response.status_code:[a TO b]"):
        with pytest.raises(QueryError, match="cannot run this query"):
            await store.search(Query(text=text))
    with pytest.raises(QueryError):
        await store.date_histogram(Query(), 0)
    with pytest.raises(QueryError):
        await store.terms(Query(), "user.name", size=0)


# -- an unreachable server, and the recovery ------------------------------------------------------


class OwnServer:
    """An osmem-server of one test's own on a fixed port (and a header hop in front of it for the
    official client), which the test may kill and start again, empty, on the same port."""

    def __init__(self) -> None:
        self.port = search_servers.free_port()
        self.process = search_servers.start_osmem(self.port)
        self.hop = search_servers.HeaderHop(self.process.url)

    def url(self, backend: str) -> str:
        return self.process.url if backend == "opensearch" else self.hop.url

    def kill(self) -> None:
        search_servers.stop_osmem(self.process, kill=True)

    def restart(self) -> None:
        self.process = search_servers.start_osmem(self.port)

    def close(self) -> None:
        self.hop.close()
        search_servers.stop_osmem(self.process, kill=True)


@pytest.fixture
def own_server() -> Iterator[OwnServer]:
    server = OwnServer()
    yield server
    server.close()


def store_class(backend: str) -> type[SearchStore]:
    return OpenSearchEventStore if backend == "opensearch" else ElasticsearchEventStore


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_stopped_server_is_unavailable_and_the_store_recovers(
    backend: str, own_server: OwnServer
) -> None:
    address = own_server.url(backend).removeprefix("http://")
    store = store_class(backend)(f"http://onegate:s3cret-pass@{address}", prefix="own", timeout=5.0)
    try:
        assert (await store.write([event(1, at(0), **{"user.name": "lina"})])).written == 1
        own_server.kill()

        with pytest.raises(PartialWrite) as stopped:
            await store.write([event(2, at(1))])
        assert (stopped.value.result.written, stopped.value.result.duplicates) == (0, 0)
        calls: list[Callable[[], Any]] = [
            lambda: store.search(Query()),
            lambda: store.count(Query(text="user.name:lina")),
            lambda: store.terms(Query(), "user.name"),
            lambda: store.cardinality(Query(), "user.name"),
            lambda: store.date_histogram(Query(), 60),
            lambda: store.delete_before(T0),
            store.ping,
        ]
        for call in calls:
            with pytest.raises(StoreUnavailable) as failed:
                await call()
            assert not isinstance(failed.value, QueryError)
        for message in (str(stopped.value), str(failed.value)):
            assert f"{backend} at http://{address}" in message
            assert "\n" not in message and "s3cret" not in message and "onegate:" not in message
        assert "s3cret" not in repr(store)

        own_server.restart()  # empty: an in-memory server starts from nothing
        await store.ping()
        again = await store.write([event(1, at(0), **{"user.name": "lina"}), event(2, at(1))])
        assert (again.written, again.duplicates) == (2, 0)
        assert await store.count(Query(text="user.name:lina")) == 1
        # The template was installed again, so strings are still keywords.
        raw = AsyncOpenSearch(hosts=[own_server.process.url], max_retries=0)
        try:
            index = "own-events-2026.11.02"
            mapping = (await raw.indices.get_mapping(index=index))[index]["mappings"]["properties"]
        finally:
            await raw.close()
        assert field_mapping(mapping, "user.name")["type"] == "keyword"
    finally:
        await store.close()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_server_that_never_answers_times_out(backend: str) -> None:
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # read nothing, answer nothing

    silent = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    store = store_class(backend)(f"http://127.0.0.1:{port}", prefix="silent", timeout=0.3)
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(StoreUnavailable, match=r"did not answer within 0\.3 s"):
            await store.search(Query())
        assert asyncio.get_running_loop().time() - started < 5
    finally:
        await store.close()
        for writer in held:
            writer.close()
        silent.close()
        await silent.wait_closed()


def test_settings_are_checked_before_any_connection() -> None:
    with pytest.raises(ValueError, match="prefix"):
        OpenSearchEventStore("http://127.0.0.1:9200", prefix="Bad Prefix")
    with pytest.raises(ValueError, match="prefix"):
        OpenSearchEventStore("http://127.0.0.1:9200", prefix="a-events")  # would share a pattern
    with pytest.raises(ValueError, match="URL"):
        ElasticsearchEventStore("127.0.0.1:9200")
    with pytest.raises(ValueError, match="ilm_days"):
        ElasticsearchEventStore("http://127.0.0.1:9200", ilm_days=0)


# -- the header hop ---------------------------------------------------------------------------------


async def test_the_header_hop_lets_the_official_client_run() -> None:
    from elasticsearch import ApiError, AsyncElasticsearch

    direct = AsyncElasticsearch(hosts=[search_servers.osmem_url()], max_retries=0)
    hopped = AsyncElasticsearch(hosts=[search_servers.elasticsearch_url()], max_retries=0)
    name = f"hop-{secrets.token_hex(6)}"
    try:
        # Without the hop, osmem refuses the client's media types.
        with pytest.raises(ApiError) as refused:
            await direct.search(index=f"{name}-*", query={"match_all": {}})
        assert refused.value.meta.status == 406

        await hopped.indices.put_index_template(
            name=name,
            index_patterns=[f"{name}-*"],
            template={"mappings": {"properties": {"colour": {"type": "keyword"}}}},
        )
        operations: list[dict[str, Any]] = []
        for n, colour in enumerate(["red", "blue", "red"]):
            operations += [{"create": {"_index": f"{name}-1", "_id": str(n)}}, {"colour": colour}]
        written = await hopped.bulk(operations=operations, refresh="wait_for")
        assert not written["errors"]
        found = await hopped.search(
            index=f"{name}-*",
            size=0,
            track_total_hits=True,
            aggs={"colours": {"terms": {"field": "colour"}}},
        )
        assert found.meta.headers["x-elastic-product"] == "Elasticsearch"
        assert found["hits"]["total"]["value"] == 3
        buckets = [(b["key"], b["doc_count"]) for b in found["aggregations"]["colours"]["buckets"]]
        assert buckets == [("red", 2), ("blue", 1)]
    finally:
        await hopped.options(ignore_status=404).indices.delete(index=f"{name}-1")
        await hopped.options(ignore_status=404).indices.delete_index_template(name=name)
        await direct.close()
        await hopped.close()
