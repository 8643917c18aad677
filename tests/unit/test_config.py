"""wsproxy.config: site.conf loading, validation, errors and the plan.

The sample files live in tests/configs/. Each bad-*.conf lists the errors it must produce in
``# expect: <text>`` comment lines (one per error, matched as a substring of
``str(error)``, so the count must match too).
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from wsproxy.config import (
    Address,
    Config,
    RouteConfig,
    effective_relay,
    effective_ws_idle_timeout,
    format_plan,
    load_config,
    parse_config,
)
from wsproxy.config import validate
from wsproxy.config.units import (
    format_duration,
    format_size,
    parse_address,
    parse_cidr,
    parse_duration,
    parse_size,
)
from wsproxy.errors import ConfigError, ConfigErrors

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
GOOD = sorted(CONFIGS.glob("good-*.conf"))
BAD = sorted(CONFIGS.glob("bad-*.conf"))
EXAMPLE = CONFIGS / "config-md-example.conf"


def errors_of(source: str | Path | dict) -> list[str]:
    """Every error message a config produces (as ``str(error)``); [] when it loads."""
    try:
        if isinstance(source, dict):
            parse_config(source)
        else:
            load_config(str(source))
    except ConfigErrors as exc:
        info = pytest.ExceptionInfo.from_exception(exc)
    else:
        return []
    assert all(isinstance(e, ConfigError) for e in info.value.errors)
    return [str(e) for e in info.value.errors]


def minimal(**extra) -> dict:
    """The smallest valid document, with top-level tables replaced or added by ``extra``."""
    data = {
        "listeners": {"web": {"bind": "127.0.0.1:8080", "routes": [{"pool": "web"}]}},
        "pools": {"web": {"members": ["127.0.0.1:8000"]}},
    }
    data.update(extra)
    return data


def with_listener(**keys) -> dict:
    return minimal(listeners={"web": {"bind": "127.0.0.1:8080", "routes": [{"pool": "web"}], **keys}})


def with_pool(**keys) -> dict:
    return minimal(pools={"web": {"members": ["127.0.0.1:8000"], **keys}})


def with_route(**keys) -> dict:
    return minimal(listeners={"web": {"bind": "127.0.0.1:8080", "routes": [{"pool": "web", **keys}]}})


# --- the sample files --------------------------------------------------------------------


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.name)
def test_good_configs_load_and_plan(path: Path) -> None:
    config = load_config(str(path))
    assert config.source == str(path)
    plan = format_plan(config)
    for name in config.listeners:
        assert f"listener {name}" in plan
    for name in config.pools:
        assert f"pool {name}" in plan


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_bad_configs_report_exactly_the_expected_errors(path: Path) -> None:
    expected = re.findall(r"^# expect: (.*)$", path.read_text(), re.MULTILINE)
    assert expected, f"{path.name} has no '# expect:' lines"
    errors = errors_of(path)
    unmatched = list(errors)
    for text in expected:
        hits = [e for e in unmatched if text in e]
        assert hits, f"no error contains {text!r}; got:\n" + "\n".join(errors)
        unmatched.remove(hits[0])
    assert not unmatched, "unexpected errors:\n" + "\n".join(unmatched)


def test_sample_files_cover_every_error_class() -> None:
    names = {p.stem for p in BAD}
    for wanted in ("bad-syntax", "bad-unknown-key", "bad-unknown-table", "bad-wrong-type", "bad-missing-pool",
                   "bad-tcp-pool", "bad-duplicate-bind", "bad-empty-pool", "bad-duplicate-member",
                   "bad-plugin-listener", "bad-not-supported"):
        assert wanted in names


# --- the design/CONFIG.md example ---------------------------------------------------------


def test_config_md_example_supported_subset() -> None:
    config = load_config(str(CONFIGS / "good-site.conf"))
    assert config.server.workers == 1 and config.server.log_level == "info" and config.server.access_log is True

    assert list(config.listeners) == ["public"]
    public = config.listeners["public"]
    assert public.bind == Address("127.0.0.1", 8080) and public.mode == "http"
    routes = public.routes
    assert [r.pool for r in routes] == ["socketio", "chat", "chat", "chat", "web"]
    assert routes[0].path_prefix == "/socket.io/"
    assert routes[1].allowed_origins == ("https://example.com",)
    assert routes[2].host == "chat.example.com"
    assert routes[3].path == "/exact"
    assert routes[4].is_catch_all and routes[4].label == "public.routes[4]"

    assert list(config.pools) == ["chat", "socketio", "web", "tcpecho"]
    chat = config.pools["chat"]
    assert chat.balance == "least_conn" and chat.max_conns == 10000
    assert [str(m.addr) for m in chat.members] == ["127.0.0.1:9001", "127.0.0.1:9002"]
    socketio = config.pools["socketio"].members
    assert (socketio[0].weight, socketio[0].max_conns) == (2, 5000)
    assert (socketio[1].weight, socketio[1].max_conns) == (1, 10000)  # the pool's default


def test_config_md_example_verbatim_is_valid() -> None:
    assert errors_of(EXAMPLE) == []


# Each commented-out line of the example, uncommented on its own: the extra error it brings.
COMMENTED_KEYS = {
    "state": "server.state: cluster-wide shared state is not supported yet",
    "tls": None,  # issue #7: site.pem/site.key are test files in tests/configs/
    "redirect_https": None,  # issue #7: a plain listener redirects to https
    "proxy_protocol": None,  # listeners.raw.proxy_protocol = "v2" is valid
    "hash_key": 'pools.chat.hash_key: only applies to balance = "hash"',
    "health": None,  # active health checks (issue #6)
    "listeners": None,  # plugins[0].listeners = ["public"] is valid: no new error
    "options": None,
}


@pytest.mark.parametrize("name", COMMENTED_KEYS)
def test_config_md_example_commented_keys(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CONFIGS)  # a document without a file: relative TLS paths are read from here
    text = EXAMPLE.read_text()
    uncommented, count = re.subn(rf"^# ({name} = )", r"\1", text, flags=re.MULTILINE)
    assert count == 1, f"{name} is not a commented-out key in the example"
    base = errors_of(EXAMPLE)
    errors = errors_of(parse_config_text(uncommented))
    added = [e for e in errors if e not in base]
    expected = COMMENTED_KEYS[name]
    if expected is None:
        assert added == []
    else:
        assert len(added) == 1 and expected in added[0], added


def parse_config_text(text: str) -> dict:
    import tomllib

    return tomllib.loads(text)


def test_each_not_supported_entry_is_exercised() -> None:
    errors = errors_of(CONFIGS / "bad-not-supported.conf")
    for feature, message in validate.NOT_SUPPORTED_YET.items():
        assert any(e.endswith(": " + message) for e in errors), feature


def test_removing_a_not_supported_entry_lets_the_feature_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validate, "NOT_SUPPORTED_YET", {})
    config = load_config(str(CONFIGS / "bad-not-supported.conf"))
    assert config.server.workers == "auto"
    assert str(config.server.admin) == "127.0.0.1:9901"
    assert config.listeners["public"].tls.cert == "site.pem"
    assert config.listeners["raw"].mode == "tcp" and config.listeners["raw"].pool == "tcpecho"
    assert config.listeners["raw"].proxy_protocol == "v2"
    assert config.listeners["plain"].accept_proxy is True
    assert config.pools["chat"].hash_key == "header:X-User"
    health = config.pools["socketio"].health
    assert (health.type, health.interval, health.timeout, health.rise, health.fall) == ("ws", 2.0, 1.0, 2, 3)
    assert config.pools["socketio"].persist.cookie == "WSPROXY_SRV"
    plugin = config.plugins[0]
    assert (plugin.path, plugin.listeners, dict(plugin.options)) == (
        "plugins/route_by_header.lua", ("public",), {"header": "X-Tenant"})
    plan = format_plan(config)  # every optional part of the plan renders
    for text in ("tls site.pem", "-> pool tcpecho", "proxy_protocol v2", "hash by header:X-User",
                 "persist   cookie WSPROXY_SRV", "health ws / every 2s timeout 1s rise 2 fall 3",
                 "plugins[0]  plugins/route_by_header.lua  listeners: public  options: header",
                 "admin 127.0.0.1:9901", "redirect_https https://example.com", "accept_proxy on"):
        assert text in plan, text


def test_hash_balance_defaults_to_source_ip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validate, "NOT_SUPPORTED_YET", {})
    assert parse_config(with_pool(balance="hash")).pools["web"].hash_key == "source_ip"


# --- defaults and extension keys ---------------------------------------------------------


def test_defaults() -> None:
    config = parse_config(minimal())
    s = config.server
    assert (s.workers, s.admin, s.log_level, s.log_format, s.access_log, s.state, s.grace) == (
        1, None, "info", "text", True, None, 10.0)
    listener = config.listeners["web"]
    assert listener.mode == "http" and listener.pool is None and listener.trusted_proxies == ()
    assert (listener.head_timeout, listener.keepalive_timeout) == (10.0, 60.0)
    assert (listener.max_head_bytes, listener.max_headers, listener.max_uri_bytes) == (65536, 100, 8192)
    assert (listener.tls, listener.redirect_https, listener.proxy_protocol, listener.accept_proxy) == (
        None, None, None, False)
    route = listener.routes[0]
    assert (route.index, route.host, route.path, route.path_prefix, route.allowed_origins) == (0, None, None, None, ())
    assert (route.relay, route.ws_idle_timeout) == (None, None)
    pool = config.pools["web"]
    assert (pool.balance, pool.hash_key, pool.max_conns, pool.persist, pool.health, pool.proxy_protocol) == (
        "round_robin", None, 10000, None, None, None)
    assert (pool.relay, pool.connect_timeout, pool.response_timeout, pool.retries, pool.fail_threshold) == (
        "track", 5.0, 120.0, 2, 3)
    assert (pool.down_time, pool.keepalive_conns, pool.keepalive_timeout, pool.ws_idle_timeout) == (
        10.0, 16, 30.0, 3600.0)
    member = pool.members[0]
    assert (member.addr, member.weight, member.max_conns) == (Address("127.0.0.1", 8000), 1, 10000)
    assert config.plugins == () and config.source == "<config>"


def test_extension_keys() -> None:
    config = load_config(str(CONFIGS / "good-extensions.conf"))
    assert (config.server.log_format, config.server.grace, config.server.access_log) == ("json", 30.0, False)
    public = config.listeners["public"]
    assert public.bind == Address("::1", 8443) and str(public.bind) == "[::1]:8443"
    assert public.trusted_proxies == ("10.0.0.0/8", "192.168.1.7/32", "fd00::/8")
    assert (public.head_timeout, public.keepalive_timeout) == (5.0, 120.0)
    assert (public.max_head_bytes, public.max_headers, public.max_uri_bytes) == (32768, 50, 4096)
    route = public.routes[0]
    assert (route.relay, route.ws_idle_timeout) == ("raw", 90.0)
    assert route.allowed_origins == ("https://*.example.com", "http://localhost:3000")
    pool = config.pools["chat"]
    assert (pool.relay, pool.connect_timeout, pool.response_timeout, pool.retries) == ("raw", 0.25, 30.0, 0)
    assert (pool.fail_threshold, pool.down_time, pool.keepalive_conns, pool.keepalive_timeout) == (5, 60.0, 0, 15.0)
    assert pool.ws_idle_timeout == 600.0
    assert (pool.down_time_max, pool.slow_start, pool.drain_spread) == (120.0, 30.0, 5.0)
    assert (pool.ping_interval, pool.pong_timeout) == (20.0, 5.0)
    rb = pool.rebalance
    assert (rb.threshold, rb.rate, rb.max_fraction, rb.order, rb.auto) == (0.1, 20.0, 0.25, "random", False)
    assert (route.ping_interval, route.pong_timeout) == (0.0, 3.0)
    assert (config.server.workers, config.server.drain_timeout, config.server.close_spread) == (2, 60.0, 2.0)
    health = config.pools["web"].health
    assert (health.type, health.status, health.jitter) == ("http", (200, 204), 0.2)
    assert config.pools["tcp"].health.status == ()
    assert [(str(m.addr), m.weight, m.max_conns) for m in pool.members] == [
        ("backend.internal:9001", 3, 100), ("[::1]:9002", 1, 100)]


def test_effective_relay_and_idle_timeout() -> None:
    config = parse_config(minimal(
        listeners={"web": {"bind": "127.0.0.1:8080", "routes": [
            {"path": "/raw", "pool": "web", "relay": "raw", "ws_idle_timeout": "30s"},
            {"pool": "web"},
        ]}},
        pools={"web": {"members": ["127.0.0.1:8000"], "relay": "track", "ws_idle_timeout": "5m"}},
    ))
    own, inherited = config.listeners["web"].routes
    assert (effective_relay(config, own), effective_ws_idle_timeout(config, own)) == ("raw", 30.0)
    assert (effective_relay(config, inherited), effective_ws_idle_timeout(config, inherited)) == ("track", 300.0)


def test_member_max_conns_comes_from_the_pool_unless_set() -> None:
    config = parse_config(with_pool(max_conns=7, members=["127.0.0.1:1", {"addr": "127.0.0.1:2", "max_conns": 3}]))
    assert [m.max_conns for m in config.pools["web"].members] == [7, 3]


def test_config_is_frozen_and_keeps_file_order() -> None:
    names = ["zeta", "alpha", "mid"]
    config = parse_config({
        "listeners": {n: {"bind": f"127.0.0.1:{8000 + i}", "routes": [{"pool": n}]} for i, n in enumerate(names)},
        "pools": {n: {"members": ["127.0.0.1:9000"]} for n in names},
    })
    assert list(config.listeners) == names and list(config.pools) == names
    for obj in (config, config.server, config.listeners["zeta"], config.listeners["zeta"].routes[0],
                config.pools["zeta"], config.pools["zeta"].members[0], config.pools["zeta"].members[0].addr):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, dataclasses.fields(obj)[0].name, None)


def test_route_label_and_catch_all() -> None:
    assert RouteConfig(2, "chat", listener="public").label == "public.routes[2]"
    assert RouteConfig(0, "chat").label == "routes[0]"
    assert not RouteConfig(0, "chat", host="a.example.com").is_catch_all


@pytest.mark.parametrize("host", ["chat.example.com", "*.example.com", "Example.COM.", "::1", "[::1]", "10.0.0.1",
                                  "localhost"])
def test_route_hosts_accepted(host: str) -> None:
    assert parse_config(with_route(host=host)).listeners["web"].routes[0].host == host


@pytest.mark.parametrize("host,message", [
    ("*", "omit host to match every host"),
    ("a.*.example.com", "only allowed as the first label"),
    ("example.com:443", "without a port"),
    ("bad host", "expected a host name"),
    ("", "expected a host name"),
])
def test_route_hosts_rejected(host: str, message: str) -> None:
    [error] = errors_of(with_route(host=host))
    assert error.startswith("listeners.web.routes[0].host: ") and message in error


@pytest.mark.parametrize("origin", ["https://example.com", "https://*.example.com", "http://localhost:3000",
                                    "https://[::1]:8443"])
def test_allowed_origins_accepted(origin: str) -> None:
    assert parse_config(with_route(allowed_origins=[origin])).listeners["web"].routes[0].allowed_origins == (origin,)


def test_allowed_origins_are_lower_cased() -> None:
    route = parse_config(with_route(allowed_origins=["HTTPS://Example.COM"])).listeners["web"].routes[0]
    assert route.allowed_origins == ("https://example.com",)


@pytest.mark.parametrize("origin", ["example.com", "ftp://example.com", "https://example.com/", "https://a.*.com",
                                    "https://example.com:0", "*"])
def test_allowed_origins_rejected(origin: str) -> None:
    [error] = errors_of(with_route(allowed_origins=[origin]))
    assert error.startswith("listeners.web.routes[0].allowed_origins[0]: ")


# --- errors ------------------------------------------------------------------------------


def test_missing_file() -> None:
    with pytest.raises(ConfigErrors) as info:
        load_config(str(CONFIGS / "does-not-exist.conf"))
    assert info.value.source.endswith("does-not-exist.conf")
    [error] = info.value.errors
    assert "cannot read the config file: No such file or directory" in str(error)


def test_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "site.conf"
    path.write_text('[listeners.a]\nbind = "127.0.0.1:80"\nroutes = [{ pool = }]\n')
    with pytest.raises(ConfigErrors) as info:
        load_config(str(path))
    [error] = info.value.errors
    assert error.message.startswith("TOML syntax error at line 3, column 20: ")
    assert (error.line, error.column) == (3, 20)


def test_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "site.conf"
    path.write_bytes(b'[server]\nlog_level = "\xff"\n')
    [error] = errors_of(path)
    assert "not valid UTF-8" in error


def test_multiple_errors_are_reported_together() -> None:
    errors = errors_of({
        "server": {"log_level": "loud", "grace": 5},
        "listeners": {
            "a": {"bind": "127.0.0.1:80", "routes": [{"pool": "nope"}], "max_headers": 0},
            "b": {"bind": "127.0.0.1:80", "routes": [{"pool": "web", "path": "x"}]},
        },
        "pools": {"web": {"members": ["127.0.0.1:1", "127.0.0.1:1"], "retries": -1}, "empty": {"members": []}},
        "plugin": [],
    })
    paths = [e.split(": ", 1)[0] for e in errors]
    assert paths == [
        "plugin", "server.log_level", "server.grace", "listeners.a.max_headers", "listeners.b.routes[0].path",
        "pools.web.members[1]", "pools.web.retries", "pools.empty.members", "listeners.a.routes[0].pool",
        "listeners.b.bind",
    ]


def test_errors_str_lists_every_error() -> None:
    with pytest.raises(ConfigErrors) as info:
        parse_config({"listeners": {"a": {"bind": "x"}}}, source="site.conf")
    text = str(info.value)
    assert text.startswith("site.conf: 2 error(s)\n")
    assert "  listeners.a.bind: " in text and "  listeners.a.routes: missing" in text


@pytest.mark.parametrize("data,expected", [
    (with_listener(keepalive_timout="5s"),
     'listeners.web.keepalive_timout: unknown key "keepalive_timout"; did you mean "keepalive_timeout"?'),
    (with_pool(member=["127.0.0.1:1"]), 'pools.web.member: unknown key "member"; did you mean "members"?'),
    (with_route(pth="/x"), 'listeners.web.routes[0].pth: unknown key "pth"; did you mean "path"?'),
    (minimal(server={"acess_log": False}), 'server.acess_log: unknown key "acess_log"; did you mean "access_log"?'),
    (minimal(plugins=[{"path": "a.lua", "option": {}}]),
     'plugins[0].option: unknown key "option"; did you mean "options"?'),
    (minimal(listenrs={}), "listenrs: unknown table [listenrs]; did you mean [listeners]?"),
    (with_pool(balance="round-robin"),
     'pools.web.balance: expected "round_robin", "least_conn", "random_two" or "hash", got "round-robin"; '
     'did you mean "round_robin"?'),
    (with_route(pool="wbe"), 'listeners.web.routes[0].pool: no pool named "wbe"; did you mean "web"? (pools: web)'),
])
def test_did_you_mean(data: dict, expected: str) -> None:
    assert expected in errors_of(data)


@pytest.mark.parametrize("data,expected", [
    (with_pool(connect_timeout=5), 'pools.web.connect_timeout: expected a string like "5s", got integer 5'),
    (with_pool(connect_timeout=True), 'expected a string like "5s", got boolean true'),
    (with_listener(max_head_bytes=1.5), 'expected a size like "64KiB" or a number of bytes, got float 1.5'),
    (with_pool(members={"a": 1}), "got a table"),
    (with_route(allowed_origins="https://example.com"), 'expected an array, got string "https://example.com"'),
    (minimal(listeners=[{"bind": "x"}]), "write [listeners.NAME], not [[listeners]]"),
    (minimal(plugins={"path": "a.lua"}), "write [[plugins]], not [plugins]"),
    (minimal(server="fast"), 'server: expected a [server] table, got string "fast"'),
    (minimal(pools={"web": "127.0.0.1:1"}), 'pools.web: expected a table [pools.web], got string "127.0.0.1:1"'),
])
def test_wrong_types(data: dict, expected: str) -> None:
    assert any(expected in e for e in errors_of(data)), errors_of(data)


def test_names_must_be_simple() -> None:
    errors = errors_of(minimal(pools={"web": {"members": ["127.0.0.1:1"]}, "my pool": {"members": ["127.0.0.1:2"]}}))
    assert errors == ['pools."my pool": expected a name of letters, digits, "_" and "-"']


def test_parse_config_rejects_a_non_table() -> None:
    with pytest.raises(ConfigErrors):
        parse_config([])  # type: ignore[arg-type]


def test_admin_address_clashing_with_a_listener(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validate, "NOT_SUPPORTED_YET", {})
    errors = errors_of(minimal(server={"admin": "127.0.0.1:8080"}))
    assert errors == ["listeners.web.bind: 127.0.0.1:8080 overlaps server.admin (127.0.0.1:8080); "
                      "expected a distinct address"]


def test_health_timeout_longer_than_interval() -> None:
    errors = errors_of(with_pool(health={"type": "tcp", "interval": "1s", "timeout": "2s", "path": "/"}))
    assert 'pools.web.health.path: only applies to type = "http" or "ws"' in errors
    assert "pools.web.health.timeout: 2s is longer than the interval (1s); expected at most the interval" in errors


# --- units -------------------------------------------------------------------------------


@pytest.mark.parametrize("text,seconds", [
    ("250ms", 0.25), ("5s", 5.0), ("2m", 120.0), ("1h", 3600.0), ("1.5s", 1.5), ("0s", 0.0), (" 10s ", 10.0),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5", "5 s", "-5s", "5sec", "1w", "s", "", "1h30m", "5S"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match='expected a duration like "250ms", "5s", "2m", "1h" or "1d"'):
        parse_duration(text)


@pytest.mark.parametrize("value,size", [
    ("64KiB", 65536), ("1MiB", 1048576), ("1GiB", 1024**3), ("10KB", 10000), ("2MB", 2_000_000), ("512", 512),
    ("512B", 512), (512, 512), ("64kib", 65536), ("1.5KiB", 1536), (0, 0),
])
def test_parse_size(value: str | int, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["big", "64 KiBs", "-1", "1TiB", "", "KiB", -1])
def test_parse_size_rejects(value: str | int) -> None:
    with pytest.raises(ValueError, match="expected a size"):
        parse_size(value)


@pytest.mark.parametrize("text,address", [
    ("127.0.0.1:8080", Address("127.0.0.1", 8080)), ("[::1]:9001", Address("::1", 9001)),
    ("LocalHost:1", Address("localhost", 1)), ("backend-1.internal:65535", Address("backend-1.internal", 65535)),
    ("[::]:80", Address("::", 80)),
])
def test_parse_address(text: str, address: Address) -> None:
    assert parse_address(text) == address
    assert str(address) == text.replace("LocalHost", "localhost")


@pytest.mark.parametrize("text,message", [
    ("127.0.0.1", "(no port)"), (":8080", "(empty host)"), ("::1:8080", "IPv6 addresses need brackets"),
    ("127.0.0.1:0", "port from 1 to 65535"), ("127.0.0.1:65536", "port from 1 to 65535"),
    ("127.0.0.1:http", "port from 1 to 65535"), ("[::1]8080", 'expected "host:port"'),
    ("[nope]:80", "IPv6 address inside the brackets"), ("bad host:80", "not a host name"),
])
def test_parse_address_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_address(text)


def test_parse_cidr() -> None:
    assert parse_cidr("10.0.0.0/8") == "10.0.0.0/8"
    assert parse_cidr("192.168.1.7") == "192.168.1.7/32"
    assert parse_cidr("::1") == "::1/128"
    with pytest.raises(ValueError, match='did you mean "10.0.0.0/8"'):
        parse_cidr("10.1.2.3/8")
    with pytest.raises(ValueError, match="expected an IP address or CIDR"):
        parse_cidr("10.0.0.0/33")


@pytest.mark.parametrize("seconds,text", [(0.25, "250ms"), (5.0, "5s"), (120.0, "2m"), (90.0, "90s"),
                                          (3600.0, "1h"), (0.0, "0s"), (1.5, "1.5s")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_size() -> None:
    assert [format_size(n) for n in (65536, 1048576, 10000, 0)] == ["64KiB", "1MiB", "10000", "0"]


# --- the plan ----------------------------------------------------------------------------


def test_plan_text() -> None:
    plan = format_plan(load_config(str(CONFIGS / "good-site.conf")))
    lines = plan.splitlines()
    assert "listener public  127.0.0.1:8080  http" in lines
    assert "pool chat  least_conn  max_conns 10000  relay track" in lines
    assert "  127.0.0.1:3001  weight 2  max_conns 5000" in lines
    route_lines = [line for line in lines if line.startswith("  routes[")]
    assert len(route_lines) == 5
    assert route_lines[0].split() == ["routes[0]", "path_prefix", "/socket.io/", "->", "pool", "socketio",
                                      "relay", "track", "ws_idle", "1h"]
    assert route_lines[4].startswith("  routes[4]  (catch-all)")
    assert route_lines[1].endswith("origins https://example.com")
    # aligned: the arrow and the relay column start at the same place on every route line
    assert len({line.index("->") for line in route_lines}) == 1
    assert len({line.index("relay") for line in route_lines}) == 1
    assert "  upstream  connect 5s  response 2m  ws_idle 1h  retries 2  down after 3 fails for 10s" in plan
    assert plan.endswith("\n") and not plan.endswith("\n\n")


def test_plan_marks_route_overrides() -> None:
    plan = format_plan(parse_config(with_route(relay="raw", ws_idle_timeout="30s")))
    assert "relay raw (route)  ws_idle 30s (route)" in plan


# --- layering ----------------------------------------------------------------------------


def test_config_package_stays_pure() -> None:
    code = ("import sys, wsproxy.config; "
            "bad = [m for m in ('asyncio', 'socket', 'wsproxy.proxy') if m in sys.modules]; "
            "sys.exit(str(bad) if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr


def test_config_type() -> None:
    assert isinstance(parse_config(minimal()), Config)


def test_a_bad_choice_does_not_cascade() -> None:
    # A misspelt mode or balance is one error, not also "routes missing" or "hash_key only applies ...".
    errors = errors_of(minimal(listeners={"a": {"bind": "127.0.0.1:1", "mode": "tpc", "pool": "web"}},
                               pools={"web": {"balance": "hsah", "hash_key": "path", "members": ["127.0.0.1:2"]}}))
    assert [e.split(": ", 1)[0] for e in errors] == ["listeners.a.mode", "pools.web.balance"]


def test_plan_shows_each_pools_algorithm_persistence_and_limits() -> None:
    text = """
