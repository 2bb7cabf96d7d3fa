"""The embedded event store: one SQLite file, a table per UTC day, FTS5 for full text.

The SOC's default store (``name = "sqlite"``), implementing :class:`core.eventstore.EventStore`
with the standard library's ``sqlite3``. Decisions:

* **One worker thread per store.** Every statement runs on a single-thread executor that owns
  the only connection; the async methods hand their work to it. Writes are therefore serialised
  (concurrent ``write`` calls from many tasks cannot interleave inside a transaction), and the
  event loop never waits on the disk.
* **Durable acknowledgement.** WAL journal with ``synchronous = FULL``: ``write`` returns after
  the commit record is fsynced, so a crash or a power cut loses nothing that was acknowledged
  (NORMAL would lose the last commits on a power cut; the ingest acknowledges on this store, so
  we pay the one fsync per ``write`` call). Each call is one transaction with multi-row
  inserts (hundreds of rows a statement: per-row statements hand the interpreter lock back and
  forth once a row); a batch of 1,000 events costs one fsync. Ingest splits a write in two
  (:meth:`SqliteEventStore.prepare_spooled`, then :meth:`SqliteEventStore.write_prepared`) so
  that the Python half of the next batch runs while SQLite writes the one before, and hands over
  the JSON text its spool already made.
* **A partition per UTC day.** ``events_YYYYMMDD`` holds the documents (JSON text, returned exactly
  as written), the time as integer microseconds (``ts``, the ordering key with ``id``) and five
  hot ECS fields as columns; ``words_YYYYMMDD`` is its FTS5 index. Retention drops whole days
  and deletes only inside the boundary day. A query visits the partitions that overlap its time
  range one by one, in the order asked, and stops reading hits once the page is full; one
  statement per partition also avoids SQLite's limit of 500 terms in a ``UNION ALL``. Freed
  pages are reused by later days (the file does not shrink).
* **Idempotency across partitions.** A global ``ids`` table holds every stored ``event.id``; a
  write first looks its ids up there (inside the write transaction, so no other writer can slip
  in between) and stores only the new ones. A document whose id is already stored leaves the
  stored one untouched. Event ids are random, so once the table outgrows a batch each new id
  dirties a page of its own: the largest cost of a write on a big store, softened by letting the
  WAL grow ten times SQLite's default before a checkpoint (a page rewritten by several commits is
  copied back once).
* **Hot fields.** ``user.name``, ``source.ip``, ``event.action``, ``event.outcome`` and
  ``event.dataset`` are copied into columns when their value is a string, so filters and
  aggregations on them read no JSON. A day where one of them ever held something else (a list,
  a number) is marked in ``partitions.mixed`` and its queries on that field read the JSON
  instead, so the answers never depend on the shortcut. The columns are filled from Python
  rather than generated from the JSON, and they are not indexed: a B-tree on a value unrelated
  to time costs the same random page per event as ``ids`` (it more than halved the write rate at
  a few hundred thousand events). Needles are found through the full-text index instead: a
  string equal to ``lina`` or starting with ``/hr/`` holds the words ``lina`` or ``hr``, so
  the FTS5 lookup narrows a partition to a few rows before the exact test runs on them.
* **Full text.** The FTS column holds the document's string values one a line, indexed by
  FTS5's ``ascii`` tokenizer with ``_`` as a token character, so that its tokens are
  :func:`core.eventstore.words` and the query side uses the same function: an ASCII value goes
  lower-cased as it is (on ASCII that tokenizer splits exactly where ``words`` does, and does it
  in SQLite's C on the store's thread rather than in Python on the writer's); any other value,
  or one with a ``_`` (a lone one is no word), goes as its words, space-separated (the
  tokenizer keeps every non-ASCII character inside a token). The table is contentless
  (``content=''``, ``detail=none``; days created from now on also ``columnsize=0``: nothing
  ranks, so no token count per row is kept): the text is not stored twice, and a row is
  removed by recomputing its text from the stored document (the same tokens as the words that
  earlier versions of this store indexed, so their rows are removed alike).
* **Queries compile to SQL with bound parameters only.** Values, JSON paths and FTS5 expressions
  are parameters; field names are checked against the query language's field grammar (no quote
  can occur) before they become a JSON path ``$."user.name"``. The only names formatted into SQL
  are the partition tables (``events_`` + an integer day) and the fixed hot-column names.
* **Native queries** (:meth:`SqliteEventStore.native_search`, Sigma rules compiled by
  :mod:`soc.sigma.sql`) are an SQL condition over the document's JSON text, which each day's
  rows expose as ``sigma__doc`` (:data:`core.eventstore.SQL_DOCUMENT`): each field condition is
  an ``EXISTS`` over the field's elements through ``json_each``, as the search stores read a list.
  The text is an administrator's rule, not user input, but it still runs under an authorizer that
  allows only reading that day's table and ``json_each``, and a short list of scalar functions
  (no write, ``ATTACH`` or ``PRAGMA``), with ``LIKE`` made case-sensitive. The connection provides
  :data:`core.eventstore.SQL_CASELESS`, Python's lower-casing (all of Unicode), with which a
  rule's ``.caseless`` fields are read to match strings whatever their case.
* **Errors.** A database that cannot be opened, is locked past ``busy_timeout``, is read-only or
  full raises :class:`~core.eventstore.StoreUnavailable` with one line of reason; the connection is
  dropped and reopened by the next call, so the store works again once the cause is gone. A bad
  document raises :class:`ValueError` naming its position, before anything of the batch is
  written.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import orjson

from core.eventstore import (
    MAX_SIZE,
    SQL_CASELESS,
    SQL_DOCUMENT,
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

__all__ = ["MAX_BUCKETS", "PreparedWrite", "SqliteEventStore"]

MAX_BUCKETS = 100_000  # date_histogram buckets per answer, empty ones included

_SCHEMA_VERSION = 1
# Pages in the WAL before it is copied back into the database: ten times SQLite's default.
_CHECKPOINT_PAGES = 10_000
# Rows per INSERT statement: 1,000 events are 8,000 bound values (SQLite allows 32,766).
_ROWS_PER_INSERT = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_DAY_MICROS = 86_400_000_000

# Hot ECS fields -> (column, bit in partitions.mixed). Column names are constants of this module.
_HOT: dict[str, tuple[str, int]] = {
    "user.name": ("user_name", 1),
    "source.ip": ("source_ip", 2),
    "event.action": ("event_action", 4),
    "event.outcome": ("event_outcome", 8),
    "event.dataset": ("event_dataset", 16),
}
_HOT_COLUMNS = ", ".join(column for column, _ in _HOT.values())
_HOT_BITS = tuple((name, bit) for name, (_, bit) in _HOT.items())
# Fields of a handful of values: the full-text index would return half the partition for them.
_FEW_VALUES = frozenset(("event.action", "event.outcome", "event.dataset", "event.kind", "event.category"))

_FIELD = re.compile(r"[A-Za-z0-9_@.]+")  # the query language's field names: no quote can occur
# RFC 3339 (section 5.6) in UTC: "Z" or a zero offset; T may be lower case (section 5.6, note).
_TIMESTAMP = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt]([01]\d|2[0-3]):([0-5]\d):([0-5]\d)(?:\.(\d{1,9}))?(?:[Zz]|[+-]00:00)"
)
_LISTS = (list, tuple)  # tuples in isinstance: faster than X | Y on the write path
_STR_OR_NONE = frozenset((str, type(None)))
_NUMBER_TYPES = frozenset((int, float, bool))
_UNDERSCORE_ENDING = re.compile(r"_(?![0-9A-Za-z_])")  # a "_" that ends a run of word characters
_NUMBERS = (int, float)
_INTEGER = re.compile(r"-?\d+")
_WORD_CHARACTER = re.compile(r"\w")  # as in core.eventstore.words

# ensure_ascii=False keeps Chinese text at three bytes a character; allow_nan=False refuses
# NaN and infinities, which SQLite's JSON functions cannot read; check_circular=False halves the
# encoding time (documents are checked to be flat before they are encoded).
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"), check_circular=False)

# json_each type -> a class that keeps text, numbers and booleans apart in aggregations.
_KIND = "CASE j.type WHEN 'text' THEN 0 WHEN 'true' THEN 2 WHEN 'false' THEN 2 ELSE 1 END"
_TEXT, _BOOL = 0, 2

T = TypeVar("T")


# -- documents ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Row:
    event_id: str
    ts: int
    day: int
    doc: str
    strings: list[str]  # the string values: the full-text column's source (_fts_text)
    hot: tuple[str | None, ...]
    mixed: int


@functools.lru_cache(maxsize=4096)
def _day_of(text: str) -> tuple[int, int]:
    """``YYYY-MM-DD`` -> (the partition day ``YYYYMMDD``, microseconds at its midnight)."""
    day = date.fromisoformat(text)  # ValueError for 2026-13-01 or 2026-02-30
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return day.year * 10_000 + day.month * 100 + day.day, (midnight - _EPOCH) // _MICROSECOND


# The last canonical second read by _timestamp: its first 20 characters (``...T09:00:00.``) ->
# (partition day, microseconds at that second). Events come in time order, so most hit it.
_LAST_SECOND: list[tuple[str, int, int]] = [("", 0, 0)]


def _timestamp(text: str) -> tuple[int, int] | None:
    """An RFC 3339 UTC time -> (partition day, microseconds since the epoch), or None."""
    if len(text) == 27 and text[26] == "Z":  # the canonical form: 2026-11-02T09:00:00.007000Z
        second, day, base = _LAST_SECOND[0]
        fraction = text[20:26]
        if text[:20] == second and fraction.isascii() and fraction.isdigit():
            return day, base + int(fraction)
        parsed = _parse_timestamp(text)
        if parsed is not None:
            _LAST_SECOND[0] = (text[:20], parsed[0], parsed[1] - int(fraction))
        return parsed
    return _parse_timestamp(text)


def _parse_timestamp(text: str) -> tuple[int, int] | None:
    found = _TIMESTAMP.fullmatch(text)
    if found is None:
        return None
    ymd, hours, minutes, seconds, fraction = found.groups()
    try:
        day, midnight = _day_of(ymd)
    except ValueError:
        return None
    micros = ((int(hours) * 60 + int(minutes)) * 60 + int(seconds)) * 1_000_000
    if fraction:
        micros += int(fraction[:6].ljust(6, "0"))
    return day, midnight + micros


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def _day_span(day: int) -> tuple[int, int]:
    """The partition ``day`` as [start, end) in microseconds."""
    start = _day_of(f"{day // 10_000:04d}-{day // 100 % 100:02d}-{day % 100:02d}")[1]
    return start, start + _DAY_MICROS


def _strings(document: Mapping[str, Any], position: int) -> list[str]:
    """The document's string values in order, list elements included; refuses field names that
    are not strings and values that are neither JSON scalars nor lists of them."""
    strings: list[str] = []
    for key, value in document.items():
        if type(key) is not str:
            raise ValueError(f"documents[{position}]: field name {str(key)[:64]!r} is not a string")
        kind = type(value)
        if kind is str:
            strings.append(value)
        elif kind is int or kind is float or kind is bool or value is None:
            continue
        elif isinstance(value, _LISTS):
            for item in value:
                if isinstance(item, str):
                    strings.append(item)
                elif item is not None and not isinstance(item, _NUMBERS):
                    raise ValueError(
                        f"documents[{position}]: {key} holds a list element that is not a scalar"
                    )
        elif isinstance(value, str):
            strings.append(value)
        elif value is not None and not isinstance(value, _NUMBERS):  # bool is an int
            raise ValueError(f"documents[{position}]: {key} is neither a JSON scalar nor a list of them")
    return strings


_WORDS_OF: dict[str, str] = {}  # a string value -> its words, space-separated (values repeat a lot)
_WORDS_OF_LIMIT = 50_000


def _words_of(value: str) -> str:
    found = _WORDS_OF.get(value)
    if found is None:
        found = " ".join(words(value))
        if len(value) <= 256:
            if len(_WORDS_OF) >= _WORDS_OF_LIMIT:
                _WORDS_OF.clear()
            _WORDS_OF[value] = found
    return found


def _spooled_strings(document: dict[str, Any]) -> list[str] | None:
    """:func:`_strings` of a document read from the ingest spool (JSON: its names are strings),
    or None when a value is neither a JSON scalar nor a list of strings (:func:`_strings` then
    checks it and says what is wrong)."""
    strings: list[str] = []
    for value in document.values():
        kind = type(value)
        if kind is str:
            strings.append(value)
        elif kind is list:
            for item in value:
                if type(item) is str:
                    strings.append(item)
                elif not (item is None or type(item) in _NUMBER_TYPES):
                    return None
        elif not (value is None or kind in _NUMBER_TYPES):
            return None
    return strings


def _lone_underscore(text: str) -> bool:
    """Whether ASCII ``text`` holds a ``_`` between two non-word characters: a token of its own
    for FTS5's tokenizer, but no word for :func:`core.eventstore.words`."""
    for found in _UNDERSCORE_ENDING.finditer(text):
        at = found.start()
        if at == 0 or not (text[at - 1].isalnum() or text[at - 1] == "_"):
            return True
    return False


