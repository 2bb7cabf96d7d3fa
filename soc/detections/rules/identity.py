"""Identity rules: where and from what an account signs in, and what it is given.

``impossible-travel`` and ``first-seen-device`` read the IdP's successful ``user-login`` events
(impossible travel also the gateway's ``access`` events of a signed-in user) and place addresses
with the site's network table (:mod:`soc.detections.places`). ``privilege-granted`` reads
``group-member-added`` (``user.group.name``), ``refresh-token-reuse`` the token endpoint's
``refresh-token-reused`` (RFC 9700 §4.14.2: a rotated refresh token presented again, so the
IdP revoked the whole family).

Published practice behind the defaults: Microsoft Entra ID Protection and Elastic flag travel
faster than an airliner (about 900 km/h) and sign-ins from a device or network unseen in the
last 30 days; Elastic raises an alert for every addition to an administrators group.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Any

from soc.detections.engine import Context, event_time
from soc.detections.model import RuleInfo, Severity, Signal, Text
from soc.detections.places import Place
from soc.detections.rules.common import action, event_id, field, succeeded

__all__ = [
    "PRIVILEGED_GROUPS",
    "FirstSeenDevice",
    "ImpossibleTravel",
    "PrivilegeGranted",
    "RefreshTokenReuse",
    "device_of",
    "network_of",
    "privileged_groups",
    "rules",
]

PRIVILEGED_GROUPS = ("*admins", "admin*")
"""Group names (shell patterns, compared in lower case) that grant administration by default:
``sys-admins``, ``sec-admins``, ``hr-admins``, ``administrators`` ..."""

# How long impossible travel remembers a user's last place (wall clock). A day covers the
# slowest impossible move worth reporting: half the earth's circumference at 900 km/h.
_MEMORY_S = 86_400.0

# Browser families by a token of the user agent, the first that occurs wins: in-app browsers
# and Edge / Opera also say "Chrome", Chrome also says "Safari".
_BROWSERS = (
    ("MicroMessenger/", "WeChat"),
    ("DingTalk/", "DingTalk"),
    ("Edg/", "Edge"),
    ("EdgA/", "Edge"),
    ("EdgiOS/", "Edge"),
    ("Edge/", "Edge"),
    ("OPR/", "Opera"),
    ("Firefox/", "Firefox"),
    ("FxiOS/", "Firefox"),
    ("CriOS/", "Chrome"),
    ("Chromium/", "Chromium"),
    ("Chrome/", "Chrome"),
    ("Safari/", "Safari"),
    ("Trident/", "Internet Explorer"),
    ("MSIE ", "Internet Explorer"),
)
# Operating systems likewise: iOS agents say "like Mac OS X", HarmonyOS ones may say "Android",
# Android ones say "Linux".
_SYSTEMS = (
    ("Windows", "Windows"),
    ("iPhone", "iOS"),
    ("iPad", "iOS"),
    ("HarmonyOS", "HarmonyOS"),
    ("OpenHarmony", "HarmonyOS"),
    ("Android", "Android"),
    ("CrOS", "ChromeOS"),
    ("Mac OS X", "macOS"),
    ("Macintosh", "macOS"),
    ("Linux", "Linux"),
)


def device_of(user_agent: str | None) -> str | None:
    """The device a user agent names, without versions: ``"Chrome (Windows)"``. A program that
    is not a browser is named by its first product token (``"curl"``); None without an agent."""
    if not user_agent or not user_agent.strip():
        return None
    browser = next((name for token, name in _BROWSERS if token in user_agent), None)
    if browser is None:
        first = user_agent.split()[0].split("/")[0]
        browser = "other" if first == "Mozilla" else first[:40]
    system = next((name for token, name in _SYSTEMS if token in user_agent), "other")
    return f"{browser} ({system})"


def network_of(address: str | None) -> str | None:
    """The network an address is counted by: its /24 (IPv4, IPv4-mapped IPv6 included) or
    its /64 (IPv6); None when it is not an address."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 64
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def privileged_groups(groups: Iterable[str], patterns: Iterable[str]) -> list[str]:
    """The groups among ``groups`` that match one of ``patterns`` (case-insensitive)."""
    wanted = [pattern.lower() for pattern in patterns]
    return [group for group in groups if any(fnmatchcase(group.lower(), p) for p in wanted)]


