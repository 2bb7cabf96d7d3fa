"""The Elasticsearch and OpenSearch event stores: :class:`core.eventstore.EventStore` on a search
server, one query-DSL compiler for both clients.

:class:`ElasticsearchEventStore` speaks through the official ``elasticsearch`` client,
:class:`OpenSearchEventStore` through ``opensearch-py``; each client is imported only by the store
that uses it. Everything else is shared: the index template, the compiler from the query tree of
core.eventstore to the query DSL, writing, paging, aggregations and retention. The decisions:

* **Daily indices** ``<prefix>-events-YYYY.MM.DD``, named from the UTC day of ``@timestamp`` and
  created by the server from an index template that the store installs before its first write
  (and again after the server was unreachable: a rebuilt cluster has lost it). Retention
  (:meth:`delete_before`) drops whole days and deletes by query inside the boundary day.
* **Mapping.** Strings are ``keyword`` (exact values and prefixes, case kept, like the other
  stores), whole numbers ``long``, others ``double``; dynamic date detection is off, so a string
  that looks like a time stays a string. ``@timestamp`` is ``date_nanos``: ranges and the order
  are exact below the millisecond, whatever offset a time was written with, and ``search_after``
  takes the cursor's time as the nanoseconds the server sorts by. ``source.ip``,
  ``destination.ip`` and ``client.ip`` are keywords too, with an ``ip`` sub-field (``.ip``,
  malformed values ignored) for address-range queries: Elasticsearch refuses prefix queries on
  ``ip`` fields, and a keyword never refuses a document. Every string field also has a
  ``caseless`` sub-field (a keyword through the built-in ``lowercase`` normalizer) that Sigma rules
  read, since Sigma matches strings case-insensitively; the query language does not use it.
* **Documents stay flat.** ``_source`` is kept as sent, so hits come back exactly as written
  (types, lists, dotted names); the hidden field is removed here, not by source filtering, which
  some servers answer with nested objects.
* **Full text** uses a hidden field, :data:`WORDS_FIELD` (``text``, whitespace analyzer), holding
  the :func:`core.eventstore.words` of every string value, written with the document: a full-text
  term is a ``match`` on it with operator ``and``, so words are cut exactly as by the SQLite store.
* **Writes** are bulk ``create`` requests with ``_id`` = ``event.id`` and ``refresh=wait_for``: a
  second copy is answered 409 and counted as a duplicate, and a search right after a write sees
  it. Idempotency holds within a daily index: an event's id and time travel together. What the
  store cannot index (no ``event.id``, a time that is not RFC 3339 with an offset or lies outside
  1970-2262, a NaN) is refused before anything is sent; a document the server refuses (a value of
  another type than the field's) is named in :class:`DocumentsRefused` after the rest of the batch
  is written; a failure part-way raises :class:`PartialWrite`. Both carry the count written.
* **Limits of the mapping**: a string longer than 8191 characters is kept and searchable by its
  words but not matched exactly; a decimal written to a field first seen as a whole number is
  kept as sent but indexed truncated (the servers' coercion).
* **Queries** are compiled to ``bool`` / ``match`` / ``prefix`` / ``range`` / ``exists``, never to
  ``query_string``, so no user text is read as Lucene syntax. A value is matched with a lenient
  ``match`` query: on a keyword field that is an exact term; on a numeric field the value is read
  as a number (``status:403`` matches 403), and a value that is not one matches nothing instead of
  failing the request.
* **Native queries** (:meth:`_SearchEventStore.native_search`, Sigma rules compiled to Lucene by
  the pySigma backends) are the one place ``query_string`` is used: the text is an administrator's
  rule, run inside a ``bool`` filter with the time range, ``default_field`` pointing at no field
  (a rule must name its fields) and leading wildcards allowed (Sigma's ``contains``).
* **Errors.** A server that cannot be reached or does not answer within ``timeout`` raises
  :class:`~core.eventstore.StoreUnavailable` with a one-line reason naming the server without its
  credentials, as does any request the server refuses; a query the server cannot run on the data
  (a prefix on a number, too many histogram buckets) raises :class:`~core.eventstore.QueryError`.
  Neither client retries: the caller (the ingest spool) keeps the events and tries again, and the
  next request reaches the server as soon as it is back.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Awaitable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urlsplit

from core.eventstore import (
    CASELESS,
    MAX_SIZE,
    And,
    Bucket,
    Exists,
    FullText,
    Match,
    NativeQuery,
    Node,
    Not,
    Or,
    Prefix,
    Query,
    QueryError,
    Range,
    SearchResult,
    StoreUnavailable,
    WriteResult,
    number,
    words,
)
from core.logging import get_logger

__all__ = [
    "IP_FIELDS",
    "WORDS_FIELD",
    "DocumentsRefused",
    "ElasticsearchEventStore",
    "OpenSearchEventStore",
    "PartialWrite",
    "compile_node",
    "compile_query",
    "index_template",
]

_log = get_logger("onegate.soc.store")

WORDS_FIELD = "onegate_words"
IP_FIELDS = ("source.ip", "destination.ip", "client.ip")
BULK_CHUNK = 500  # documents per bulk request
MAX_TERMS = 10_000  # buckets a terms aggregation may return
TEMPLATE_PRIORITY = 200  # above the stack's built-in templates (100), which may share a pattern

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NANOS_END = datetime(2262, 4, 11, tzinfo=UTC)  # date_nanos holds 1970 .. 2262-04-11
_FIELD = re.compile(r"[A-Za-z0-9_@.]+")
_PREFIX = re.compile(r"[a-z0-9][a-z0-9_]*(?:-[a-z0-9_]+)*")
_TIMESTAMP = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})")
_MAX_ID_BYTES = 512  # the servers' limit on _id
_KEYWORD = {"type": "keyword", "ignore_above": 8191}  # 8191 characters stay under Lucene's 32 KiB term
# Every string field's lower-cased twin (core.eventstore.CASELESS), read by native queries: the
# servers' built-in ``lowercase`` normalizer, so no analysis settings are needed.
_CASELESS_NAME = CASELESS.lstrip(".")
_CASELESS_FIELD = {_CASELESS_NAME: {**_KEYWORD, "normalizer": "lowercase"}}
# Shard failures that mean the query does not fit the data, not that the server is unwell.
_QUERY_FAILURES = (
    "query_shard_exception",
    "illegal_argument_exception",
    "number_format_exception",
    "parse_exception",
    "too_many_buckets_exception",
)


class PartialWrite(StoreUnavailable):
    """The server stopped taking documents part-way; ``result`` counts what it had stored."""

    def __init__(self, message: str, result: WriteResult) -> None:
        super().__init__(message)
        self.result = result


class DocumentsRefused(ValueError):
    """The server refused some documents as malformed (the rest of the batch was written);
    ``result`` counts what was stored, ``refused`` names the refused events."""

    def __init__(self, message: str, result: WriteResult, refused: tuple[str, ...]) -> None:
        super().__init__(message)
        self.result = result
        self.refused = refused


class _Refused(StoreUnavailable):
    """The server answered a request with an error status (kept apart so that a query the server
    cannot run becomes a :class:`QueryError`; anywhere else it stays a StoreUnavailable)."""

    def __init__(self, server: str, status: int, body: Any) -> None:
        self.status = status
        self.kind, self.reason = _error_of(body)
        super().__init__(f"{server} answered {status} ({self.kind}: {self.reason})")


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _error_of(body: Any) -> tuple[str, str]:
    """The (type, reason) of an error answer, the most specific cause first."""
    error = body.get("error", body) if isinstance(body, Mapping) else body
    if isinstance(error, Mapping):
        causes = error.get("root_cause")
        if isinstance(causes, list) and causes and isinstance(causes[0], Mapping):
            error = causes[0]
        return str(error.get("type", "error")), _one_line(str(error.get("reason", "")))
    return "error", _one_line(str(error or "no detail"))


def _where(url: str) -> str:
    """``url`` without credentials, path or query: safe for messages and reprs."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _check_options(url: str, setting: str, prefix: str, ilm_days: int | None = None) -> None:
    """Refuse bad settings before a client exists (naming the setting)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{setting} must be an http:// or https:// URL with a host")
    # The prefix starts index names: lower case, and '-events' would let one store's index
    # pattern take in another's indices.
    if not _PREFIX.fullmatch(prefix) or "-events" in prefix or len(prefix) > 100:
        raise ValueError(
            "prefix must be lower-case letters, digits, _ and single - (not '-events'), "
            f"up to 100 characters: {prefix!r}"
        )
    if ilm_days is not None and (isinstance(ilm_days, bool) or not 1 <= ilm_days <= 36500):
        raise ValueError("ilm_days must be a whole number of days, 1..36500")


def _check_field(name: str) -> None:
    if not _FIELD.fullmatch(name):
        raise QueryError(f"{name!r} is not a field name (ASCII letters, digits, _ . @)")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _nanos(stamp: str) -> int | None:
    """An RFC 3339 time (with an offset) as nanoseconds since the epoch, exactly (Python's
    datetime stops at microseconds); None when it is not one or a date_nanos cannot hold it."""
    parts = _TIMESTAMP.fullmatch(stamp)
    if parts is None:
        return None
    whole, fraction, offset = parts.groups()
    try:
        moment = datetime.fromisoformat(whole + ("+00:00" if offset == "Z" else offset))
    except ValueError:
        return None
    nanos = (moment - _EPOCH) // timedelta(seconds=1) * 10**9 + int((fraction or "").ljust(9, "0"))
    return nanos if 0 <= nanos < (_NANOS_END - _EPOCH) // timedelta(microseconds=1) * 1000 else None


# -- the index template ---------------------------------------------------------------------------


def index_template(prefix: str, *, lifecycle: str | None = None) -> dict[str, Any]:
    """The composable index template for ``<prefix>-events-*`` (an Elasticsearch ILM policy named
    ``lifecycle`` attached when given)."""
    settings: dict[str, Any] = {"number_of_shards": 1}  # daily indices are small: one shard each
    if lifecycle is not None:
        settings["lifecycle"] = {"name": lifecycle}
    ip_fields = [
        {
            f"ip_{n}": {
                "path_match": name,
                "match_mapping_type": "string",
                "mapping": {
                    **_KEYWORD,
                    "fields": {"ip": {"type": "ip", "ignore_malformed": True}, **_CASELESS_FIELD},
                },
            }
        }
        for n, name in enumerate(IP_FIELDS)
    ]
    return {
        "index_patterns": [f"{prefix}-events-*"],
        "priority": TEMPLATE_PRIORITY,
        "template": {
            "settings": {"index": settings},
            "mappings": {
                "date_detection": False,
                "numeric_detection": False,
                "dynamic_templates": [
                    *ip_fields,
                    {
                        "strings": {
                            "match_mapping_type": "string",
                            "mapping": {**_KEYWORD, "fields": _CASELESS_FIELD},
                        }
                    },
                    {"decimals": {"match_mapping_type": "double", "mapping": {"type": "double"}}},
                ],
                "properties": {
                    "@timestamp": {"type": "date_nanos"},
                    "event": {"properties": {"id": {"type": "keyword", "fields": _CASELESS_FIELD}}},
                    WORDS_FIELD: {
                        "type": "text",
                        "analyzer": "whitespace",  # the words are cut and lower-cased before
                        "norms": False,  # no scoring: every query runs in filter context
                        "index_options": "docs",  # every word must appear; positions unused
                    },
                },
            },
        },
    }


# -- the compiler ---------------------------------------------------------------------------------


def _bound(text: str) -> str | int | float:
    value = number(text)
    if value is None:
        return text
    return int(text) if value.is_integer() and "." not in text else value


def _match(field: str, value: str | int | float | bool) -> dict[str, Any]:
    # lenient: a value of another type (text on a number field) matches nothing, without failing
    return {"match": {field: {"query": value, "lenient": True}}}


def compile_node(node: Node) -> dict[str, Any]:
    """The query DSL for one node of the query tree (filter context: no scoring)."""
    match node:
        case Match(field=name, value=value):
            return _match(name, value)
        case Prefix(field=name, prefix=prefix):
            return {"prefix": {name: {"value": prefix}}}
        case Range(field=name, gte=None, lte=None):
            return {"exists": {"field": name}}
        case Range(field=name, gte=gte, lte=lte):
            bounds = {key: _bound(text) for key, text in (("gte", gte), ("lte", lte)) if text is not None}
            return {"range": {name: bounds}}
        case Exists(field=name):
            return {"exists": {"field": name}}
        case FullText(words=found):
            return {"match": {WORDS_FIELD: {"query": " ".join(found), "operator": "and"}}}
        case And(items=items):
            return {"bool": {"filter": [compile_node(item) for item in items]}}
        case Or(items=items):
            return {"bool": {"should": [compile_node(item) for item in items], "minimum_should_match": 1}}
        case Not(item=item):
            return {"bool": {"must_not": [compile_node(item)]}}
    raise QueryError(f"no query form for {node!r}")


def compile_query(query: Query) -> dict[str, Any]:
    """The query DSL for everything a :class:`Query` selects: its text, time range and filters."""
    clauses: list[dict[str, Any]] = []
    node = query.node
    if node is not None:
        clauses.append(compile_node(node))
    if query.start is not None or query.end is not None:
        if (query.end is not None and query.end <= _EPOCH) or (
            query.start is not None and query.start >= _NANOS_END
        ):
            return {"match_none": {}}  # outside what a date_nanos field can hold
        span: dict[str, str] = {}
        if query.start is not None and query.start > _EPOCH:
            span["gte"] = _iso(query.start)
        if query.end is not None and query.end < _NANOS_END:
            span["lt"] = _iso(query.end)
        if span:
            clauses.append({"range": {"@timestamp": span}})
    for name, values in query.filters.items():
        _check_field(name)
        if isinstance(values, str | bytes) or not isinstance(values, Sequence):
            raise QueryError(f"the filter on {name} must be a list of values")
        if not values:
            return {"match_none": {}}  # any of no values: nothing
        for value in values:
            finite = not isinstance(value, float) or math.isfinite(value)
            if not isinstance(value, str | int | float) or not finite:
                raise QueryError(f"the filter on {name} has a value that is not a string or a number")
        clauses.append({"bool": {"should": [_match(name, v) for v in values], "minimum_should_match": 1}})
    if not clauses:
        return {"match_all": {}}
    return clauses[0] if len(clauses) == 1 else {"bool": {"filter": clauses}}


# -- the two clients ------------------------------------------------------------------------------


class _Api(Protocol):
    """The requests a store makes, on one client; errors come out as StoreUnavailable (a
    :class:`_Refused` when the server answered with an error status)."""

    server: str  # "<name> at <scheme>://<host>:<port>", for messages

    async def put_template(self, name: str, template: dict[str, Any]) -> Any: ...
    async def get_mappings(self, pattern: str) -> Any: ...
    async def put_mapping(self, index: str, mapping: dict[str, Any]) -> Any: ...
    async def put_lifecycle(self, name: str, policy: dict[str, Any]) -> Any: ...
    async def bulk(self, operations: list[dict[str, Any]]) -> Any: ...
    async def search(self, index: str, body: dict[str, Any]) -> Any: ...
    async def count(self, index: str, query: dict[str, Any]) -> Any: ...
    async def cat_indices(self, pattern: str) -> Any: ...
    async def delete_indices(self, names: list[str]) -> Any: ...
    async def delete_by_query(self, index: str, query: dict[str, Any], timeout: float) -> Any: ...
    async def close(self) -> None: ...


class _OpenSearchApi:
    def __init__(self, url: str, *, timeout: float, ca_certs: str | None) -> None:
        from opensearchpy import AsyncOpenSearch

        self.server = f"opensearch at {_where(url)}"
        self._timeout = timeout
        self._client = AsyncOpenSearch(
            hosts=[url],
            verify_certs=True,  # events are sensitive: never talk to a server we cannot verify
            ca_certs=ca_certs,
            timeout=timeout,
            max_retries=0,  # the caller retries; a retry here would only hide an outage longer
            retry_on_timeout=False,
        )

    async def _call(self, call: Awaitable[Any]) -> Any:
        from opensearchpy.exceptions import ConnectionError as ClientConnectionError
        from opensearchpy.exceptions import ConnectionTimeout, OpenSearchException, TransportError

        try:
            return await call
        except ConnectionTimeout as e:
            raise StoreUnavailable(f"{self.server} did not answer within {self._timeout:g} s") from e
        except ClientConnectionError as e:
            raise StoreUnavailable(f"{self.server} is unreachable ({type(e).__name__})") from e
        except TransportError as e:
            status = e.status_code if isinstance(e.status_code, int) else 0
            raise _Refused(self.server, status, e.info) from e
        except (OpenSearchException, OSError) as e:
            raise StoreUnavailable(f"{self.server} failed ({type(e).__name__})") from e

    async def put_template(self, name: str, template: dict[str, Any]) -> Any:
        return await self._call(self._client.indices.put_index_template(name=name, body=template))

    async def get_mappings(self, pattern: str) -> Any:
        params = {"ignore_unavailable": "true", "allow_no_indices": "true"}
        return await self._call(self._client.indices.get_mapping(index=pattern, params=params))

    async def put_mapping(self, index: str, mapping: dict[str, Any]) -> Any:
        return await self._call(self._client.indices.put_mapping(index=index, body=mapping))

    async def put_lifecycle(self, name: str, policy: dict[str, Any]) -> Any:
        raise StoreUnavailable("OpenSearch manages index lifecycles with ISM; ILM is Elasticsearch's")

    async def bulk(self, operations: list[dict[str, Any]]) -> Any:
        return await self._call(self._client.bulk(body=operations, params={"refresh": "wait_for"}))

    async def search(self, index: str, body: dict[str, Any]) -> Any:
        return await self._call(self._client.search(index=index, body=body))

    async def count(self, index: str, query: dict[str, Any]) -> Any:
        return await self._call(self._client.count(index=index, body={"query": query}))

    async def cat_indices(self, pattern: str) -> Any:
        params = {"format": "json", "h": "index,docs.count"}
        return await self._call(self._client.cat.indices(index=pattern, params=params))

    async def delete_indices(self, names: list[str]) -> Any:
        params = {"ignore_unavailable": "true"}
        return await self._call(self._client.indices.delete(index=",".join(names), params=params))

    async def delete_by_query(self, index: str, query: dict[str, Any], timeout: float) -> Any:
        params = {"refresh": "true", "conflicts": "proceed", "request_timeout": timeout}
        return await self._call(
            self._client.delete_by_query(index=index, body={"query": query}, params=params)
        )

    async def close(self) -> None:
        await self._client.close()


class _ElasticsearchApi:
    def __init__(self, url: str, *, api_key: str | None, timeout: float, ca_certs: str | None) -> None:
        from elastic_transport.client_utils import DEFAULT
        from elasticsearch import AsyncElasticsearch

        self.server = f"elasticsearch at {_where(url)}"
        self._timeout = timeout
        self._client = AsyncElasticsearch(
            hosts=[url],
            api_key=api_key,
            verify_certs=True,  # events are sensitive: never talk to a server we cannot verify
            ca_certs=ca_certs or DEFAULT,
            request_timeout=timeout,
            max_retries=0,  # the caller retries; a retry here would only hide an outage longer
            retry_on_timeout=False,
        )

    async def _call(self, call: Awaitable[Any]) -> Any:
        from elastic_transport import ConnectionTimeout, TransportError
        from elasticsearch import ApiError, UnsupportedProductError

        try:
            answer = await call
        except UnsupportedProductError as e:
            raise StoreUnavailable(f"{self.server} is not Elasticsearch") from e
        except ApiError as e:
            raise _Refused(self.server, e.meta.status, e.body) from e
        except ConnectionTimeout as e:
            raise StoreUnavailable(f"{self.server} did not answer within {self._timeout:g} s") from e
        except (TransportError, OSError) as e:
            raise StoreUnavailable(f"{self.server} is unreachable ({type(e).__name__})") from e
        return answer.body

    async def put_template(self, name: str, template: dict[str, Any]) -> Any:
        return await self._call(self._client.indices.put_index_template(name=name, **template))

    async def get_mappings(self, pattern: str) -> Any:
        return await self._call(
            self._client.indices.get_mapping(index=pattern, ignore_unavailable=True, allow_no_indices=True)
        )

    async def put_mapping(self, index: str, mapping: dict[str, Any]) -> Any:
        return await self._call(self._client.indices.put_mapping(index=index, **mapping))

    async def put_lifecycle(self, name: str, policy: dict[str, Any]) -> Any:
        return await self._call(self._client.ilm.put_lifecycle(name=name, policy=policy))

    async def bulk(self, operations: list[dict[str, Any]]) -> Any:
        return await self._call(self._client.bulk(operations=operations, refresh="wait_for"))

    async def search(self, index: str, body: dict[str, Any]) -> Any:
        return await self._call(self._client.search(index=index, **body))

    async def count(self, index: str, query: dict[str, Any]) -> Any:
        return await self._call(self._client.count(index=index, query=query))

    async def cat_indices(self, pattern: str) -> Any:
        return await self._call(self._client.cat.indices(index=pattern, format="json", h="index,docs.count"))

    async def delete_indices(self, names: list[str]) -> Any:
        return await self._call(self._client.indices.delete(index=",".join(names), ignore_unavailable=True))

    async def delete_by_query(self, index: str, query: dict[str, Any], timeout: float) -> Any:
        client = self._client.options(request_timeout=timeout)
        return await self._call(
            client.delete_by_query(index=index, query=query, refresh=True, conflicts="proceed")
        )

    async def close(self) -> None:
        await self._client.close()


# -- the store ------------------------------------------------------------------------------------


def _without_caseless(properties: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword fields of a mapping's ``properties`` that have no caseless sub-field, each with
    it added (the rest of its mapping repeated, as a mapping update must), nested as given."""
    patch: dict[str, Any] = {}
    for name, field in properties.items():
        if "properties" in field:
            inner = _without_caseless(field["properties"])
            if inner:
                patch[name] = {"properties": inner}
        elif field.get("type") == "keyword" and _CASELESS_NAME not in field.get("fields", {}):
            patch[name] = {**field, "fields": {**field.get("fields", {}), **_CASELESS_FIELD}}
    return patch


