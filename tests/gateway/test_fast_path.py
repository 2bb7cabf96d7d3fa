"""The gateway's fast path (``Gateway.fast_path``, fed by onegate/front.py) against its ASGI path.

One :class:`Gateway` serves two ports through the HTTP front: one offers its fast path, the other
only its ASGI app. The same requests go to both; the upstream (a raw socket server) records the
bytes it receives and answers by path. For every request the fast path takes, the upstream must
receive the same bytes, the client the same response and the event bus the same access event
(request ids, dates and durations aside); the requests it must not take go the ASGI way.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from core.events import RecordingEmitter
from core.kv.memory import MemoryKV
from gateway.app import Gateway, PageInfo
from gateway.assertion import AssertionIssuer
from gateway.risk import RiskScores
from gateway.routes import Route, RouteTable
from gateway.sessions import GatewaySessions
from gateway.upstream import Origin, UpstreamPool
from keyvault.envelope import Envelope
from keyvault.masterkey import MasterKeyring
from keyvault.signing import SigningKeyring
from onegate.front import FrontRequest, front_protocol
from policy.engine import PolicyEngine

POLICY = """
version: 1
apps:
  hr:
    hosts: [hr.example.gov]
    rules:
      - {id: hr-staff, effect: allow, subjects: {groups: [hr-staff]}, not_paths: [/admin]}
      - {id: hr-public, effect: allow, paths: [/public], anonymous: true}
"""

BODY = b"x" * 99 + b"\n"
# The upstream's answers, by the request's path (the query is ignored).
ANSWERS: dict[bytes, bytes] = {
    b"/": b"HTTP/1.1 200 OK\r\nServer: up\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n"
    b"Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-Up:  spaced  \r\n\r\n" + BODY,
    b"/hop": b"HTTP/1.1 200 OK\r\nConnection: x-secret, keep-alive\r\nX-Secret: 1\r\nX-Kept: 2\r\n"
    b"Content-Length: 2\r\n\r\nok",
    b"/empty": b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
    b"/not-modified": b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 100\r\n\r\n',
    b"/zero": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"/redirect": b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n",
    b"/missing": b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot here\n",
    b"/no-reason": b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok",
    b"/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    b"/close": b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    b"/eof": b"HTTP/1.1 200 OK\r\n\r\nto the end",
    b"/broken": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    b"/interim": b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
}
SLOW = b"/slow"  # answered in two parts: the body comes after the head, so it is streamed
GONE = b"/gone"  # the upstream closes without answering
HANG = b"/hang"  # the upstream never answers (the pool's read timeout is 1 s)


@dataclass
class Upstream:
    """Records each request head it reads; answers by path, keeping connections open."""

    seen: list[bytes] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.seen.append(head)
                path = head.split(b" ", 2)[1].split(b"?")[0]
                head_request = head.startswith(b"HEAD ")
                if path == GONE:
                    break
                if path == HANG:
                    await asyncio.sleep(5)
                    break
                if path == SLOW:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
                    await writer.drain()
                    await asyncio.sleep(0.05)
                    writer.write(b"def")
                    continue
                answer = ANSWERS.get(path, ANSWERS[b"/"])
                if head_request:
                    answer = answer.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
                writer.write(answer)
                await writer.drain()
                if path in (b"/close", b"/eof"):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client left, or the test is over
        finally:
            writer.close()


async def _control(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A stand-in for the gateway's page renderer: the page kind and status, as text."""
    info: PageInfo | None = scope.get("state", {}).get("gateway")
    status = info.status if info is not None else 200
    body = f"{info.kind if info else 'control'} {scope['path']}".encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Recorder:
    """The gateway's fast path, counting what it took and what it declined."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.taken: list[bytes] = []
        self.declined: list[bytes] = []

    def fast_path(self, request: FrontRequest) -> bool:
        taken = self.gateway.fast_path(request)
        (self.taken if taken else self.declined).append(request.raw_path)
        return taken

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.gateway(scope, receive, send)


class Plain:
    """The same gateway without its fast path: every request goes the ASGI way."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.gateway(scope, receive, send)


