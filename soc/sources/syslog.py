"""The syslog source: RFC 5424 messages over TCP (RFC 6587 framing), optionally TLS (RFC 5425).

For systems that speak syslog and nothing else: firewalls, departmental applications, rsyslog /
syslog-ng relays. https://www.rfc-editor.org/rfc/rfc5424 (the message),
https://www.rfc-editor.org/rfc/rfc6587 (TCP framing), https://www.rfc-editor.org/rfc/rfc5425 (TLS).

**Framing** (RFC 6587 §3.4), decided per message: a frame that starts with a digit is
octet-counted (``<length> <message>``, §3.4.1); anything else runs to the next LF
("non-transparent framing", §3.4.2; a CR before the LF is dropped). A frame longer than
``max_message_bytes`` keeps its first ``max_message_bytes`` bytes, tagged ``syslog-truncated``;
the rest is skipped without being buffered.

**Documents** (ECS field names; ``log.syslog.*`` as ECS defines it):

====================================  ===========================================================
``@timestamp``                        TIMESTAMP in UTC (the time of receipt when it is ``-``)
``log.syslog.priority``               PRI; ``log.syslog.facility.code`` / ``.name`` and
                                      ``log.syslog.severity.code`` / ``.name`` from it, ``log.level``
``log.syslog.version``                VERSION (``1``)
``host.hostname``                     HOSTNAME (also ``log.syslog.hostname``)
``process.name``                      APP-NAME (also ``log.syslog.appname``)
``log.syslog.procid``                 PROCID; ``process.pid`` too when it is a number
``log.syslog.msgid``                  MSGID
``log.syslog.structured_data.<id>.<name>``  each SD-PARAM (a list when a name repeats); other
                                      characters than letters, digits, ``_ @ . -`` become ``_``
``message``                           MSG (UTF-8; a BOM is dropped, bad bytes replaced)
``log.source.address``                the peer, ``ip:port``
``event.module``, ``event.dataset``   ``syslog``
``event.original``                    the frame as received, when ``keep_original`` or unparsable
====================================  ===========================================================

A message that is not RFC 5424 (garbage, or the older BSD format of RFC 3164) is kept all the
same: ``event.original`` holds it, ``tags`` has ``syslog-parse-error`` and ``error.message``
says what was wrong (PRI's fields are kept when PRI was readable). A peer never crashes the server.

**Acknowledgement.** Syslog over TCP has none: a sender considers a message delivered once its
kernel took it. So the server does not read more from a connection until what it read is in the
spool (:meth:`~soc.ingest.Ingest.accept` returned); while the spool is full it waits, and TCP's
flow control makes the sender wait (or queue on its own disk: rsyslog's disk-assisted queues,
syslog-ng's disk buffer). What a crash can lose is what was in flight in the kernels' buffers,
as with any syslog receiver; a sender that needs more uses the HTTP bulk endpoint.

**Limits.** ``allowed`` (CIDRs): any other peer is disconnected before anything is read, with a
``syslog-peer-refused`` event. ``max_connections`` at once (more are closed at once),
``idle_timeout`` seconds without data closes a connection, ``max_message_bytes`` per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import ssl as _ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from core.events import Category, EventEmitter, new_event_id
from core.logging import get_logger
from soc.ingest import DocumentRefused
from soc.sources.common import Acceptor, emit
from soc.spool import SpoolFull

__all__ = ["SyslogServer", "parse"]

_log = get_logger("onegate.soc.sources.syslog")

FACILITIES = (
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "security", "console", "solaris-cron",
    "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
)  # fmt: skip
SEVERITIES = ("emergency", "alert", "critical", "error", "warning", "notice", "informational", "debug")

PARSE_ERROR = "syslog-parse-error"
TRUNCATED = "syslog-truncated"

# RFC 5424 §6: PRI VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP
_HEADER = re.compile(
    rb"<(?P<pri>\d{1,3})>(?P<version>[1-9]\d{0,2}) (?P<timestamp>[\x21-\x7e]{1,64}) "
    rb"(?P<hostname>[\x21-\x7e]{1,255}) (?P<app>[\x21-\x7e]{1,48}) (?P<procid>[\x21-\x7e]{1,128}) "
    rb"(?P<msgid>[\x21-\x7e]{1,32}) "
)
_PRI = re.compile(rb"<(\d{1,3})>")
_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?(Z|[+-]\d{2}:\d{2})", re.ASCII
)
_SD_NAME = re.compile(rb"[\x21-\x7e]{1,32}")
_NOT_FIELD = re.compile(r"[^A-Za-z0-9_@.\-]")
_BOM = b"\xef\xbb\xbf"
_MAX_DIGITS = 10  # of an octet count


class _Malformed(ValueError):
    """Not RFC 5424; ``fields`` holds what was read before the fault (PRI's fields)."""

    def __init__(self, reason: str, fields: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.fields = fields or {}


def _pri_fields(pri: int) -> dict[str, Any]:
    facility, severity = divmod(pri, 8)
    return {
        "log.syslog.priority": pri,
        "log.syslog.facility.code": facility,
        "log.syslog.facility.name": FACILITIES[facility],
        "log.syslog.severity.code": severity,
        "log.syslog.severity.name": SEVERITIES[severity],
        "log.level": SEVERITIES[severity],
    }


def _timestamp(text: str, fields: dict[str, Any]) -> str | None:
    if text == "-":
        return None
    found = _TIMESTAMP.fullmatch(text)
    if found is None:
        raise _Malformed(f"TIMESTAMP {text[:40]!r} is not RFC 3339", fields)
    year, month, day, hour, minute, second = (int(found.group(i)) for i in range(1, 7))
    micros = int((found.group(7) or "0").ljust(6, "0"))
    zone = found.group(8)
    offset = UTC
    if zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        offset = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    try:
        # A leap second (:60) is kept as :59.999999 rather than refused.
        moment = datetime(year, month, day, hour, minute, min(second, 59), micros, tzinfo=offset)
    except ValueError as e:
        raise _Malformed(f"TIMESTAMP {text[:40]!r}: {e}", fields) from None
    if second == 60:
        moment = moment.replace(microsecond=999_999)
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _sd_name(data: bytes, pos: int, what: str, fields: dict[str, Any]) -> tuple[str, int]:
    found = _SD_NAME.match(data, pos)
    end = pos
    if found is not None:  # SD-NAME: printable, without '=', SP, ']' and '"' (RFC 5424 §6.3.2)
        text = found.group()
        for stop in (b"=", b"]", b'"'):
            cut = text.find(stop)
            if cut >= 0:
                text = text[:cut]
        end = pos + len(text)
    if end == pos:
        raise _Malformed(f"STRUCTURED-DATA: a {what} is missing at byte {pos}", fields)
    return _NOT_FIELD.sub("_", data[pos:end].decode("ascii")), end


def _structured_data(data: bytes, pos: int, fields: dict[str, Any]) -> int:
    """Read SD-ELEMENTs from ``pos`` into ``fields``; the position after them."""
    if data[pos : pos + 1] == b"-":
        return pos + 1
    if data[pos : pos + 1] != b"[":
        raise _Malformed("STRUCTURED-DATA is neither '-' nor '['", fields)
    while data[pos : pos + 1] == b"[":
        sd_id, pos = _sd_name(data, pos + 1, "SD-ID", fields)
        while data[pos : pos + 1] == b" ":
            name, pos = _sd_name(data, pos + 1, "PARAM-NAME", fields)
            if data[pos : pos + 2] != b'="':
                raise _Malformed(f"STRUCTURED-DATA: '=\"' expected after {name!r}", fields)
            pos += 2
            value = bytearray()
            while True:  # PARAM-VALUE: '"', '\' and ']' are escaped with '\' (§6.3.3)
                if pos >= len(data):
                    raise _Malformed("STRUCTURED-DATA: a PARAM-VALUE is not closed", fields)
                byte = data[pos]
                if byte == 0x5C and data[pos + 1 : pos + 2] in (b'"', b"\\", b"]"):
                    value += data[pos + 1 : pos + 2]
                    pos += 2
                    continue
                if byte == 0x22:
                    pos += 1
                    break
                value.append(byte)
                pos += 1
            key = f"log.syslog.structured_data.{sd_id}.{name}"
            text = value.decode("utf-8", errors="replace")
            earlier = fields.get(key)
            if earlier is None:
                fields[key] = text
            elif isinstance(earlier, list):
                earlier.append(text)
            else:
                fields[key] = [earlier, text]
        if data[pos : pos + 1] != b"]":
            raise _Malformed(f"STRUCTURED-DATA: ']' expected at byte {pos}", fields)
        pos += 1
    return pos


def parse(data: bytes) -> dict[str, Any]:
    """The ECS fields of one RFC 5424 message (no ``@timestamp`` when it is ``-``); ``ValueError``
    (with the fields read before the fault in ``.fields``) when it is not RFC 5424."""
    fields: dict[str, Any] = {}
    head = _HEADER.match(data)
    if head is None:
        legacy = _PRI.match(data)  # an RFC 3164 message starts with PRI too
        if legacy is not None and int(legacy.group(1)) <= 191:
            fields.update(_pri_fields(int(legacy.group(1))))
        raise _Malformed(
            "not an RFC 5424 header (PRI VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID)", fields
        )
    pri = int(head["pri"])
    if pri > 191:
        raise _Malformed(f"PRI {pri} is above 191", fields)
    fields.update(_pri_fields(pri))
    if head["version"] != b"1":
        raise _Malformed(f"VERSION {head['version'].decode()} is not 1", fields)
    fields["log.syslog.version"] = "1"
    stamp = _timestamp(head["timestamp"].decode("ascii"), fields)
    if stamp is not None:
        fields["@timestamp"] = stamp
    hostname, app, procid, msgid = (head[n].decode("ascii") for n in ("hostname", "app", "procid", "msgid"))
    if hostname != "-":
        fields["host.hostname"] = fields["log.syslog.hostname"] = hostname
    if app != "-":
        fields["process.name"] = fields["log.syslog.appname"] = app
    if procid != "-":
        fields["log.syslog.procid"] = procid
        if procid.isdigit() and len(procid) < 10:
            fields["process.pid"] = int(procid)
    if msgid != "-":
        fields["log.syslog.msgid"] = msgid
    pos = _structured_data(data, head.end(), fields)
    if pos < len(data):
        if data[pos : pos + 1] != b" ":
            raise _Malformed(f"a space expected after STRUCTURED-DATA at byte {pos}", fields)
        message = data[pos + 1 :]
        if message.startswith(_BOM):
            message = message[len(_BOM) :]
        if message:
            fields["message"] = message.decode("utf-8", errors="replace")
    return fields


class _Framer:
    """RFC 6587 frames out of a TCP byte stream, each at most ``limit`` bytes (a longer frame is
    cut and the rest skipped as it arrives, never buffered)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buffer = bytearray()
        self.skip = 0  # bytes of a cut octet-counted frame still to drop
        self.skip_line = False  # drop up to the next LF (a cut LF-framed frame)
        self.counting = False  # the buffer starts an octet-counted frame not complete yet

    def feed(self, data: bytes) -> list[tuple[bytes, bool]]:
        """The complete frames in ``data`` and what came before it: ``(frame, cut)`` pairs."""
        buffer = self.buffer
        buffer += data
        frames: list[tuple[bytes, bool]] = []
        while buffer:
            if self.skip:
                dropped = min(self.skip, len(buffer))
                del buffer[:dropped]
                self.skip -= dropped
                continue
            if self.skip_line:
                end = buffer.find(b"\n")
                if end < 0:
                    buffer.clear()
                    break
                del buffer[: end + 1]
                self.skip_line = False
                continue
            self.counting = False
            if 0x31 <= buffer[0] <= 0x39:  # a digit 1-9: octet counting (RFC 6587 §3.4.1)
                space = buffer.find(b" ", 0, _MAX_DIGITS + 1)
                if space < 0 and len(buffer) <= _MAX_DIGITS and buffer.isdigit():
                    self.counting = True
                    break  # the count is still arriving
                if space > 0 and buffer[:space].isdigit():
                    length, start = int(buffer[:space]), space + 1
                    if length <= self.limit:
                        if len(buffer) < start + length:
                            self.counting = True
                            break
                        frames.append((bytes(buffer[start : start + length]), False))
                        del buffer[: start + length]
                        continue
                    if len(buffer) < start + self.limit:
                        self.counting = True
                        break
                    frames.append((bytes(buffer[start : start + self.limit]), True))
                    del buffer[: start + self.limit]
                    self.skip = length - self.limit
                    continue
            end = buffer.find(b"\n")  # non-transparent framing (RFC 6587 §3.4.2)
            if end < 0:
                if len(buffer) > self.limit:
                    frames.append((bytes(buffer[: self.limit]), True))
                    buffer.clear()
                    self.skip_line = True
                break
            if end > self.limit:
                frames.append((bytes(buffer[: self.limit]), True))
            else:
                frames.append((bytes(buffer[:end].removesuffix(b"\r")), False))
            del buffer[: end + 1]
        return frames

    def finish(self) -> list[tuple[bytes, bool]]:
        """At the end of the connection: what is left, as a last frame (cut when an octet count
        promised more)."""
        left = bytes(self.buffer).removesuffix(b"\r")
        self.buffer.clear()
        if not left or self.skip or self.skip_line:
            return []
        if self.counting:
            space = left.find(b" ")
            return [(left[space + 1 :] if space > 0 else left, True)]
        return [(left, False)]


@dataclass(frozen=True)
class _Peer:
    ip: str
    port: int

    @property
    def address(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


class SyslogServer:
    """An asyncio TCP (or, with ``ssl``, TLS) server feeding ``ingest`` (see the module docstring).

    ``port`` 0 picks a free port (:attr:`port` tells which). Counters for /metrics:
    ``connections`` (open now), ``messages``, ``parse_errors``, ``truncated``, ``refused_peers``,
    ``spool_full_waits``, ``dropped`` (documents ingest refused even in their reduced form)."""

    def __init__(
        self,
        ingest: Acceptor,
        *,
        host: str = "0.0.0.0",  # noqa: S104 - a receiver for other machines; narrow it with `allowed`
        port: int = 601,
        ssl: _ssl.SSLContext | None = None,
        allowed: Iterable[str] | None = None,
        events: EventEmitter | None = None,
        max_message_bytes: int = 16 * 1024,
        max_connections: int = 256,
        idle_timeout: float = 3600.0,
        keep_original: bool = False,
        max_pause: float = 5.0,
        read_size: int = 64 * 1024,
    ) -> None:
        self._ingest = ingest
        self._host = host
        self._port = port
        self._ssl = ssl
        self._allowed = (
            None if allowed is None else tuple(ipaddress.ip_network(cidr, strict=False) for cidr in allowed)
        )
        self._events = events
        self._limit = max_message_bytes
        self._max_connections = max_connections
        self._idle = idle_timeout
        self._keep_original = keep_original
        self._max_pause = max_pause
        self._read_size = read_size
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self.connections = 0
        self.messages = 0
        self.parse_errors = 0
        self.truncated = 0
        self.refused_peers = 0
        self.spool_full_waits = 0
        self.dropped = 0

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self._host, self._port, ssl=self._ssl, limit=self._read_size
        )

    async def close(self) -> None:
        """Stop listening and close every connection (what was read and not yet spooled is lost
        with it, as when the sender's connection breaks; the sender resends or not)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        for task in list(self._handlers):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> SyslogServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _permitted(self, ip: str) -> bool:
        if self._allowed is None:
            return True
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._allowed)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        name = writer.get_extra_info("peername") or ("", 0)
        peer = _Peer(str(name[0]), int(name[1]))
        try:
            if not self._permitted(peer.ip):
                self.refused_peers += 1
                _log.warning("syslog peer not allowed; connection closed", peer=peer.address)
                fields: dict[str, Any] = {"event.type": ["denied"], "onegate.reason": "peer-not-allowed"}
                with contextlib.suppress(ValueError):
                    fields["source.ip"] = str(ipaddress.ip_address(peer.ip))
                emit(self._events, "syslog-peer-refused", fields, category=Category.NETWORK)
                return
            if self.connections >= self._max_connections:
                _log.warning("syslog connection refused: too many connections", peer=peer.address)
                return
            self.connections += 1
            try:
                await self._read(reader, peer)
            finally:
                self.connections -= 1
        except (ConnectionError, _ssl.SSLError) as e:
            _log.info("syslog connection ended", peer=peer.address, error=str(e)[:200])
        except Exception as e:  # a fault of ours or of ingest ends this connection, not the server
            _log.error(
                "syslog connection closed after an error",
                peer=peer.address,
                error=f"{type(e).__name__}: {e}"[:300],
            )
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, _ssl.SSLError, OSError):
                await writer.wait_closed()
            if task is not None:
                self._handlers.discard(task)

    async def _read(self, reader: asyncio.StreamReader, peer: _Peer) -> None:
        framer = _Framer(self._limit)
        while True:
            try:
                data = await asyncio.wait_for(reader.read(self._read_size), self._idle)
            except TimeoutError:
                _log.info("syslog connection idle; closed", peer=peer.address)
                return
            frames = framer.feed(data) if data else framer.finish()
            if frames:
                # Nothing more is read from this peer until these are on disk: back-pressure.
                await self._deliver(frames, peer)
            if not data:
                return

    def _document(self, frame: bytes, cut: bool, peer: _Peer, received: str) -> dict[str, Any]:
        base: dict[str, Any] = {
            "@timestamp": received,
            "event.id": new_event_id(),  # syslog is never resent: every message is an event
            "event.module": "syslog",
            "event.dataset": "syslog",
            "log.source.address": peer.address,
        }
        tags: list[str] = []
        try:
            fields = parse(frame)
        except _Malformed as e:
            self.parse_errors += 1
            fields = {**e.fields, "error.message": str(e)[:500]}
            fields["event.original"] = frame.decode("utf-8", errors="replace")
            tags.append(PARSE_ERROR)
        else:
            if self._keep_original:
                fields["event.original"] = frame.decode("utf-8", errors="replace")
        if cut:
            self.truncated += 1
            tags.append(TRUNCATED)
        if tags:
            fields["tags"] = tags
        return {**base, **fields}

    async def _deliver(self, frames: Sequence[tuple[bytes, bool]], peer: _Peer) -> None:
        received = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        documents = [self._document(frame, cut, peer, received) for frame, cut in frames if frame]
        pause = 0.0
        while documents:
            try:
                await self._ingest.accept(documents)
                self.messages += len(documents)
                return
            except DocumentRefused as e:
                index = e.index if 0 <= e.index < len(documents) else 0
                documents[index] = self._reduced(documents[index], e.reason)
            except SpoolFull:
                self.spool_full_waits += 1
                if not pause:
                    _log.warning("ingest spool full; syslog peer waits", peer=peer.address)
                pause = min(self._max_pause, max(0.05, pause * 2))
                await asyncio.sleep(pause)

    def _reduced(self, document: dict[str, Any], reason: str) -> dict[str, Any]:
        """What is left of a document ingest refused (too many fields, too large ...): the start of
        the original and the reason. Dropped, with a log line and an event, if refused again."""
        if "syslog-refused" in document.get("tags", ()):
            self.dropped += 1
            _log.error("syslog message dropped: refused by ingest", reason=reason[:300])
            emit(self._events, "syslog-message-dropped", {"error.message": reason[:500]})
            return {
                "@timestamp": document["@timestamp"],
                "event.id": document["event.id"],
                "event.module": "syslog",
                "tags": ["syslog-refused"],
            }
        original = document.get("event.original") or document.get("message") or ""
        reduced = {
            name: document[name]
            for name in ("@timestamp", "event.id", "event.module", "event.dataset", "log.source.address")
        }
        reduced["event.original"] = str(original)[:4096]
        reduced["error.message"] = f"refused by ingest: {reason}"[:500]
        reduced["tags"] = [*document.get("tags", ()), "syslog-refused"]
        return reduced
