"""Listener connection limits in site.conf: max_conns, max_conns_per_ip and
handshake_rate_per_ip (defaults, errors with their key paths, the plan); and the "null"
entry of allowed_origins."""

from __future__ import annotations

import pytest

from wsproxy.config import format_plan, parse_config
from wsproxy.config.schema import ListenerConfig, RateConfig, defaults
from wsproxy.errors import ConfigErrors


def document(**listener) -> dict:
    return {
        "listeners": {"web": {"bind": "127.0.0.1:8080", "routes": [{"pool": "web"}], **listener}},
        "pools": {"web": {"members": ["127.0.0.1:8000"]}},
    }


def tcp_document(**listener) -> dict:
    return {
        "listeners": {"raw": {"bind": "127.0.0.1:9000", "mode": "tcp", "pool": "web", **listener}},
        "pools": {"web": {"members": ["127.0.0.1:8000"]}},
    }


def errors(data: dict) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        parse_config(data)
    return [str(e) for e in info.value.errors]


def test_defaults_come_from_the_schema():
    web = parse_config(document()).listeners["web"]
    d = defaults(ListenerConfig)
    assert (web.max_conns, web.max_conns_per_ip, web.handshake_rate_per_ip) == (
        d["max_conns"], d["max_conns_per_ip"], d["handshake_rate_per_ip"])
    assert (web.max_conns, web.max_conns_per_ip, web.handshake_rate_per_ip) == (20000, 0, None)


def test_values_are_read():
    web = parse_config(document(max_conns=500, max_conns_per_ip=16,
                                handshake_rate_per_ip={"rate": 2.5, "burst": 5})).listeners["web"]
    assert (web.max_conns, web.max_conns_per_ip) == (500, 16)
    assert web.handshake_rate_per_ip == RateConfig(rate=2.5, burst=5)


def test_rate_table_defaults_for_missing_keys():
    web = parse_config(document(handshake_rate_per_ip={})).listeners["web"]
    assert web.handshake_rate_per_ip == RateConfig()
    assert (RateConfig().rate, RateConfig().burst) == (20.0, 40)
    web = parse_config(document(handshake_rate_per_ip={"rate": 100})).listeners["web"]
    assert web.handshake_rate_per_ip == RateConfig(rate=100.0, burst=40)


def test_zero_turns_connection_limits_off():
    web = parse_config(document(max_conns=0, max_conns_per_ip=0)).listeners["web"]
    assert (web.max_conns, web.max_conns_per_ip) == (0, 0)


def test_tcp_listeners_take_connection_limits():
    raw = parse_config(tcp_document(max_conns=10, max_conns_per_ip=2)).listeners["raw"]
    assert (raw.max_conns, raw.max_conns_per_ip, raw.handshake_rate_per_ip) == (10, 2, None)


@pytest.mark.parametrize(("listener", "expected"), [
    ({"max_conns": -1}, 'listeners.web.max_conns: expected an integer 0 or more, got -1'),
    ({"max_conns": "100"}, 'listeners.web.max_conns: expected an integer, got string "100"'),
    ({"max_conns_per_ip": 1.5}, 'listeners.web.max_conns_per_ip: expected an integer, got'),
    ({"max_conns_per_ip": True}, 'listeners.web.max_conns_per_ip: expected an integer, got'),
    ({"handshake_rate_per_ip": 20}, 'listeners.web.handshake_rate_per_ip: expected a table like { rate = 20, burst'),
    ({"handshake_rate_per_ip": {"rate": 0}}, 'listeners.web.handshake_rate_per_ip.rate: expected a number from'),
    ({"handshake_rate_per_ip": {"rate": "20/s"}}, 'listeners.web.handshake_rate_per_ip.rate: expected a number'),
    ({"handshake_rate_per_ip": {"burst": 0}}, 'listeners.web.handshake_rate_per_ip.burst: expected an integer 1 or more'),
    ({"handshake_rate_per_ip": {"rate": 5, "brust": 10}},
     'listeners.web.handshake_rate_per_ip.brust: unknown key "brust"; did you mean "burst"?'),
    ({"max_conn": 5}, 'listeners.web.max_conn: unknown key "max_conn"; did you mean "max_conns"?'),
    ({"max_conns_per_host": 5}, 'did you mean "max_conns_per_ip"?'),
])
def test_errors_name_the_key(listener, expected):
    found = errors(document(**listener))
    assert len(found) == 1 and expected in found[0], found


def test_handshake_rate_is_refused_on_tcp_listeners():
    found = errors(tcp_document(handshake_rate_per_ip={"rate": 5}))
    assert len(found) == 1 and found[0].startswith("listeners.raw.handshake_rate_per_ip: only applies to mode = ")


def test_plan_shows_the_limits():
    plan = format_plan(parse_config(document()))
    assert "  conns   max 20000  per_ip off  handshakes/ip off  (per worker)" in plan
    plan = format_plan(parse_config(document(max_conns=0, max_conns_per_ip=64,
                                             handshake_rate_per_ip={"rate": 2.5, "burst": 10})))
    assert "  conns   max off  per_ip 64  handshakes/ip 2.5/s burst 10  (per worker)" in plan
    plan = format_plan(parse_config(tcp_document(max_conns=100)))
    assert "  conns   max 100  per_ip off  (per worker)" in plan


def test_allowed_origins_accepts_null_as_an_explicit_entry():
    # "null" (sandboxed frames, file: pages) is matched by handshake.origin_allowed only when
    # listed; the config must let it be listed.
    data = document()
    data["listeners"]["web"]["routes"] = [{"pool": "web", "allowed_origins": ["NULL", "https://a.example"]}]
    route = parse_config(data).listeners["web"].routes[0]
    assert route.allowed_origins == ("null", "https://a.example")