def _document_words(document: Mapping[str, Any]) -> str:
    found: dict[str, None] = {}  # each word once, in order: only presence is searched
    for value in document.values():
        for item in value if isinstance(value, list) else (value,):
            if isinstance(item, str):
                found.update(dict.fromkeys(words(item)))
    return " ".join(found)


def _bucket_key(bucket: Mapping[str, Any]) -> Any:
    key, text = bucket["key"], bucket.get("key_as_string")
    if text is None:
        return key  # keywords as strings, longs as ints, doubles as floats
    if text in ("true", "false") and key in (0, 1):
        return text == "true"
    return text  # dates: their text


class _SearchEventStore:
    """What both search stores share; a subclass chooses the client."""

    name: str

    def __init__(self, api: _Api, *, prefix: str, ilm_days: int | None, retention_timeout: float) -> None:
        self._api = api
        self._prefix = prefix
        self._ilm_days = ilm_days
        self._retention_timeout = retention_timeout
        self._pattern = f"{prefix}-events-*"
        self._template_ready = False
        self._template_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._api.server!r}, prefix={self._prefix!r})"

    @property
    def prefix(self) -> str:
        return self._prefix

    def index_name(self, day: date) -> str:
        return f"{self._prefix}-events-{day:%Y.%m.%d}"

    def _day_of(self, index: str) -> date | None:
        stem = f"{self._prefix}-events-"
        if not index.startswith(stem):
            return None
        try:
            return datetime.strptime(index[len(stem) :], "%Y.%m.%d").replace(tzinfo=UTC).date()
        except ValueError:
            return None

    async def _request(self, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except StoreUnavailable:
            # The server may come back rebuilt (or in-memory, empty): install the template again.
            self._template_ready = False
            raise

    async def _query_request(self, call: Awaitable[Any]) -> dict[str, Any]:
        """A search: a refusal that is about the query becomes a QueryError, and so does a shard
        failure (partial results are never returned as if they were whole)."""
        try:
            answer = await self._request(call)
        except _Refused as e:
            if e.status == 400 or "too_many_buckets" in e.kind:
                raise QueryError(f"{self.name} cannot run this query: {e.reason}") from e
            raise
        if not isinstance(answer, dict):
            raise StoreUnavailable(f"{self.name} answered something that is not a JSON object")
        shards = answer.get("_shards") or {}
        if shards.get("failed"):
            failures = shards.get("failures") or [{}]
            kind, reason = _error_of({"error": failures[0].get("reason", {})})
            if kind in _QUERY_FAILURES or "too_many_buckets" in kind:
                raise QueryError(f"{self.name} cannot run this query: {reason}")
            raise StoreUnavailable(f"{self.name}: {shards['failed']} shard(s) failed ({kind}: {reason})")
        return answer

    # -- set-up ---------------------------------------------------------------------------------

    async def open(self) -> None:
        """Reach the server and install the index template (otherwise done by the first write)."""
        await self._ensure_template()

    async def _ensure_template(self) -> None:
        async with self._template_lock:
            if self._template_ready:
                return
            lifecycle = None
            if self._ilm_days is not None:
                lifecycle = f"{self._prefix}-events"
                await self._request(self._api.put_lifecycle(lifecycle, self._ilm_policy(self._ilm_days)))
            template = index_template(self._prefix, lifecycle=lifecycle)
            await self._request(self._api.put_template(f"{self._prefix}-events", template))
            await self._add_caseless(template["template"]["mappings"]["dynamic_templates"])
            self._template_ready = True

    async def _add_caseless(self, dynamic_templates: list[dict[str, Any]]) -> None:
        """Gives the indices made before the template had ``.caseless`` sub-fields (an upgrade)
        the sub-field on each string field and the template's dynamic templates, so that events
        written from now on are found by Sigma rules whatever their case. Events already stored
        stay without it (a reindex would be needed); they leave a rule's look-back with time.

        An index the server will not change (read-only, closed) is logged and left as it is: it
        must not keep the store from taking new events. An unreachable server still fails."""
        try:
            mappings = await self._request(self._api.get_mappings(f"{self._prefix}-events-*"))
        except _Refused as e:
            _log.warning(
                "index mappings not read; caseless sub-fields not added", store=self.name, error=str(e)
            )
            return
        for index, found in sorted((mappings or {}).items()):
            mapping = found.get("mappings") or {}
            properties = _without_caseless(mapping.get("properties") or {})
            current = mapping.get("dynamic_templates") or []
            if not properties and current == dynamic_templates:
                continue
            patch: dict[str, Any] = {"dynamic_templates": dynamic_templates}
            if properties:
                patch["properties"] = properties
            try:
                await self._request(self._api.put_mapping(index, patch))
            except _Refused as e:
                _log.warning("caseless sub-fields not added", index=index, store=self.name, error=str(e))
                continue
            _log.info("caseless sub-fields added", index=index, store=self.name)

    @staticmethod
    def _ilm_policy(days: int) -> dict[str, Any]:
        # min_age counts from the index's creation, which is when the first event of its day
        # arrived (at the earliest, that day's midnight): days + 1 keeps every event `days` days.
        return {"phases": {"delete": {"min_age": f"{days + 1}d", "actions": {"delete": {}}}}}

    # -- writing --------------------------------------------------------------------------------

    def _prepared(self, n: int, document: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
        """(index, _id, body) of one document, or ValueError naming what is wrong with it."""
        if not isinstance(document, Mapping):
            raise ValueError(f"document {n} is not a mapping")
        event_id, stamp = document.get("event.id"), document.get("@timestamp")
        if not isinstance(event_id, str) or not event_id or len(event_id.encode()) > _MAX_ID_BYTES:
            raise ValueError(f"document {n}: event.id must be a non-empty string of up to 512 bytes")
        nanos = _nanos(stamp) if isinstance(stamp, str) else None
        if nanos is None:
            raise ValueError(
                f"document {n} ({event_id}): @timestamp must be an RFC 3339 time with an offset, "
                "between 1970 and 2262"
            )
        if WORDS_FIELD in document:
            raise ValueError(f"document {n} ({event_id}): the field name {WORDS_FIELD} is reserved")
        try:
            json.dumps(document, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError(
                f"document {n} ({event_id}) is not JSON (a NaN, or a value of no JSON type)"
            ) from None
        body = {**document, WORDS_FIELD: _document_words(document)}
        day = (_EPOCH + timedelta(microseconds=nanos // 1000)).date()
        return self.index_name(day), event_id, body

    async def write(self, documents: Sequence[Mapping[str, Any]]) -> WriteResult:
        batch = [self._prepared(n, document) for n, document in enumerate(documents)]
        if not batch:
            return WriteResult(0, 0)
        try:
            await self._ensure_template()
        except StoreUnavailable as e:
            raise PartialWrite(f"{e}; 0 of {len(batch)} written", WriteResult(0, 0)) from e
        written = duplicates = 0
        refused: list[str] = []
        first_refusal = ""
        for start in range(0, len(batch), BULK_CHUNK):
            chunk = batch[start : start + BULK_CHUNK]
            operations: list[dict[str, Any]] = []
            for index, event_id, body in chunk:
                operations += [{"create": {"_index": index, "_id": event_id}}, body]
            try:
                answer = await self._request(self._api.bulk(operations))
            except StoreUnavailable as e:
                raise PartialWrite(
                    f"{e}; {written} of {len(batch)} written", WriteResult(written, duplicates)
                ) from e
            items = answer.get("items") if isinstance(answer, dict) else None
            if not isinstance(items, list) or len(items) != len(chunk):
                raise PartialWrite(
                    f"{self.name} answered without the items; {written} of {len(batch)} written",
                    WriteResult(written, duplicates),
                )
            failed = ""
            for (_, event_id, _), item in zip(chunk, items, strict=True):
                outcome: dict[str, Any] = next(iter(item.values()), {}) if isinstance(item, dict) else {}
                status = outcome.get("status", 0)
                if status in (200, 201):
                    written += 1
                elif status == 409:
                    duplicates += 1  # version conflict: this event.id is stored already
                elif status == 400:
                    refused.append(event_id)  # malformed for the mapping: a retry would fail again
                    first_refusal = first_refusal or "{}: {}".format(*_error_of(outcome))
                elif not failed:
                    failed = f"{event_id}: {status} " + "{}: {}".format(*_error_of(outcome))
            if failed:
                raise PartialWrite(
                    f"{self.name} did not store every document ({failed}); {written} of {len(batch)} written",
                    WriteResult(written, duplicates),
                )
        result = WriteResult(written, duplicates)
        if refused:
            raise DocumentsRefused(
                f"{self.name} refused {len(refused)} document(s) as malformed, {refused[0]} first "
                f"({first_refusal}); {written} of {len(batch)} written",
                result,
                tuple(refused),
            )
        return result

    # -- searching ------------------------------------------------------------------------------

    async def search(self, query: Query) -> SearchResult:
        body: dict[str, Any] = {"query": compile_query(query), "size": query.size, "track_total_hits": True}
        if query.size:
            order = "asc" if query.ascending else "desc"
            body["sort"] = [{"@timestamp": {"order": order}}, {"event.id": {"order": order}}]
            if query.after is not None:
                stamp, event_id = query.after
                nanos = _nanos(stamp) if isinstance(stamp, str) else None
                if nanos is None or not isinstance(event_id, str):
                    raise QueryError("after must be the cursor of a previous page")
                body["search_after"] = [nanos, event_id]
        answer = await self._query_request(self._api.search(self._pattern, body))
        found = answer.get("hits") or {}
        total = found.get("total", 0)
        hits = []
        for hit in found.get("hits", []):
            document = dict(hit["_source"])
            document.pop(WORDS_FIELD, None)
            hits.append(document)
        return SearchResult(total=int(total["value"] if isinstance(total, dict) else total), hits=hits)

    async def native_search(
        self, native: NativeQuery, start: datetime, end: datetime, size: int = 1000
    ) -> SearchResult:
        text = native.text_for(self.name)
        if isinstance(size, bool) or not 0 <= size <= MAX_SIZE:
            raise QueryError(f"size must be 0..{MAX_SIZE}")
        span = compile_query(Query(start=start, end=end))
        lucene = {
            "query_string": {
                "query": text,
                "default_field": "_none_",  # no field-less terms: they would search every field
                "allow_leading_wildcard": True,
                "analyze_wildcard": False,  # keywords: wildcards compare against the whole value
            }
        }
        body: dict[str, Any] = {
            "query": {"bool": {"filter": [lucene, span]}},
            "size": size,
            "track_total_hits": True,
            "sort": [{"@timestamp": {"order": "asc"}}, {"event.id": {"order": "asc"}}],
        }
        answer = await self._query_request(self._api.search(self._pattern, body))
        found = answer.get("hits") or {}
        total = found.get("total", 0)
        hits = []
        for hit in found.get("hits", []):
            document = dict(hit["_source"])
            document.pop(WORDS_FIELD, None)
            hits.append(document)
        return SearchResult(total=int(total["value"] if isinstance(total, dict) else total), hits=hits)

    async def count(self, query: Query) -> int:
        answer = await self._query_request(self._api.count(self._pattern, compile_query(query)))
        return int(answer.get("count", 0))

    async def _aggregate(self, query: Query, aggregation: dict[str, Any]) -> dict[str, Any]:
        body = {"query": compile_query(query), "size": 0, "aggs": {"result": aggregation}}
        answer = await self._query_request(self._api.search(self._pattern, body))
        result: dict[str, Any] = (answer.get("aggregations") or {}).get("result") or {}
        return result  # empty when no index matched the pattern

    async def terms(self, query: Query, field: str, size: int = 10) -> list[Bucket]:
        _check_field(field)
        if isinstance(size, bool) or not 1 <= size <= MAX_TERMS:
            raise QueryError(f"size must be 1..{MAX_TERMS}")
        terms = {
            "field": field,
            "size": size,
            "shard_size": max(size * 5, 500),  # every day is a shard: ask each for more than size
            "order": [{"_count": "desc"}, {"_key": "asc"}],  # ties: the smaller value first
        }
        result = await self._aggregate(query, {"terms": terms})
        return [Bucket(_bucket_key(b), int(b["doc_count"])) for b in result.get("buckets", [])]

    async def cardinality(self, query: Query, field: str) -> int:
        _check_field(field)
        # 40,000 is the largest threshold: counts below it are exact but for hash collisions.
        distinct = {"field": field, "precision_threshold": 40_000}
        result = await self._aggregate(query, {"cardinality": distinct})
        return int(result.get("value") or 0)

    async def date_histogram(self, query: Query, interval: int) -> list[Bucket]:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise QueryError("the interval is a whole number of seconds, at least 1")
        # fixed_interval buckets are aligned to the epoch; min_doc_count 0 keeps the empty ones
        # between the first and the last non-empty bucket (no extended bounds: none outside).
        histogram = {"field": "@timestamp", "fixed_interval": f"{interval}s", "min_doc_count": 0}
        result = await self._aggregate(query, {"date_histogram": histogram})
        buckets = [
            Bucket(_EPOCH + timedelta(milliseconds=int(b["key"])), int(b["doc_count"]))
            for b in result.get("buckets", [])
        ]
        while buckets and buckets[0].count == 0:
            buckets.pop(0)
        while buckets and buckets[-1].count == 0:
            buckets.pop()
        return buckets

    # -- retention ------------------------------------------------------------------------------

    async def delete_before(self, cutoff: datetime) -> int:
        if cutoff.tzinfo is None:
            raise ValueError("cutoff must be timezone-aware")
        cutoff = cutoff.astimezone(UTC)
        listed = await self._request(self._api.cat_indices(self._pattern))
        sizes: dict[str, int] = {}
        for row in listed if isinstance(listed, list) else []:
            count = row.get("docs.count")
            sizes[str(row.get("index"))] = int(count) if count not in (None, "") else 0
        day = cutoff.date()
        whole = sorted(name for name in sizes if (found := self._day_of(name)) is not None and found < day)
        removed = 0
        for start in range(0, len(whole), 50):  # index names go in the URL: a few at a time
            names = whole[start : start + 50]
            await self._request(self._api.delete_indices(names))
            removed += sum(sizes[name] for name in names)
        boundary = self.index_name(day)
        if boundary in sizes and cutoff.time() != datetime.min.time():
            span = {"range": {"@timestamp": {"lt": _iso(cutoff)}}}
            answer = await self._request(self._api.delete_by_query(boundary, span, self._retention_timeout))
            if not isinstance(answer, dict):
                raise StoreUnavailable(f"{self.name} answered the delete by query with no JSON object")
            if answer.get("failures"):
                kind, reason = _error_of({"error": answer["failures"][0].get("cause", {})})
                raise StoreUnavailable(f"{self.name} did not delete every old event ({kind}: {reason})")
            removed += int(answer.get("deleted", 0))
        return removed

    # -- the connection -------------------------------------------------------------------------

    async def ping(self) -> None:
        # A count on our own indices, not the server's root: it needs only the read privilege
        # the store needs anyway, and it proves the indices answer, not only the node.
        await self._query_request(self._api.count(self._pattern, {"match_none": {}}))

    async def close(self) -> None:
        await self._api.close()


class OpenSearchEventStore(_SearchEventStore):
    """The event store on OpenSearch (2.x, 3.x) through opensearch-py.

    ``url`` may carry a user and password (``https://user:pass@host:9200``); they never appear in
    messages or the repr. ``timeout`` (seconds) bounds every request but retention's
    delete-by-query, which has ``retention_timeout``.
    """

    name = "opensearch"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "onegate",
        timeout: float = 10.0,
        retention_timeout: float = 300.0,
        ca_certs: str | None = None,
    ) -> None:
        _check_options(url, "the OpenSearch URL", prefix)
        api = _OpenSearchApi(url, timeout=timeout, ca_certs=ca_certs)
        super().__init__(api, prefix=prefix, ilm_days=None, retention_timeout=retention_timeout)


class ElasticsearchEventStore(_SearchEventStore):
    """The event store on Elasticsearch through the official client.

    ``url`` may carry a user and password, or ``api_key`` is sent instead; neither appears in
    messages or the repr. ``ilm_days`` installs an ILM policy, ``<prefix>-events``, that deletes
    each daily index ``ilm_days + 1`` days after it was created, so every event is kept at least
    ``ilm_days`` days: a safety net that needs no scheduler. :meth:`delete_before` stays the exact
    tool (to the microsecond, and it reports how many events it removed).
    """

    name = "elasticsearch"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "onegate",
        api_key: str | None = None,
        timeout: float = 10.0,
        retention_timeout: float = 300.0,
        ca_certs: str | None = None,
        ilm_days: int | None = None,
    ) -> None:
        _check_options(url, "the Elasticsearch URL", prefix, ilm_days)
        api = _ElasticsearchApi(url, api_key=api_key, timeout=timeout, ca_certs=ca_certs)
        super().__init__(api, prefix=prefix, ilm_days=ilm_days, retention_timeout=retention_timeout)
