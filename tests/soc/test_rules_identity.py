"""Identity rules (soc/detections/rules/identity.py): events that fire each, and near misses."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from core.events import Event
from core.kv import KV, MemoryKV, RedisKV
from soc.detections.places import Places
from soc.detections.rules import builtin_rules, identity
from tests.soc.detection_support import Lab, access, group_added, login, refresh_reused

DAY = 86_400
PLACES = Places.from_config(
    [
        {"cidr": "10.1.0.0/16", "place": "City Hall", "lat": 39.9042, "lon": 116.4074},
        {"cidr": "10.50.0.0/16", "place": "Shanghai office", "lat": 31.2304, "lon": 121.4737},
        {"cidr": "10.51.0.0/16", "place": "Pudong office", "lat": 31.2304, "lon": 121.4737},
        {"cidr": "10.20.0.0/16", "place": "Haidian district office"},
        {"cidr": "10.99.0.0/16", "place": "unknown"},
    ]
)
CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/130.0.0.0 Safari/537.36"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"


@pytest.fixture(params=["memory", "redis"])
async def kv(request: pytest.FixtureRequest, redis_url: str, redis_prefix: str) -> AsyncIterator[KV]:
    store: KV = MemoryKV() if request.param == "memory" else RedisKV(redis_url, prefix=redis_prefix)
    yield store
    await store.close()


def test_every_builtin_rule_is_registered_once() -> None:
    ids = [rule.info.id for rule in builtin_rules()]
    assert len(ids) == len(set(ids)) == 15
    for rule in identity.rules():
        assert rule.info.id in ids


async def test_every_builtin_rule_takes_every_kind_of_event() -> None:
    lab = Lab(builtin_rules(), places=PLACES)
    await lab.feed(
        login("zhangwei", ok=True, t=0),
        login("zhangwei", ok=False, t=1),
        access("zhangwei", t=2),
        access(None, decision="deny", t=3),
        access("wangfang", decision="step_up", user_agent="", t=4),
        group_added("zhangwei", "hr-staff", t=5),
        refresh_reused(None, t=6),
        {"@timestamp": "2026-11-30T01:00:07Z", "event.action": "access", "user.name": "x", "source.ip": "?"},
    )
    assert [s.rule.id for s in lab.fired()] == ["onegate.refresh-token-reuse"]


# -- impossible travel ---------------------------------------------------------------------------


async def test_impossible_travel_between_places_with_coordinates(kv: KV) -> None:
    lab = Lab([identity.ImpossibleTravel()], kv=kv, places=PLACES)
    first = login("zhangwei", ok=True, ip="10.1.2.3", t=0)
    assert await lab.feed(first) == []
    # Half an hour later his session is used from Shanghai: about 1,068 km at 2,136 km/h.
    second = access("zhangwei", ip="10.50.0.8", t=1800, session_id="gw-9")
    [signal] = await lab.feed(second)
    assert signal.rule.id == "onegate.impossible-travel"
    assert signal.rule.severity == "high" and signal.rule.risk_score == 73
    assert signal.entity == {"user.name": "zhangwei", "source.ip": "10.50.0.8", "session.id": "gw-9"}
    assert signal.events == (first.id, second.id)
    values = signal.values
    assert (values["from_place"], values["to_place"]) == ("City Hall", "Shanghai office")
    assert 1060 < values["km"] < 1075 and 2120 < values["kmh"] < 2150
    assert values["seconds"] == 1800
    km, kmh = round(values["km"]), values["kmh"]
    assert f"{km} km" in signal.reason.en and f"{kmh} km/h" in signal.reason.en
    assert "30 min" in signal.reason.en and "900" in signal.reason.en
    assert f"{km} 公里" in signal.reason.zh and f"{kmh} 公里/小时" in signal.reason.zh
    assert "30 分钟" in signal.reason.zh and "Shanghai office" in signal.reason.zh


async def test_impossible_travel_without_coordinates_is_any_move_within_half_an_hour() -> None:
    lab = Lab([identity.ImpossibleTravel()], places=PLACES)
    await lab.feed(login("lina", ok=True, ip="10.1.2.3", t=0))
    [signal] = await lab.feed(access("lina", ip="10.20.0.4", t=600))
    assert signal.values["km"] is None and signal.values["seconds"] == 600
    assert signal.values["to_place"] == "Haidian district office"
    assert "10 min" in signal.reason.en and "30 min" in signal.reason.en
    assert "10 分钟" in signal.reason.zh and "不足 30 分钟" in signal.reason.zh
    # A second short of half an hour still counts.
    [edge] = await lab.feed(access("lina", ip="10.1.0.1", t=600 + 1799))
    assert edge.values["seconds"] == 1799


async def test_impossible_travel_near_misses() -> None:
    lab = Lab([identity.ImpossibleTravel()], places=PLACES)
    # Beijing to Shanghai in two hours: 534 km/h, a flight.
    await lab.feed(login("zhangwei", ok=True, ip="10.1.2.3", t=0))
    await lab.feed(access("zhangwei", ip="10.50.0.8", t=7200))
    # Two offices with the same coordinates, a minute apart: no distance.
    await lab.feed(access("zhangwei", ip="10.51.0.8", t=7260))
    # Another address at the same place.
    await lab.feed(access("zhangwei", ip="10.51.9.9", t=7270))
    # A place without coordinates after 31 minutes, and after exactly 30.
    await lab.feed(login("lina", ok=True, ip="10.1.2.3", t=0))
    await lab.feed(access("lina", ip="10.20.0.4", t=1860))
    await lab.feed(login("liuyang", ok=True, ip="10.1.2.3", t=0))
    await lab.feed(access("liuyang", ip="10.20.0.4", t=1800))
    # Addresses the site has not placed, or placed as "unknown", never count, nor reset the place.
    await lab.feed(login("wangfang", ok=True, ip="10.1.2.3", t=0))
    await lab.feed(access("wangfang", ip="203.0.113.7", t=10))
    await lab.feed(access("wangfang", ip="10.99.0.1", t=20))
    await lab.feed(access("wangfang", ip="10.1.9.9", t=30))
    # A failed sign-in from far away is not the account being used there.
    await lab.feed(login("chenjing", ok=True, ip="10.1.2.3", t=0))
    await lab.feed(login("chenjing", ok=False, ip="10.50.0.1", t=60))
    # Two people, one at each place.
    await lab.feed(login("zhouqiang", ok=True, ip="10.1.2.3", t=0))
    await lab.feed(login("zhaolei", ok=True, ip="10.50.2.3", t=5))
    # Access without a session names no user.
    await lab.feed(access(None, ip="10.50.0.8", t=6))
    assert lab.fired() == []


async def test_impossible_travel_keeps_the_later_place_when_an_event_arrives_late() -> None:
    lab = Lab([identity.ImpossibleTravel()], places=PLACES)
    await lab.feed(login("zhangwei", ok=True, ip="10.1.2.3", t=3600))
    # Shanghai at t=0 arrives late: an hour from Beijing at 3600, impossible.
    [late] = await lab.feed(access("zhangwei", ip="10.50.0.8", t=0))
    assert late.values["seconds"] == 3600 and late.values["from_place"] == "City Hall"
    # Beijing stays the last place: Beijing again is no move.
    assert await lab.feed(access("zhangwei", ip="10.1.4.4", t=3700)) == []


async def test_impossible_travel_parameters_are_site_parameters() -> None:
    params = {"onegate.impossible-travel": {"max_kmh": 2500, "min_interval_s": 600}}
    lab = Lab([identity.ImpossibleTravel()], places=PLACES, params=params)
    await lab.feed(login("zhangwei", ok=True, ip="10.1.2.3", t=0))
    await lab.feed(access("zhangwei", ip="10.50.0.8", t=1800))  # 2,136 km/h: allowed now
    await lab.feed(login("lina", ok=True, ip="10.1.2.3", t=0))
    await lab.feed(access("lina", ip="10.20.0.4", t=600))  # ten minutes: not less than ten
    assert lab.fired() == []
    [signal] = await lab.feed(access("lina", ip="10.1.0.1", t=1199))
    assert signal.values["min_interval_s"] == 600 and "10 min" in signal.reason.en


# -- first-seen device ---------------------------------------------------------------------------


def test_devices_are_browser_and_system_without_versions() -> None:
    assert identity.device_of(CHROME) == "Chrome (Windows)"
    assert identity.device_of(CHROME.replace("130.0.0.0", "131.0.6778.86")) == "Chrome (Windows)"
    assert identity.device_of(FIREFOX) == "Firefox (Linux)"
    edge = CHROME + " Edg/130.0.2849.68"
    assert identity.device_of(edge) == "Edge (Windows)"
    iphone = (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
    )
    assert identity.device_of(iphone) == "Safari (iOS)"
    wechat = (
        "Mozilla/5.0 (Linux; Android 14; V2309A) AppleWebKit/537.36 Chrome/116.0 Mobile Safari/537.36 "
        "MicroMessenger/8.0.49"
    )
    assert identity.device_of(wechat) == "WeChat (Android)"
    assert identity.device_of("curl/8.5.0") == "curl (other)"
    assert identity.device_of("") is None and identity.device_of(None) is None
    assert identity.network_of("10.1.2.3") == "10.1.2.0/24"
    assert identity.network_of("::ffff:10.1.2.3") == "10.1.2.0/24"
    assert identity.network_of("2001:db8:1:2:3::9") == "2001:db8:1:2::/64"
    assert identity.network_of("nope") is None


async def test_first_seen_device_fires_for_a_new_browser(kv: KV) -> None:
    lab = Lab([identity.FirstSeenDevice()], kv=kv)
    assert await lab.feed(login("zhangwei", ok=True, user_agent=CHROME, t=0)) == []  # the baseline
    [signal] = await lab.feed(login("zhangwei", ok=True, user_agent=FIREFOX, t=DAY))
    assert signal.rule.id == "onegate.first-seen-device"
    assert signal.rule.severity == "low" and signal.rule.risk_score == 21
    assert signal.entity["user.name"] == "zhangwei" and signal.entity["session.id"] == "s-zhangwei"
    assert signal.values["new_device"] is True and signal.values["new_network"] is False
    assert signal.values["device"] == "Firefox (Linux)" and signal.values["devices"] == 2
    assert "Firefox (Linux)" in signal.reason.en and "30 days" in signal.reason.en
    assert "Firefox (Linux)" in signal.reason.zh and "30 天" in signal.reason.zh


async def test_first_seen_network() -> None:
    lab = Lab([identity.FirstSeenDevice()])
    await lab.feed(login("lina", ok=True, ip="10.1.2.3", t=0))
    [signal] = await lab.feed(login("lina", ok=True, ip="203.0.113.50", t=60))
    assert signal.values["network"] == "203.0.113.0/24" and signal.values["new_device"] is False
    assert "203.0.113.0/24" in signal.reason.en and "新网络 203.0.113.0/24" in signal.reason.zh
    both = Lab([identity.FirstSeenDevice()])
    await both.feed(login("lina", ok=True, ip="10.1.2.3", t=0))
    [signal] = await both.feed(login("lina", ok=True, ip="203.0.113.50", user_agent=FIREFOX, t=60))
    assert signal.values["new_device"] and signal.values["new_network"]


async def test_first_seen_device_near_misses() -> None:
    lab = Lab([identity.FirstSeenDevice()])
    # Each user's very first sign-in is the baseline.
    for i, user in enumerate(["zhangwei", "lina", "wangfang"]):
        await lab.feed(login(user, ok=True, ip=f"198.51.100.{i}", user_agent=FIREFOX, t=i))
    # The same device after a browser update, from another host of the same /24.
    await lab.feed(
        login("zhangwei", ok=True, ip="198.51.100.77", user_agent=FIREFOX.replace("133.0", "134.0"), t=DAY)
    )
    # A failed sign-in from a new device.
    await lab.feed(login("lina", ok=False, ip="203.0.113.9", user_agent=CHROME, t=DAY))
    # No user agent at all says nothing about the device.
    await lab.feed(login("wangfang", ok=True, ip="198.51.100.2", user_agent="", t=DAY))
    # A second account's first sign-in from a network another account uses.
    await lab.feed(login("chenjing", ok=True, ip="198.51.100.1", user_agent=CHROME, t=DAY))
    assert lab.fired() == []


async def test_first_seen_device_history_is_thirty_days() -> None:
    def story() -> list[Event]:
        return [
            login("zhangwei", ok=True, user_agent=CHROME, t=0),
            login("zhangwei", ok=True, user_agent=FIREFOX, t=20 * DAY),
            login("zhangwei", ok=True, user_agent=CHROME, t=45 * DAY),  # last seen 45 days ago
        ]

    lab = Lab([identity.FirstSeenDevice()])
    await lab.feed(*story())
    assert [s.values["device"] for s in lab.fired()] == ["Firefox (Linux)", "Chrome (Windows)"]
    longer = Lab([identity.FirstSeenDevice()], params={"onegate.first-seen-device": {"history_days": 60}})
    await longer.feed(*story())
    assert [s.values["device"] for s in longer.fired()] == ["Firefox (Linux)"]
    assert "60 天" in longer.fired()[0].reason.zh
    # After a silence longer than the history the account starts a new baseline.
    quiet = Lab([identity.FirstSeenDevice()])
    await quiet.feed(login("lina", ok=True, user_agent=CHROME, t=0))
    await quiet.feed(login("lina", ok=True, user_agent=FIREFOX, t=40 * DAY))
    assert quiet.fired() == []


# -- privilege granted ---------------------------------------------------------------------------


async def test_privilege_granted_on_joining_an_admins_group(kv: KV) -> None:
    lab = Lab([identity.PrivilegeGranted()], kv=kv)
    event = group_added("wangfang", "HR-Admins", actor="ops")
    [signal] = await lab.feed(event)
    assert signal.rule.id == "onegate.privilege-granted"
    assert signal.rule.severity == "medium" and signal.rule.risk_score == 47
    assert signal.rule.technique.startswith("T1098") and signal.rule.tactic == "persistence"
    assert signal.entity == {"user.name": "wangfang", "user.id": "7", "user.group.name": "hr-admins"}
    assert signal.events == (event.id,) and signal.values == {"group": "hr-admins", "actor": "ops"}
    assert signal.reason.en == "wangfang was added to the privileged group hr-admins by ops"
    assert signal.reason.zh == "账号 wangfang 被加入特权组 hr-admins（操作者 ops）"
    for group in ("sys-admins", "sec-admins", "administrators", "admins"):
        assert await lab.feed(group_added("liuyang", group)), group


async def test_privilege_granted_near_misses() -> None:
    lab = Lab([identity.PrivilegeGranted()])
    for group in ("hr-staff", "auditors", "soc-analysts", "badmin", "ops-duty", "permits-officers"):
        await lab.feed(group_added("liuyang", group))
    assert lab.fired() == []


async def test_privileged_groups_are_a_site_parameter() -> None:
    lab = Lab([identity.PrivilegeGranted()], params={"onegate.privilege-granted": {"groups": ["auditors"]}})
    assert await lab.feed(group_added("liuyang", "hr-admins")) == []
    [signal] = await lab.feed(group_added("liuyang", "Auditors"))
    assert signal.values["group"] == "auditors"


# -- refresh token reuse -------------------------------------------------------------------------


async def test_refresh_token_reuse_fires_at_once(kv: KV) -> None:
    lab = Lab([identity.RefreshTokenReuse()], kv=kv)
    event = refresh_reused("zhangwei", ip="198.51.100.20")
    [signal] = await lab.feed(event)
    assert signal.rule.id == "onegate.refresh-token-reuse"
    assert signal.rule.severity == "high" and signal.rule.technique == "T1550.001"
    assert signal.entity["user.id"] == "42" and signal.entity["onegate.client_id"] == "oa-app"
    assert signal.entity["user.name"] == "zhangwei" and signal.entity["session.id"] == "s-zhangwei"
    assert signal.rule.suppress_by == ("user.id", "onegate.client_id")
    assert signal.values == {"client_id": "oa-app", "presented_by": "oa-app", "other_client": False}
    assert "zhangwei" in signal.reason.en and "oa-app" in signal.reason.en
    assert "198.51.100.20" in signal.reason.en
    assert "账号 zhangwei" in signal.reason.zh and "oa-app" in signal.reason.zh
    assert "198.51.100.20" in signal.reason.zh


async def test_refresh_token_reuse_by_another_client_or_of_a_revoked_family() -> None:
    lab = Lab([identity.RefreshTokenReuse()])
    [other] = await lab.feed(refresh_reused("lina", presented_by="grid-app"))
    assert other.values["other_client"] is True
    assert "grid-app" in other.reason.en and "另一客户端 grid-app" in other.reason.zh
    [orphan] = await lab.feed(refresh_reused(None))
    assert orphan.entity["user.id"] == "unknown" and "user.name" not in orphan.entity
    assert "账号未知" in orphan.reason.zh


async def test_refresh_token_reuse_near_misses() -> None:
    from idp.events import auth_event

    lab = Lab([identity.RefreshTokenReuse()])
    await lab.feed(
        auth_event("token-refreshed", success=True, client_id="oa-app", username="lina", user_id=3),
        auth_event("code-reused", success=False, client_id="oa-app", user_id=3),
        login("lina", ok=True),
    )
    assert lab.fired() == []
