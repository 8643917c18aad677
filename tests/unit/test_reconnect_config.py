"""``reconnect = { deadline, buffer }`` on a pool or a route: parsing, key-path errors,
raw relays refused, the plan line."""

from __future__ import annotations

from wsproxy.config.load import parse_config
from wsproxy.config.plan import format_plan
from wsproxy.config.schema import ReconnectConfig, effective_reconnect
from wsproxy.errors import ConfigErrors


def conf(pool: dict, route: dict | None = None) -> dict:
    return {"listeners": {"pub": {"bind": "127.0.0.1:1", "routes": [{"pool": "p", **(route or {})}]}},
            "pools": {"p": {"members": ["127.0.0.1:2"], **pool}}}


def errors(data: dict) -> list[str]:
    try:
        parse_config(data)
    except ConfigErrors as exc:
        return [str(e) for e in exc.errors]
    return []


def test_absent_is_off_and_defaults_apply():
    config = parse_config(conf({}))
    assert effective_reconnect(config, config.listeners["pub"].routes[0]) is None
    config = parse_config(conf({"reconnect": {}}))
    assert config.pools["p"].reconnect == ReconnectConfig(5.0, 1024 * 1024)
    config = parse_config(conf({"reconnect": {"deadline": "2s"}}, {"reconnect": {"buffer": "64KiB"}}))
    route = config.listeners["pub"].routes[0]
    assert effective_reconnect(config, route) == ReconnectConfig(5.0, 65536)  # the route's table wins whole


def test_errors_name_the_key():
    (one,) = errors(conf({"reconnect": {"deadlin": "5s"}}))
    assert one.startswith("pools.p.reconnect.deadlin:") and 'did you mean "deadline"' in one
    (one,) = errors(conf({"reconnect": {"buffer": "lots"}}))
    assert one.startswith("pools.p.reconnect.buffer:")
    (one,) = errors(conf({"reconnect": "5s"}))
    assert one.startswith("pools.p.reconnect:")
    (one,) = errors(conf({}, {"reconnect": {"deadline": "0s"}}))
    assert one.startswith("listeners.pub.routes[0].reconnect.deadline:")


def test_raw_relays_are_refused():
    (one,) = errors(conf({"relay": "raw", "reconnect": {}}))
    assert one.startswith("pools.p.reconnect:") and 'relay = "track"' in one
    (one,) = errors(conf({"reconnect": {}}, {"relay": "raw"}))
    assert one.startswith("listeners.pub.routes[0].relay:")
    (one,) = errors(conf({"relay": "raw"}, {"relay": "raw", "reconnect": {}}))
    assert one.startswith("listeners.pub.routes[0].reconnect:")
    assert errors(conf({"relay": "raw"}, {"relay": "track", "reconnect": {}})) == []
    assert errors(conf({"relay": "inspect", "reconnect": {}})) == []  # allowed; Close 1014 at run time


def test_plan_shows_it():
    text = format_plan(parse_config(conf({"reconnect": {"deadline": "3s", "buffer": "256KiB"}})))
    assert "reconnect within 3s holding 256KiB" in text
    assert "reconnect" not in format_plan(parse_config(conf({})))