def _fts_text(strings: list[str]) -> str:
    """What the FTS column holds for a document's string values (module docstring): each
    value apart, so no word spans two."""
    text = "\n".join(strings)
    if text.isascii() and ("_" not in text or not _lone_underscore(text)):
        return text.lower()
    return "\n".join([v.lower() if v.isascii() and "_" not in v else _words_of(v) for v in strings])


def _prepare(position: int, document: Any, spooled: str | None = None) -> _Row:
    if not isinstance(document, Mapping):
        raise ValueError(f"documents[{position}] is not a mapping of fields")
    stamp = document.get("@timestamp")
    if stamp is None:
        raise ValueError(f"documents[{position}] has no @timestamp")
    parsed = _timestamp(stamp) if isinstance(stamp, str) else None
    if parsed is None:
        raise ValueError(f"documents[{position}]: @timestamp {str(stamp)[:64]!r} is not an RFC 3339 UTC time")
    event_id = document.get("event.id")
    if event_id is None:
        raise ValueError(f"documents[{position}] has no event.id")
    if not isinstance(event_id, str) or not event_id:
        raise ValueError(f"documents[{position}]: event.id must be a non-empty string")
    strings = None
    if spooled is not None and type(document) is dict:
        strings = _spooled_strings(document)
    if strings is None:
        strings = _strings(document, position)
    if spooled is not None and "\\u" not in spooled:
        # The spool's JSON is compact JSON of the same document; it may escape non-ASCII
        # characters as \uXXXX, which we keep as they are: without an escape it serves as is.
        encoded = spooled
    else:
        try:
            encoded = _ENCODER.encode(document)
        except ValueError as exc:  # NaN or an infinity
            raise ValueError(f"documents[{position}]: {exc}") from exc
    hot = tuple(map(document.get, _HOT))
    mixed = 0
    if not set(map(type, hot)) <= _STR_OR_NONE:  # a hot field holds something else: not a column
        values: list[str | None] = []
        for value, (_, bit) in zip(hot, _HOT_BITS, strict=True):
            if isinstance(value, str):
                values.append(value)
            else:
                values.append(None)
                if value is not None:
                    mixed |= bit
        hot = tuple(values)
    day, ts = parsed
    return _Row(event_id, ts, day, encoded, strings, hot, mixed)


