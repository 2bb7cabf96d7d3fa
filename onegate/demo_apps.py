"""The demo city's departmental systems: small upstream apps the demo puts behind the gateway.

* ``hr_app`` — 人事管理系统 HR: shows the identity it receives from the gateway (the
  ``X-OneGate-*`` headers and the identity assertion, verified when it is given the issuer and
  keys), an administrator page ``/admin/`` and a staff list.
* ``permits_app`` — 行政审批系统 Permits: an application form that POSTs a file; the
  ``multipart/form-data`` body (RFC 7578) is parsed as it arrives and the file streamed to a
  temporary file, its size and SHA-256 shown; the form carries a CSRF token of its own.
* ``grid_app`` — 城市运行一网统管 City operations: a dashboard whose figures update over a
  WebSocket (RFC 6455) tick every second; ``POST /dispatch`` for the ``ops-duty`` group.
* ``oa_app`` — 协同办公 OA: not behind the gateway; it signs users in itself with OpenID
  Connect (authorization code + PKCE, authlib's Starlette client) and signs out through the
  IdP's ``end_session_endpoint`` (OpenID Connect RP-Initiated Logout 1.0).

Each is a plain Starlette app the demo serves with uvicorn on a loopback port of its own;
``build_demo_apps`` assembles them. Pages speak zh-CN first and English second, escape
everything they show and load nothing from elsewhere.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import json
import math
import secrets
import tempfile
import time
import warnings
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import IO, Any, Final, Literal
from urllib.parse import unquote, urlsplit

import anyio
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request, cookie_parser
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from core.logging import get_logger

__all__ = [
    "DEMO_APPS",
    "AssertionCheck",
    "DemoApp",
    "Identity",
    "OaClient",
    "build_demo_apps",
    "grid_app",
    "hr_app",
    "oa_app",
    "permits_app",
]

_log = get_logger("onegate.demo_apps")

#: name -> (title zh-CN, title en, demo host) of every demo system, as STORIES.md names them.
DEMO_APPS: Final[Mapping[str, tuple[str, str, str]]] = {
    "hr": ("人事管理系统", "HR", "hr.localhost"),
    "permits": ("行政审批系统", "Permits", "permits.localhost"),
    "grid": ("城市运行一网统管", "City operations", "grid.localhost"),
    "oa": ("协同办公", "OA", "oa.localhost"),
}

_CST: Final = timezone(timedelta(hours=8), "Asia/Shanghai")
_MAX_ASSERTION: Final = 16 * 1024  # a longer X-OneGate-Assertion is not even decoded for display
_MAX_GROUPS: Final = 200

Text = tuple[str, str]  # (zh-CN, en)
_NO_IDENTITY: Final[Text] = (
    "未收到身份信息：请通过网关访问。",
    "No identity received: open the system through the gateway.",
)
_CSRF_FAILED: Final[Text] = (
    "表单已失效或来源不明（CSRF 校验失败），请刷新页面后重新提交。",
    "The form has expired or did not come from this site (CSRF check failed); reload and submit again.",
)


# -- identity from the gateway ---------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """What the gateway says about the user, from the ``X-OneGate-*`` request headers."""

    user: str
    name: str
    groups: tuple[str, ...]
    department: str
    assertion: str | None

    @classmethod
    def from_headers(cls, request: Request | WebSocket) -> Identity | None:
        """The identity in the request's headers; None when ``X-OneGate-User`` is absent or empty.

        ``X-OneGate-Name`` is percent-encoded UTF-8 (RFC 3986 §2.1): header values are Latin-1
        on the wire. The other values are ASCII.
        """
        headers = request.headers
        user = headers.get("x-onegate-user", "").strip()
        if not user:
            return None
        name = unquote(headers.get("x-onegate-name", ""), encoding="utf-8", errors="replace").strip()
        groups = tuple(g.strip() for g in headers.get("x-onegate-groups", "").split(",") if g.strip())
        return cls(
            user=user,
            name=name or user,
            groups=groups[:_MAX_GROUPS],
            department=headers.get("x-onegate-department", "").strip(),
            assertion=headers.get("x-onegate-assertion", "").strip() or None,
        )


@dataclass(frozen=True)
class AssertionCheck:
    """The outcome of checking ``X-OneGate-Assertion``: ``verified`` (signature, issuer, audience
    and lifetime all good), ``invalid`` (with the verifier's reason) or ``not_checked`` (the app
    was given no issuer and keys, or the verifier is not installed). ``claims`` are the verified
    claims, or for the other outcomes the payload decoded *without* verification, for display."""

    status: Literal["verified", "invalid", "not_checked"]
    claims: Mapping[str, Any] | None
    detail: str = ""


@dataclass(frozen=True)
class _Verifier:
    """Where an app finds the assertion's issuer and keys (``gateway.assertion.verify``)."""

    audience: str
    issuer: str | None = None
    jwks_url: str | None = None
    jwks: Mapping[str, Any] | None = None

    async def check(self, token: str | None) -> AssertionCheck | None:
        if token is None:
            return None
        unverified = _decode_unverified(token)
        if self.issuer is None or (self.jwks_url is None and self.jwks is None):
            return AssertionCheck("not_checked", unverified, "no issuer or keys configured")
        try:
            from gateway.assertion import AssertionInvalid, verify
        except ImportError:
            return AssertionCheck("not_checked", unverified, "verifier not installed")
        issuer, jwks, jwks_url = self.issuer, self.jwks, None if self.jwks is not None else self.jwks_url
        try:
            # A JWKS fetch blocks: keep it off the event loop.
            claims = await run_in_threadpool(
                lambda: verify(
                    token,
                    audience=self.audience,  # this application's assertions only
                    issuer=issuer,
                    jwks=jwks,
                    jwks_url=jwks_url,
                )
            )
        except AssertionInvalid as e:
            return AssertionCheck("invalid", unverified, str(getattr(e, "reason", "")) or "invalid")
        except Exception as e:  # fail closed: anything unexpected is "invalid", never "verified"
            _log.warning("assertion check failed", app=self.audience, error=type(e).__name__)
            return AssertionCheck("invalid", unverified, "verification failed")
        return AssertionCheck("verified", claims)


def _decode_unverified(token: str) -> dict[str, Any] | None:
    """The JWS payload (RFC 7515 §7.1) as JSON, unverified; None when it is not one."""
    parts = token.split(".")
    if len(token) > _MAX_ASSERTION or len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    return payload if isinstance(payload, dict) else None


# -- pages ------------------------------------------------------------------------------------------

