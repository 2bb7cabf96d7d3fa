"""``/api/soc/v1/events``: search the stored events, for investigation.

=====  ======================  ===========================================================
GET    /events                 ``q`` in the query language (docs/soc.md), ``since`` / ``until``,
                               ``size``, ``order``; ``cursor`` for the next page
GET    /events/aggregations    the most frequent values of ``field`` among the matches
=====  ======================  ===========================================================

A query the language does not describe is a 400 ``bad_query`` quoting the parser's message (with
the position).
"""

from __future__ import annotations

import re
from typing import Any

from starlette.responses import Response

from core.eventstore import MAX_QUERY, EventStore, Query
from onegate.admin.api import ApiError, ApiRequest, Endpoint, json_response
from onegate.admin.soc_common import (
    answer,
    decode_cursor,
    encode_cursor,
    guarded,
    operation,
    parameter,
    query_text,
    query_time,
    refuse_unknown_parameters,
)

__all__ = ["EventEndpoints", "openapi_paths", "openapi_schemas"]

MAX_PAGE = 1000
MAX_BUCKETS = 100
_FIELD = re.compile(r"[A-Za-z0-9_@.]{1,200}")


class EventEndpoints:
    def __init__(self, store: EventStore) -> None:
        self._store = store

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("GET", "/events", guarded(self.search)),
            Endpoint("GET", "/events/aggregations", guarded(self.aggregations)),
        ]

    def _query(
        self,
        call: ApiRequest,
        *,
        size: int = 0,
        after: tuple[str, str] | None = None,
        ascending: bool = False,
    ) -> Query:
        return Query(
            text=query_text(call, "q", max_length=MAX_QUERY),
            start=query_time(call, "since"),
            end=query_time(call, "until"),
            size=size,
            ascending=ascending,
            after=after,
        )

    async def search(self, call: ApiRequest) -> Response:
        refuse_unknown_parameters(call, ("q", "since", "until", "size", "order", "cursor"))
        size = call.query_int("size", 100, low=1, high=MAX_PAGE)
        order = query_text(call, "order", max_length=4) or "desc"
        if order not in ("asc", "desc"):
            raise ApiError(400, "bad_request", "order: asc or desc", "order：须为 asc 或 desc", field="order")
        cursor = decode_cursor(call)
        if cursor is not None and not (
            isinstance(cursor, list) and len(cursor) == 2 and all(isinstance(v, str) for v in cursor)
        ):
            raise ApiError(
                400,
                "bad_request",
                "cursor: not a cursor this API gave",
                "cursor：不是本接口给出的分页游标",
                field="cursor",
            )
        after = (cursor[0], cursor[1]) if cursor is not None else None
        result = await self._store.search(self._query(call, size=size, after=after, ascending=order == "asc"))
        following = result.cursor if len(result.hits) == size else None
        return json_response(
            {
                "total": result.total,
                "events": result.hits,
                "cursor": encode_cursor(list(following)) if following is not None else None,
            }
        )

    async def aggregations(self, call: ApiRequest) -> Response:
        refuse_unknown_parameters(call, ("field", "q", "since", "until", "size"))
        field = query_text(call, "field")
        if field is None or not _FIELD.fullmatch(field):
            raise ApiError(
                400,
                "bad_request",
                "field: required, a field name such as source.ip",
                "field：必填，须为字段名，例如 source.ip",
                field="field",
            )
        size = call.query_int("size", 10, low=1, high=MAX_BUCKETS)
        query = self._query(call)
        buckets = await self._store.terms(query, field, size)
        total = await self._store.count(query)
        return json_response(
            {
                "field": field,
                "total": total,
                "buckets": [{"key": bucket.key, "count": bucket.count} for bucket in buckets],
            }
        )


# -- the OpenAPI description ---------------------------------------------------------------------

_COMMON = [
    parameter(
        "q",
        {"type": "string", "maxLength": MAX_QUERY},
        "The query language of docs/soc.md: `user.name:zhangwei AND NOT event.outcome:success`, "
        "`source.ip:203.0.113.*`, `http.response.status_code:[400 TO 499]`, full-text words.",
    ),
    parameter("since", {"type": "string", "format": "date-time"}, "`@timestamp` at or after."),
    parameter("until", {"type": "string", "format": "date-time"}, "`@timestamp` before."),
]


def openapi_paths() -> dict[str, Any]:
    return {
        "/events": {
            "get": operation(
                "searchEvents",
                "Search the stored events (newest first unless order=asc)",
                "events",
                {"200": answer("EventPage", "One page of events.")},
                parameters=[
                    *_COMMON,
                    parameter(
                        "size",
                        {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 100},
                        "Page size.",
                    ),
                    parameter(
                        "order", {"type": "string", "enum": ["desc", "asc"], "default": "desc"}, "By time."
                    ),
                    parameter("cursor", {"type": "string"}, "The previous page's `cursor`."),
                ],
                description="A query outside the language is a 400 `bad_query` naming the position.",
            )
        },
        "/events/aggregations": {
            "get": operation(
                "aggregateEvents",
                "The most frequent values of a field among the matching events",
                "events",
                {"200": answer("EventTerms", "The values and their counts.")},
                parameters=[
                    parameter("field", {"type": "string"}, "The field, e.g. `source.ip`.", required=True),
                    *_COMMON,
                    parameter(
                        "size",
                        {"type": "integer", "minimum": 1, "maximum": MAX_BUCKETS, "default": 10},
                        "Buckets.",
                    ),
                ],
            )
        },
    }


def openapi_schemas() -> dict[str, Any]:
    return {
        "EventPage": {
            "type": "object",
            "properties": {
                "total": {"type": "integer", "description": "Every match, not only this page."},
                "events": {"type": "array", "items": {"type": "object", "description": "A flat ECS event."}},
                "cursor": {"type": ["string", "null"], "description": "For the next page; null on the last."},
            },
        },
        "EventTerms": {
            "type": "object",
            "properties": {
                "field": {"type": "string"},
                "total": {"type": "integer", "description": "How many events match."},
                "buckets": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"key": {}, "count": {"type": "integer"}},
                    },
                },
            },
        },
    }