def _unencodable(rows: Sequence[_Row], positions: Sequence[int]) -> ValueError | None:
    """A ValueError naming the first document that is not valid UTF-8 (a lone surrogate)."""
    for row, position in zip(rows, positions, strict=True):
        try:
            row.doc.encode()
        except UnicodeEncodeError:
            return ValueError(f"documents[{position}] holds text that is not valid Unicode")
    return None


# -- queries --------------------------------------------------------------------------------------


def _path(field: str) -> str:
    """The JSON path of a flat field; refuses names outside the query language's grammar."""
    if not isinstance(field, str) or _FIELD.fullmatch(field) is None:
        raise QueryError(f"{str(field)[:64]!r} is not a field name (letters, digits, _ . @)")
    return f'$."{field}"'


def _as_number(value: str) -> int | float | None:
    if number(value) is None:
        return None
    return int(value) if _INTEGER.fullmatch(value) else float(value)


def _filter_value(field: str, value: Any) -> str:
    """A filter value as query-language text: filters mean the same as ``field:value``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value)
    raise QueryError(f"filter values of {field} must be strings, numbers or booleans")


def _fts(terms: Sequence[str]) -> str:
    """An FTS5 expression requiring every word; each word is a quoted string (no operators)."""
    return " ".join('"' + term.replace('"', '""') + '"' for term in terms)


class _Where:
    """Compiles a query tree to a WHERE clause over one partition (aliased ``e``), collecting the
    bound parameters in the order their ``?`` appear."""

    def __init__(self, day: int, mixed: int) -> None:
        self.day = day
        self.mixed = mixed
        self.params: list[Any] = []
        self.sql = "1"  # the whole clause, once _Plan.where has built it

    def column(self, field: str) -> str | None:
        """The hot column for ``field`` if every value of it in this partition is a string."""
        hot = _HOT.get(field)
        if hot is None or self.mixed & hot[1]:
            return None
        return hot[0]

    def elements(self, field: str, condition: str, *params: Any) -> str:
        """Some element of ``field`` (the value itself, or any element of a list) satisfies
        ``condition`` over json_each's ``type`` and ``atom``."""
        self.params.append(_path(field))
        self.params.extend(params)
        return f"EXISTS (SELECT 1 FROM json_each(e.doc, ?) WHERE {condition})"  # noqa: S608

    def words(self, terms: Sequence[str]) -> str:
        """The row's string values hold every one of ``terms`` (an FTS5 lookup)."""
        self.params.append(_fts(terms))
        table = f"words_{self.day}"
        return f"e.n IN (SELECT rowid FROM {table} WHERE {table} MATCH ?)"  # noqa: S608

    def needle(self, field: str, test: str, terms: Sequence[str]) -> str:
        """``test``, narrowed first by the full-text index when ``terms`` (words a matching
        string value must contain) are known: a match then reads a few rows, not the partition.
        Fields of a handful of values gain nothing from it and skip it."""
        if not terms or field in _FEW_VALUES:
            return test
        return f"({test} AND {self.words(terms)})"

    def node(self, node: Node) -> str:
        match node:
            case Match(field, value):
                return self.match(field, (value,))
            case Prefix(field, prefix):
                return self.prefix(field, prefix)
            case Range(field, gte, lte):
                return self.range(field, gte, lte)
            case Exists(field):
                column = self.column(field)
                if column is not None:
                    return f"({column} IS NOT NULL)"
                return self.elements(field, "type <> 'null'")
            case FullText(terms):
                return self.words(terms)
            case And(items):
                return "(" + " AND ".join(self.node(item) for item in items) + ")"
            case Or(items):
                return "(" + " OR ".join(self.node(item) for item in items) + ")"
            case Not(item):
                return f"NOT ({self.node(item)})"
        raise QueryError(f"unknown query node {node!r}")  # pragma: no cover - the union is closed

    def match(self, field: str, values: Sequence[str]) -> str:
        """``field`` equals one of ``values``: as text, as a number, or as a boolean."""
        if not values:
            _path(field)
            return "0"
        # One value that can only equal a string: its words are words of the row.
        only_text = all(_as_number(v) is None and v not in ("true", "false") for v in values)
        column = self.column(field)
        if column is not None:  # only strings here, so text equality is the whole answer
            self.params.extend(values)
            test = f"({column} IS NOT NULL AND {column} IN ({', '.join('?' * len(values))}))"
            only_text = True
        else:
            texts = list(values)
            numbers = [n for n in map(_as_number, values) if n is not None]
            booleans = [v for v in values if v in ("true", "false")]
            tests = [f"(type = 'text' AND atom IN ({', '.join('?' * len(texts))}))"]
            params: list[Any] = [*texts]
            if numbers:
                tests.append(f"(type IN ('integer', 'real') AND atom IN ({', '.join('?' * len(numbers))}))")
                params.extend(numbers)
            if booleans:
                tests.append(f"type IN ({', '.join('?' * len(booleans))})")
                params.extend(booleans)
            test = self.elements(field, " OR ".join(tests), *params)
        return self.needle(field, test, words(values[0]) if only_text and len(values) == 1 else ())

    def prefix(self, field: str, prefix: str) -> str:
        column = self.column(field)
        if column is None:
            test = self.elements(field, "type = 'text' AND substr(atom, 1, ?) = ?", len(prefix), prefix)
        else:
            self.params.extend((len(prefix), prefix))
            test = f"({column} IS NOT NULL AND substr({column}, 1, ?) = ?)"
        # The last word of the prefix may be cut short in the value ("pay" of "payroll"), so
        # only the words before it are sure to be words of the row.
        terms = words(prefix)
        if terms and _WORD_CHARACTER.fullmatch(prefix[-1]):
            terms = terms[:-1]
        return self.needle(field, test, terms)

    def range(self, field: str, gte: str | None, lte: str | None) -> str:
        """Numbers when every end given reads as a number, else text (ISO times compare as text)."""
        ends = [(end, operator) for end, operator in ((gte, ">="), (lte, "<=")) if end is not None]
        numeric = bool(ends) and all(_as_number(end) is not None for end, _ in ends)
        values = [_as_number(end) if numeric else end for end, _ in ends]
        column = self.column(field)
        if column is not None:
            if numeric:  # a partition whose values are all strings has no number in range
                _path(field)
                return "0"
            self.params.extend(values)
            tests = [f"{column} IS NOT NULL", *(f"{column} {operator} ?" for _, operator in ends)]
            return "(" + " AND ".join(tests) + ")"
        kind = "type IN ('integer', 'real')" if numeric else ("type = 'text'" if ends else "type <> 'null'")
        return self.elements(
            field, " AND ".join([kind, *(f"atom {operator} ?" for _, operator in ends)]), *values
        )


