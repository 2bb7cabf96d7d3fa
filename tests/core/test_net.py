"""core.net.client_address: X-Forwarded-For believed only from trusted proxies."""

from __future__ import annotations

import pytest

from core.net import TrustedProxies, client_address


def scope(peer: str, *xff: str) -> dict[str, object]:
    return {"client": (peer, 50000), "headers": [(b"x-forwarded-for", v.encode()) for v in xff]}


TRUSTED = TrustedProxies(["10.0.0.10/32", "192.168.0.0/24"])


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("203.0.113.9", ["1.2.3.4"], "203.0.113.9"),  # untrusted peer: header ignored
        ("10.0.0.10", ["1.2.3.4"], "1.2.3.4"),
        ("10.0.0.10", ["6.6.6.6, 1.2.3.4"], "1.2.3.4"),  # attacker-prepended value ignored
        ("10.0.0.10", ["6.6.6.6, 1.2.3.4, 192.168.0.5"], "1.2.3.4"),  # two trusted hops
        ("10.0.0.10", ["6.6.6.6", "1.2.3.4"], "1.2.3.4"),  # several header lines
        ("10.0.0.10", ["garbage, 1.2.3.4"], "1.2.3.4"),
        ("10.0.0.10", ["1.2.3.4, garbage"], "10.0.0.10"),
        ("10.0.0.10", [], "10.0.0.10"),
        ("10.0.0.10", ["192.168.0.7"], "192.168.0.7"),  # every hop trusted: the farthest
        ("10.0.0.10", ["2001:db8::1"], "2001:db8::1"),
    ],
)
def test_client_address(peer: str, xff: list[str], expected: str) -> None:
    assert client_address(scope(peer, *xff), TRUSTED) == expected


def test_no_trusted_proxies_means_the_peer() -> None:
    assert client_address(scope("10.0.0.10", "1.2.3.4"), TrustedProxies()) == "10.0.0.10"
    assert client_address({"headers": []}, TrustedProxies()) == ""
