"""The event-store protocol: where access and authentication events are kept and searched.

soc implements it (SQLite, Elasticsearch, OpenSearch); other parts read recorded events through
it without importing soc (policy's ``simulate``). One contract test suite runs against every
implementation (tests/soc/test_store_contract.py), so a query means the same thing on all.

Documents are *flat* ECS: field names dotted (``"user.name"``), values JSON scalars or lists of
them, with ``@timestamp`` (RFC 3339, UTC, ``Z``) and ``event.id`` always present. Writing is
idempotent by ``event.id``: a document written twice is stored once (the first one stays), which
is what lets the ingest spool replay after a crash without duplicates.

Queries (:class:`Query`) combine a time range, exact-value filters and a query string in a small
language of our own, parsed here once (:func:`parse_query`) and compiled by each store to its own
form (SQL, the Elasticsearch query DSL), never passed through as Lucene syntax:

* ``field:value`` — the field equals the value (any element, for a list); a value that reads as a
  number also matches the number (``http.response.status_code:403``);
* ``field:"two words"`` — the same with spaces or special characters in the value;
* ``field:val*`` — the field's value starts with ``val`` (a trailing ``*`` only);
* ``field:[400 TO 499]`` — a number (or an ISO time, compared as text) in the closed range; ``*``
  leaves an end open;
* ``field:*`` — the field is present;
* a bare word or ``"quoted phrase"`` — full text: every word appears among the words of the
  document's string values (case-insensitive; words are runs of letters and digits);
* ``AND``, ``OR``, ``NOT`` (or a leading ``-``), parentheses; words side by side mean ``AND``.

Field names are ASCII letters, digits, ``_``, ``.`` and ``@``. A query longer than
:data:`MAX_QUERY` characters or nested deeper than :data:`MAX_DEPTH` is refused
(:class:`QueryError`, whose message says where), as is anything the grammar does not describe.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

__all__ = [
    "CASELESS",
    "MAX_DEPTH",
    "MAX_QUERY",
    "SQL_CASELESS",
    "SQL_DOCUMENT",
    "And",
    "Bucket",
    "EventStore",
    "Exists",
    "FullText",
    "Match",
    "NativeQuery",
    "Node",
    "Not",
    "Or",
    "Prefix",
    "Query",
    "QueryError",
    "Range",
    "SearchResult",
    "StoreUnavailable",
    "WriteResult",
    "number",
    "parse_query",
    "words",
]

MAX_QUERY = 4096
MAX_DEPTH = 32
MAX_SIZE = 10_000  # hits per search page
CASELESS = ".caseless"  # a native query's field suffix: the field's strings lower-cased (NativeQuery)
SQL_DOCUMENT = "sigma__doc"  # what a native SQL condition reads: the document's JSON text
SQL_CASELESS = "onegate_caseless"  # the SQL function a native condition may call: Unicode lower()


class QueryError(ValueError):
    """A query the language does not describe; the message names the position."""


class StoreUnavailable(Exception):
    """The store cannot be reached or refused to work; callers keep the events and retry."""


# -- the query language ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    field: str
    value: str


@dataclass(frozen=True)
class Prefix:
    field: str
    prefix: str


@dataclass(frozen=True)
class Range:
    field: str
    gte: str | None
    lte: str | None


@dataclass(frozen=True)
class Exists:
    field: str


@dataclass(frozen=True)
class FullText:
    words: tuple[str, ...]  # lower-cased; all must appear


@dataclass(frozen=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    item: Node


Node = Match | Prefix | Range | Exists | FullText | And | Or | Not

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<lparen>\() | (?P<rparen>\)) | (?P<minus>-(?=[^\s)]))
      | (?P<field>[A-Za-z0-9_@.]+):
      | (?P<range>\[[^\]]*\])
      | "(?P<quoted>(?:[^"\\]|\\.)*)"
      | (?P<word>[^\s()"\[\]]+)
    )""",
    re.VERBOSE,
)
_WORDS = re.compile(r"\w+", re.UNICODE)
_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def words(text: str) -> list[str]:
    """The full-text words of ``text``: runs of letters and digits of its lower-cased form (so
    that lower-casing twice changes nothing: the words of a query and of a document agree)."""
    found: list[str] = _WORDS.findall(text.lower())
    return [w for w in found if w != "_"] if "_" in text else found