_CSS: Final = """
:root{--ink:#1d2733;--muted:#5b6675;--line:#d5dbe3;--brand:#1b4b8f;--bg:#f3f5f8;--ok:#1f7a3a;
--bad:#a32020;--warn:#8a5a00}
*{box-sizing:border-box}
body{margin:0;font:15px/1.65 "PingFang SC","Microsoft YaHei","Noto Sans CJK SC","WenQuanYi Micro Hei",
system-ui,sans-serif;color:var(--ink);background:var(--bg)}
header{background:var(--brand);color:#fff;padding:14px 28px;display:flex;flex-wrap:wrap;
align-items:baseline;gap:14px;border-bottom:4px solid #b8923a}
header h1{font-size:20px;margin:0;font-weight:600}
header .sub{opacity:.85;font-size:14px}
header .who{margin-left:auto;font-size:14px}
nav{background:#fff;border-bottom:1px solid var(--line);padding:0 20px}
nav a{display:inline-block;padding:9px 14px;color:var(--brand);text-decoration:none}
nav a:hover{text-decoration:underline}
main{max-width:1080px;margin:22px auto;padding:0 20px}
section{background:#fff;border:1px solid var(--line);border-radius:3px;padding:16px 22px;margin-bottom:18px}
h2{font-size:17px;margin:0 0 12px;padding-left:10px;border-left:4px solid var(--brand)}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid var(--line);padding:7px 10px;text-align:left;vertical-align:top}
th{background:#eef2f7;font-weight:600;white-space:nowrap}
.en{color:var(--muted);font-weight:400}
.badge{display:inline-block;padding:0 8px;border-radius:3px;font-size:13px;color:#fff}
.ok{background:var(--ok)}.bad{background:var(--bad)}.warn{background:var(--warn)}
.notice{border-left:4px solid var(--warn);background:#fff9ea}
.error{border-left:4px solid var(--bad);background:#fff3f3}
code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px;word-break:break-all}
form label{display:block;margin:10px 0 4px}
input[type=text],select{width:100%;max-width:440px;padding:6px 8px;border:1px solid #a9b4c2;
border-radius:3px;font:inherit}
button{background:var(--brand);color:#fff;border:0;border-radius:3px;padding:7px 18px;font:inherit;
cursor:pointer;margin-top:12px}
button .en,header .en{color:inherit;opacity:.85}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:14px}
.tile{background:#fff;border:1px solid var(--line);border-top:3px solid var(--brand);padding:12px 14px}
.tile .v{font-size:30px;font-weight:600;font-variant-numeric:tabular-nums}
footer{text-align:center;color:var(--muted);font-size:12px;padding:18px}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _bi(zh: str, en: str) -> str:
    """Bilingual text: zh-CN first, English second (both escaped)."""
    return f'{_e(zh)} <span class="en">{_e(en)}</span>'


def _section(body: str, heading: Text | None = None, css: str = "") -> str:
    title = f"<h2>{_bi(*heading)}</h2>" if heading else ""
    return f"<section{f' class={css!r}' if css else ''}>{title}{body}</section>"


def _rows(rows: Iterable[tuple[str, str, str]]) -> str:
    """A two-column table of (label zh, label en, value HTML)."""
    return (
        "<table>" + "".join(f"<tr><th>{_bi(zh, en)}</th><td>{v}</td></tr>" for zh, en, v in rows) + "</table>"
    )


def _table(head: Iterable[Text], rows: Iterable[str], empty: Text) -> str:
    cells = "".join(f"<th>{_bi(*h)}</th>" for h in head)
    body = "".join(rows) or f"<tr><td colspan='9'>{_bi(*empty)}</td></tr>"
    return f"<table><tr>{cells}</tr>{body}</table>"


@dataclass(frozen=True)
class _Site:
    """One demo system's page frame: a header naming the system, a nav bar, sections.

    Every page has a fresh CSP nonce that admits its own style and script and nothing else
    (CSP Level 3), and is never cached (it shows who is signed in).
    """

    app: str
    nav: tuple[tuple[str, str, str], ...]
    form_targets: tuple[str, ...] = ()

    def page(
        self,
        request: Request,
        heading: Text,
        body: str,
        identity: Identity | None = None,
        *,
        status: int = 200,
        script: str = "",
        cookies: Iterable[str] = (),
    ) -> HTMLResponse:
        title_zh, title_en, _host = DEMO_APPS[self.app]
        nonce = secrets.token_urlsafe(16)
        who = (
            f"{_e(identity.name)} ({_e(identity.user)})"
            if identity is not None
            else '未登录 <span class="sub">not signed in</span>'
        )
        links = "".join(f'<a href="{_e(href)}">{_bi(zh, en)}</a>' for href, zh, en in self.nav)
        script_tag = f'<script nonce="{nonce}">{script}</script>' if script else ""
        page = f"""<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(heading[0])} · {_e(title_zh)} | {_e(heading[1])} · {_e(title_en)}</title>