@dataclass
class Stack:
    gateway: Gateway
    recorder: Recorder
    upstream: Upstream
    events: RecordingEmitter
    cookie: str
    fast_port: int
    plain_port: int


async def _serve(app: Any) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    config = uvicorn.Config(app, http=front_protocol(app), lifespan="off", log_config=None)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(500):
        if server.started:
            return server, task, int(sock.getsockname()[1])
        await asyncio.sleep(0.01)
    raise AssertionError("the server did not start")


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    upstream = Upstream()
    upstream_server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    upstream.port = upstream_server.sockets[0].getsockname()[1]
    kv = MemoryKV()
    sessions = GatewaySessions(kv, idle_timeout=3600, absolute_timeout=36000)
    ring = SigningKeyring(
        tmp_path / "keys",
        Envelope(MasterKeyring.generate()),
        alg="ES256",
        prepublish_seconds=300.0,
        retire_after_seconds=3600.0,
    )
    ring.ensure_key()
    engine = PolicyEngine.from_text(POLICY)
    pool = UpstreamPool(read_timeout=1)
    events = RecordingEmitter()
    route = Route(
        app="hr",
        hosts=("hr.example.gov",),
        origin=Origin("http", "127.0.0.1", upstream.port),
        path_prefix="/",
    )
    gateway = Gateway(
        routes=RouteTable([route]),
        sessions=sessions,
        engine=lambda: engine,
        pool=lambda _route: pool,
        assertions=AssertionIssuer(ring, issuer="http://idp.example.gov"),
        risk=RiskScores(kv),
        events=events,
        control=_control,
    )
    _, cookie = await sessions.create(
        host="hr.example.gov",
        sub="sub-1",
        username="zhangwei",
        name="张伟",
        groups=["hr-staff"],
        department="hrss",
        departments=["hrss", "city"],
        acr="urn:onegate:acr:mfa",
        amr=["pwd", "otp"],
        auth_time=time.time(),
        idp_sid="idp-1",
        id_token="-",
    )
    recorder = Recorder(gateway)
    fast, fast_task, fast_port = await _serve(recorder)
    plain, plain_task, plain_port = await _serve(Plain(gateway))
    try:
        yield Stack(gateway, recorder, upstream, events, cookie, fast_port, plain_port)
    finally:
        fast.should_exit = plain.should_exit = True
        await asyncio.wait_for(asyncio.gather(fast_task, plain_task), 10)
        await pool.close()
        upstream_server.close()