[listeners.public]
bind = "127.0.0.1:8080"
routes = [{ path_prefix = "/socket.io/", pool = "sio" }, { pool = "chat" }]

[listeners.raw]
bind = "127.0.0.1:7000"
mode = "tcp"
pool = "tcp"
idle_timeout = "10m"

[pools.sio]
persist = { cookie = "SRV", secret = "0123456789abcdef0123", max_age = "1d" }
queue = { size = 0 }
members = ["127.0.0.1:3001"]

[pools.chat]
balance = "hash"
hash_key = "header:X-User"
hash_fallback = "random_two"
queue = { size = 50, timeout = "2s" }
members = [{ addr = "127.0.0.1:9001", max_conns = 7 }]

[pools.tcp]
balance = "hash"
members = ["127.0.0.1:7001"]
"""
    plan = format_plan(parse_config(parse_config_text(text)))
    for expected in (
        "listener raw  127.0.0.1:7000  tcp  -> pool tcp  idle 10m",
        "pool sio  round_robin  max_conns 10000  relay track",
        "  limits    max_conns per member (below); all full: 503 at once (no queue)",
        "  persist   cookie SRV (secret from config)  max_age 1d",
        "pool chat  hash by header:X-User (no key: random_two)  max_conns 10000  relay track",
        "  limits    max_conns per member (below); all full: queue 50 for 2s, then 503",
        "  persist   none",
        "  127.0.0.1:9001  weight 1  max_conns 7",
        "pool tcp  hash by source_ip (no key: least_conn)",
        "  persist   by source address (hash; coarse behind NAT)",
    ):
        assert expected in plan, expected


def test_persist_secret_and_queue_are_checked() -> None:
    errors = errors_of(with_pool(persist={"cookie": "S", "secret": "short", "max_age": "forever"},
                                 queue={"size": -1, "timeout": "x", "depth": 3}))
    assert any("pools.web.persist.secret: expected a string of at least 16 characters" in e for e in errors)
    assert any("pools.web.persist.max_age: expected a duration" in e for e in errors)
    assert any("pools.web.queue.size:" in e for e in errors)
    assert any("pools.web.queue.timeout: expected a duration" in e for e in errors)
    assert any('pools.web.queue.depth: unknown key "depth"' in e for e in errors)


def test_tcp_listener_pools_cannot_use_http_only_keys() -> None:
    text = """
