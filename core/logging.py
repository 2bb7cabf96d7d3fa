"""Structured logging: JSON lines on stderr, secrets redacted, request id attached.

Every log record, whether it comes from structlog (``get_logger(__name__)``) or from the
standard library (uvicorn, SQLAlchemy ...), leaves the process as one JSON object per line::

    {"event": "request", "level": "info", "logger": "onegate.access",
     "timestamp": "2025-01-01T00:00:00.000000Z", "request_id": "9f0c...", ...}

``configure_logging`` installs one handler on the root logger (calling it again replaces
that handler). Two processors run on every record before rendering:

* ``add_request_id`` copies the current request id (a contextvar bound by the web request-id
  middleware through ``bound_request_id``) into the record;
* ``redact_sensitive`` replaces the value of any key that names a credential (password,
  secret, token, authorization, cookie, code, key, otp ..., case-insensitive, at any depth)
  and scrubs bearer tokens, JWTs and ``user:password@`` URL credentials from strings, so a
  secret handed to the logger by mistake never reaches the log.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar, Token
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "REDACTED",
    "add_request_id",
    "bind_request_id",
    "bound_request_id",
    "configure_logging",
    "current_request_id",
    "get_logger",
    "is_sensitive_key",
    "redact_sensitive",
    "reset_request_id",
]

REDACTED = "[REDACTED]"

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

_request_id: ContextVar[str | None] = ContextVar("onegate_request_id", default=None)


# -- request id -----------------------------------------------------------------------------


def bind_request_id(request_id: str) -> Token[str | None]:
    """Make ``request_id`` the current request id; pass the token to ``reset_request_id``."""
    return _request_id.set(request_id)


def reset_request_id(token: Token[str | None]) -> None:
    """Restore the request id that was current before ``bind_request_id``."""
    _request_id.reset(token)


def current_request_id() -> str | None:
    """The request id of the request being served in this context, if any."""
    return _request_id.get()


@contextlib.contextmanager
def bound_request_id(request_id: str) -> Iterator[None]:
    """Bind ``request_id`` for the duration of the ``with`` block."""
    token = bind_request_id(request_id)
    try:
        yield
    finally:
        reset_request_id(token)


def add_request_id(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: add ``request_id`` when a request is being served."""
    request_id = _request_id.get()
    if request_id is not None:
        event_dict.setdefault("request_id", request_id)
    return event_dict


# -- redaction ------------------------------------------------------------------------------

# A key is sensitive when one of its words is a credential noun, when its last word names a
# secret-bearing thing ("access_token", "api_key", "code"), or when it contains one of the
# substrings below (which also catches run-together names such as "accesstoken").
_ANY_WORD = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "secret",
        "secrets",
        "authorization",
        "cookie",
        "cookies",
        "otp",
        "totp",
        "hotp",
        "apikey",
        "privatekey",
        "credential",
        "credentials",
        "csrf",
        "bearer",
        "dsn",
    }
)
_LAST_WORD = frozenset({"token", "tokens", "key", "keys", "code", "codes", "pin", "jwt", "assertion"})
_SUBSTRINGS = ("password", "passwd", "secret", "token")
# "...code" keys that are plainly not secrets (HTTP status, error vocabulary, ISO codes).
_NOT_SECRET_CODE = frozenset(
    {
        "status",
        "error",
        "exit",
        "response",
        "return",
        "reason",
        "country",
        "language",
        "lang",
        "locale",
        "region",
        "currency",
        "postal",
        "zip",
        "http",
    }
)
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_WORD_SPLIT = re.compile(r"[^a-z0-9]+")
# Secrets recognisable by shape, wherever they appear in a string.
_VALUE_PATTERNS = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 " + REDACTED),
    (re.compile(r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*"), REDACTED),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@]*):[^\s/@]*@"), r"\1:" + REDACTED + "@"),
    # key=value / key: value inside free text ("password=hunter2", "?access_token=...").
    (
        re.compile(
            r"(?i)\b([\w-]*(?:password|passwd|secret|token|api[_-]?key)[\w-]*)(\"?'?\s*[=:]\s*[\"']?)"
            r"[^\s\"'&,;]+"
        ),
        r"\1\2" + REDACTED,
    ),
    # bare query parameters that carry one-time secrets ("?code=...", "&otp=...").
    (re.compile(r"(?i)(?<![\w-])(code|otp|totp|pin|key)=[^\s\"'&,;]+"), r"\1=" + REDACTED),
)
_MAX_DEPTH = 8


def is_sensitive_key(key: str) -> bool:
    """True when a key (field name, header name, form field) names a credential."""
    lowered = key.lower()
    if any(part in lowered for part in _SUBSTRINGS):
        return True
    words = [w for w in _WORD_SPLIT.split(_CAMEL.sub(r"\1_\2", key).lower()) if w]
    if not words:
        return False
    if any(word in _ANY_WORD for word in words):
        return True
    last = words[-1]
    if last in ("code", "codes") and len(words) > 1 and words[-2] in _NOT_SECRET_CODE:
        return False
    return last in _LAST_WORD


def _scrub_string(value: str) -> str:
    for pattern, replacement in _VALUE_PATTERNS:
        value = pattern.sub(replacement, value)
    return value


def _redact(value: Any, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        return REDACTED
    if isinstance(value, str):
        return _scrub_string(value)
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if isinstance(k, str) and is_sensitive_key(k) else _redact(v, depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        items = list(value)
        # A (name, value) pair, as in ASGI / HTTP header lists.
        if len(items) == 2 and isinstance(items[0], str | bytes):
            name = items[0].decode("latin-1") if isinstance(items[0], bytes) else items[0]
            if is_sensitive_key(name):
                return (items[0], REDACTED)
        return [_redact(item, depth + 1) for item in items]
    if isinstance(value, bytes):
        return _scrub_string(value.decode("utf-8", "replace"))
    return value


def redact_sensitive(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: redact credential values at any depth (see module docstring)."""
    for key, value in list(event_dict.items()):
        if key.startswith("_"):  # structlog / ProcessorFormatter internals (the LogRecord)
            continue
        if key != "event" and is_sensitive_key(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact(value, 0)
    return event_dict


# -- configuration --------------------------------------------------------------------------


class _OneGateHandler(logging.StreamHandler[TextIO]):
    """Marker subclass so ``configure_logging`` can replace its own handler and only it."""


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        add_request_id,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.StackInfoRenderer(),
        # Plain-text traceback: never the locals of each frame (they hold passwords).
        structlog.processors.format_exc_info,
        redact_sensitive,
    ]


_TAKEN_OVER = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


def configure_logging(level: str = "info", json: bool = True, *, stream: TextIO | None = None) -> None:
    """Send structlog and stdlib logging to ``stream`` (stderr) as JSON lines.

    ``level`` is one of debug / info / warning / error / critical; ``json=False`` renders
    human-readable lines for development. Calling it again replaces the previous set-up.
    """
    numeric = _LEVELS.get(level.lower())
    if numeric is None:
        raise ValueError(f"configure_logging: level must be one of {sorted(_LEVELS)}, not {level!r}")
    shared = _shared_processors()
    renderer: Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    handler = _OneGateHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _OneGateHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in _TAKEN_OVER:
        # A library that configured its own loggers earlier in the process (uvicorn's default
        # dictConfig) would keep its records away from this handler and its redaction.
        taken = logging.getLogger(name)
        taken.handlers.clear()
        taken.propagate = True
        taken.setLevel(logging.NOTSET)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger whose records carry ``"logger": name``."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