async def _exchange(port: int, requests: list[bytes], read: Callable[[bytes], bool] | None = None) -> bytes:
    """Send ``requests`` one after the other on one connection, reading each answer until
    ``read(answer)`` (by default: a whole response to the request's method) or the end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = b""
    try:
        for request in requests:
            done = read or (_head_only if request.startswith(b"HEAD ") else _whole)
            writer.write(request)
            async with asyncio.timeout(5):
                before = len(out)
                while True:
                    chunk = await reader.read(65536)
                    out += chunk
                    if not chunk or done(out[before:]):
                        break
    finally:
        writer.close()
    return out


def _head_only(data: bytes) -> bool:
    return b"\r\n\r\n" in data


def _whole(data: bytes) -> bool:
    """Whether ``data`` holds one whole final response (content-length, chunked or none)."""
    while True:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return False
        head, rest = data[:end].lower(), data[end + 4 :]
        if not head.startswith(b"http/1.1 1"):
            break
        data = rest
    if b"transfer-encoding: chunked" in head:
        return rest.endswith(b"0\r\n\r\n")
    match = re.search(rb"content-length: (\d+)", head)
    if match is None:
        return head.startswith((b"http/1.1 204", b"http/1.1 304"))
    return len(rest) >= int(match.group(1))


_VARYING = [
    (re.compile(rb"^date: .*$", re.M), b"date: -"),
    (re.compile(rb"^x-request-id: [0-9a-f]{16}\r$", re.M), b"x-request-id: -\r"),
]


def _same(data: bytes) -> bytes:
    for pattern, replacement in _VARYING:
        data = pattern.sub(replacement, data)
    return data


def _event(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if k not in ("trace.id", "event.duration", "onegate.auth_age")}


async def _both(stack: Stack, requests: list[bytes], warm: bool = True) -> tuple[bytes, bytes]:
    """The responses of the fast and the plain port to ``requests`` (after a request that
    warms the session cache and leaves an idle upstream connection), with the upstream's view
    and the access events compared on the way."""
    results = []
    for port in (stack.fast_port, stack.plain_port):
        if warm:
            await _exchange(port, [_get(stack, b"/warm")])
        seen, events = len(stack.upstream.seen), len(stack.events.events)
        out = await _exchange(port, requests)
        await asyncio.sleep(0.1)  # the access event goes out after the response
        results.append(
            (out, stack.upstream.seen[seen:], [_event(e.fields) for e in stack.events.events[events:]])
        )
    (fast, fast_seen, fast_events), (plain, plain_seen, plain_events) = results
    assert [_same(h) for h in fast_seen] == [_same(h) for h in plain_seen]
    assert fast_events == plain_events
    assert _same(fast) == _same(plain)
    return fast, plain


def _get(
    stack: Stack, target: bytes, method: bytes = b"GET", extra: bytes = b"", cookie: bool = True
) -> bytes:
    head = method + b" " + target + b" HTTP/1.1\r\nHost: hr.example.gov\r\n"
    if cookie:
        head += b"Cookie: a=1; onegate_gw=" + stack.cookie.encode() + b"; b=2\r\n"
    return head + extra + b"\r\n"


TAKEN = [
    b"/",
    b"/a/b?x=1&y=%20",
    b"/hop",
    b"/empty",
    b"/not-modified",
    b"/zero",
    b"/redirect",
    b"/missing",
    b"/no-reason",
    b"/chunked",
    b"/close",
    b"/eof",
    b"/interim",
    b"/a/../b/./c",
    b"/%7Euser",
]


@pytest.mark.parametrize("target", TAKEN)
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
async def test_the_fast_path_answers_as_the_asgi_path(stack: Stack, target: bytes, method: bytes) -> None:
    stack.recorder.taken.clear()
    await _both(stack, [_get(stack, target, method)])
    assert stack.recorder.taken[-1:] == [target.split(b"?")[0]]


async def test_client_headers_are_filtered_alike(stack: Stack) -> None:
    """Identity headers in every spelling, hop-by-hop ones and what Connection names, forwarding
    headers from an untrusted client, and the gateway's cookie: gone on both paths."""
    extra = (
        b"X-OneGate-User: root\r\nx_onegate_groups: admins\r\nX-ONEGATE-ASSERTION: forged\r\n"
        b"Connection: keep-alive, X-OneGate-Name, X-Private\r\nX-Private: 1\r\nKeep-Alive: 5\r\n"
        b"TE: trailers\r\nProxy-Authorization: Basic eA==\r\nX-Forwarded-For: 6.6.6.6\r\n"
        b"X-Forwarded-Host: evil\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n"
        b"X-Request-ID: mine\r\nUser-Agent: test/1.0\r\nAccept: text/html\r\n"
    )
    stack.recorder.taken.clear()
    await _both(stack, [_get(stack, b"/", extra=extra)])
    assert stack.recorder.taken[-1:] == [b"/"]
    sent = stack.upstream.seen[-1].lower()
    assert sent.count(b"x-onegate-user: ") == 1 and b"x-onegate-user: zhangwei\r\n" in sent
    for gone in (b"root", b"admins", b"forged", b"x-private", b"keep-alive", b"te:", b"proxy-", b"6.6.6.6"):
        assert gone not in sent, gone
    assert b"onegate_gw" not in sent and b"cookie: a=1; b=2\r\n" in sent
    assert b"x-request-id: mine" not in sent and b"x-forwarded-host: hr.example.gov\r\n" in sent