@dataclass(frozen=True, slots=True)
class _Plan:
    """A query made ready for the partitions: its tree, time bounds and cursor in microseconds."""

    node: Node | None
    filters: tuple[tuple[str, tuple[str, ...]], ...]
    start: int | None
    end: int | None
    after: tuple[int, str] | None

    @classmethod
    def of(cls, query: Query) -> _Plan:
        filters = []
        for field, values in query.filters.items():
            _path(field)
            if isinstance(values, str | bytes) or not isinstance(values, Sequence):
                raise QueryError(f"the filter on {field} must be a list of values")
            filters.append((field, tuple(_filter_value(field, value) for value in values)))
        after = None
        if query.after is not None:
            stamp, event_id = query.after
            parsed = _timestamp(stamp) if isinstance(stamp, str) else None
            if parsed is None or not isinstance(event_id, str):
                raise QueryError("after must be the cursor of a hit: (@timestamp, event.id)")
            after = (parsed[1], event_id)
        return cls(
            node=query.node,
            filters=tuple(filters),
            start=None if query.start is None else _micros(query.start),
            end=None if query.end is None else _micros(query.end),
            after=after,
        )

    def days(self, partitions: Mapping[int, int]) -> list[int]:
        """The partitions that overlap [start, end), oldest first."""
        chosen = []
        for day in sorted(partitions):
            first, last = _day_span(day)
            if (self.start is None or last > self.start) and (self.end is None or first < self.end):
                chosen.append(day)
        return chosen

    def where(self, day: int, mixed: int, *, cursor: bool = False, ascending: bool = True) -> _Where:
        """The WHERE clause for one partition (in ``.sql``), the cursor included if asked."""
        where = _Where(day, mixed)
        clauses: list[str] = []
        if self.start is not None:
            clauses.append("e.ts >= ?")
            where.params.append(self.start)
        if self.end is not None:
            clauses.append("e.ts < ?")
            where.params.append(self.end)
        if cursor and self.after is not None:
            clauses.append("(e.ts, e.id) > (?, ?)" if ascending else "(e.ts, e.id) < (?, ?)")
            where.params.extend(self.after)
        for field, values in self.filters:
            clauses.append(where.match(field, values))
        if self.node is not None:
            clauses.append(where.node(self.node))
        where.sql = " AND ".join(clauses) or "1"
        return where


