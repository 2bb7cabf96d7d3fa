"""Request paths in one canonical form, computed once, before any rule is matched.

The largest class of identity-proxy bypasses is a difference between the path that was checked
and the path that was routed (``/admin/..;/``, ``/%61dmin``, ``//admin``, double encoding ...).
So the gateway canonicalises the raw request target once (``scope["raw_path"]``, never Starlette's
already-decoded ``scope["path"]``), decides on the result and forwards *that same* result. Anything
that cannot be made unambiguous is refused, never guessed at.

From the raw path (RFC 3986 §3.3; the query is not part of it):

1. **Refused** (:class:`PathRejected`, a 400 at the gateway): not starting with ``/``; longer than
   :data:`MAX_PATH_BYTES`; raw bytes outside printable ASCII (browsers percent-encode them); a
   backslash, raw or encoded (Windows servers read it as ``/``); an encoded ``/`` (``%2F``: one
   segment to us, two to many upstreams); an encoded ``;`` (``%3B``: ``..%3B`` is a plain segment
   to us, but ``..;`` - a dot segment with a parameter - to an upstream that decodes first); an
   encoded NUL or other control character; a malformed
   escape (``%G1``, ``%4``); double encoding (``%25`` followed by two hex digits: one more decoding
   upstream would produce another path); escapes whose bytes are not valid UTF-8 (overlong forms
   such as ``%C0%AE`` decode to ``.`` in lax decoders).
2. **Unreserved characters** (``A-Z a-z 0-9 - . _ ~``) written as escapes are decoded (``%61`` ->
   ``a``, ``%2e`` -> ``.``; RFC 3986 §6.2.2.2); every other escape is kept, with upper-case hex
   (§6.2.2.1).
3. **Segment parameters** are dropped: ``/admin;jsessionid=x/`` -> ``/admin/`` (servlet containers
   and others strip them before routing).
4. **Empty segments** are dropped (``//admin`` -> ``/admin``); a trailing ``/`` is kept.
5. **Dot segments** are resolved (§5.2.4): ``/a/./b`` -> ``/a/b``, ``/a/../b`` -> ``/b``; ``..``
   above the root stays at the root.

Case rule: the canonical path keeps its case (it is forwarded as is, and paths are case-sensitive,
§6.2.2.1), but rules match it **case-insensitively** (:attr:`CanonicalPath.key`, ASCII lower case):
a rule about ``/admin`` also covers ``/ADMIN`` and ``/Admin``, since some upstreams (IIS, file
systems that ignore case) serve them alike. The canonical form is idempotent: canonicalising it
again changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["MAX_PATH_BYTES", "CanonicalPath", "PathReason", "PathRejected", "canonical_path"]

MAX_PATH_BYTES = 8192
_HEX = frozenset(b"0123456789abcdefABCDEF")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Printable ASCII a request target may carry as it is (RFC 3986 pchar, "/" and "%", plus the
# characters browsers leave unescaped in practice such as "[" "]" "|"); never space or DEL.
_RAW_OK = frozenset(range(0x21, 0x7F)) - {ord("\\")}


class PathReason(StrEnum):
    """Why a path was refused (closed vocabulary: in events and the 400 page)."""

    NOT_ABSOLUTE = "not_absolute"
    TOO_LONG = "too_long"
    BAD_CHARACTER = "bad_character"  # raw non-ASCII, space, control character or backslash
    BAD_ESCAPE = "bad_escape"  # malformed %-escape
    ENCODED_SEPARATOR = "encoded_separator"  # %2F, %3B or %5C
    ENCODED_CONTROL = "encoded_control"  # %00-%1F, %7F
    DOUBLE_ENCODING = "double_encoding"  # %25 followed by two hex digits
    BAD_UTF8 = "bad_utf8"  # escapes that are not valid UTF-8 (overlong forms among them)


class PathRejected(ValueError):
    """The path cannot be made unambiguous; ``reason`` says why."""

    def __init__(self, reason: PathReason) -> None:
        super().__init__(f"request path refused: {reason.value}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class CanonicalPath:
    """``path``: the canonical form, forwarded upstream; ``key``: what rules match (lower case)."""

    path: str
    key: str


def _unescape(raw: bytes) -> tuple[str, bytes]:
    """One pass over the escapes: (the path with unreserved escapes decoded and the others in
    upper-case hex, every byte the path stands for once fully decoded)."""
    out: list[str] = []
    decoded = bytearray()
    i, n = 0, len(raw)
    while i < n:
        byte = raw[i]
        if byte != 0x25:  # "%"
            if byte not in _RAW_OK:
                raise PathRejected(PathReason.BAD_CHARACTER)
            out.append(chr(byte))
            decoded.append(byte)
            i += 1
            continue
        if i + 2 >= n or raw[i + 1] not in _HEX or raw[i + 2] not in _HEX:
            raise PathRejected(PathReason.BAD_ESCAPE)
        value = int(raw[i + 1 : i + 3], 16)
        if value in (0x2F, 0x3B, 0x5C):
            raise PathRejected(PathReason.ENCODED_SEPARATOR)
        if value < 0x20 or value == 0x7F:
            raise PathRejected(PathReason.ENCODED_CONTROL)
        if value == 0x25 and i + 4 < n and raw[i + 3] in _HEX and raw[i + 4] in _HEX:
            raise PathRejected(PathReason.DOUBLE_ENCODING)
        decoded.append(value)
        out.append(chr(value) if value in _UNRESERVED else f"%{value:02X}")
        i += 3
    return "".join(out), bytes(decoded)


def _resolve(segments: list[str]) -> list[str]:
    """RFC 3986 §5.2.4 on a list of segments (no empty ones): "." vanishes, ".." removes one."""
    stack: list[str] = []
    for segment in segments:
        if segment == ".":
            continue
        if segment == "..":
            if stack:
                stack.pop()
            continue
        stack.append(segment)
    return stack


def canonical_path(raw: bytes | str) -> CanonicalPath:
    """The canonical form of a raw request path (see the module docstring), or :class:`PathRejected`."""
    data = raw.encode("latin-1") if isinstance(raw, str) else bytes(raw)
    if len(data) > MAX_PATH_BYTES:
        raise PathRejected(PathReason.TOO_LONG)
    if not data.startswith(b"/"):
        raise PathRejected(PathReason.NOT_ABSOLUTE)
    text, decoded = _unescape(data)
    try:
        decoded.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise PathRejected(PathReason.BAD_UTF8) from None
    # Parameters go first; a segment that was only parameters ("/;x/") is then empty, like "//".
    segments = [segment.split(";", 1)[0] for segment in text.split("/")]
    kept = _resolve([segment for segment in segments if segment])
    path = "/" + "/".join(kept)
    # A directory stays a directory: "/a/", "/a/.", "/a/b/.." and "/a/;x" all end in "/".
    if kept and segments[-1] in ("", ".", ".."):
        path += "/"
    return CanonicalPath(path=path, key=path.lower())
