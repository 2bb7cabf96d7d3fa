"""Header hygiene between the client, the gateway and the upstream.

* Hop-by-hop headers (RFC 9110 §7.6.1) are never forwarded, nor any header the ``Connection``
  header names — except that naming an identity header there cannot make the gateway forget to
  replace it: identity headers are removed by name pattern, whatever ``Connection`` says.
* Identity headers: every client-sent header whose name, with ``_`` read as ``-``, starts with
  ``x-onegate-`` is removed in every spelling (servers such as CGI/WSGI map ``-`` and ``_`` to the
  same variable, so ``X_OneGate_User`` would pass for ``X-OneGate-User``).
* ``X-Forwarded-For/-Proto/-Host``, ``Forwarded`` and ``X-Real-IP`` from a client that is not a
  trusted proxy are dropped and set afresh; from a trusted proxy ``X-Forwarded-For`` is extended.
* The gateway's own session cookie is taken out of ``Cookie``: the upstream has no use for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["HOP_BY_HOP", "IDENTITY_PREFIX", "is_identity", "strip_cookie", "upstream_response_headers"]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
FORWARDING = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded", b"x-real-ip"}
)
IDENTITY_PREFIX = b"x-onegate-"
_NONE: frozenset[bytes] = frozenset()


def is_identity(name: bytes) -> bool:
    """Whether a (lower-case) header name is one of ours in any spelling."""
    return name.replace(b"_", b"-").startswith(IDENTITY_PREFIX)


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """The header names listed in ``Connection`` (lower case)."""
    names: set[bytes] | None = None
    for name, value in headers:
        if name == b"connection":
            if names is None:
                names = set()
            names.update([t.strip().lower() for t in value.split(b",") if t.strip()])
    return _NONE if names is None else frozenset(names)


def strip_cookie(value: bytes, cookie_name: bytes) -> bytes:
    """``Cookie`` without the gateway's session cookie (and its login-binding cookie)."""
    kept = []
    for part in value.split(b";"):
        name = part.split(b"=", 1)[0].strip()
        if name == cookie_name or name.startswith(cookie_name + b"_"):
            continue
        kept.append(part.strip())
    return b"; ".join(p for p in kept if p)


def upstream_response_headers(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers the client may see: hop-by-hop ones removed."""
    listed = connection_tokens(headers)
    dropped = HOP_BY_HOP if listed <= HOP_BY_HOP else HOP_BY_HOP | listed
    return [(n, v) for n, v in headers if n not in dropped]
