"""The WebSocket message limits in site.conf: ``max_message_size``, ``max_frame_size`` and
``validate_utf8`` on pools and routes (a route's own value wins), their defaults, errors with
key paths, the refusal on raw routes, and the plan's line."""

from __future__ import annotations

import pytest

from wsproxy.config import format_plan, parse_config
from wsproxy.config.load import POOL_KEYS, ROUTE_KEYS
from wsproxy.config.schema import PoolConfig, WsLimits, defaults, effective_ws_limits, ws_limits
from wsproxy.errors import ConfigErrors

MiB = 1024 * 1024


def conf(pool: dict | None = None, *routes: dict) -> dict:
    return {"listeners": {"pub": {"bind": "127.0.0.1:1", "routes": [{"pool": "p", **r} for r in routes or ({},)]}},
            "pools": {"p": {"members": ["127.0.0.1:2"], **(pool or {})}}}


def errors(data: dict) -> list[str]:
    try:
        parse_config(data)
    except ConfigErrors as exc:
        return [str(e) for e in exc.errors]
    return []


def limits_of(data: dict, index: int = 0) -> WsLimits:
    config = parse_config(data)
    return effective_ws_limits(config, config.listeners["pub"].routes[index])


def test_defaults():
    d = defaults(PoolConfig)
    assert (d["max_message_size"], d["max_frame_size"], d["validate_utf8"]) == (64 * MiB, 0, False)
    assert limits_of(conf()) == WsLimits(64 * MiB, 0, False)
    route = parse_config(conf()).listeners["pub"].routes[0]
    assert (route.max_message_size, route.max_frame_size, route.validate_utf8) == (None, None, None)


def test_pool_values_and_route_overrides():
    data = conf({"max_message_size": "1MiB", "max_frame_size": "64KiB", "validate_utf8": True},
                {"path_prefix": "/own/", "max_message_size": 0, "validate_utf8": False},
                {"path_prefix": "/frame/", "max_frame_size": "16KiB"},
                {})
    assert limits_of(data, 0) == WsLimits(0, 64 * 1024, False)  # 0 = no message limit
    assert limits_of(data, 1) == WsLimits(MiB, 16 * 1024, True)
    assert limits_of(data, 2) == WsLimits(MiB, 64 * 1024, True)


def test_sizes_take_units_and_plain_numbers():
    assert limits_of(conf({"max_message_size": 1000, "max_frame_size": "10KB"})) == WsLimits(1000, 10000, False)


def test_ws_limits_without_a_pool_uses_the_defaults():
    route = parse_config(conf()).listeners["pub"].routes[0]
    assert ws_limits(route, None) == WsLimits(64 * MiB, 0, False)


@pytest.mark.parametrize(("where", "key", "value", "expect"), [
    ("pool", "max_message_size", "-1", "pools.p.max_message_size: expected a size like"),
    ("pool", "max_message_size", -5, "pools.p.max_message_size: expected a size of zero or more bytes"),
    ("pool", "max_frame_size", "big", "pools.p.max_frame_size: expected a size like"),
    ("pool", "validate_utf8", "yes", "pools.p.validate_utf8: expected true or false"),
    ("route", "max_message_size", True, "listeners.pub.routes[0].max_message_size: expected a size like"),
    ("route", "max_frame_size", 1.5, "listeners.pub.routes[0].max_frame_size: expected a size like"),
    ("route", "validate_utf8", 1, "listeners.pub.routes[0].validate_utf8: expected true or false"),
])
def test_bad_values_name_the_key(where, key, value, expect):
    data = conf({key: value}) if where == "pool" else conf(None, {key: value})
    found = errors(data)
    assert len(found) == 1 and found[0].startswith(expect), found


def test_misspelled_keys_get_a_hint():
    assert all(k in ROUTE_KEYS and k in POOL_KEYS for k in ("max_message_size", "max_frame_size", "validate_utf8"))
    found = errors(conf({"max_mesage_size": "1MiB"}))
    assert len(found) == 1 and "max_mesage_size" in found[0] and "max_message_size" in found[0], found
    found = errors(conf(None, {"validate_utf": True}))
    assert len(found) == 1 and "validate_utf8" in found[0], found


@pytest.mark.parametrize(("key", "value"), [("max_message_size", "1MiB"), ("max_frame_size", 4096),
                                            ("validate_utf8", True)])
def test_a_raw_route_that_sets_a_limit_is_refused(key, value):
    for data in (conf(None, {"relay": "raw", key: value}), conf({"relay": "raw"}, {key: value})):
        found = errors(data)
        assert len(found) == 1, found
        assert found[0].startswith(f"listeners.pub.routes[0].{key}: WebSocket limits need relay = \"track\""), found


def test_raw_routes_may_turn_limits_off_and_inherit_the_pools():
    # 0 / false ask for nothing; a pool's limits are simply not applied on its raw routes
    assert errors(conf(None, {"relay": "raw", "max_message_size": 0, "validate_utf8": False})) == []
    assert errors(conf({"max_message_size": "1MiB", "validate_utf8": True}, {"relay": "raw"})) == []
    assert errors(conf({"relay": "raw", "max_frame_size": "1MiB"})) == []
    # a track route of a raw pool may set them
    assert errors(conf({"relay": "raw"}, {"relay": "track", "max_frame_size": 100})) == []


def test_the_plan_shows_limits_that_are_not_the_defaults():
    plan = format_plan(parse_config(conf(
        {"max_frame_size": "1MiB"},
        {"path_prefix": "/raw/", "relay": "raw"},
        {"path_prefix": "/big/", "max_message_size": "1GiB", "validate_utf8": True},
        {"path_prefix": "/none/", "max_message_size": 0},
        {})))
    lines = [line for line in plan.splitlines() if "routes[" in line]
    assert "ws limits ignored (raw relay)" in lines[0]
    assert "max_message 1GiB  max_frame 1MiB  utf8 checked (route)" in lines[1]
    assert "max_message off  max_frame 1MiB (route)" in lines[2]
    assert lines[3].rstrip().endswith("max_message 64MiB  max_frame 1MiB")
    plain = format_plan(parse_config(conf(None, {"path_prefix": "/raw/", "relay": "raw"}, {})))
    assert "max_message" not in plain and "ws limits" not in plain  # the defaults go without saying
    own = format_plan(parse_config(conf(None, {"max_message_size": "64MiB"}, {"validate_utf8": True})))
    assert "max_message 64MiB (route)" in own and "max_message 64MiB  utf8 checked (route)" in own