def _entity(doc: Mapping[str, Any], *names: str) -> dict[str, str]:
    return {name: value for name in names if (value := field(doc, name)) is not None}


def _duration(seconds: float) -> tuple[str, str]:
    """A short span in words, en and zh."""
    if seconds < 120:
        whole = round(seconds)
        return f"{whole} s", f"{whole} 秒"
    minutes = round(seconds / 60)
    return f"{minutes} min", f"{minutes} 分钟"


class ImpossibleTravel:
    """One account seen at two places further apart than it could have travelled."""

    info = RuleInfo(
        id="onegate.impossible-travel",
        name=Text("Impossible travel", "不可能的位置变化"),
        description=Text(
            "One account signed in or used the gateway from two places that no one could travel "
            "between in the time between them: faster than an airliner where both places have "
            "coordinates, within half an hour where they do not. Its credentials or session are "
            "probably used by someone else.",
            "同一账号先后从两个地点登录或访问，其间隔时间不足以在两地之间往返：两地均有坐标时按移动速度"
            "（超过民航客机速度）判断，否则半小时内更换地点即判定。账号凭据或会话可能被他人使用。",
        ),
        severity=Severity.HIGH,
        risk_score=73,
        technique="T1078",
        tactic="initial-access",
        suppress_by=("user.name",),
        params={"max_kmh": 900, "min_interval_s": 1800},
    )

    def wants(self, doc: Mapping[str, Any]) -> bool:
        kind = action(doc)
        if kind == "user-login":
            if not succeeded(doc):
                return False
        elif kind != "access":
            return False
        return field(doc, "user.name") is not None and field(doc, "source.ip") is not None

    async def check(self, doc: Mapping[str, Any], ctx: Context) -> Signal | None:
        if not ctx.places:
            return None  # a site without a table of places: no address has a place
        user = field(doc, "user.name") or ""
        address = field(doc, "source.ip") or ""
        place = ctx.places.of(address)
        if place is None or place.name.lower() == "unknown":
            return None  # an address the site has not placed says nothing about travel
        at = event_time(doc)
        limit = float(ctx.param("min_interval_s"))
        ttl = max(_MEMORY_S, limit)
        key = user.lower()
        here = {
            "place": place.name,
            "lat": place.latitude,
            "lon": place.longitude,
            "at": at,
            "ip": address,
            "event": event_id(doc),
        }
        stored = await ctx.remember("last", key, json.dumps(here).encode(), ttl=ttl)
        if stored is None:
            return None
        try:
            before = json.loads(stored)
            there = Place(str(before["place"]), before["lat"], before["lon"])
            then = float(before["at"])
        except (ValueError, KeyError, TypeError):
            return None  # unreadable state: start again from this event
        if then > at:
            # An event that arrived late: the later place stays the one to compare with.
            await ctx.remember("last", key, stored, ttl=ttl)
        if there.name == place.name:
            return None
        seconds = abs(at - then)
        km = there.km_to(place)
        max_kmh = float(ctx.param("max_kmh"))
        kmh: float | None = None
        if km is None:
            if seconds >= limit:
                return None
        else:
            kmh = km / (max(seconds, 1.0) / 3600)  # event times are whole seconds at best
            if kmh <= max_kmh:
                return None
        span_en, span_zh = _duration(seconds)
        if km is not None and kmh is not None:
            reason = Text(
                f"{user} moved from {there.name} to {place.name} in {span_en}: {round(km)} km, "
                f"{round(kmh)} km/h (limit {round(max_kmh)} km/h)",
                f"账号 {user} 在 {span_zh} 内从 {there.name} 移动到 {place.name}：相距 {round(km)} 公里，"
                f"约 {round(kmh)} 公里/小时（上限 {round(max_kmh)} 公里/小时）",
            )
        else:
            minutes = round(limit / 60)
            reason = Text(
                f"{user} was at {there.name} and {place.name} within {span_en} "
                f"(less than {minutes} min apart)",
                f"账号 {user} 在 {span_zh} 内先后出现在 {there.name} 和 {place.name}"
                f"（间隔不足 {minutes} 分钟）",
            )
        return Signal(
            self.info,
            at,
            _entity(doc, "user.name", "source.ip", "session.id"),
            (str(before["event"]), event_id(doc)),
            reason,
            {
                "from_place": there.name,
                "to_place": place.name,
                "from_ip": str(before.get("ip", "")),
                "to_ip": address,
                "seconds": round(seconds, 3),
                "km": None if km is None else round(km, 1),
                "kmh": None if kmh is None else round(kmh),
                "max_kmh": max_kmh,
                "min_interval_s": limit,
            },
        )