# -- the store ------------------------------------------------------------------------------------


class SqliteEventStore:
    """Events in one SQLite file at ``path``, searched with the query language of
    :mod:`core.eventstore`. ``busy_timeout`` is how long a write waits for a lock held by another
    connection before :class:`StoreUnavailable` is raised."""

    name = "sqlite"

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 5.0) -> None:
        if busy_timeout < 0:
            raise ValueError("busy_timeout must not be negative")
        self._path = os.fspath(path)
        self._busy_timeout = busy_timeout
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-events")
        self._conn: sqlite3.Connection | None = None  # used by the worker thread only
        self._closed = False

    def __repr__(self) -> str:
        return f"SqliteEventStore({self._path!r})"

    # -- running work on the worker thread --

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreUnavailable(f"the event store {self._path} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self._in_worker, work)

    def _in_worker(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            if self._conn is None:
                self._conn = self._open()
            return work(self._conn)
        except sqlite3.DatabaseError as exc:
            if not _unavailable(exc):
                raise
            self._drop()
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise StoreUnavailable(f"sqlite event store {self._path}: {reason}") from exc

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path,
            timeout=self._busy_timeout,
            isolation_level=None,  # transactions are explicit (BEGIN ... COMMIT)
            cached_statements=512,  # per-partition statements stay prepared
        )
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise sqlite3.OperationalError(f"the journal cannot be switched to WAL (it is {mode})")
            # FULL: every commit is fsynced before write() returns, power cut included.
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute(f"PRAGMA wal_autocheckpoint = {_CHECKPOINT_PAGES}")
            conn.execute("PRAGMA journal_size_limit = 67108864")
            conn.execute("PRAGMA cache_size = -65536")
            conn.execute("PRAGMA temp_store = MEMORY")
            # Native queries read non-ASCII text lower-cased by Python (all of Unicode, as the
            # search servers' normalizer; SQLite's lower() knows ASCII only).
            conn.create_function(SQL_CASELESS, 1, _caseless, deterministic=True)
            with _transaction(conn, immediate=False):
                version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise sqlite3.OperationalError(f"schema version {version} is newer than this code")
            if version < _SCHEMA_VERSION:
                with _transaction(conn, immediate=True):
                    conn.execute("CREATE TABLE IF NOT EXISTS ids (id TEXT PRIMARY KEY) WITHOUT ROWID")
                    conn.execute(
                        "CREATE TABLE IF NOT EXISTS partitions ("
                        "day INTEGER PRIMARY KEY, mixed INTEGER NOT NULL DEFAULT 0)"
                    )
                    conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        except BaseException:
            conn.close()
            raise
        return conn

    # -- the protocol --

    async def write(self, documents: Sequence[Mapping[str, Any]]) -> WriteResult:
        if not documents:
            return await self._run(lambda conn: WriteResult(0, 0))
        return await self._run(functools.partial(_write, documents=documents))

    def prepare_spooled(self, documents: Sequence[Mapping[str, Any]], texts: Sequence[str]) -> PreparedWrite:
        """:meth:`write` in two halves, this first one on the caller's thread: the checks and the
        rows (JSON, words, hot columns), with the same ValueError for a bad document. ``texts``
        holds each document's JSON as the ingest spool wrote it (compact:
        ``soc.spool.Batch.texts``; ``texts[i]`` must be the JSON of ``documents[i]``), which is
        stored instead of encoding the document again wherever the two texts are the same. A
        writer prepares its next batch while this store's thread still writes the one before, so
        that its Python work and SQLite's overlap."""
        if len(texts) != len(documents):
            raise ValueError(f"{len(texts)} texts for {len(documents)} documents")
        return _prepare_all(documents, texts)

    async def write_prepared(self, prepared: PreparedWrite) -> WriteResult:
        """The second half of :meth:`prepare_spooled`: one transaction, as :meth:`write`."""
        return await self._run(functools.partial(_insert, prepared=prepared))

    async def search(self, query: Query) -> SearchResult:
        return await self._run(functools.partial(_search, query=query))

    async def count(self, query: Query) -> int:
        return await self._run(functools.partial(_count, query=query))

    async def terms(self, query: Query, field: str, size: int = 10) -> list[Bucket]:
        if not isinstance(size, int) or size < 0:
            raise QueryError("size must be a non-negative integer")
        counts = await self._run(functools.partial(_values, query=query, field=field))
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0][0], item[0][1]))
        return [Bucket(_value(kind, value), count) for (kind, value), count in ranked[:size]]

    async def cardinality(self, query: Query, field: str) -> int:
        return len(await self._run(functools.partial(_values, query=query, field=field)))

    async def date_histogram(self, query: Query, interval: int) -> list[Bucket]:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval <= 0:
            raise QueryError("interval must be a positive number of seconds")
        width = interval * 1_000_000
        counts = await self._run(functools.partial(_histogram, query=query, width=width))
        if not counts:
            return []
        first, last = min(counts), max(counts)
        if (last - first) // width + 1 > MAX_BUCKETS:
            raise QueryError(f"the histogram would have more than {MAX_BUCKETS} buckets")
        return [
            Bucket(_EPOCH + timedelta(microseconds=start), counts.get(start, 0))
            for start in range(first, last + 1, width)
        ]

    async def native_search(
        self, native: NativeQuery, start: datetime, end: datetime, size: int = 1000
    ) -> SearchResult:
        for moment in (start, end):
            if not isinstance(moment, datetime) or moment.tzinfo is None:
                raise QueryError("start and end must be timezone-aware datetimes")
        if isinstance(size, bool) or not 0 <= size <= MAX_SIZE:
            raise QueryError(f"size must be 0..{MAX_SIZE}")
        return await self._run(
            functools.partial(_native_search, native=native, start=start, end=end, size=size)
        )

    async def delete_before(self, cutoff: datetime) -> int:
        if not isinstance(cutoff, datetime) or cutoff.tzinfo is None:
            raise ValueError("cutoff must be a timezone-aware datetime")
        return await self._run(functools.partial(_delete_before, cutoff=cutoff))

    async def ping(self) -> None:
        await self._run(lambda conn: conn.execute("SELECT count(*) FROM partitions").fetchone())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._worker, self._drop)
        finally:
            self._worker.shutdown(wait=False)