<style nonce="{nonce}">{_CSS}</style></head>
<body><header><h1>{_e(title_zh)}</h1><span class="sub">{_e(title_en)}</span><span class="who">{who}</span>
</header><nav>{links}</nav>
<main><h2>{_bi(*heading)}</h2>
{body}
</main><footer>示范城市电子政务 · Demo city e-government</footer>{script_tag}
</body></html>"""
        response = HTMLResponse(page, status_code=status)
        form_action = " ".join(["'self'", *self.form_targets])
        response.headers["content-security-policy"] = (
            f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
            f"connect-src 'self'; img-src 'self' data:; form-action {form_action}; "
            "frame-ancestors 'none'; base-uri 'none'"
        )
        response.headers["x-content-type-options"] = "nosniff"
        response.headers["referrer-policy"] = "same-origin"
        response.headers["cache-control"] = "no-store"
        for cookie in cookies:
            response.headers.append("set-cookie", cookie)
        return response

    def message(
        self, request: Request, heading: Text, text: Text, identity: Identity | None, *, status: int
    ) -> HTMLResponse:
        """A page that says one thing: an error, a refusal."""
        return self.page(
            request, heading, _section(f"<p>{_bi(*text)}</p>", css="error"), identity, status=status
        )


_NO_IDENTITY_SECTION: Final = _section(
    "<p>本系统部署在 OneGate 网关之后，由网关在每个请求中传入用户身份（<code>X-OneGate-User</code> "
    "等请求头）。这个请求没有携带身份信息：请通过网关访问。</p>"
    '<p class="en">This system is meant to sit behind the OneGate gateway, which passes the '
    "user's identity with every request (<code>X-OneGate-User</code> and the other "
    "<code>X-OneGate-*</code> headers). This request carried none: open the system through the "
    "gateway.</p>",
    ("未收到身份信息", "No identity received"),
    css="notice",
)


def _identity_section(identity: Identity) -> str:
    department = f"<code>{_e(identity.department)}</code>" if identity.department else "—"
    rows = [
        ("用户名", "User", f"<code>{_e(identity.user)}</code>"),
        ("姓名", "Name", _e(identity.name)),
        ("用户组", "Groups", _e(", ".join(identity.groups)) or "—"),
        ("部门", "Department", department),
    ]
    return _section(_rows(rows), ("您的身份", "Your identity"))


def _claim_value(key: str, value: object) -> str:
    if key in ("iat", "nbf", "exp", "auth_time") and isinstance(value, int | float) and math.isfinite(value):
        moment = datetime.fromtimestamp(value, _CST).strftime("%Y-%m-%d %H:%M:%S")
        return f"<code>{_e(value)}</code> <span class='en'>({_e(moment)} Asia/Shanghai)</span>"
    if isinstance(value, str):
        return f"<code>{_e(value)}</code>"
    return f"<code>{_e(json.dumps(value, ensure_ascii=False))}</code>"


def _claims_table(claims: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><th><code>{_e(k)}</code></th><td>{_claim_value(k, claims[k])}</td></tr>" for k in sorted(claims)
    )
    return f"<table>{rows}</table>"


_ASSERTION_BADGES: Final = {
    "verified": ("ok", "已验证", "verified"),
    "invalid": ("bad", "验证失败", "invalid"),
    "not_checked": ("warn", "未验证", "assertion not checked"),
}


def _assertion_section(check: AssertionCheck | None) -> str:
    heading = ("身份断言", "Identity assertion")
    if check is None:
        return _section(
            f"<p>{_bi('未收到身份断言', 'No assertion received')} (X-OneGate-Assertion)</p>", heading
        )
    css, zh, en = _ASSERTION_BADGES[check.status]
    detail = f" <span class='en'>({_e(check.detail)})</span>" if check.detail else ""
    caption = (
        _bi("断言内容（签名已验证）", "Claims (signature verified)")
        if check.status == "verified"
        else _bi("断言内容（未经验证，仅供查看）", "Claims (NOT verified, for display only)")
    )
    claims = _claims_table(check.claims) if check.claims else f"<p>{_bi('无法解析', 'not decodable')}</p>"
    badge = f'<p id="assertion-status"><span class="badge {css}">{_e(zh)} · {_e(en)}</span>{detail}</p>'
    return _section(f"{badge}<p>{caption}</p>{claims}", heading)


def _healthz(_request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


# -- CSRF --------------------------------------------------------------------------------------------


class _Csrf:
    """Form tokens bound to a per-browser cookie and to the user (a signed double-submit token).

    The cookie holds a random nonce; the form carries HMAC-SHA256(key, nonce | user). A site
    that can plant a cookie still cannot mint the matching token without the app's key, and a
    token is worth nothing for another user. Compared in constant time.
    """

    def __init__(self, cookie_name: str, *, key: bytes | None = None) -> None:
        self.cookie_name = cookie_name
        self._key = key or secrets.token_bytes(32)

    def _token(self, nonce: str, user: str) -> str:
        mac = hmac.new(self._key, f"{nonce}|{user}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def issue(self, request: Request, user: str) -> tuple[str, list[str]]:
        """The token for a form on this page, and the Set-Cookie values the response must carry."""
        nonce = request.cookies.get(self.cookie_name, "")
        cookies: list[str] = []
        if len(nonce) != 43 or not nonce.replace("-", "").replace("_", "").isalnum():
            nonce = secrets.token_urlsafe(32)
            cookies.append(f"{self.cookie_name}={nonce}; Path=/; HttpOnly; SameSite=Strict")
        return self._token(nonce, user), cookies

    def valid(self, request: Request, user: str, token: str) -> bool:
        nonce = request.cookies.get(self.cookie_name, "")
        if not nonce or not token:
            return False
        return hmac.compare_digest(self._token(nonce, user).encode(), token.encode())


def _csrf_field(token: str) -> str:
    return f'<input type="hidden" name="csrf_token" value="{_e(token)}">'


# -- HR ----------------------------------------------------------------------------------------------

_STAFF: Final = (
    ("张伟", "Zhang Wei", "市人力资源和社会保障局", "人事专员", "HR clerk"),
    ("王芳", "Wang Fang", "市人力资源和社会保障局", "人事管理员", "HR administrator"),
    ("刘洋", "Liu Yang", "市行政审批局", "审批专员", "Approval officer"),
    ("李娜", "Li Na", "市大数据管理局", "安全分析员", "SOC analyst"),
    ("陈静", "Chen Jing", "市大数据管理局", "协同办公系统负责人", "OA application owner"),
    ("赵磊", "Zhao Lei", "市自然资源和规划局", "测绘工程师", "Surveyor"),
    ("孙敏", "Sun Min", "市公安局", "值班民警", "Duty officer"),
)


def hr_app(
    *, issuer: str | None = None, jwks_url: str | None = None, jwks: Mapping[str, Any] | None = None
) -> Starlette:
    """人事管理系统 HR: shows the identity it receives.

    With ``issuer`` and keys (``jwks_url``, e.g. the gateway's ``/.onegate/jwks``, or a JWK Set
    in ``jwks``) the assertion is verified for audience ``hr``; without them its claims are
    shown marked "assertion not checked". ``GET /api/whoami`` gives the same as JSON. The
    gateway's policy guards ``/admin/``; the app shows what it was let through with.
    """
    verifier = _Verifier("hr", issuer, jwks_url, jwks)
    site = _Site(
        "hr",
        (("/", "我的信息", "My identity"), ("/staff", "员工名录", "Staff"), ("/admin/", "管理", "Admin")),
    )

    async def home(request: Request) -> Response:
        identity = Identity.from_headers(request)
        heading = ("我的信息", "My identity")
        if identity is None:
            return site.page(request, heading, _NO_IDENTITY_SECTION)
        check = await verifier.check(identity.assertion)
        return site.page(request, heading, _identity_section(identity) + _assertion_section(check), identity)

    async def admin(request: Request) -> Response:
        identity = Identity.from_headers(request)
        heading = ("管理员页面", "Administrator page")
        if identity is None:
            return site.page(request, heading, _NO_IDENTITY_SECTION)
        check = await verifier.check(identity.assertion)
        claims = check.claims if check is not None and check.claims else {}
        amr = ", ".join(map(str, claims.get("amr") or [])) or "—"
        strength = [
            ("认证级别", "acr", f"<code>{_e(claims.get('acr', '—'))}</code>"),
            ("认证方式", "amr", f"<code>{_e(amr)}</code>"),
        ]
        tasks = [
            ("待审批", "Pending", _bi("薪酬调整 3 项、岗位变动 2 项", "3 salary adjustments, 2 transfers")),
            ("本月入职", "Joined this month", "4"),
            ("本月离职", "Left this month", "1"),
        ]
        rule = _bi(
            "访问规则：hr-admins 组，并使用抗钓鱼认证（通行密钥）。",
            "Access rule: group hr-admins, with a phishing-resistant factor (passkey).",
        )
        body = (
            _section(f"<p>{rule}</p>", css="notice")
            + _section(_rows(tasks), ("管理事项", "Administration"))
            + _identity_section(identity)
            + _section(_rows(strength), ("认证强度", "Authentication strength"))
            + _assertion_section(check)
        )
        return site.page(request, heading, body, identity)

    async def staff(request: Request) -> Response:
        identity = Identity.from_headers(request)
        rows = (
            f"<tr><td>{_bi(zh, en)}</td><td>{_e(dept)}</td><td>{_bi(role_zh, role_en)}</td></tr>"
            for zh, en, dept, role_zh, role_en in _STAFF
        )
        table = _table((("姓名", "Name"), ("部门", "Department"), ("岗位", "Role")), rows, ("无", "None"))
        body = ("" if identity else _NO_IDENTITY_SECTION) + _section(table)
        return site.page(request, ("员工名录", "Staff"), body, identity)

    async def whoami(request: Request) -> Response:
        identity = Identity.from_headers(request)
        check = await verifier.check(identity.assertion) if identity else None
        return JSONResponse(
            {
                "identity": None
                if identity is None
                else {k: getattr(identity, k) for k in ("user", "name", "groups", "department")},
                "assertion": None
                if check is None
                else {k: getattr(check, k) for k in ("status", "detail", "claims")},
            },
            headers={"cache-control": "no-store"},
        )

    return Starlette(
        routes=[
            Route("/", home),
            Route("/admin/", admin),
            Route("/admin/{rest:path}", admin),
            Route("/staff", staff),
            Route("/api/whoami", whoami),
            Route("/healthz", _healthz),
        ]
    )


# -- Permits: a streamed multipart form ----------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, status: int, text: Text) -> None:
        super().__init__(text[1])
        self.status, self.text = status, text


@dataclass
class _Received:
    fields: dict[str, str]
    filename: str | None
    size: int
    sha256: str


class _FormStream:
    """A ``multipart/form-data`` body (RFC 7578) parsed chunk by chunk as it arrives.

    Text fields are kept (bounded); the one file is written to an unnamed temporary file while
    its SHA-256 is computed, so a body of any allowed size never sits in memory. The CSRF token
    must come before the file (a browser sends fields in document order): a file part that
    arrives first, or after a wrong token, is refused before any of it is stored.
    """

    MAX_FIELDS: Final = 16
    MAX_FIELD_BYTES: Final = 4096
    MAX_HEADER_BYTES: Final = 16 * 1024

    def __init__(self, boundary: bytes, *, max_file_bytes: int, token_ok: Callable[[str], bool]) -> None:
        self._max_file = max_file_bytes
        self._token_ok = token_ok
        self._events: list[tuple[str, bytes]] = []

        def event(kind: str) -> Callable[..., None]:
            def on(data: bytes = b"", start: int = 0, end: int = 0) -> None:
                self._events.append((kind, data[start:end]))

            return on

        names = ("part_begin", "header_field", "header_value", "header_end", "headers_finished")
        callbacks: Any = {f"on_{name}": event(name) for name in (*names, "part_data", "part_end", "end")}
        self._parser = MultipartParser(boundary, callbacks)
        self.fields: dict[str, str] = {}
        self._name = ""
        self._value = bytearray()
        self._is_file = False
        self._header = (bytearray(), bytearray())
        self._headers: dict[bytes, bytes] = {}
        self._header_bytes = 0
        self._token_checked = False
        self._file: IO[bytes] | None = None
        self._filename: str | None = None
        self._digest = hashlib.sha256()
        self._size = 0
        self._ended = False

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def feed(self, chunk: bytes) -> None:
        """Parse one chunk of the body (in a worker thread: it writes the file)."""
        try:
            self._parser.write(chunk)
        except MultipartParseError as e:
            raise _Refused(400, ("表单格式错误", "malformed form body")) from e
        self._drain()

    def finish(self) -> _Received:
        self._parser.finalize()
        self._drain()
        if not self._ended:
            raise _Refused(400, ("表单不完整", "incomplete form body"))
        if not self._token_checked:
            self._check_token()
        return _Received(self.fields, self._filename, self._size, self._digest.hexdigest())

    def _drain(self) -> None:
        events, self._events = self._events, []
        for kind, data in events:
            self._apply(kind, data)

    def _check_token(self) -> None:
        if not self._token_ok(self.fields.get("csrf_token", "")):
            raise _Refused(403, _CSRF_FAILED)
        self._token_checked = True

    def _apply(self, kind: str, data: bytes) -> None:
        if kind == "part_begin":
            self._name, self._value, self._is_file, self._headers = "", bytearray(), False, {}
        elif kind in ("header_field", "header_value"):
            self._header[kind == "header_value"].extend(data)
            self._header_bytes += len(data)
            if self._header_bytes > self.MAX_HEADER_BYTES:
                raise _Refused(400, ("表单头部过长", "form part headers too long"))
        elif kind == "header_end":
            name, value = self._header
            self._headers[bytes(name).strip().lower()] = bytes(value).strip()
            self._header = (bytearray(), bytearray())
        elif kind == "headers_finished":
            self._start_part()
        elif kind == "part_data":
            self._part_data(data)
        elif kind == "part_end" and not self._is_file:
            if len(self.fields) >= self.MAX_FIELDS:
                raise _Refused(400, ("表单字段过多", "too many form fields"))
            self.fields[self._name] = self._value.decode("utf-8", errors="replace")
            if self._name == "csrf_token":
                self._check_token()
        elif kind == "end":
            self._ended = True

    def _start_part(self) -> None:
        _kind, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise _Refused(400, ("表单字段缺少名称", "a form part has no name"))
        self._name = options[b"name"].decode("utf-8", errors="replace")
        filename = options.get(b"filename")
        if filename is None:
            return
        if not self._token_checked:
            raise _Refused(403, _CSRF_FAILED)
        if self._file is not None:
            raise _Refused(400, ("每份申请只能附一个文件", "one attachment per application"))
        self._is_file = True
        self._filename = filename.decode("utf-8", errors="replace")[:255]
        self._file = tempfile.TemporaryFile(prefix="permits-upload-")  # noqa: SIM115 - closed by close()

    def _part_data(self, data: bytes) -> None:
        if not self._is_file:
            if len(self._value) + len(data) > self.MAX_FIELD_BYTES:
                raise _Refused(400, ("表单字段过长", "form field too long"))
            self._value += data
            return
        self._size += len(data)
        if self._size > self._max_file:
            raise _Refused(413, ("附件过大", "attachment too large"))
        self._digest.update(data)
        assert self._file is not None  # noqa: S101 - opened in _start_part
        self._file.write(data)


@dataclass(frozen=True)
class _Application:
    number: str
    title: str
    applicant: Identity
    filename: str | None
    size: int
    sha256: str
    at: datetime


def permits_app(*, max_upload_bytes: int = 64 * 1024 * 1024, keep: int = 200) -> Starlette:
    """行政审批系统 Permits: an application form with one attachment, and the list of applications.

    ``POST /applications`` streams the attachment (at most ``max_upload_bytes``) and shows its
    size and SHA-256; the form's CSRF token is checked before any of the file is stored. The
    last ``keep`` applications are listed (in memory). Submitting needs an identity from the
    gateway: the applicant is who the gateway says.
    """
    csrf = _Csrf("permits_csrf")
    applications: OrderedDict[str, _Application] = OrderedDict()
    counter = iter(range(1, 1 << 62))
    site = _Site("permits", (("/", "申请列表", "Applications"), ("/new", "新建申请", "New application")))
    not_submitted = ("无法提交", "Not submitted")

    async def home(request: Request) -> Response:
        identity = Identity.from_headers(request)
        rows = (
            f"<tr><td><a href='/applications/{_e(a.number)}'><code>{_e(a.number)}</code></a></td>"
            f"<td>{_e(a.title)}</td><td>{_e(a.applicant.name)}</td><td>{_e(a.filename or '—')}</td>"
            f"<td>{a.size:,}</td><td>{_e(a.at.strftime('%Y-%m-%d %H:%M'))}</td></tr>"
            for a in reversed(applications.values())
        )
        head = (
            ("编号", "No."),
            ("事项", "Matter"),
            ("申请人", "Applicant"),
            ("附件", "Attachment"),
            ("大小（字节）", "Size (bytes)"),
            ("提交时间", "Submitted"),
        )
        table = _table(head, rows, ("暂无申请", "No applications yet"))
        body = ("" if identity else _NO_IDENTITY_SECTION) + _section(table)
        return site.page(request, ("申请列表", "Applications"), body, identity)

    async def new(request: Request) -> Response:
        identity = Identity.from_headers(request)
        heading = ("新建申请", "New application")
        if identity is None:
            return site.page(request, heading, _NO_IDENTITY_SECTION)
        token, cookies = csrf.issue(request, identity.user)
        limit = (
            f"附件不超过 {max_upload_bytes // 2**20} MiB",
            f"Attachment up to {max_upload_bytes // 2**20} MiB",
        )
        form = f"""<form method="post" action="/applications" enctype="multipart/form-data">
{_csrf_field(token)}
<label for="title">{_bi("事项名称", "Matter")}</label>
<input type="text" id="title" name="title" required maxlength="200" placeholder="建设工程规划许可">
<label for="attachment">{_bi("申请材料", "Attachment")}</label>
<input type="file" id="attachment" name="attachment">
<div><button type="submit">{_bi("提交申请", "Submit")}</button></div></form><p>{_bi(*limit)}</p>"""
        return site.page(request, heading, _section(form), identity, cookies=cookies)

    async def submit(request: Request) -> Response:
        identity = Identity.from_headers(request)
        if identity is None:
            return site.message(request, not_submitted, _NO_IDENTITY, None, status=403)
        kind, options = parse_options_header(request.headers.get("content-type", ""))
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary or len(boundary) > 200:
            return site.message(
                request, not_submitted, ("表单格式错误", "expected multipart/form-data"), identity, status=400
            )
        user = identity.user
        stream = _FormStream(
            boundary, max_file_bytes=max_upload_bytes, token_ok=lambda t: csrf.valid(request, user, t)
        )
        try:
            async for chunk in request.stream():
                if chunk:
                    await anyio.to_thread.run_sync(stream.feed, chunk)
            received = await anyio.to_thread.run_sync(stream.finish)
        except _Refused as e:
            return site.message(request, not_submitted, e.text, identity, status=e.status)
        finally:
            stream.close()
        title = received.fields.get("title", "").strip()[:200]
        if not title:
            return site.message(
                request, not_submitted, ("请填写事项名称", "the matter is required"), identity, status=400
            )
        now = datetime.now(_CST)
        number = f"SP{now:%Y%m%d}-{next(counter):04d}"
        applications[number] = _Application(
            number, title, identity, received.filename, received.size, received.sha256, now
        )
        while len(applications) > keep:
            applications.popitem(last=False)
        _log.info("permit application received", number=number, user=identity.user, size=received.size)
        return RedirectResponse(f"/applications/{number}", status_code=303)

    async def show(request: Request) -> Response:
        identity = Identity.from_headers(request)
        heading = ("申请详情", "Application")
        found = applications.get(request.path_params["number"])
        if found is None:
            return site.message(
                request, heading, ("没有这份申请", "No such application"), identity, status=404
            )
        applicant = f"{_e(found.applicant.name)} (<code>{_e(found.applicant.user)}</code>)"
        rows = [
            ("编号", "No.", f"<code>{_e(found.number)}</code>"),
            ("事项", "Matter", _e(found.title)),
            ("申请人", "Applicant", applicant),
            ("附件", "Attachment", _e(found.filename or "—")),
            ("大小", "Size", f'<span id="size">{found.size}</span> {_bi("字节", "bytes")}'),
            ("SHA-256", "digest", f'<code id="sha256">{_e(found.sha256)}</code>'),
            ("提交时间", "Submitted", _e(found.at.strftime("%Y-%m-%d %H:%M:%S"))),
            ("状态", "Status", _bi("已受理", "Received")),
        ]
        return site.page(request, heading, _section(_rows(rows)), identity)

    return Starlette(
        routes=[
            Route("/", home),
            Route("/new", new),
            Route("/applications", submit, methods=["POST"]),
            Route("/applications/{number}", show),
            Route("/healthz", _healthz),
        ]
    )


# -- City operations: a live dashboard -------------------------------------------------------------

_METRICS: Final = (
    ("events_today", "今日受理事件", "Events today"),
    ("in_progress", "处置中", "In progress"),
    ("closed_today", "今日办结", "Closed today"),
    ("staff_online", "在岗网格员", "Grid staff on duty"),
    ("dispatches", "指挥调度", "Dispatches"),
)
_DISPATCH_KINDS: Final[Mapping[str, Text]] = {
    "waterlogging": ("道路积水", "Road waterlogging"),
    "manhole": ("井盖缺失", "Missing manhole cover"),
    "vending": ("占道经营", "Street vending"),
    "traffic": ("交通拥堵", "Traffic congestion"),
}


@dataclass(frozen=True)
class _Dispatch:
    kind: str
    location: str
    by: str
    at: datetime


class _Operations:
    """Simulated city figures that drift smoothly with time, and the dispatches sent."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._start = clock()
        self.seq = 0
        self.dispatches: deque[_Dispatch] = deque(maxlen=20)
        self.dispatch_count = 0

    def figures(self) -> dict[str, int]:
        t = self._clock() - self._start
        events = 1280 + int(t * 0.8) + int(6 * math.sin(t / 7))
        closed = 1130 + int(t * 0.75) + int(5 * math.sin(t / 11))
        return {
            "events_today": events,
            "in_progress": max(events - closed, 0),
            "closed_today": closed,
            "staff_online": 412 + int(9 * math.sin(t / 13)),
            "dispatches": self.dispatch_count,
        }

    def tick(self) -> dict[str, Any]:
        self.seq += 1
        last = self.dispatches[-1] if self.dispatches else None
        return {
            "type": "tick",
            "seq": self.seq,
            "time": datetime.now(_CST).isoformat(timespec="seconds"),
            "metrics": self.figures(),
            "last_dispatch": None if last is None else {"kind": last.kind, "location": last.location},
        }


