"""The site's network -> place table (soc/detections/places.py)."""

from __future__ import annotations

import pytest

from soc.detections.places import Place, Places

CITY_HALL = Place("City Hall", 39.9042, 116.4074)
SHANGHAI = Place("Shanghai liaison office", 31.2304, 121.4737)


def test_the_most_specific_network_wins_whatever_the_order() -> None:
    wide = Place("Government network")
    for order in (1, -1):
        networks = [
            ("10.0.0.0/8", wide),
            ("10.1.0.0/16", CITY_HALL),
            ("10.1.7.0/24", Place("City Hall data centre")),
        ][::order]
        places = Places(networks)
        assert places.of("10.1.7.20") == Place("City Hall data centre")
        assert places.of("10.1.8.20") == CITY_HALL
        assert places.of("10.200.0.1") == wide
        assert places.of("192.0.2.1") is None
        assert len(places) == 3


def test_ipv4_mapped_ipv6_is_placed_as_ipv4_and_ipv6_by_its_own_networks() -> None:
    places = Places([("10.1.0.0/16", CITY_HALL), ("2001:db8:10::/48", SHANGHAI)])
    assert places.of("::ffff:10.1.2.3") == CITY_HALL
    assert places.of("2001:db8:10:5::1") == SHANGHAI
    assert places.of("2001:db8:11::1") is None
    # An IPv4 network never holds an IPv6 address of the same integer value.
    assert places.of("::a01:203") is None


def test_bad_input() -> None:
    places = Places([("10.1.0.0/16", CITY_HALL)])
    for bad in ("", "city hall", "10.1.2", "10.1.2.3/32", "999.1.2.3", "10.1.2.3 "):
        assert places.of(bad) is None, bad
    with pytest.raises(ValueError):
        Places([("10.1.0.0/33", CITY_HALL)])
    # Host bits set are accepted as the network they belong to.
    assert Places([("10.1.2.3/16", CITY_HALL)]).of("10.1.200.1") == CITY_HALL


def test_from_config_reads_optional_coordinates() -> None:
    places = Places.from_config(
        [
            {"cidr": "10.1.0.0/16", "place": "City Hall", "lat": "39.9042", "lon": 116.4074},
            {"cidr": "10.20.0.0/16", "place": "Haidian district office"},
            {"cidr": "0.0.0.0/0", "place": "Internet"},
        ]
    )
    assert places.of("10.1.0.9") == CITY_HALL
    assert places.of("10.20.3.4") == Place("Haidian district office")
    assert places.of("203.0.113.5") == Place("Internet")
    with pytest.raises(KeyError):
        Places.from_config([{"cidr": "10.0.0.0/8"}])


def test_distances() -> None:
    km = CITY_HALL.km_to(SHANGHAI)
    assert km is not None and 1060 < km < 1075  # Beijing - Shanghai, great circle
    assert SHANGHAI.km_to(CITY_HALL) == pytest.approx(km)
    assert CITY_HALL.km_to(CITY_HALL) == 0
    assert CITY_HALL.km_to(Place("Haidian district office")) is None
    assert Place("half", 39.9, None).km_to(CITY_HALL) is None
    antipode = Place("antipode", -39.9042, 116.4074 - 180)
    assert CITY_HALL.km_to(antipode) == pytest.approx(20015, abs=5)