def _unavailable(exc: sqlite3.DatabaseError) -> bool:
    """Errors of the database rather than of our statements: locked, busy, read-only, full, I/O,
    cannot open, not a database, corrupt."""
    return type(exc) in (sqlite3.OperationalError, sqlite3.DatabaseError)


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection, *, immediate: bool) -> Iterator[None]:
    """One transaction; rolled back on any error. IMMEDIATE takes the write lock at once."""
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def _partitions(conn: sqlite3.Connection) -> dict[int, int]:
    """Partition day -> its ``mixed`` bits (hot fields that held a non-string value)."""
    return {day: mixed for day, mixed in conn.execute("SELECT day, mixed FROM partitions")}


def _create_partition(conn: sqlite3.Connection, day: int) -> None:
    events, text = f"events_{day}", f"words_{day}"  # day is an int: the only formatted names
    conn.execute(
        f"CREATE TABLE {events} (n INTEGER PRIMARY KEY, ts INTEGER NOT NULL, id TEXT NOT NULL, "
        f"doc TEXT NOT NULL, {', '.join(f'{column} TEXT' for column, _ in _HOT.values())})"
    )
    conn.execute(f"CREATE INDEX {events}_time ON {events} (ts, id)")
    conn.execute(
        f"CREATE VIRTUAL TABLE {text} USING fts5("
        "words, content='', detail=none, columnsize=0, tokenize=\"ascii tokenchars '_'\")"
    )
    conn.execute("INSERT INTO partitions (day, mixed) VALUES (?, 0)", (day,))


@dataclass(frozen=True, slots=True)
class _DayRows:
    """The rows of one partition day, as the statements of :func:`_insert` bind them."""

    day: int
    values: list[Any]  # ts, id, doc and the hot columns of each row, one after the other
    texts: str  # the rows' full-text columns as a JSON array, for json_each
    mixed: int


@dataclass(frozen=True, slots=True)
class PreparedWrite:
    """A batch checked and turned into rows (:meth:`SqliteEventStore.prepare_spooled`), ready for
    :meth:`SqliteEventStore.write_prepared`: the rows, and everything the statements bind made
    ahead, so that the store's thread only runs them (while it holds the interpreter lock, the
    writer's thread cannot prepare the next batch)."""

    rows: list[_Row]
    positions: list[int]  # of each row in the batch
    ids: str  # the rows' event ids as a JSON array
    documents: int
    days: list[_DayRows]


_ROW_COLUMNS = f"ts, id, doc, {_HOT_COLUMNS}"
_ROW_WIDTH = 3 + len(_HOT)


def _prepare_all(documents: Sequence[Mapping[str, Any]], texts: Sequence[str] | None) -> PreparedWrite:
    rows: list[_Row] = []
    positions: list[int] = []
    seen: set[str] = set()
    for position, document in enumerate(documents):
        row = _prepare(position, document, None if texts is None else texts[position])
        if row.event_id not in seen:  # the first of a batch wins, as across batches
            seen.add(row.event_id)
            rows.append(row)
            positions.append(position)
    ids = _json_array([row.event_id for row in rows])
    return PreparedWrite(rows, positions, ids, len(documents), _day_rows(rows))


def _json_array(texts: list[str]) -> str:
    """``texts`` as a JSON array for ``json_each`` (a lone surrogate goes escaped; the document
    holding it is refused when its row is bound)."""
    try:
        return orjson.dumps(texts).decode()
    except orjson.JSONEncodeError:
        return json.dumps(texts)


def _day_rows(rows: Sequence[_Row]) -> list[_DayRows]:
    by_day: dict[int, list[_Row]] = {}
    for row in rows:
        by_day.setdefault(row.day, []).append(row)
    days = []
    for day, group in by_day.items():
        values: list[Any] = []
        mixed = 0
        for row in group:
            values += (row.ts, row.event_id, row.doc, *row.hot)
            mixed |= row.mixed
        texts = _json_array([_fts_text(row.strings) for row in group])
        days.append(_DayRows(day, values, texts, mixed))
    return days


def _write(
    conn: sqlite3.Connection, documents: Sequence[Mapping[str, Any]], texts: Sequence[str] | None = None
) -> WriteResult:
    return _insert(conn, _prepare_all(documents, texts))