def number(value: str) -> float | None:
    """``value`` as a number when it reads as one (``403``, ``-1.5``), else None."""
    return float(value) if _NUMBER.fullmatch(value) else None


@dataclass
class _Tok:
    kind: str
    text: str
    at: int


_VALUE = re.compile(r"""(?:(?P<range>\[[^\]]*\])|"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<word>[^\s()"]+))""")


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    at = 0
    while at < len(text):
        if text[at:].strip() == "":
            break
        # Right after ``field:`` comes its value, which may hold ``:`` itself (``url.full:http://x``).
        after_field = bool(out) and out[-1].kind == "field" and out[-1].at + len(out[-1].text) + 1 == at
        m = _VALUE.match(text, at) if after_field else _TOKEN.match(text, at)
        if m is None or m.end() == at:
            raise QueryError(f"unexpected character at position {at + 1}")
        kind = m.lastgroup or ""
        value, start = m.group(kind), m.start(kind)
        if kind == "quoted":
            value = re.sub(r"\\(.)", r"\1", value)
        elif kind == "word" and value in ("AND", "OR", "NOT") and not after_field:
            kind = value.lower()
        out.append(_Tok(kind, value, start))
        at = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def fail(self, what: str) -> QueryError:
        tok = self.peek()
        where = f"position {tok.at + 1}" if tok else "the end"
        return QueryError(f"{what} at {where}")

    def parse(self) -> Node | None:
        if not self.toks:
            return None
        node = self.or_expr(0)
        if self.peek() is not None:
            raise self.fail("unexpected text")
        return node

    def or_expr(self, depth: int) -> Node:
        items = [self.and_expr(depth)]
        while (tok := self.peek()) is not None and tok.kind == "or":
            self.take()
            items.append(self.and_expr(depth))
        return items[0] if len(items) == 1 else Or(tuple(items))

    def and_expr(self, depth: int) -> Node:
        items = [self.unary(depth)]
        while (tok := self.peek()) is not None and tok.kind not in ("or", "rparen"):
            if tok.kind == "and":
                self.take()
            items.append(self.unary(depth))
        return items[0] if len(items) == 1 else And(tuple(items))

    def unary(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise self.fail("the query is nested too deeply")
        tok = self.peek()
        if tok is None:
            raise self.fail("a term is missing")
        if tok.kind in ("not", "minus"):
            self.take()
            return Not(self.unary(depth + 1))
        if tok.kind == "lparen":
            self.take()
            node = self.or_expr(depth + 1)
            close = self.peek()
            if close is None or close.kind != "rparen":
                raise self.fail("a closing parenthesis is missing")
            self.take()
            return node
        if tok.kind == "field":
            self.take()
            return self.value(tok.text)
        if tok.kind in ("word", "quoted"):
            self.take()
            found = words(tok.text)
            if not found:
                raise QueryError(f"no word to search for at position {tok.at + 1}")
            return FullText(tuple(found))
        raise self.fail("a term is missing")

    def value(self, name: str) -> Node:
        tok = self.peek()
        if tok is None or tok.kind not in ("word", "quoted", "range"):
            raise self.fail(f"a value for {name} is missing")
        self.take()
        if tok.kind == "quoted":
            return Match(name, tok.text)
        if tok.kind == "range":
            parts = tok.text[1:-1].split()
            if len(parts) != 3 or parts[1] != "TO":
                raise QueryError(f"a range is [low TO high], at position {tok.at + 1}")
            low, high = (None if p == "*" else p for p in (parts[0], parts[2]))
            return Range(name, low, high)
        text = tok.text
        if text == "*":
            return Exists(name)
        if text.endswith("*") and "*" not in text[:-1]:
            return Prefix(name, text[:-1])
        if "*" in text:
            raise QueryError(f"only a trailing * is supported, at position {tok.at + 1}")
        return Match(name, text)


def parse_query(text: str | None) -> Node | None:
    """The query string as a tree, or None for an empty one (everything matches)."""
    if text is None:
        return None
    if len(text) > MAX_QUERY:
        raise QueryError(f"the query is longer than {MAX_QUERY} characters")
    return _Parser(text).parse()


# -- the protocol ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """What to search: ``text`` in the language above, ``start`` <= ``@timestamp`` < ``end``
    (aware datetimes; None leaves that end open), ``filters`` field -> the values allowed (any of
    them), ``size`` hits per page, newest first unless ``ascending``; ``after`` the ``cursor`` of
    the previous page's last hit. ``node`` is ``text`` parsed (when the query is made), what
    the stores compile."""

    text: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    filters: Mapping[str, Sequence[str | int | float | bool]] = field(default_factory=dict)
    size: int = 100
    ascending: bool = False
    after: tuple[str, str] | None = None
    node: Node | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 <= self.size <= MAX_SIZE:
            raise QueryError(f"size must be 0..{MAX_SIZE}")
        for moment in (self.start, self.end):
            if moment is not None and moment.tzinfo is None:
                raise QueryError("start and end must be timezone-aware")
        object.__setattr__(self, "node", parse_query(self.text))  # refused now, not in the store


@dataclass(frozen=True)
class NativeQuery:
    """A query already written in the stores' own languages (a Sigma rule compiled by soc.sigma),
    one text per store ``name``: for ``opensearch`` and ``elasticsearch`` a Lucene query string (run
    as ``query_string`` inside a filter); for ``sqlite`` an SQL boolean expression over the column
    :data:`SQL_DOCUMENT` (the document's JSON text, read with ``json_each``; soc.sigma.sql writes
    it), which may call :data:`SQL_CASELESS`. ``fields`` names the fields the query reads. Unlike
    :class:`Query` it is not parsed here: it comes from a rule an administrator installed, never
    from a console user's text, and the stores still run it read-only.

    A field named ``<name>.caseless`` (:data:`CASELESS`) stands for the lower-cased string values
    of ``<name>`` (other values as they are), so that a text holding lower-cased strings matches
    them whatever their case: Sigma's default. The search stores index it as a sub-field; the SQL
    text computes it."""

    texts: Mapping[str, str]
    fields: tuple[str, ...] = ()

    def text_for(self, store: str) -> str:
        """The text for the store named ``store``; QueryError when the query has none."""
        text = self.texts.get(store)
        if not text:
            raise QueryError(f"the native query has no form for the {store} store")
        return text


@dataclass(frozen=True)
class WriteResult:
    written: int  # new documents stored
    duplicates: int  # documents whose event.id was already stored (left as they were)


@dataclass(frozen=True)
class SearchResult:
    total: int  # every match, not only this page
    hits: list[dict[str, Any]]  # flat documents, in the order asked

    @property
    def cursor(self) -> tuple[str, str] | None:
        """Where the next page starts (``Query.after``), or None after an empty page."""
        if not self.hits:
            return None
        last = self.hits[-1]
        return str(last["@timestamp"]), str(last["event.id"])


@dataclass(frozen=True)
class Bucket:
    key: Any  # a terms value, or the bucket's start (an aware datetime) for a histogram
    count: int


class EventStore(Protocol):
    """Where events are kept; every method raises :class:`StoreUnavailable` when the store
    cannot do the work (never loses what it acknowledged)."""

    name: str  # "sqlite", "elasticsearch", "opensearch"

    async def write(self, documents: Sequence[Mapping[str, Any]]) -> WriteResult:
        """Store ``documents`` (flat ECS), in order; idempotent by ``event.id``. Returns only
        when they are durable in the store."""
        ...

    async def search(self, query: Query) -> SearchResult:
        """One page of matches, ordered by ``@timestamp`` then ``event.id``."""
        ...

    async def count(self, query: Query) -> int: ...

    async def terms(self, query: Query, field: str, size: int = 10) -> list[Bucket]:
        """The most frequent values of ``field`` among the matches (ties: smaller value first)."""
        ...

    async def cardinality(self, query: Query, field: str) -> int:
        """How many distinct values ``field`` has among the matches (exact up to 10,000; an
        estimate within 5% above that on the search stores)."""
        ...

    async def date_histogram(self, query: Query, interval: int) -> list[Bucket]:
        """Matches per ``interval`` seconds, buckets aligned to the epoch, empty ones included
        between the first and the last non-empty one."""
        ...

    async def native_search(
        self, native: NativeQuery, start: datetime, end: datetime, size: int = 1000
    ) -> SearchResult:
        """Matches of ``native`` with ``start`` <= ``@timestamp`` < ``end``, oldest first (ties by
        ``event.id``), at most ``size`` of them; ``total`` counts them all."""
        ...

    async def delete_before(self, cutoff: datetime) -> int:
        """Retention: remove every event older than ``cutoff``; how many (or an estimate)."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