[listeners.raw]
bind = "127.0.0.1:7000"
mode = "tcp"
pool = "tcp"

[listeners.web]
bind = "127.0.0.1:8080"
accept_proxy = true
idle_timeout = "1m"
routes = [{ pool = "tcp" }]

[pools.tcp]
balance = "hash"
hash_key = "cookie:SID"
persist = { cookie = "SRV" }
members = ["127.0.0.1:7001"]
"""
    errors = errors_of(parse_config_text(text))
    assert any(e.startswith('pools.tcp.persist: tcp listener "raw" uses this pool') for e in errors), errors
    assert any(e.startswith('pools.tcp.hash_key: tcp listener "raw" uses this pool') and 'expected "source_ip"' in e
               for e in errors), errors
    assert any(e.startswith("listeners.web.accept_proxy: a PROXY header is only read from trusted peers")
               for e in errors), errors
    assert any(e.startswith('listeners.web.idle_timeout: only applies to mode = "tcp"') for e in errors), errors


def test_hash_fallback_only_with_hash() -> None:
    errors = errors_of(with_pool(hash_fallback="round_robin"))
    assert any('pools.web.hash_fallback: only applies to balance = "hash"' in e for e in errors), errors
    errors = errors_of(with_pool(balance="hash", hash_fallback="hash"))
    assert any("pools.web.hash_fallback: expected" in e for e in errors), errors