_GRID_SCRIPT: Final = """
(function () {
  var status = document.getElementById('live');
  var proto = location.protocol === 'https:' ? 'wss://' : 'ws://';
  function connect(delay) {
    var ws = new WebSocket(proto + location.host + '/ws');
    ws.onopen = function () { status.textContent = '实时连接中 · live'; status.className = 'badge ok'; };
    ws.onmessage = function (event) {
      var tick = JSON.parse(event.data);
      if (tick.type !== 'tick') { return; }
      Object.keys(tick.metrics).forEach(function (key) {
        var cell = document.getElementById('m-' + key);
        if (cell) { cell.textContent = Number(tick.metrics[key]).toLocaleString('zh-CN'); }
      });
      document.getElementById('updated').textContent = tick.time;
    };
    ws.onclose = function () {
      status.textContent = '连接已断开，正在重连 · reconnecting'; status.className = 'badge warn';
      setTimeout(function () { connect(Math.min(delay * 2, 30000)); }, delay);
    };
  }
  connect(1000);
})();
"""


def grid_app(*, tick_seconds: float = 1.0, clock: Callable[[], float] = time.monotonic) -> Starlette:
    """城市运行一网统管 City operations: figures that update over ``/ws`` every ``tick_seconds``.

    ``/ws`` sends ``{"type": "hello", "user": ...}`` and then a ``{"type": "tick", "seq": n,
    "metrics": {...}}`` message every ``tick_seconds``. Everyone the gateway lets in reads;
    ``POST /dispatch`` sends a dispatch order and is for the ``ops-duty`` group (the gateway's
    policy says so; the app checks it again).
    """
    if not 0 < tick_seconds <= 60:
        raise ValueError("tick_seconds must be in (0, 60]")
    ops = _Operations(clock)
    csrf = _Csrf("grid_csrf")
    site = _Site("grid", (("/", "运行态势", "Dashboard"),))
    not_sent = ("无法下发", "Not dispatched")

    async def home(request: Request) -> Response:
        identity = Identity.from_headers(request)
        figures = ops.figures()
        tiles = "".join(
            f'<div class="tile"><div>{_bi(zh, en)}</div><div class="v" id="m-{key}">{figures[key]:,}</div>'
            "</div>"
            for key, zh, en in _METRICS
        )
        recent = (
            f"<tr><td>{_e(d.at.strftime('%H:%M:%S'))}</td><td>{_bi(*_DISPATCH_KINDS[d.kind])}</td>"
            f"<td>{_e(d.location)}</td><td>{_e(d.by)}</td></tr>"
            for d in reversed(ops.dispatches)
        )
        head = (("时间", "Time"), ("类型", "Kind"), ("地点", "Location"), ("下发人", "By"))
        live = (
            f'<p><span id="live" class="badge warn">{_bi("正在连接", "connecting")}</span> '
            f'{_bi("更新时间", "Updated")} <span id="updated" class="mono">—</span></p>'
        )
        body = (
            ("" if identity else _NO_IDENTITY_SECTION)
            + _section(f'{live}<div class="tiles">{tiles}</div>')
            + _section(
                _table(head, recent, ("暂无调度", "No dispatches yet")), ("最近调度", "Recent dispatches")
            )
        )
        cookies: list[str] = []
        if identity is not None:
            token, cookies = csrf.issue(request, identity.user)
            options = "".join(f'<option value="{k}">{_bi(*v)}</option>' for k, v in _DISPATCH_KINDS.items())
            form = f"""<form method="post" action="/dispatch">{_csrf_field(token)}
<label for="kind">{_bi("事件类型", "Kind")}</label><select id="kind" name="kind">{options}</select>
<label for="location">{_bi("地点", "Location")}</label>
<input type="text" id="location" name="location" required maxlength="100" placeholder="人民路与解放街交叉口">
<div><button type="submit">{_bi("下发", "Dispatch")}</button></div></form>"""
            body += _section(form, ("下发调度指令（值班组）", "Send a dispatch (ops-duty)"))
        return site.page(
            request, ("运行态势", "Dashboard"), body, identity, script=_GRID_SCRIPT, cookies=cookies
        )

    async def dispatch(request: Request) -> Response:
        identity = Identity.from_headers(request)
        if identity is None:
            return site.message(request, not_sent, _NO_IDENTITY, None, status=403)
        if "ops-duty" not in identity.groups:
            only = ("仅值班组（ops-duty）可以下发调度指令。", "Only the ops-duty group may dispatch.")
            return site.message(request, not_sent, only, identity, status=403)
        async with request.form(max_files=0, max_fields=8, max_part_size=1024) as form:
            token, kind, location = (str(form.get(k, "")) for k in ("csrf_token", "kind", "location"))
        if not csrf.valid(request, identity.user, token):
            return site.message(request, not_sent, _CSRF_FAILED, identity, status=403)
        location = location.strip()[:100]
        if kind not in _DISPATCH_KINDS or not location:
            missing = ("请选择事件类型并填写地点。", "Choose a kind and give a location.")
            return site.message(request, not_sent, missing, identity, status=400)
        ops.dispatches.append(_Dispatch(kind, location, identity.name, datetime.now(_CST)))
        ops.dispatch_count += 1
        _log.info("dispatch sent", user=identity.user, kind=kind)
        return RedirectResponse("/", status_code=303)

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        identity = Identity.from_headers(websocket)
        await websocket.send_json({"type": "hello", "user": identity.user if identity else None})

        async def ticker() -> None:
            while True:
                await websocket.send_json(ops.tick())
                await anyio.sleep(tick_seconds)

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(ticker)
                # Messages from the browser are not used; reading them notices the close.
                while (await websocket.receive())["type"] != "websocket.disconnect":
                    pass
                group.cancel_scope.cancel()
        except* (WebSocketDisconnect, OSError, RuntimeError):
            pass  # the browser went away while a tick was on its way

    return Starlette(
        routes=[
            Route("/", home),
            Route("/dispatch", dispatch, methods=["POST"]),
            WebSocketRoute("/ws", ws),
            Route("/healthz", _healthz),
        ]
    )