class FirstSeenDevice:
    """A sign-in from a device or network the account has not used lately."""

    info = RuleInfo(
        id="onegate.first-seen-device",
        name=Text("Sign-in from a new device or network", "新设备或新网络登录"),
        description=Text(
            "An account that has signed in before signed in from a device (browser and operating "
            "system) or a network (/24, IPv6 /64) it has not used in the last 30 days.",
            "曾登录过的账号使用 30 天内未出现过的设备（浏览器及操作系统）或网络（/24，IPv6 为 /64）登录。",
        ),
        severity=Severity.LOW,
        risk_score=21,
        technique="T1078",
        tactic="initial-access",
        suppress_by=("user.name",),
        suppress_for=86_400.0,
        params={"history_days": 30},
    )

    def wants(self, doc: Mapping[str, Any]) -> bool:
        return action(doc) == "user-login" and succeeded(doc) and field(doc, "user.name") is not None

    async def check(self, doc: Mapping[str, Any], ctx: Context) -> Signal | None:
        user = field(doc, "user.name") or ""
        key = user.lower()
        at = event_time(doc)
        days = float(ctx.param("history_days"))
        span = days * 86_400
        # A single member: "new" means no sign-in of this account within the history.
        history = await ctx.window("history", key, "signed-in", at=at, span=span)
        device = device_of(field(doc, "user_agent.original"))
        network = network_of(field(doc, "source.ip"))
        devices = await ctx.window("devices", key, device, at=at, span=span) if device else None
        networks = await ctx.window("networks", key, network, at=at, span=span) if network else None
        if history.new:
            return None  # the account's first sign-in (in the history) is its baseline
        new_device = device if devices is not None and devices.new else None
        new_network = network if networks is not None and networks.new else None
        if new_device is None and new_network is None:
            return None
        whole = round(days)
        if new_device and new_network:
            what_en = f"a new device, {new_device}, and a new network, {new_network}"
            what_zh = f"新设备 {new_device} 和新网络 {new_network}"
        elif new_device:
            what_en, what_zh = f"a new device, {new_device}", f"新设备 {new_device}"
        else:
            what_en, what_zh = f"a new network, {new_network}", f"新网络 {new_network}"
        return Signal(
            self.info,
            at,
            _entity(doc, "user.name", "source.ip", "session.id"),
            (event_id(doc),),
            Text(
                f"{user} signed in from {what_en}, not seen in {whole} days",
                f"账号 {user} 使用 {whole} 天内未出现过的{what_zh}登录",
            ),
            {
                "device": device,
                "network": network,
                "new_device": new_device is not None,
                "new_network": new_network is not None,
                "devices": devices.count if devices is not None else 0,
                "networks": networks.count if networks is not None else 0,
                "history_days": days,
            },
        )


