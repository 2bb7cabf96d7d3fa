"""core.logging: JSON lines, request id, redaction of secrets."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn.config

from core.logging import (
    REDACTED,
    bound_request_id,
    configure_logging,
    current_request_id,
    get_logger,
    is_sensitive_key,
)


class Captured:
    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]


@pytest.fixture
def captured() -> Iterator[Captured]:
    stream = io.StringIO()
    configure_logging("info", stream=stream)
    yield Captured(stream)
    configure_logging("info", stream=sys.stderr)


def test_one_json_object_per_line_with_standard_fields(captured: Captured) -> None:
    get_logger("onegate.test").info("user_signed_in", user="alice")
    get_logger("onegate.test").warning("second")
    lines = captured.text.splitlines()
    assert len(lines) == 2
    record = json.loads(lines[0])
    assert record["event"] == "user_signed_in"
    assert record["level"] == "info"
    assert record["logger"] == "onegate.test"
    assert record["user"] == "alice"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", record["timestamp"])
    assert "request_id" not in record


def test_request_id_is_attached_while_bound(captured: Captured) -> None:
    log = get_logger("onegate.test")
    with bound_request_id("req-12345678"):
        assert current_request_id() == "req-12345678"
        log.info("inside")
    log.info("outside")
    inside, outside = captured.records()
    assert inside["request_id"] == "req-12345678"
    assert "request_id" not in outside
    assert current_request_id() is None


def test_level_filters_lower_records(captured: Captured) -> None:
    get_logger("onegate.test").debug("hidden")
    logging.getLogger("some.library").debug("hidden too")
    assert captured.text == ""


def test_stdlib_records_are_json_and_redacted(captured: Captured) -> None:
    logging.getLogger("uvicorn.error").warning("login with password=hunter2 failed")
    (record,) = captured.records()
    assert record["logger"] == "uvicorn.error"
    assert record["level"] == "warning"
    assert "hunter2" not in captured.text
    assert record["event"] == f"login with password={REDACTED} failed"


@pytest.mark.parametrize(
    ("fields", "secret"),
    [
        ({"password": "hunter2"}, "hunter2"),
        ({"Password": "hunter2"}, "hunter2"),
        ({"client_secret": "s3cr3t-value"}, "s3cr3t-value"),
        ({"access_token": "at-123456"}, "at-123456"),
        ({"accessToken": "at-654321"}, "at-654321"),
        ({"refreshtoken": "rt-abcdef"}, "rt-abcdef"),
        ({"code": "authz-code-1"}, "authz-code-1"),
        ({"otp": "123456"}, "123456"),
        ({"api_key": "k-987"}, "k-987"),
        ({"request": {"headers": {"Authorization": "Basic dXNlcjpwdw=="}}}, "dXNlcjpwdw=="),
        ({"headers": [("cookie", "sid=abcdef"), ("accept", "text/html")]}, "sid=abcdef"),
        ({"headers": [(b"authorization", b"Bearer tok-1")]}, "tok-1"),
        ({"form": [{"name": "x", "recovery_codes": ["rc-1", "rc-2"]}]}, "rc-1"),
        ({"note": "sent Authorization: Bearer abc.def-ghi"}, "abc.def-ghi"),
        ({"note": "id_token eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln"}, "eyJzdWIiOiJhIn0"),
        ({"dsn": "postgresql://app:pa55word@db/onegate"}, "pa55word"),
        ({"url": "postgresql://app:pa55word@db/onegate"}, "pa55word"),
        ({"path": "/callback?code=xyz123&state=s"}, "xyz123"),
    ],
)
def test_sensitive_values_never_reach_the_log(
    captured: Captured, fields: dict[str, Any], secret: str
) -> None:
    get_logger("onegate.test").info("event", **fields)
    assert secret not in captured.text
    assert REDACTED in captured.text


def test_exception_traceback_is_logged_but_scrubbed(captured: Captured) -> None:
    try:
        raise ConnectionError("cannot reach postgresql://app:hunter2@db/x")
    except ConnectionError:
        get_logger("onegate.test").exception("db_down")
    (record,) = captured.records()
    assert "Traceback" in record["exception"]
    assert "ConnectionError" in record["exception"]
    assert "hunter2" not in captured.text


@pytest.mark.parametrize(
    "key",
    [
        "status_code",
        "error_code",
        "country_code",
        "status",
        "path",
        "method",
        "user_agent",
        "duration_ms",
        "request_id",
        "key_id",
        "user",
        "event_count",
    ],
)
def test_ordinary_keys_are_kept(key: str) -> None:
    assert not is_sensitive_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "new_password",
        "PASSWORD_HASH",
        "client_secret",
        "token",
        "id_token",
        "X-CSRF-Token",
        "set-cookie",
        "Proxy-Authorization",
        "code",
        "auth_code",
        "user_code",
        "otp",
        "totp_seed",
        "pin",
        "private_key",
        "x-api-key",
        "recovery_codes",
        "apiKey",
    ],
)
def test_credential_keys_are_sensitive(key: str) -> None:
    assert is_sensitive_key(key)


def test_kept_values_are_not_touched(captured: Captured) -> None:
    get_logger("onegate.test").info("request", status_code=403, path="/login", method="POST")
    (record,) = captured.records()
    assert (record["status_code"], record["path"], record["method"]) == (403, "/login", "POST")


def test_reconfiguring_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    try:
        configure_logging(stream=first)
        configure_logging(stream=second)
        get_logger("onegate.test").info("once")
        assert first.getvalue() == ""
        assert len(second.getvalue().splitlines()) == 1
    finally:
        configure_logging(stream=sys.stderr)


def test_console_mode_is_not_json() -> None:
    stream = io.StringIO()
    try:
        configure_logging("debug", json=False, stream=stream)
        get_logger("onegate.test").debug("readable", password="hunter2")
    finally:
        configure_logging(stream=sys.stderr)
    assert "readable" in stream.getvalue()
    assert "hunter2" not in stream.getvalue()
    with pytest.raises(json.JSONDecodeError):
        json.loads(stream.getvalue().splitlines()[0])


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="level"):
        configure_logging("verbose")


def test_loggers_a_library_configured_itself_come_through_redacted() -> None:
    logging.config.dictConfig(uvicorn.config.LOGGING_CONFIG)  # what uvicorn does by default
    stream = io.StringIO()
    configure_logging("info", json=True, stream=stream)
    logging.getLogger("uvicorn.error").warning("token=abc123 refused")
    (line,) = stream.getvalue().splitlines()
    assert "abc123" not in line and json.loads(line)["logger"] == "uvicorn.error"
