"""Lockout and address throttling as the sign-in page applies them (acceptance 3 of issue 3)."""

from __future__ import annotations

import itertools

import httpx

from tests.idp.pages.conftest import PASSWORD, Idp, IdpFactory, sign_in, utc

_hosts = itertools.count(1)


def _elsewhere(idp: Idp) -> httpx.AsyncClient:
    """A browser at an address of its own, so address throttling stays out of the way."""
    n = next(_hosts)
    return idp.client(f"10.9.{n // 250}.{n % 250 + 1}")


async def test_after_n_failures_the_right_password_is_refused_until_the_lock_ends(idp: Idp) -> None:
    await idp.add_user()
    for _ in range(3):  # lockout_threshold = 3 in the fixture
        assert (await sign_in(_elsewhere(idp), password="guess")).status_code == 200
    [locked] = idp.events_of("user-locked")
    assert locked.get("user.name") == "zhangwei" and locked.get("onegate.reason") == "too_many_failures"
    user = await idp.user("zhangwei")
    assert utc(user.locked_until).timestamp() == idp.clock.now + 60  # type: ignore[union-attr]

    reference = await sign_in(_elsewhere(idp), password="guess")
    verifies = idp.passwords.verifies
    refused = await sign_in(_elsewhere(idp), password=PASSWORD)
    assert refused.status_code == reference.status_code == 200
    assert "onegate_sso" not in refused.headers.get("set-cookie", "")
    assert idp.passwords.verifies == verifies + 1  # still verified: the timing tells nothing
    assert idp.events_of("user-login")[-1].get("onegate.reason") == "locked"
    assert [e.get("onegate.reason") for e in idp.events_of("user-login")][:3] == ["bad_password"] * 3
    assert len(idp.events_of("user-locked")) == 1  # attempts during the lock do not stretch it

    idp.clock.advance(60)
    response = await sign_in(_elsewhere(idp), password=PASSWORD)
    assert response.status_code == 303 and response.headers["location"] == "/account"


async def test_an_administrator_unlock_takes_effect_at_once(idp: Idp) -> None:
    await idp.add_user()
    for _ in range(3):
        await sign_in(_elsewhere(idp), password="guess")
    assert (await sign_in(_elsewhere(idp))).status_code == 200
    await idp.set_user("zhangwei", locked_until=None)  # what `onegate user unlock` writes
    assert (await sign_in(_elsewhere(idp))).status_code == 303


async def test_lockouts_double(idp: Idp) -> None:
    await idp.add_user()
    for expected in (60, 120, 240):
        for _ in range(3):
            await sign_in(_elsewhere(idp), password="guess")
        user = await idp.user("zhangwei")
        assert utc(user.locked_until).timestamp() == idp.clock.now + expected  # type: ignore[union-attr]
        idp.clock.advance(expected)
    assert [e.get("labels.lockout_seconds") for e in idp.events_of("user-locked")] == ["60", "120", "240"]


async def test_rotating_usernames_from_one_address_hits_the_throttle_before_any_password_check(
    make_idp: IdpFactory,
) -> None:
    idp = await make_idp(ip_throttle_limit=5, ip_throttle_window=300)
    await idp.add_user()
    await idp.add_user(username="lina", display_name="李娜")
    attacker = idp.client("203.0.113.66")
    for username in ("zhangwei", "lina", "nobody1", "nobody2", "nobody3"):
        assert (await sign_in(attacker, username, "Spring2024!")).status_code == 200
    assert idp.passwords.verifies == 5

    throttled = await sign_in(attacker, "wangfang", PASSWORD)
    assert throttled.status_code == 429
    assert 0 < int(throttled.headers["retry-after"]) <= 300
    assert "rate_limited" in throttled.text
    again = await sign_in(attacker, "zhangwei", PASSWORD)  # even the right password
    assert again.status_code == 429
    assert idp.passwords.verifies == 5  # refused before any password was verified
    assert [e.get("onegate.reason") for e in idp.events_of("user-login")][-2:] == ["throttled", "throttled"]
    [event] = idp.events_of("ip-throttled")
    assert event.get("source.ip") == "203.0.113.66"

    # Nobody else is affected, and the address may try again when the window ends.
    assert (await sign_in(idp.client("203.0.113.67"))).status_code == 303
    idp.clock.advance(300)
    assert (await sign_in(attacker)).status_code == 303


async def test_the_throttle_page_speaks_the_users_language(make_idp: IdpFactory) -> None:
    idp = await make_idp(ip_throttle_limit=1)
    client = idp.client()
    await sign_in(client, "nobody", "x")
    zh = await sign_in(client, "nobody", "x")
    assert zh.status_code == 429 and "请求过于频繁" in zh.text
    client.headers["accept-language"] = "en"
    en = await sign_in(client, "nobody", "x")
    assert en.status_code == 429 and "Too many requests" in en.text