def _insert(conn: sqlite3.Connection, prepared: PreparedWrite) -> WriteResult:
    rows, positions = prepared.rows, prepared.positions
    try:
        with _transaction(conn, immediate=True):
            stored = {
                event_id
                for (event_id,) in conn.execute(
                    "SELECT id FROM ids WHERE id IN (SELECT value FROM json_each(?))", (prepared.ids,)
                )
            }
            fresh, days, ids = rows, prepared.days, prepared.ids
            if stored:  # some stored already (a batch replayed): only the others
                fresh = [row for row in rows if row.event_id not in stored]
                days, ids = _day_rows(fresh), _json_array([row.event_id for row in fresh])
            partitions = _partitions(conn)
            for group in days:
                day = group.day
                if day not in partitions:
                    _create_partition(conn, day)
                    partitions[day] = 0
                events = f"events_{day}"
                (top,) = conn.execute(f"SELECT coalesce(max(n), 0) FROM {events}").fetchone()  # noqa: S608
                # Each row takes the next n (SQLite gives a new row one more than the largest),
                # so the rows are top + 1, top + 2 ... in order, as their full text below.
                # Many rows a statement: executemany would run one statement per row, and this
                # thread would give up the interpreter lock and wait to take it back around each
                # of them, which, while the event loop is busy, costs more than SQLite's work.
                values = group.values
                step = _ROWS_PER_INSERT * _ROW_WIDTH
                marks = "(" + ", ".join("?" * _ROW_WIDTH) + ")"
                for first in range(0, len(values), step):
                    chunk = values[first : first + step]
                    conn.execute(
                        f"INSERT INTO {events} ({_ROW_COLUMNS}) VALUES "  # noqa: S608
                        + ", ".join([marks] * (len(chunk) // _ROW_WIDTH)),
                        chunk,
                    )
                count = len(values) // _ROW_WIDTH
                (last,) = conn.execute(f"SELECT max(n) FROM {events}").fetchone()  # noqa: S608
                if last != top + count:  # pragma: no cover - SQLite's documented rowid choice
                    raise sqlite3.IntegrityError(f"{events}: rows numbered {last}, expected {top + count}")
                conn.execute(
                    f"INSERT INTO words_{day} (rowid, words) SELECT ? + key, value FROM json_each(?)",  # noqa: S608
                    (top + 1, group.texts),
                )
                if group.mixed & ~partitions[day]:
                    conn.execute("UPDATE partitions SET mixed = mixed | ? WHERE day = ?", (group.mixed, day))
            conn.execute("INSERT INTO ids (id) SELECT value FROM json_each(?)", (ids,))
    except UnicodeEncodeError:
        bad = _unencodable(rows, positions)
        if bad is None:
            raise
        raise bad from None
    return WriteResult(written=len(fresh), duplicates=prepared.documents - len(fresh))


def _search(conn: sqlite3.Connection, query: Query) -> SearchResult:
    plan = _Plan.of(query)
    order = "ASC" if query.ascending else "DESC"
    hits: list[dict[str, Any]] = []
    with _transaction(conn, immediate=False):  # one snapshot: total and hits agree
        partitions = _partitions(conn)
        days = plan.days(partitions)
        total = _count_in(conn, plan, partitions, days)
        if not query.ascending:
            days.reverse()
        if plan.after is not None:  # partitions wholly on the far side of the cursor hold no hit
            ts = plan.after[0]
            days = [d for d in days if (_day_span(d)[1] > ts if query.ascending else _day_span(d)[0] <= ts)]
        for day in days:
            if len(hits) >= query.size:
                break
            where = plan.where(day, partitions[day], cursor=True, ascending=query.ascending)
            rows = conn.execute(
                f"SELECT e.doc FROM events_{day} AS e WHERE {where.sql} "  # noqa: S608
                f"ORDER BY e.ts {order}, e.id {order} LIMIT ?",
                [*where.params, query.size - len(hits)],
            )
            hits.extend(json.loads(doc) for (doc,) in rows)
    return SearchResult(total=total, hits=hits)


def _count_in(conn: sqlite3.Connection, plan: _Plan, partitions: Mapping[int, int], days: list[int]) -> int:
    total = 0
    for day in days:
        where = plan.where(day, partitions[day])
        (found,) = conn.execute(
            f"SELECT count(*) FROM events_{day} AS e WHERE {where.sql}",  # noqa: S608
            where.params,
        ).fetchone()
        total += found
    return total


def _count(conn: sqlite3.Connection, query: Query) -> int:
    plan = _Plan.of(query)
    with _transaction(conn, immediate=False):
        partitions = _partitions(conn)
        return _count_in(conn, plan, partitions, plan.days(partitions))


def _values(conn: sqlite3.Connection, query: Query, field: str) -> dict[tuple[int, Any], int]:
    """(kind, value) -> how many matching documents hold it, for every value of ``field``."""
    plan = _Plan.of(query)
    path = _path(field)
    counts: dict[tuple[int, Any], int] = {}
    with _transaction(conn, immediate=False):
        partitions = _partitions(conn)
        for day in plan.days(partitions):
            where = plan.where(day, partitions[day])
            column = where.column(field)
            if column is not None:
                sql = (
                    f"SELECT {_TEXT}, {column}, count(*) FROM events_{day} AS e "  # noqa: S608
                    f"WHERE {column} IS NOT NULL AND {where.sql} GROUP BY {column}"
                )
                params = where.params
            else:
                # DISTINCT per document: a list holding a value twice counts that document once.
                sql = (
                    "SELECT k, v, count(*) FROM ("  # noqa: S608
                    f"SELECT DISTINCT e.n, {_KIND} AS k, j.atom AS v "
                    f"FROM events_{day} AS e, json_each(e.doc, ?) AS j "
                    f"WHERE j.type <> 'null' AND {where.sql}) GROUP BY k, v"
                )
                params = [path, *where.params]
            for kind, value, found in conn.execute(sql, params):
                key = (kind, value)
                counts[key] = counts.get(key, 0) + found
    return counts


def _value(kind: int, value: Any) -> Any:
    return bool(value) if kind == _BOOL else value


def _histogram(conn: sqlite3.Connection, query: Query, width: int) -> dict[int, int]:
    """Bucket start (microseconds, aligned to the epoch) -> matches in it."""
    plan = _Plan.of(query)
    counts: dict[int, int] = {}
    with _transaction(conn, immediate=False):
        partitions = _partitions(conn)
        for day in plan.days(partitions):
            where = plan.where(day, partitions[day])
            # ((ts % w) + w) % w is the offset into the bucket for times before 1970 too.
            rows = conn.execute(
                "SELECT e.ts - (((e.ts % ?) + ?) % ?) AS b, count(*) "  # noqa: S608
                f"FROM events_{day} AS e WHERE {where.sql} GROUP BY b",
                [width, width, width, *where.params],
            )
            for start, found in rows:
                counts[start] = counts.get(start, 0) + found
    return counts


# What a native condition may call: the forms pysigma-backend-sqlite writes, plain text helpers,
# and the store's Unicode lower-casing (soc.sigma.sql reads .caseless fields with it).
_NATIVE_FUNCTIONS = frozenset(
    (
        "like",
        "glob",
        "coalesce",
        "ifnull",
        "lower",
        "upper",
        "instr",
        "substr",
        "length",
        "count",
        SQL_CASELESS,
    )
)


def _caseless(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _unavailable_reason(exc: sqlite3.DatabaseError) -> bool:
    """Whether an error is about the database (locked, busy, I/O, damage) rather than the
    statement."""
    text = str(exc).lower()
    words = ("locked", "busy", "disk", "unable to open", "readonly", "full", "not a database", "corrupt")
    return any(word in text for word in words)


def _native_authorizer(table: str) -> Callable[[int, str | None, str | None, str | None, str | None], int]:
    """An authorizer for one native statement: read ``table`` (and json_each), call the allowed
    functions, nothing else."""

    def decide(action: int, first: str | None, second: str | None, _db: str | None, _src: str | None) -> int:
        if action == sqlite3.SQLITE_SELECT:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_READ and first in (table, "json_each"):
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_FUNCTION and (second or "").lower() in _NATIVE_FUNCTIONS:
            return sqlite3.SQLITE_OK
        return sqlite3.SQLITE_DENY

    return decide


def _native_from(day: int) -> str:
    """The subquery over one day that a native condition reads: each row's document as
    :data:`core.eventstore.SQL_DOCUMENT` (the condition takes the fields it needs from it with
    ``json_each``), within the time range bound next."""
    return (
        f"(SELECT e.ts AS sigma__ts, e.id AS sigma__id, e.doc AS {SQL_DOCUMENT} "  # noqa: S608
        f"FROM events_{day} AS e WHERE e.ts >= ? AND e.ts < ?) AS sigma_events"
    )


def _native_search(
    conn: sqlite3.Connection, native: NativeQuery, start: datetime, end: datetime, size: int
) -> SearchResult:
    condition = native.text_for("sqlite")
    low, high = _micros(start), _micros(end)
    hits: list[dict[str, Any]] = []
    total = 0
    with _transaction(conn, immediate=False):
        partitions = _partitions(conn)
        days = [d for d in sorted(partitions) if _day_span(d)[1] > low and _day_span(d)[0] < high]
        conn.execute("PRAGMA case_sensitive_like = ON")
        # json_each's first use on a connection reads the schema to declare itself, which the
        # strict authorizer below would refuse: make that first use here, before it is set.
        conn.execute("SELECT 1 FROM json_each('[]')").fetchall()
        try:
            for day in days:
                source = _native_from(day)
                params = [low, high]
                conn.set_authorizer(_native_authorizer(f"events_{day}"))
                try:
                    (found,) = conn.execute(
                        f"SELECT count(*) FROM {source} WHERE ({condition})",  # noqa: S608
                        params,
                    ).fetchone()
                    total += found
                    if len(hits) < size and found:
                        rows = conn.execute(
                            f"SELECT {SQL_DOCUMENT} FROM {source} WHERE ({condition}) "  # noqa: S608
                            "ORDER BY sigma__ts, sigma__id LIMIT ?",
                            [*params, size - len(hits)],
                        )
                        hits.extend(json.loads(doc) for (doc,) in rows)
                finally:
                    conn.set_authorizer(None)
        except sqlite3.DatabaseError as exc:
            if _unavailable_reason(exc):
                raise
            # A condition SQLite refuses (syntax, an unknown function, something not authorised)
            # is the rule's fault, not the database's.
            raise QueryError(f"sqlite cannot run the native query: {exc}") from exc
        finally:
            conn.execute("PRAGMA case_sensitive_like = OFF")
    return SearchResult(total=total, hits=hits)


def _delete_before(conn: sqlite3.Connection, cutoff: datetime) -> int:
    limit = _micros(cutoff)
    removed = 0
    with _transaction(conn, immediate=True):
        for day in sorted(_partitions(conn)):
            start, end = _day_span(day)
            if end <= limit:  # the whole day is older: drop it
                (found,) = conn.execute(f"SELECT count(*) FROM events_{day}").fetchone()  # noqa: S608
                conn.execute(f"DELETE FROM ids WHERE id IN (SELECT id FROM events_{day})")  # noqa: S608
                conn.execute(f"DROP TABLE events_{day}")
                conn.execute(f"DROP TABLE words_{day}")
                conn.execute("DELETE FROM partitions WHERE day = ?", (day,))
                removed += found
            elif start < limit:  # the boundary day: delete its older rows
                conn.execute(
                    f"DELETE FROM ids WHERE id IN (SELECT id FROM events_{day} WHERE ts < ?)",  # noqa: S608
                    (limit,),
                )
                old = conn.execute(f"SELECT n, doc FROM events_{day} WHERE ts < ?", (limit,))  # noqa: S608
                while chunk := old.fetchmany(1000):
                    # A contentless FTS5 row is removed by giving back the tokens it was indexed with.
                    conn.executemany(
                        f"INSERT INTO words_{day} (words_{day}, rowid, words) VALUES ('delete', ?, ?)",  # noqa: S608
                        [(n, _fts_text(_strings(json.loads(doc), 0))) for n, doc in chunk],
                    )
                    removed += len(chunk)
                conn.execute(f"DELETE FROM events_{day} WHERE ts < ?", (limit,))  # noqa: S608
    return removed
