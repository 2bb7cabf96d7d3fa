"""Access rules: what signed-in users and their sessions do through the gateway.

They read the gateway's ``access`` events (``onegate.decision`` allow / deny / step_up,
``onegate.groups``, ``url.path``, ``http.response.body.bytes`` ...) and, for session replay,
the IdP's events that the browser itself causes (sign-in, step-up, consent, logout). The
IdP's token-endpoint events carry a session id too, but come from the application's server,
not from the user's browser, so they would make every OIDC session look replayed.

Published practice behind the defaults: Elastic and Microsoft Defender flag a session cookie
used from a second address or client; Elastic's data-exfiltration rules look at hundreds of
megabytes or thousands of requests per user within an hour; a scanner walking paths it is
refused is counted per source address over minutes.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from policy.model import client_address
from soc.detections.engine import Context, event_time
from soc.detections.model import RuleInfo, Severity, Signal, Text
from soc.detections.rules.common import action, event_id, field
from soc.detections.rules.identity import PRIVILEGED_GROUPS, privileged_groups

__all__ = [
    "AccessDeniedSpike",
    "MassDownload",
    "PrivilegedOutOfHours",
    "SessionReplay",
    "rules",
]

# IdP events made by the user's browser (the address and agent of the person); token-endpoint
# events (token-issued, token-refreshed, code-reused ...) come from the client's server.
_BROWSER_ACTIONS = frozenset(
    {
        "user-login",
        "session-step-up",
        "consent-granted",
        "consent-revoked",
        "password-changed",
        "user-logout",
    }
)
_DAYS_EN = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DAYS_ZH = ("周一", "周二", "周三", "周四", "周五", "周六", "周日")
_MIB = 1024 * 1024


def _entity(doc: Mapping[str, Any], *names: str) -> dict[str, str]:
    return {name: value for name in names if (value := field(doc, name)) is not None}


def _strings(doc: Mapping[str, Any], name: str) -> list[str]:
    """Every value of a list field (or the one value of a scalar), as strings."""
    value = doc.get(name)
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [str(item) for item in value if item not in (None, "")]
    return [str(value)] if value != "" else []


@functools.lru_cache(maxsize=8192)  # parsing is slow; a site has a working set of addresses
def _address(value: str | None) -> str | None:
    """The address in one spelling: IPv4-mapped IPv6 as IPv4, IPv6 compressed."""
    if value is None:
        return None
    try:
        return str(client_address(value))
    except ValueError:
        return value


def _allowed(doc: Mapping[str, Any]) -> bool:
    return action(doc) == "access" and field(doc, "onegate.decision") == "allow"


def _bytes(doc: Mapping[str, Any]) -> int:
    value = doc.get("http.response.body.bytes")
    if isinstance(value, bool):
        return 0
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def _under(path: str, prefixes: Iterable[str]) -> str | None:
    """The first of ``prefixes`` that ``path`` is at or below, whole segments only
    (``/admin`` holds ``/admin`` and ``/admin/users``, not ``/administration``)."""
    lowered = path.lower()
    for prefix in prefixes:
        base = prefix.lower().rstrip("/")
        if not base:
            return prefix
        if lowered == base or lowered.startswith(base + "/"):
            return prefix
    return None


class SessionReplay:
    """One session used from several addresses or browsers: its cookie was copied."""

    info = RuleInfo(
        id="onegate.session-replay",
        name=Text("Session used from several clients", "会话被多个客户端使用"),
        description=Text(
            "One session id was used from two or more source addresses or user agents within "
            "ten minutes: its cookie was probably stolen and replayed. Dual-stack or mobile "
            "clients changing address mid-session also cause this.",
            "同一会话在十分钟内从两个及以上来源地址或用户代理使用，会话 Cookie 很可能被窃取后重放。"
            "双栈网络或移动网络中途更换地址也可能触发。",
        ),
        severity=Severity.HIGH,
        risk_score=73,
        technique="T1550.004",
        tactic="defense-evasion",
        suppress_by=("session.id",),
        params={"addresses": 2, "agents": 2, "window_s": 600},
    )

    def wants(self, doc: Mapping[str, Any]) -> bool:
        kind = action(doc)
        return (kind == "access" or kind in _BROWSER_ACTIONS) and field(doc, "session.id") is not None

    async def check(self, doc: Mapping[str, Any], ctx: Context) -> Signal | None:
        session = field(doc, "session.id") or ""
        at = event_time(doc)
        span = float(ctx.param("window_s"))
        address = _address(field(doc, "source.ip"))
        agent = field(doc, "user_agent.original")
        addresses = await ctx.window("addresses", session, address, at=at, span=span)
        agents = await ctx.window("agents", session, agent, at=at, span=span)
        need_addresses, need_agents = int(ctx.param("addresses")), int(ctx.param("agents"))
        if addresses.count < need_addresses and agents.count < need_agents:
            return None
        minutes = round(span / 60)
        who = field(doc, "user.name")
        of_en = f" of {who}" if who else ""
        of_zh = f"（账号 {who}）" if who else ""
        return Signal(
            self.info,
            at,
            _entity(doc, "session.id", "user.name", "source.ip"),
            (event_id(doc),),
            Text(
                f"Session {session}{of_en} was used from {addresses.count} addresses and "
                f"{agents.count} user agents within {minutes} min, the latest {address or '-'}",
                f"会话 {session}{of_zh} 在 {minutes} 分钟内从 {addresses.count} 个来源地址、"
                f"{agents.count} 个用户代理使用，最近来源 {address or '-'}",
            ),
            {
                "addresses": addresses.count,
                "agents": agents.count,
                "threshold_addresses": need_addresses,
                "threshold_agents": need_agents,
                "window_s": span,
            },
        )


class MassDownload:
    """One account taking far more data, or making far more requests, than a person does."""

    info = RuleInfo(
        id="onegate.mass-download",
        name=Text("Mass download by one account", "单一账号大量下载"),
        description=Text(
            "One account downloaded 500 MiB or more through the gateway within an hour, or made "
            "2,000 or more allowed requests within ten minutes: a script or a person collecting "
            "the departmental systems' data in bulk.",
            "同一账号一小时内经网关下载 500 MiB 以上，或十分钟内获准请求 2000 次以上，"
            "疑似脚本或人员批量采集业务系统数据。",
        ),
        severity=Severity.HIGH,
        risk_score=73,
        # Data from Information Repositories: the departmental web systems behind the gateway
        # (HR, permits ...) are the repositories; the gateway sees the collection, not where
        # the data goes next (T1567 is the upload to an outside service, T1530 cloud storage).
        technique="T1213",
        tactic="collection",
        suppress_by=("user.name",),
        params={"bytes": 500 * _MIB, "window_s": 3600, "requests": 2000, "requests_window_s": 600},
    )

    def wants(self, doc: Mapping[str, Any]) -> bool:
        return _allowed(doc) and field(doc, "user.name") is not None

    async def check(self, doc: Mapping[str, Any], ctx: Context) -> Signal | None:
        user = field(doc, "user.name") or ""
        key = user.lower()
        at = event_time(doc)
        span = float(ctx.param("window_s"))
        requests_span = float(ctx.param("requests_window_s"))
        amount = _bytes(doc)
        requests = await ctx.window("requests", key, event_id(doc), at=at, span=requests_span)
        if not requests.new:
            # The event is in the requests window already: a batch replayed after a crash. Its
            # bytes were added then (the byte sum cannot tell events apart, so it must not be
            # given them twice).
            amount = 0
        need_bytes, need_requests = int(ctx.param("bytes")), int(ctx.param("requests"))
        if not amount and requests.count < need_requests:
            return None  # no bytes added: the sum cannot have crossed its threshold now
        total = await ctx.total("bytes", key, amount, at=at, span=span)
        if total < need_bytes and requests.count < need_requests:
            return None
        mib = total / _MIB
        minutes, request_minutes = round(span / 60), round(requests_span / 60)
        if total >= need_bytes:
            reason = Text(
                f"{user} downloaded {mib:.1f} MiB within {minutes} min "
                f"(threshold {need_bytes / _MIB:.0f} MiB)",
                f"账号 {user} 在 {minutes} 分钟内下载 {mib:.1f} MiB（阈值 {need_bytes / _MIB:.0f} MiB）",
            )
        else:
            reason = Text(
                f"{user} made {requests.count} allowed requests within {request_minutes} min "
                f"(threshold {need_requests})",
                f"账号 {user} 在 {request_minutes} 分钟内获准请求 {requests.count} 次"
                f"（阈值 {need_requests}）",
            )
        return Signal(
            self.info,
            at,
            _entity(doc, "user.name", "source.ip", "onegate.app"),
            await ctx.evidence("requests", key, event_id(doc), at=at, span=requests_span),
            reason,
            {
                "bytes": total,
                "requests": requests.count,
                "threshold_bytes": need_bytes,
                "threshold_requests": need_requests,
                "window_s": span,
                "requests_window_s": requests_span,
            },
        )


class AccessDeniedSpike:
    """Many refusals for one source address: something probing what it may reach."""

    info = RuleInfo(
        id="onegate.access-denied-spike",
        name=Text("Many denied requests from one address", "单一来源大量访问被拒"),
        description=Text(
            "The gateway denied twenty or more requests from one source address within five "
            "minutes: a scanner walking paths and applications, or a user probing what is "
            "outside their rights.",
            "网关在五分钟内拒绝同一来源地址 20 次以上请求，疑似扫描器遍历路径和应用，或用户试探越权访问。",
        ),
        severity=Severity.MEDIUM,
        risk_score=47,
        # Active Scanning: Wordlist Scanning — probing for content by trying many paths;
        # T1083 is file and directory discovery on a host the adversary is already on.
        technique="T1595.003",
        tactic="reconnaissance",
        suppress_by=("source.ip",),
        params={"denials": 20, "window_s": 300},
    )

    def wants(self, doc: Mapping[str, Any]) -> bool:
        return (
            action(doc) == "access"
            and field(doc, "onegate.decision") == "deny"
            and field(doc, "source.ip") is not None
        )

    async def check(self, doc: Mapping[str, Any], ctx: Context) -> Signal | None:
        source = _address(field(doc, "source.ip")) or ""
        at = event_time(doc)
        span = float(ctx.param("window_s"))
        denials = await ctx.window("denials", source, event_id(doc), at=at, span=span)
        needed = int(ctx.param("denials"))
        if denials.count < needed:
            return None
        minutes = round(span / 60)
        entity = _entity(doc, "user.name", "onegate.app")
        entity["source.ip"] = source
        return Signal(
            self.info,
            at,
            entity,
            await ctx.evidence("denials", source, event_id(doc), at=at, span=span),
            Text(
                f"{denials.count} requests from {source} denied within {minutes} min",
                f"来源 {source} 在 {minutes} 分钟内被拒绝访问 {denials.count} 次",
            ),
            {"denials": denials.count, "threshold": needed, "window_s": span},
        )


class PrivilegedOutOfHours:
    """Administration used at night or at the weekend."""

    info = RuleInfo(
        id="onegate.privileged-out-of-hours",
        name=Text("Privileged access outside working hours", "非工作时间特权访问"),
        description=Text(
            "A member of an administrators group, or anyone reaching an administration path, "
            "was allowed through the gateway outside working hours (by default Monday to "
            "Friday 08:00-19:00, Asia/Shanghai). Public holidays are not known to the rule.",
            "管理员组成员或访问管理路径的用户在工作时间以外经网关获准访问"
            "（默认工作时间为 Asia/Shanghai 时区周一至周五 08:00-19:00）。本规则不识别法定节假日及调休。",
        ),
        severity=Severity.MEDIUM,
        risk_score=47,
        # Valid Accounts: Domain Accounts — the directory's accounts are the organisation-wide
        # ones that every system trusts (T1078.003 is an operating system's local accounts).
        technique="T1078.002",
        tactic="privilege-escalation",
        suppress_by=("user.name",),
        params={
            "groups": PRIVILEGED_GROUPS,
            "paths": ("/admin",),
            "workdays": (1, 2, 3, 4, 5),
            "start_hour": 8,
            "end_hour": 19,
            "timezone": "Asia/Shanghai",
        },
    )

    def wants(self, doc: Mapping[str, Any]) -> bool:
        return _allowed(doc) and field(doc, "user.name") is not None

    async def check(self, doc: Mapping[str, Any], ctx: Context) -> Signal | None:
        groups = privileged_groups(_strings(doc, "onegate.groups"), ctx.param("groups"))
        path = field(doc, "url.path") or ""
        prefix = _under(path, ctx.param("paths")) if path else None
        if not groups and prefix is None:
            return None
        at = event_time(doc)
        zone = str(ctx.param("timezone"))
        local = datetime.fromtimestamp(at, ZoneInfo(zone))
        workdays = {int(day) for day in ctx.param("workdays")}
        start, end = int(ctx.param("start_hour")), int(ctx.param("end_hour"))
        if local.isoweekday() in workdays and start <= local.hour < end:
            return None
        user = field(doc, "user.name") or ""
        app = field(doc, "onegate.app") or ""
        when = local.strftime("%H:%M")
        day = local.weekday()
        as_en = f" as a member of {', '.join(groups)}" if groups else ""
        as_zh = f"（{'、'.join(groups)} 成员）" if groups else ""
        return Signal(
            self.info,
            at,
            _entity(doc, "user.name", "source.ip", "session.id", "onegate.app"),
            (event_id(doc),),
            Text(
                f"{user} used {app} {path}{as_en} on {_DAYS_EN[day]} {when} ({zone}), outside "
                f"working hours {start:02d}:00-{end:02d}:00",
                f"账号 {user}{as_zh}于非工作时间 {_DAYS_ZH[day]} {when}（{zone}）访问 {app} {path}，"
                f"工作时间为 {start:02d}:00-{end:02d}:00",
            ),
            {
                "groups": groups,
                "path": path,
                "path_prefix": prefix,
                "local_time": local.isoformat(timespec="minutes"),
                "timezone": zone,
            },
        )


def rules() -> list[Any]:
    return [SessionReplay(), MassDownload(), AccessDeniedSpike(), PrivilegedOutOfHours()]