class PrivilegeGranted:
    """An account added to an administrators group."""

    info = RuleInfo(
        id="onegate.privilege-granted",
        name=Text("Account added to a privileged group", "账号被加入特权组"),
        description=Text(
            "An account was added to a group that grants administration (by default any group "
            "named *admins or admin*). Confirm the change was requested and approved.",
            "账号被加入具有管理权限的组（默认为名称匹配 *admins 或 admin* 的组），"
            "请确认该变更经过申请和审批。",
        ),
        severity=Severity.MEDIUM,
        risk_score=47,
        # ATT&CK v16 names this sub-technique of Account Manipulation: "Additional Local or
        # Domain Groups" — an account given a more privileged group to keep or widen access.
        technique="T1098.007",
        tactic="persistence",
        suppress_by=("user.name", "user.group.name"),
        params={"groups": PRIVILEGED_GROUPS},
    )

    def wants(self, doc: Mapping[str, Any]) -> bool:
        return (
            action(doc) == "group-member-added"
            and field(doc, "user.group.name") is not None
            and field(doc, "user.name") is not None
        )

    async def check(self, doc: Mapping[str, Any], ctx: Context) -> Signal | None:
        group = field(doc, "user.group.name") or ""
        if not privileged_groups([group], ctx.param("groups")):
            return None
        user = field(doc, "user.name") or ""
        actor = field(doc, "labels.actor")
        by_en = f" by {actor}" if actor else ""
        by_zh = f"（操作者 {actor}）" if actor else ""
        return Signal(
            self.info,
            event_time(doc),
            _entity(doc, "user.name", "user.id", "user.group.name"),
            (event_id(doc),),
            Text(
                f"{user} was added to the privileged group {group}{by_en}",
                f"账号 {user} 被加入特权组 {group}{by_zh}",
            ),
            {"group": group, "actor": actor},
        )


class RefreshTokenReuse:
    """A refresh token that was already exchanged came back: one of two holders is a thief."""

    info = RuleInfo(
        id="onegate.refresh-token-reuse",
        name=Text("Refresh token reused", "刷新令牌被重复使用"),
        description=Text(
            "A refresh token that had already been exchanged for a new one was presented again, "
            "so two parties hold the same token: it was probably stolen. The IdP revoked the "
            "whole token family; check the client and the account's other sessions. A client "
            "that refreshes twice at once with one token also causes this.",
            "已轮换的刷新令牌被再次提交，说明同一令牌有两个持有者，很可能已被窃取。身份提供方已吊销整个令牌族；"
            "请检查该客户端及账号的其他会话。客户端以同一令牌并发刷新也会触发此告警。",
        ),
        severity=Severity.HIGH,
        risk_score=73,
        technique="T1550.001",
        tactic="defense-evasion",
        suppress_by=("user.id", "onegate.client_id"),
        params={},
    )

    def wants(self, doc: Mapping[str, Any]) -> bool:
        return action(doc) == "refresh-token-reused" and field(doc, "onegate.client_id") is not None

    async def check(self, doc: Mapping[str, Any], ctx: Context) -> Signal | None:
        client = field(doc, "onegate.client_id") or ""
        entity = _entity(doc, "user.id", "user.name", "onegate.client_id", "source.ip", "session.id")
        # A token of a family revoked earlier names no account any more: the alert then
        # stands for the client alone.
        entity.setdefault("user.id", "unknown")
        who = field(doc, "user.name") or (f"#{entity['user.id']}" if "user.id" in doc else None)
        presented_by = field(doc, "labels.presented_by")
        other = presented_by is not None and presented_by != client
        source = field(doc, "source.ip")
        from_en = f" from {source}" if source else ""
        from_zh = f"（来源 {source}）" if source else ""
        by_en = f", presented by another client, {presented_by}" if other else ""
        by_zh = f"，由另一客户端 {presented_by} 提交" if other else ""
        if who:
            reason = Text(
                f"A used refresh token of {who} for client {client} was presented again{from_en}"
                f"{by_en}; the token family was revoked",
                f"账号 {who} 在客户端 {client} 的已使用刷新令牌被再次提交{from_zh}{by_zh}，已吊销整个令牌族",
            )
        else:
            reason = Text(
                f"A refresh token of client {client} from an already revoked family was presented "
                f"again{from_en}{by_en}",
                f"客户端 {client} 已吊销令牌族中的刷新令牌被再次提交{from_zh}{by_zh}，账号未知",
            )
        return Signal(
            self.info,
            event_time(doc),
            entity,
            (event_id(doc),),
            reason,
            {"client_id": client, "presented_by": presented_by, "other_client": other},
        )


def rules() -> list[Any]:
    return [ImpossibleTravel(), FirstSeenDevice(), PrivilegeGranted(), RefreshTokenReuse()]