# -- OA: its own OpenID Connect sign-in -------------------------------------------------------------

_SESSION_ROTATE: Final = "onegate.demo.session_rotate"


class _SessionStore:
    """Sessions in memory, bounded in number and age: the cookie holds only a random id."""

    def __init__(self, *, ttl: float, max_sessions: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._max = max_sessions
        self._clock = clock
        self._data: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()

    def load(self, sid: str) -> dict[str, Any] | None:
        expires, data = self._data.get(sid, (0.0, None))
        if data is not None and expires < self._clock():
            del self._data[sid]
            return None
        return data

    def save(self, sid: str, data: dict[str, Any]) -> None:
        self._data[sid] = (self._clock() + self._ttl, data)
        self._data.move_to_end(sid)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    def drop(self, sid: str) -> None:
        self._data.pop(sid, None)


class _Sessions:
    """ASGI middleware giving ``request.session`` from a :class:`_SessionStore` (authlib's
    Starlette client keeps ``state``, ``nonce`` and the PKCE ``code_verifier`` there).

    A handler sets ``scope[_SESSION_ROTATE]`` when the user signs in: the session gets a new id,
    so an id planted before sign-in is worth nothing after it (session fixation).
    """

    def __init__(self, app: ASGIApp, *, store: _SessionStore, cookie_name: str, secure: bool) -> None:
        self.app = app
        self._store = store
        self._cookie = cookie_name
        self._attributes = "Path=/; HttpOnly; SameSite=Lax" + ("; Secure" if secure else "")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sid = ""
        for key, value in scope["headers"]:
            if key == b"cookie" and len(value) <= 8192:
                sid = cookie_parser(value.decode("latin-1")).get(self._cookie, "") or sid
        loaded = self._store.load(sid) if 20 <= len(sid) <= 64 else None
        data: dict[str, Any] = loaded if loaded is not None else {}
        scope["session"] = data

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                cookie = None
                if data and (loaded is None or scope.get(_SESSION_ROTATE)):
                    self._store.drop(sid)
                    new_sid = secrets.token_urlsafe(32)
                    self._store.save(new_sid, data)
                    cookie = f"{self._cookie}={new_sid}; {self._attributes}"
                elif data:
                    self._store.save(sid, data)  # in use: extend its life
                elif loaded is not None:
                    self._store.drop(sid)
                    cookie = f"{self._cookie}=; {self._attributes}; Max-Age=0"
                if cookie is not None:
                    headers = [*message.get("headers", []), (b"set-cookie", cookie.encode("latin-1"))]
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _loopback_hook(connect_to: Mapping[str, str]) -> Callable[[Any], Awaitable[None]]:
    """An httpx request hook that sends requests for some host names to a fixed address.

    The URL's host is replaced by the address while the ``Host`` header (already set from the
    original URL) stays, and TLS keeps the original name for SNI and the certificate check.
    Names under ``localhost`` go to 127.0.0.1 unless ``connect_to`` says otherwise (RFC 6761
    §6.3: they are loopback; browsers resolve them so, glibc does not).
    """

    async def hook(request: Any) -> None:
        host = str(request.url.host).lower()
        target = connect_to.get(host)
        if target is None and (host == "localhost" or host.endswith(".localhost")):
            target = "127.0.0.1"
        if target is None:
            return
        if request.url.scheme == "https":
            request.extensions = {**request.extensions, "sni_hostname": host}
        request.url = request.url.copy_with(host=target)

    return hook


def _load_authlib() -> tuple[Any, type[Exception]]:
    """authlib's Starlette OAuth registry class and its error class.

    authlib warns on import that it runs on ``httpx`` rather than that package's successor;
    that one deprecation notice, about authlib's own transport, is silenced here, nothing else.
    """
    import authlib.deprecate  # noqa: F401 - it installs a filter of its own: ours must go in after it

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The httpx module is deprecated", DeprecationWarning)
        from authlib.integrations.starlette_client import OAuth, OAuthError
    return OAuth, OAuthError


@dataclass(frozen=True)
class OaClient:
    """OA's registration at the IdP (``onegate client add``)."""

    issuer: str
    client_id: str
    client_secret: str = field(repr=False)
    redirect_uri: str
    post_logout_redirect_uri: str | None = None


OA_SCOPES: Final = ("openid", "profile", "email", "groups", "department")


def oa_app(
    *,
    issuer: str,
    client_id: str,
    client_secret: str,
    redirect_uri: str,
    post_logout_redirect_uri: str | None = None,
    connect_to: Mapping[str, str] | None = None,
    session_ttl: float = 8 * 3600,
    max_sessions: int = 10_000,
) -> Starlette:
    """协同办公 OA: signs users in itself with the IdP by OpenID Connect.

    Authorization code flow with PKCE S256 (RFC 7636 §4.2), ``state`` and ``nonce`` (OpenID
    Connect Core 1.0 §3.1.2.1) through authlib's Starlette client; the ID token is validated
    against the provider's JWKS (signature, ``iss``, ``aud``, ``nonce``, ``exp``); an ``iss`` in
    the authorization response must be the issuer (RFC 9207 §2.4), and so must the discovery
    document's (OpenID Connect Discovery 1.0 §4.3). Sessions are server-side, their id renewed
    at sign-in. ``POST /logout`` ends the OA session and sends the browser to the IdP's
    ``end_session_endpoint`` with ``id_token_hint`` (RP-Initiated Logout 1.0 §2), and back to
    ``post_logout_redirect_uri`` when that is registered.

    The app's own calls to the IdP (discovery, token, JWKS) go to the address ``connect_to``
    gives for the host name, and ``*.localhost`` names to 127.0.0.1, with the Host header kept:
    Python cannot resolve ``idp.localhost``.
    """
    issuer = issuer.rstrip("/")
    oauth_class, oauth_error = _load_authlib()
    from authlib.common.errors import AuthlibBaseError
    from joserfc.errors import JoseError

    idp: Any = oauth_class().register(
        name="onegate",
        client_id=client_id,
        client_secret=client_secret,
        server_metadata_url=f"{issuer}/.well-known/openid-configuration",
        client_kwargs={
            "scope": " ".join(OA_SCOPES),
            "code_challenge_method": "S256",  # PKCE on every sign-in, never "plain"
            "token_endpoint_auth_method": "client_secret_basic",
            "timeout": 10.0,
            "event_hooks": {"request": [_loopback_hook(dict(connect_to or {}))], "response": []},
        },
    )
    site = _Site(
        "oa",
        (("/", "我的信息", "My profile"),),
        form_targets=("{0.scheme}://{0.netloc}".format(urlsplit(issuer)),),
    )
    failures = (oauth_error, AuthlibBaseError, JoseError, OSError, ValueError, KeyError)
    failed_heading = ("登录失败", "Sign-in failed")

    def identity_of(request: Request) -> Identity | None:
        user = request.session.get("user")
        if not isinstance(user, dict):
            return None
        username = str(user.get("preferred_username") or user.get("sub", ""))
        groups = tuple(map(str, user.get("groups") or ()))
        return Identity(
            username, str(user.get("name") or username), groups, str(user.get("department", "")), None
        )

    def failed(request: Request, status: int, text: Text) -> Response:
        again = f'<p><a href="/login">{_bi("重新登录", "Sign in again")}</a></p>'
        body = _section(f"<p>{_bi(*text)}</p>{again}", css="error")
        return site.page(request, failed_heading, body, identity_of(request), status=status)

    async def metadata() -> Mapping[str, Any]:
        found: Mapping[str, Any] = await idp.load_server_metadata()
        if found.get("issuer") != issuer:
            raise ValueError("the discovery document names another issuer")
        return found

    async def home(request: Request) -> Response:
        identity = identity_of(request)
        user = request.session.get("user")
        if identity is None or not isinstance(user, dict):
            body = (
                f"<p>{_bi('您尚未登录协同办公系统。', 'You are not signed in to OA.')}</p>"
                f'<p><a href="/login">{_bi("统一身份认证登录", "Sign in with your city account")}</a></p>'
            )
            return site.page(request, ("协同办公", "Office automation"), _section(body))
        token = request.session.setdefault("csrf", secrets.token_urlsafe(32))
        intro = _bi(
            "本系统直接通过 OpenID Connect 接入统一身份认证（不经网关）。",
            "OA signs you in itself with OpenID Connect (not through the gateway).",
        )
        sign_out = _bi("退出登录", "Sign out")
        logout = (
            f'<form method="post" action="/logout">{_csrf_field(token)}<button>{sign_out}</button></form>'
        )
        body = (
            _section(f"<p>{_bi('欢迎，', 'Welcome,')} <strong>{_e(identity.name)}</strong></p><p>{intro}</p>")
            + _section(_claims_table(user), ("身份声明", "Your claims"))
            + _section(logout)
        )
        return site.page(request, ("我的信息", "My profile"), body, identity)

    async def login(request: Request) -> Response:
        try:
            await metadata()
            response: Response = await idp.authorize_redirect(request, redirect_uri, ui_locales="zh-CN en")
        except failures as e:
            _log.warning("oa sign-in cannot start", error=type(e).__name__)
            unavailable = (
                "统一身份认证服务暂不可用，请稍后再试。",
                "The sign-in service is unavailable; try later.",
            )
            return failed(request, 502, unavailable)
        return response

    async def callback(request: Request) -> Response:
        iss = request.query_params.get("iss")
        if iss is not None and iss != issuer:  # RFC 9207 §2.4: a mix-up attack, or a mistake
            return failed(
                request, 400, ("登录响应来自未知的签发方。", "The answer came from an unknown issuer.")
            )
        if "error" in request.query_params:
            return failed(request, 400, ("登录未完成。", "Sign-in did not complete."))
        try:
            await metadata()
            token = await idp.authorize_access_token(request)
        except failures as e:
            _log.warning("oa sign-in failed", error=type(e).__name__)
            invalid = (
                "登录未完成：登录请求无效或已过期。",
                "Sign-in did not complete: the request was invalid or expired.",
            )
            return failed(request, 400, invalid)
        claims = token.get("userinfo")
        if not isinstance(claims, Mapping):
            return failed(request, 400, ("登录未完成。", "Sign-in did not complete."))
        request.session.clear()
        request.session.update(
            user={k: v for k, v in claims.items() if k not in ("nonce", "at_hash", "c_hash")},
            id_token=str(token.get("id_token", "")),
            csrf=secrets.token_urlsafe(32),
        )
        request.scope[_SESSION_ROTATE] = True
        _log.info("oa sign-in", sub=claims.get("sub"))
        return RedirectResponse("/", status_code=303)

    async def logout(request: Request) -> Response:
        async with request.form(max_files=0, max_fields=4, max_part_size=1024) as form:
            token = str(form.get("csrf_token", ""))
        expected = str(request.session.get("csrf", ""))
        if not expected or not hmac.compare_digest(expected.encode(), token.encode()):
            return site.message(
                request, ("无法退出", "Not signed out"), _CSRF_FAILED, identity_of(request), status=403
            )
        id_token = str(request.session.get("id_token", ""))
        request.session.clear()
        try:
            result = await idp.create_logout_url(
                post_logout_redirect_uri=post_logout_redirect_uri,
                id_token_hint=id_token or None,
                client_id=client_id,
            )
        except (*failures, RuntimeError) as e:  # RuntimeError: the IdP names no end_session_endpoint
            _log.warning("oa sign-out at the IdP not possible", error=type(e).__name__)
            return RedirectResponse("/", status_code=303)
        return RedirectResponse(str(result["url"]), status_code=303)

    app = Starlette(
        routes=[
            Route("/", home),
            Route("/login", login),
            Route("/callback", callback),
            Route("/logout", logout, methods=["POST"]),
            Route("/healthz", _healthz),
        ]
    )
    store = _SessionStore(ttl=session_ttl, max_sessions=max_sessions)
    secure = urlsplit(redirect_uri).scheme == "https"
    app.add_middleware(_Sessions, store=store, cookie_name="oa_session", secure=secure)
    return app


# -- assembly --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoApp:
    """One demo system: its name (the gateway route's ``app``), titles, demo host and ASGI app.
    ``behind_gateway`` is False for OA, which speaks OpenID Connect to the IdP itself."""

    name: str
    title_zh: str
    title_en: str
    host: str
    app: ASGIApp
    behind_gateway: bool = True


def build_demo_apps(
    *,
    issuer: str | None = None,
    jwks_url: str | None = None,
    jwks: Mapping[str, Any] | None = None,
    oa: OaClient | None = None,
    connect_to: Mapping[str, str] | None = None,
    tick_seconds: float = 1.0,
) -> dict[str, DemoApp]:
    """Every demo system by name: ``hr``, ``permits``, ``grid``, and ``oa`` when ``oa`` gives
    its registration. ``issuer`` with ``jwks_url`` or ``jwks`` lets HR verify the assertions it
    receives; ``connect_to`` maps host names for OA's calls to the IdP (see :func:`oa_app`)."""
    built: dict[str, ASGIApp] = {
        "hr": hr_app(issuer=issuer, jwks_url=jwks_url, jwks=jwks),
        "permits": permits_app(),
        "grid": grid_app(tick_seconds=tick_seconds),
    }
    if oa is not None:
        built["oa"] = oa_app(
            issuer=oa.issuer,
            client_id=oa.client_id,
            client_secret=oa.client_secret,
            redirect_uri=oa.redirect_uri,
            post_logout_redirect_uri=oa.post_logout_redirect_uri,
            connect_to=connect_to,
        )
    return {
        name: DemoApp(name, *DEMO_APPS[name], app=app, behind_gateway=name != "oa")
        for name, app in built.items()
    }