async def test_kept_alive_and_pipelined_requests(stack: Stack) -> None:
    requests = [_get(stack, b"/n%d" % i) for i in range(4)] + [_get(stack, b"/", b"HEAD")]
    fast, _ = await _both(stack, requests)
    assert fast.count(b"HTTP/1.1 200 OK") == 5
    pipelined = b"".join(requests)
    fast = await _exchange(stack.fast_port, [pipelined], lambda out: out.count(b"HTTP/1.1 200") == 5)
    plain = await _exchange(stack.plain_port, [pipelined], lambda out: out.count(b"HTTP/1.1 200") == 5)
    assert _same(fast) == _same(plain)


async def test_a_client_asking_to_close_is_answered_and_closed(stack: Stack) -> None:
    fast, _ = await _both(stack, [_get(stack, b"/", extra=b"Connection: close\r\n")])
    assert b"\r\nconnection: close\r\n" in fast


@pytest.mark.parametrize(
    ("request_of", "path"),
    [
        (lambda s: _get(s, b"/", cookie=False), b"/"),  # no session: sign in
        (lambda s: _get(s, b"/admin"), b"/admin"),  # denied
        (lambda s: _get(s, b"/public", cookie=False), b"/public"),  # anonymous allow: no cookie needed
        (lambda s: _get(s, b"/.onegate/jwks"), b"/.onegate/jwks"),  # the gateway's own
        (lambda s: _get(s, b"/", extra=b"Content-Length: 0\r\n"), b"/"),  # framing of its own
        (lambda s: _get(s, b"/a%2fb"), b"/a%2fb"),  # a path refused
        (lambda s: _get(s, b"/").replace(b"hr.example.gov", b"other.example.gov"), b"/"),  # no route
    ],
)
async def test_what_the_fast_path_leaves_to_the_asgi_path(
    stack: Stack, request_of: Callable[[Stack], bytes], path: bytes
) -> None:
    stack.recorder.taken.clear()
    stack.recorder.declined.clear()
    await _both(stack, [request_of(stack)])
    if path == b"/public":  # taken: anonymous and allowed, answered alike
        assert stack.recorder.taken[-1:] == [b"/public"]
    else:
        assert path not in stack.recorder.taken and stack.recorder.declined[-1:] == [path]


async def test_first_request_without_an_idle_connection_goes_the_asgi_way(stack: Stack) -> None:
    fast, _ = await _both(stack, [_get(stack, b"/")], warm=False)
    assert stack.recorder.declined == [b"/"] and fast.startswith(b"HTTP/1.1 200 OK")


async def test_a_revoked_session_is_refused_on_the_next_request(stack: Stack) -> None:
    await _both(stack, [_get(stack, b"/")])
    sid = stack.cookie.split(".")[0]
    await stack.gateway.sessions.revoke(sid)
    stack.recorder.taken.clear()
    fast, _ = await _both(stack, [_get(stack, b"/")], warm=False)
    assert fast.startswith(b"HTTP/1.1 302 ") or fast.startswith(b"HTTP/1.1 401 ")
    assert stack.recorder.taken == []


@pytest.mark.parametrize("target", [SLOW, GONE, HANG])
async def test_answers_to_stream_and_upstream_failures_continue_the_asgi_way(
    stack: Stack, target: bytes
) -> None:
    stack.recorder.taken.clear()
    fast, _ = await _both(stack, [_get(stack, target)])
    assert stack.recorder.taken[-1:] == [target]
    if target == SLOW:
        assert fast.endswith(b"\r\n\r\nabcdef")
    elif target == GONE:
        assert fast.startswith(b"HTTP/1.1 502 ") and b"upstream " + target in fast
    else:
        assert fast.startswith(b"HTTP/1.1 504 ") and b"upstream " + target in fast
