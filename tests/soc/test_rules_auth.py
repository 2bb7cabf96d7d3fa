"""Sign-in attack rules (soc/detections/rules/auth.py): events that fire each, and near misses."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from core.kv import KV, MemoryKV, RedisKV
from soc.detections.rules import auth
from tests.soc.detection_support import Lab, login, mfa_failure

ATTACKER = "203.0.113.7"


@pytest.fixture(params=["memory", "redis"])
async def kv(request: pytest.FixtureRequest, redis_url: str, redis_prefix: str) -> AsyncIterator[KV]:
    store: KV = MemoryKV() if request.param == "memory" else RedisKV(redis_url, prefix=redis_prefix)
    yield store
    await store.close()


# -- brute force ---------------------------------------------------------------------------------


async def test_brute_force_fires_on_the_tenth_failure_within_five_minutes(kv: KV) -> None:
    lab = Lab([auth.BruteForce()], kv=kv)
    ips = ["198.51.100.1", "198.51.100.2", ATTACKER]
    attempts = [login("zhangwei", ok=False, ip=ips[i % 3], t=i * 20) for i in range(9)]
    for attempt in attempts:
        assert await lab.feed(attempt) == []
    last = login("ZhangWei", ok=False, ip=ATTACKER, t=200)
    [signal] = await lab.feed(last)
    # The evidence: every failure of the window, oldest first, the completing one last.
    assert signal.events == (*(a.id for a in attempts), last.id)
    assert signal.rule.id == "onegate.brute-force"
    assert signal.entity["user.name"] == "ZhangWei"
    assert signal.values["failures"] == 10
    assert "10" in signal.reason.en and "10 次" in signal.reason.zh
    assert signal.rule.technique == "T1110.001"


async def test_brute_force_near_misses() -> None:
    lab = Lab([auth.BruteForce()])
    # Nine failures, then the tenth six minutes after the first: never ten in one window.
    for i in range(9):
        await lab.feed(login("lina", ok=False, t=i * 10))
    await lab.feed(login("lina", ok=False, t=361))
    # Ten failures, but spread over two accounts.
    for i in range(10):
        await lab.feed(login("wangfang" if i % 2 else "zhaolei", ok=False, t=i))
    # Refusals that are not guesses still count (the account is under attack), successes do not.
    for i in range(9):
        await lab.feed(login("chenjing", ok=i % 2 == 0, t=i))
    assert lab.fired() == []


async def test_brute_force_threshold_is_a_site_parameter() -> None:
    lab = Lab([auth.BruteForce()], params={"onegate.brute-force": {"threshold": 3}})
    await lab.feed(*(login("lina", ok=False, t=i) for i in range(2)))
    assert lab.fired() == []
    await lab.feed(login("lina", ok=False, t=3))
    assert len(lab.fired("onegate.brute-force")) == 1


async def test_the_same_events_twice_count_once(kv: KV) -> None:
    lab = Lab([auth.BruteForce()], kv=kv)
    batch = [login("lina", ok=False, t=i) for i in range(9)]
    await lab.feed(*batch)
    await lab.feed(*batch)  # replayed after a crash: the same event ids
    assert lab.fired() == []


# -- failures then success -----------------------------------------------------------------------


async def test_success_after_five_failures_fires() -> None:
    lab = Lab([auth.FailuresThenSuccess()])
    failures = [login("wangfang", ok=False, t=i * 30) for i in range(5)]
    await lab.feed(*failures)
    success = login("wangfang", ok=True, t=200)
    [signal] = await lab.feed(success)
    assert signal.events == (*(f.id for f in failures), success.id)
    assert signal.rule.id == "onegate.failures-then-success"
    assert signal.entity["session.id"] == "s-wangfang"
    assert signal.values["failures"] == 5


async def test_success_after_failures_near_misses() -> None:
    lab = Lab([auth.FailuresThenSuccess()])
    await lab.feed(*(login("wangfang", ok=False, t=i) for i in range(4)))
    await lab.feed(login("wangfang", ok=True, t=10))  # four failures only
    await lab.feed(*(login("lina", ok=False, t=i) for i in range(5)))
    await lab.feed(login("lina", ok=True, t=700))  # the failures left the 10-minute window
    await lab.feed(*(login("zhaolei", ok=False, t=i) for i in range(5)))
    await lab.feed(login("chenjing", ok=True, t=10))  # someone else succeeded
    assert lab.fired() == []


# -- one source against many accounts ------------------------------------------------------------


async def test_spraying_from_one_address_over_existing_accounts(kv: KV) -> None:
    lab = Lab([auth.PasswordSpraying(), auth.CredentialStuffing()], kv=kv)
    users = [f"staff{i:02d}" for i in range(10)]
    for i, user in enumerate(users):
        reason = "unknown_user" if i < 2 else "bad_password"  # a couple of typos in the list
        await lab.feed(login(user, ok=False, ip=ATTACKER, reason=reason, t=i * 30))
    [signal] = lab.fired()
    assert signal.rule.id == "onegate.password-spraying"
    assert signal.entity == {"source.ip": ATTACKER}
    assert signal.values["accounts"] == 10 and signal.values["unknown_accounts"] == 2


async def test_stuffing_from_one_address_over_mostly_unknown_accounts(kv: KV) -> None:
    lab = Lab([auth.PasswordSpraying(), auth.CredentialStuffing()], kv=kv)
    for i in range(10):
        reason = "unknown_user" if i % 2 == 0 else "bad_password"
        await lab.feed(login(f"leaked{i}@example.com", ok=False, ip=ATTACKER, reason=reason, t=i))
    [signal] = lab.fired()
    assert signal.rule.id == "onegate.credential-stuffing"
    assert signal.values["unknown_accounts"] == 5


async def test_one_source_near_misses() -> None:
    lab = Lab([auth.PasswordSpraying(), auth.CredentialStuffing()])
    # Nine accounts from one address.
    await lab.feed(*(login(f"staff{i}", ok=False, ip=ATTACKER, t=i) for i in range(9)))
    # One account tried ten times (brute force's business, not spraying's).
    await lab.feed(*(login("lina", ok=False, ip="198.51.100.9", t=i) for i in range(10)))
    # Ten accounts, but over eleven minutes.
    await lab.feed(*(login(f"u{i}", ok=False, ip="198.51.100.10", t=i * 70) for i in range(10)))
    # Ten accounts refused by the throttle, not guessed.
    await lab.feed(
        *(login(f"v{i}", ok=False, ip="198.51.100.11", reason="throttled", t=i) for i in range(10))
    )
    assert lab.fired() == []


# -- distributed spraying ------------------------------------------------------------------------


async def test_distributed_spraying_many_accounts_from_many_quiet_addresses() -> None:
    lab = Lab([auth.DistributedSpraying(), auth.PasswordSpraying()])
    sources = [f"198.51.100.{n}" for n in range(1, 6)]
    for i in range(20):
        await lab.feed(login(f"staff{i:02d}", ok=False, ip=sources[i % 5], t=i * 60))
    [signal] = lab.fired()
    assert signal.rule.id == "onegate.distributed-spraying"
    assert signal.values["accounts"] == 20 and signal.values["sources"] == 5


async def test_distributed_spraying_near_misses() -> None:
    lab = Lab([auth.DistributedSpraying()])
    sources = [f"198.51.100.{n}" for n in range(1, 5)]
    await lab.feed(*(login(f"a{i}", ok=False, ip=sources[i % 4], t=i) for i in range(30)))  # 4 sources
    other = Lab([auth.DistributedSpraying()])
    sources5 = [f"198.51.100.{n}" for n in range(1, 6)]
    await other.feed(*(login(f"b{i}", ok=False, ip=sources5[i % 5], t=i) for i in range(19)))  # 19 accounts
    late = Lab([auth.DistributedSpraying()])
    await late.feed(*(login(f"c{i}", ok=False, ip=sources5[i % 5], t=i * 100) for i in range(20)))  # 33 min
    assert lab.fired() == other.fired() == late.fired() == []


# -- success after an attack ---------------------------------------------------------------------


async def test_success_after_brute_force_is_critical() -> None:
    lab = Lab(auth.rules())
    await lab.feed(*(login("wangfang", ok=False, ip=ATTACKER, t=i) for i in range(10)))
    await lab.feed(login("wangfang", ok=True, ip="10.1.2.3", t=30))
    [signal] = lab.fired("onegate.success-after-attack")
    assert signal.rule.severity == "critical"
    assert signal.values["attacks"] == ["onegate.brute-force"]
    assert "暴力破解" in signal.reason.zh


async def test_success_from_a_spraying_address_for_another_account() -> None:
    lab = Lab(auth.rules())
    await lab.feed(*(login(f"staff{i}", ok=False, ip=ATTACKER, t=i) for i in range(10)))
    await lab.feed(login("zhaolei", ok=True, ip=ATTACKER, t=40))
    [signal] = lab.fired("onegate.success-after-attack")
    assert signal.values["attacks"] == ["onegate.password-spraying"]
    assert signal.entity["source.ip"] == ATTACKER


async def test_success_of_a_distributed_spraying_target() -> None:
    lab = Lab(auth.rules())
    sources = [f"198.51.100.{n}" for n in range(1, 6)]
    await lab.feed(*(login(f"staff{i:02d}", ok=False, ip=sources[i % 5], t=i * 10) for i in range(20)))
    await lab.feed(login("staff07", ok=True, ip="10.9.9.9", t=400))
    await lab.feed(login("zhangwei", ok=True, ip="10.9.9.9", t=401))  # not among the targets
    [signal] = lab.fired("onegate.success-after-attack")
    assert signal.entity["user.name"] == "staff07"
    assert signal.values["attacks"] == ["onegate.distributed-spraying"]


async def test_success_after_attack_near_misses() -> None:
    lab = Lab(auth.rules())
    await lab.feed(*(login("lina", ok=False, t=i) for i in range(3)))
    await lab.feed(login("lina", ok=True, t=5))  # three typos are not an attack
    await lab.feed(*(login(f"staff{i}", ok=False, ip=ATTACKER, t=i) for i in range(10)))
    await lab.feed(login("zhaolei", ok=True, ip=ATTACKER, t=700))  # the spray left the window
    await lab.feed(login("chenjing", ok=True, ip="10.1.1.1", t=20))  # another address
    assert lab.fired("onegate.success-after-attack") == []


# -- MFA fatigue ---------------------------------------------------------------------------------


async def test_repeated_second_factor_failures() -> None:
    lab = Lab([auth.MfaFatigue()])
    await lab.feed(*(mfa_failure(42, t=i * 20) for i in range(4)))
    assert lab.fired() == []
    [signal] = await lab.feed(mfa_failure(42, t=100, replayed=True))
    assert signal.entity["user.id"] == "42"
    assert signal.rule.technique == "T1621"


async def test_second_factor_near_misses() -> None:
    lab = Lab([auth.MfaFatigue()])
    await lab.feed(*(mfa_failure(7, t=i * 200) for i in range(5)))  # over 13 minutes
    await lab.feed(*(mfa_failure(8 + i % 2, t=i) for i in range(8)))  # two accounts, four each
    assert lab.fired() == []


# -- the engine ----------------------------------------------------------------------------------


def test_unknown_rules_and_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown detection rules: onegate.nope"):
        Lab(auth.rules(), params={"onegate.nope": {}})
    with pytest.raises(ValueError, match="unknown parameters limit"):
        Lab(auth.rules(), params={"onegate.brute-force": {"limit": 3}})
