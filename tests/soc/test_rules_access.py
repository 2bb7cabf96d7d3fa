"""Access rules (soc/detections/rules/access.py): events that fire each, and near misses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from core.kv import KV, MemoryKV, RedisKV
from idp.events import auth_event
from soc.detections.rules import access as rules
from tests.soc.detection_support import T0, Lab, access, login

MIB = 1024 * 1024
SCANNER = "203.0.113.66"
SHANGHAI = ZoneInfo("Asia/Shanghai")


@pytest.fixture(params=["memory", "redis"])
async def kv(request: pytest.FixtureRequest, redis_url: str, redis_prefix: str) -> AsyncIterator[KV]:
    store: KV = MemoryKV() if request.param == "memory" else RedisKV(redis_url, prefix=redis_prefix)
    yield store
    await store.close()


def shanghai(day: int, hour: int, minute: int = 0) -> float:
    """Seconds after T0 of ``hour:minute`` Shanghai time on 2026-11-``day`` (30: a Monday) or
    2026-12-``day`` when ``day`` < 30."""
    month = 11 if day >= 30 else 12
    return datetime(2026, month, day, hour, minute, tzinfo=SHANGHAI).timestamp() - T0.timestamp()


# -- session replay ------------------------------------------------------------------------------


async def test_session_replay_from_a_second_address(kv: KV) -> None:
    lab = Lab([rules.SessionReplay()], kv=kv)
    for i in range(5):
        assert await lab.feed(access("zhangwei", ip="10.1.2.3", session_id="gw-1", t=i * 30)) == []
    [signal] = await lab.feed(access("zhangwei", ip=SCANNER, session_id="gw-1", t=200))
    assert signal.rule.id == "onegate.session-replay"
    assert signal.rule.severity == "high" and signal.rule.technique == "T1550.004"
    assert signal.entity == {"session.id": "gw-1", "user.name": "zhangwei", "source.ip": SCANNER}
    assert signal.values["addresses"] == 2 and signal.values["agents"] == 1
    assert "2 addresses" in signal.reason.en and "10 min" in signal.reason.en
    assert SCANNER in signal.reason.en
    assert "2 个来源地址" in signal.reason.zh and "10 分钟" in signal.reason.zh


async def test_session_replay_from_a_second_user_agent() -> None:
    lab = Lab([rules.SessionReplay()])
    await lab.feed(login("lina", ok=True, session_id="idp-7", t=0))
    [signal] = await lab.feed(
        auth_event(
            "consent-granted",
            success=True,
            username="lina",
            session_id="idp-7",
            source_ip="10.1.2.3",
            user_agent="python-requests/2.32",
        )
    )
    assert signal.values["agents"] == 2 and signal.values["addresses"] == 1
    assert "2 user agents" in signal.reason.en and "2 个用户代理" in signal.reason.zh


async def test_session_replay_near_misses() -> None:
    lab = Lab([rules.SessionReplay()])
    # One browser, many requests.
    await lab.feed(*(access("zhangwei", ip="10.1.2.3", session_id="gw-1", t=i) for i in range(50)))
    # The same address, written as IPv4-mapped IPv6.
    await lab.feed(access("zhangwei", ip="::ffff:10.1.2.3", session_id="gw-1", t=60))
    # Two sessions of one user, one address each.
    await lab.feed(access("lina", ip="10.1.2.4", session_id="gw-2", t=0))
    await lab.feed(access("lina", ip="10.1.2.5", session_id="gw-3", t=1))
    # A new address, but eleven minutes after the last use of the old one.
    await lab.feed(access("wangfang", ip="10.1.2.6", session_id="gw-4", t=0))
    await lab.feed(access("wangfang", ip="10.1.2.7", session_id="gw-4", t=660))
    # The application's server redeeming the code of the same IdP session, from its own address.
    await lab.feed(login("chenjing", ok=True, ip="10.1.2.8", session_id="idp-9", t=0))
    await lab.feed(
        auth_event(
            "token-issued",
            success=True,
            client_id="oa-app",
            username="chenjing",
            user_id=5,
            source_ip="10.8.0.2",
            session_id="idp-9",
        )
    )
    # Access without a session.
    await lab.feed(access(None, ip="10.1.2.9", t=0), access(None, ip="10.1.2.10", t=1))
    assert lab.fired() == []


async def test_session_replay_thresholds_are_site_parameters() -> None:
    lab = Lab([rules.SessionReplay()], params={"onegate.session-replay": {"addresses": 3, "window_s": 60}})
    await lab.feed(access("zhangwei", ip="10.1.2.3", session_id="gw-1", t=0))
    await lab.feed(access("zhangwei", ip="10.1.2.4", session_id="gw-1", t=10))
    assert lab.fired() == []
    [signal] = await lab.feed(access("zhangwei", ip="10.1.2.5", session_id="gw-1", t=20))
    assert signal.values["threshold_addresses"] == 3 and "1 min" in signal.reason.en


# -- mass download -------------------------------------------------------------------------------


async def test_mass_download_by_bytes(kv: KV) -> None:
    lab = Lab([rules.MassDownload()], kv=kv)
    for i in range(4):
        assert await lab.feed(access("liuyang", app="permits", size=100 * MIB, t=i * 600)) == []
    [signal] = await lab.feed(access("liuyang", app="permits", size=100 * MIB, t=3000))
    assert signal.rule.id == "onegate.mass-download"
    assert signal.rule.severity == "high" and signal.rule.risk_score == 73
    assert signal.entity == {"user.name": "liuyang", "source.ip": "10.1.2.3", "onegate.app": "permits"}
    assert signal.values["bytes"] == 500 * MIB and signal.values["requests"] == 1
    assert signal.values["threshold_bytes"] == 500 * MIB
    assert "500.0 MiB" in signal.reason.en and "60 min" in signal.reason.en
    assert "500.0 MiB" in signal.reason.zh and "60 分钟" in signal.reason.zh


async def test_mass_download_counts_a_replayed_event_s_bytes_once(kv: KV) -> None:
    # After a crash the writer detects its uncommitted batch again: the same events, same ids.
    lab = Lab([rules.MassDownload()], kv=kv)
    batch = [access("liuyang", app="permits", size=100 * MIB, t=i * 60) for i in range(4)]
    await lab.feed(*batch)
    await lab.feed(*batch)  # 400 MiB, not 800: no alert
    assert lab.fired() == []
    [signal] = await lab.feed(access("liuyang", app="permits", size=100 * MIB, t=300))
    assert signal.values["bytes"] == 500 * MIB


async def test_mass_download_by_requests() -> None:
    lab = Lab([rules.MassDownload()])
    await lab.feed(*(access("liuyang", size=0, t=i * 0.25) for i in range(1999)))
    assert lab.fired() == []
    [signal] = await lab.feed(access("liuyang", size=0, t=500))
    assert signal.values["requests"] == 2000 and signal.values["bytes"] == 0
    assert "2000 allowed requests" in signal.reason.en and "10 min" in signal.reason.en
    assert "获准请求 2000 次" in signal.reason.zh and "10 分钟" in signal.reason.zh


async def test_mass_download_near_misses() -> None:
    lab = Lab([rules.MassDownload()])
    # Just under 500 MiB within the hour.
    await lab.feed(*(access("liuyang", size=100 * MIB, t=i * 600) for i in range(4)))
    await lab.feed(access("liuyang", size=100 * MIB - 1, t=3000))
    # 600 MiB, but over two hours.
    await lab.feed(*(access("zhangwei", size=100 * MIB, t=i * 1200) for i in range(6)))
    # Denied requests transfer nothing of the application's, however many.
    await lab.feed(*(access("lina", decision="deny", t=i * 0.1) for i in range(2000)))
    # Two users, 300 MiB each.
    await lab.feed(*(access(user, size=300 * MIB, t=1) for user in ("wangfang", "chenjing")))
    # 2,000 requests, but over eleven minutes.
    await lab.feed(*(access("zhaolei", size=0, t=i * 0.33) for i in range(2000)))
    assert lab.fired() == []


async def test_mass_download_thresholds_are_site_parameters() -> None:
    params = {"onegate.mass-download": {"bytes": 10 * MIB, "requests": 50, "requests_window_s": 60}}
    lab = Lab([rules.MassDownload()], params=params)
    [signal] = await lab.feed(access("liuyang", size=10 * MIB, t=0))
    assert "threshold 10 MiB" in signal.reason.en
    await lab.feed(*(access("lina", size=0, t=i) for i in range(49)))
    assert len(lab.fired()) == 1
    [signal] = await lab.feed(access("lina", size=0, t=50))
    assert signal.values["requests"] == 50 and "1 min" in signal.reason.en


# -- access denied spike -------------------------------------------------------------------------


async def test_access_denied_spike_from_one_address(kv: KV) -> None:
    lab = Lab([rules.AccessDeniedSpike()], kv=kv)
    paths = [f"/admin/{word}" for word in ("users", "keys", "backup", "config", "logs")]
    for i in range(19):
        event = access(None, ip=SCANNER, decision="deny", path=paths[i % 5], t=i * 10)
        assert await lab.feed(event) == []
    [signal] = await lab.feed(access(None, ip=SCANNER, decision="deny", t=200))
    assert signal.rule.id == "onegate.access-denied-spike"
    assert signal.rule.severity == "medium" and signal.rule.risk_score == 47
    assert signal.entity == {"source.ip": SCANNER, "onegate.app": "hr"}
    assert signal.values == {"denials": 20, "threshold": 20, "window_s": 300.0}
    assert signal.reason.en == f"20 requests from {SCANNER} denied within 5 min"
    assert signal.reason.zh == f"来源 {SCANNER} 在 5 分钟内被拒绝访问 20 次"


async def test_access_denied_spike_near_misses() -> None:
    lab = Lab([rules.AccessDeniedSpike()])
    await lab.feed(*(access("zhangwei", ip=SCANNER, decision="deny", t=i) for i in range(19)))
    await lab.feed(*(access(None, ip="198.51.100.1", decision="deny", t=i * 16) for i in range(20)))  # 5m4s
    await lab.feed(*(access(None, ip=f"198.51.100.{10 + i}", decision="deny", t=i) for i in range(20)))
    await lab.feed(*(access("lina", ip="10.1.2.3", t=i) for i in range(30)))  # allowed
    await lab.feed(*(access("wangfang", ip="10.1.2.4", decision="step_up", t=i) for i in range(30)))
    assert lab.fired() == []


async def test_access_denied_threshold_is_a_site_parameter() -> None:
    lab = Lab([rules.AccessDeniedSpike()], params={"onegate.access-denied-spike": {"denials": 5}})
    await lab.feed(*(access(None, ip=SCANNER, decision="deny", t=i) for i in range(4)))
    assert lab.fired() == []
    [signal] = await lab.feed(access(None, ip=f"::ffff:{SCANNER}", decision="deny", t=5))
    assert signal.entity["source.ip"] == SCANNER and signal.values["threshold"] == 5


# -- privileged access out of hours --------------------------------------------------------------


async def test_privileged_access_on_saturday_night(kv: KV) -> None:
    lab = Lab([rules.PrivilegedOutOfHours()], kv=kv)
    event = access("wangfang", groups=("hr-staff", "hr-admins"), path="/people", t=shanghai(5, 23, 40))
    [signal] = await lab.feed(event)
    assert signal.rule.id == "onegate.privileged-out-of-hours"
    assert signal.rule.severity == "medium" and signal.rule.technique.startswith("T1078")
    assert signal.entity["user.name"] == "wangfang" and signal.entity["onegate.app"] == "hr"
    assert signal.values["groups"] == ["hr-admins"] and signal.values["path_prefix"] is None
    assert signal.values["local_time"] == "2026-12-05T23:40+08:00"
    assert "Sat 23:40" in signal.reason.en and "hr-admins" in signal.reason.en
    assert "08:00-19:00" in signal.reason.en
    assert "周六 23:40" in signal.reason.zh and "hr-admins" in signal.reason.zh
    assert "08:00-19:00" in signal.reason.zh
    # Saturday is no working day, even in working hours.
    [weekend] = await lab.feed(access("wangfang", groups=("hr-admins",), t=shanghai(5, 10, 0)))
    assert "Sat 10:00" in weekend.reason.en


async def test_an_administration_path_at_night_by_anyone() -> None:
    lab = Lab([rules.PrivilegedOutOfHours()])
    [signal] = await lab.feed(access("zhangwei", path="/admin/users", t=shanghai(30, 19, 0)))
    assert signal.values["path_prefix"] == "/admin" and signal.values["groups"] == []
    assert "Mon 19:00" in signal.reason.en and "/admin/users" in signal.reason.zh


async def test_privileged_out_of_hours_near_misses() -> None:
    lab = Lab([rules.PrivilegedOutOfHours()])
    admins = ("sys-admins",)
    await lab.feed(access("admin1", groups=admins, t=shanghai(30, 9, 0)))  # Monday morning
    await lab.feed(access("admin1", groups=admins, t=shanghai(30, 8, 0)))  # the first minute
    await lab.feed(access("admin1", groups=admins, t=shanghai(4, 18, 59)))  # Friday's last minute
    await lab.feed(access("zhangwei", t=shanghai(5, 23, 40)))  # not privileged
    await lab.feed(access("zhangwei", path="/administration", t=shanghai(5, 23, 40)))
    await lab.feed(access("admin1", groups=admins, decision="deny", t=shanghai(5, 23, 40)))
    await lab.feed(access("admin1", groups=admins, decision="step_up", t=shanghai(5, 23, 40)))
    assert lab.fired() == []


async def test_working_hours_are_site_parameters() -> None:
    params = {
        "onegate.privileged-out-of-hours": {
            "workdays": [1, 2, 3, 4, 5, 6],
            "end_hour": 22,
            "timezone": "UTC",
            "groups": ["auditors"],
            "paths": ["/audit"],
        }
    }
    lab = Lab([rules.PrivilegedOutOfHours()], params=params)
    saturday_noon_utc = shanghai(5, 20, 0)  # 12:00 UTC
    await lab.feed(access("auditor1", groups=("auditors",), t=saturday_noon_utc))
    await lab.feed(access("admin1", groups=("sys-admins",), t=shanghai(6, 12, 0)))  # no longer privileged
    await lab.feed(access("admin1", path="/admin", t=shanghai(6, 12, 0)))
    assert lab.fired() == []
    [signal] = await lab.feed(access("auditor1", path="/audit/log", t=shanghai(6, 12, 0)))  # Sunday
    assert signal.values["timezone"] == "UTC" and "Sun 04:00" in signal.reason.en
