"""core.eventstore: the query language's parser and the Query checks (the stores' answers are
the contract suite's, tests/soc/test_store_contract.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from core.eventstore import (
    MAX_DEPTH,
    And,
    Exists,
    FullText,
    Match,
    Not,
    Or,
    Prefix,
    Query,
    QueryError,
    Range,
    SearchResult,
    number,
    parse_query,
    words,
)


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        ("", None),
        ("   ", None),
        ("user.name:zhangwei", Match("user.name", "zhangwei")),
        ("@timestamp:*", Exists("@timestamp")),
        ('url.path:"/a b \\"c\\""', Match("url.path", '/a b "c"')),
        ("source.ip:10.1.*", Prefix("source.ip", "10.1.")),
        ("n:[1 TO 5]", Range("n", "1", "5")),
        ("n:[* TO 5]", Range("n", None, "5")),
        ("a:1 b:2", And((Match("a", "1"), Match("b", "2")))),
        ("a:1 AND b:2 OR c:3", Or((And((Match("a", "1"), Match("b", "2"))), Match("c", "3")))),
        ("a:1 AND (b:2 OR c:3)", And((Match("a", "1"), Or((Match("b", "2"), Match("c", "3")))))),
        ("NOT a:1 b:2", And((Not(Match("a", "1")), Match("b", "2")))),
        ("-a:1", Not(Match("a", "1"))),
        ("Wrong PASSWORD", And((FullText(("wrong",)), FullText(("password",))))),
        ('"Wrong password!"', FullText(("wrong", "password"))),
        ("登录成功", FullText(("登录成功",))),
        ("a:b:c", Match("a", "b:c")),
        ("a:x-y", Match("a", "x-y")),
    ],
)
def test_the_parser(text: str, tree: object) -> None:
    assert parse_query(text) == tree


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a:", "a value for a is missing at the end"),
        ("(a:1", "a closing parenthesis is missing at the end"),
        ("a:1)", "unexpected text at position 4"),
        ("a:b*c", "only a trailing * is supported, at position 3"),
        ("a:[1 TO]", "a range is [low TO high], at position 3"),
        ("AND a:1", "a term is missing at position 1"),
        ("a:1 OR", "a term is missing at the end"),
        ("!!!", "no word to search for at position 1"),
        ("a:1 {", "no word to search for at position 5"),
        ("(" * (MAX_DEPTH + 2) + "a:1" + ")" * (MAX_DEPTH + 2), "nested too deeply"),
        ("x" * 4097, "longer than 4096 characters"),
    ],
)
def test_refusals_say_where(text: str, message: str) -> None:
    with pytest.raises(QueryError, match=message.replace("[", r"\[").replace("(", r"\(").replace("*", r"\*")):
        parse_query(text)


def test_words_and_numbers() -> None:
    assert words("Wrong password for LiNa, 2 times (登录 失败)") == [
        "wrong",
        "password",
        "for",
        "lina",
        "2",
        "times",
        "登录",
        "失败",
    ]
    assert number("403") == 403.0 and number("-1.5") == -1.5
    assert number("4e3") is None and number("10.0.0.1") is None and number("") is None


def test_queries_are_checked_when_made() -> None:
    with pytest.raises(QueryError, match="size"):
        Query(size=10_001)
    with pytest.raises(QueryError, match="timezone-aware"):
        Query(start=datetime(2026, 11, 2))
    with pytest.raises(QueryError):
        Query(text="(")
    assert Query(start=datetime(2026, 11, 2, tzinfo=UTC), text="a:1").size == 100


def test_the_cursor_is_the_last_hit() -> None:
    assert SearchResult(0, []).cursor is None
    hits = [
        {"@timestamp": "2026-11-02T09:00:00.000000Z", "event.id": "a"},
        {"@timestamp": "t2", "event.id": "b"},
    ]
    assert SearchResult(5, hits).cursor == ("t2", "b")
