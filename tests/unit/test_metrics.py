"""node/metrics.py: series registration, recording, the text format, reloads, retired rows."""

from __future__ import annotations

import asyncio
import os
import re
from types import SimpleNamespace

import pytest

from wsproxy.config import parse_config
from wsproxy.node import metrics as metrics_mod
from wsproxy.node.metrics import CLOSE_CODES, HANDSHAKE_RESULTS, Metrics, escape_label
from wsproxy.node.table import ADMIN, DRAINING, HEALTH, HEALTH_DOWN, RTT_US, WEIGHT, NodeTable

# --- a small parser of the exposition format 0.0.4 (strict enough to catch mistakes) --------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(\{{(.*)\}})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"(,|$)')


def _unescape(value: str) -> str:
    return re.sub(r'\\(\\|"|n)', lambda m: {"\\": "\\", '"': '"', "n": "\n"}[m.group(1)], value)


def parse_text(text: str) -> dict[str, dict]:
    """{family: {"type", "help", "samples": {(name, ((label, value), ...)): float}}}; raises
    AssertionError on anything the format does not allow."""
    assert text.endswith("\n"), "the text must end with a newline"
    families: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        assert line, "no blank lines"
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert re.fullmatch(_NAME, name) and name not in families, line
            current = families[name] = {"type": None, "help": help_text, "samples": {}}
            continue
        if line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert current is families.get(name) and current["type"] is None, f"TYPE must follow its HELP: {line}"
            assert kind in ("counter", "gauge"), line
            current["type"] = kind
            continue
        assert not line.startswith("#"), line
        m = _SAMPLE.match(line)
        assert m, f"bad sample line {line!r}"
        name, _, label_text, value = m.groups()
        assert current is not None and current["type"] is not None, line
        family = [k for k, v in families.items() if v is current][0]
        assert name == family, f"sample {name} outside its family {family}"
        if current["type"] == "counter":
            assert name.endswith("_total"), f"counter {name} without _total"
        labels = []
        if label_text:
            pos = 0
            while pos < len(label_text):
                lm = _LABEL.match(label_text, pos)
                assert lm, f"bad labels in {line!r}"
                labels.append((lm.group(1), _unescape(lm.group(2))))
                pos = lm.end()
        key = (name, tuple(labels))
        assert key not in current["samples"], f"duplicate series {line}"
        current["samples"][key] = float(value)
    return families


def sample(families: dict, name: str, **labels) -> float:
    samples = families[name]["samples"]
    for (n, ls), value in samples.items():
        if dict(ls) == labels:
            return value
    raise KeyError(f"{name}{labels} not in {sorted(str(dict(ls)) for (_, ls) in samples)}")


# --- fixtures ---------------------------------------------------------------------------------

CONF = {
    "listeners": {
        "public": {"bind": "127.0.0.1:8080", "routes": [{"pool": "chat"}]},
        "raw": {"bind": "127.0.0.1:7000", "mode": "tcp", "pool": "tcpecho"},
    },
    "pools": {
        "chat": {"members": ["127.0.0.1:9001", "[::1]:9002"],
                 "health": {"type": "tcp", "interval": "2s"}},
        "tcpecho": {"members": ["127.0.0.1:7001"]},
    },
}


def make(conf=CONF, table=None):
    table = table or NodeTable(rows=4, members=16, counters=1024)
    m = Metrics(table)
    m.register(parse_config(conf))
    return m


def relay(frames_in=2, frames_out=3, bytes_in=10, bytes_out=20, code=1000, by="client", tracked=True):
    tracker = SimpleNamespace
    return SimpleNamespace(c2u=tracker(frames=frames_in) if tracked else None,
                           u2c=tracker(frames=frames_out) if tracked else None,
                           bytes_in=bytes_in, bytes_out=bytes_out, close_code=code, closed_by=by)


# --- registration -------------------------------------------------------------------------------

def test_register_creates_every_series_of_the_config():
    m = make()
    f = parse_text(m.render())
    for listener in ("public", "raw"):
        assert sample(f, "wsproxy_connections_total", listener=listener) == 0
        assert sample(f, "wsproxy_connections_active", listener=listener) == 0
        for result in HANDSHAKE_RESULTS:
            assert sample(f, "wsproxy_websocket_handshakes_total", listener=listener, result=result) == 0
    for pool, addr in (("chat", "127.0.0.1:9001"), ("chat", "[::1]:9002"), ("tcpecho", "127.0.0.1:7001")):
        for name in ("wsproxy_member_connections_total", "wsproxy_websocket_sessions_total",
                     "wsproxy_websocket_sessions_active", "wsproxy_drain_closes_total",
                     "wsproxy_rebalance_closes_total", "wsproxy_member_connections", "wsproxy_member_up"):
            sample(f, name, pool=pool, member=addr)
        for state in ("up", "down"):
            assert sample(f, "wsproxy_health_changes_total", pool=pool, member=addr, state=state) == 0
    for pool in ("chat", "tcpecho"):
        for d in ("in", "out"):
            assert sample(f, "wsproxy_websocket_frames_total", pool=pool, direction=d) == 0
            assert sample(f, "wsproxy_websocket_bytes_total", pool=pool, direction=d) == 0
    codes = {dict(ls)["code"] for (_, ls) in f["wsproxy_websocket_closes_total"]["samples"]}
    assert codes == {*(str(c) for c in CLOSE_CODES), "other", "none"}
    closers = {dict(ls)["closed_by"] for (_, ls) in f["wsproxy_websocket_closes_total"]["samples"]}
    assert closers == {"client", "member", "proxy", "unknown"}
    assert sample(f, "wsproxy_config_generation") == 1
    # health checks only for pools that have them
    assert sample(f, "wsproxy_member_health_checks_total", pool="chat", member="127.0.0.1:9001", result="ok") == 0
    with pytest.raises(KeyError):
        sample(f, "wsproxy_member_health_checks_total", pool="tcpecho", member="127.0.0.1:7001", result="ok")


def test_every_family_has_help_type_and_counters_end_in_total():
    f = parse_text(make().render())
    for name, fam in f.items():
        assert fam["help"] and fam["type"] in ("counter", "gauge")
        assert name.startswith("wsproxy_")
        assert (fam["type"] == "counter") == name.endswith("_total"), name


def test_plugins_get_a_series_per_entry(tmp_path):
    plugin = tmp_path / "p.lua"
    plugin.write_text("return {}\n")
    conf = {**CONF, "plugins": [{"path": str(plugin)}]}
    m = make(conf)
    m.plugin_error(0)
    m.plugin_error(0)
    m.plugin_error(7)  # not an entry of this config: the unknown series
    f = parse_text(m.render())
    assert sample(f, "wsproxy_plugin_errors_total", plugin="0", path=str(plugin)) == 2
    assert sample(f, "wsproxy_plugin_errors_total", plugin="unknown", path="unknown") == 1


# --- recording ----------------------------------------------------------------------------------

def test_a_websocket_session_moves_every_counter_it_should():
    m = make()
    conn = m.connection_opened("public")
    m.member_connection("chat", "127.0.0.1:9001")
    ws = m.ws_opened(conn, "chat", "127.0.0.1:9001")
    f = parse_text(m.render())
    assert sample(f, "wsproxy_connections_total", listener="public") == 1
    assert sample(f, "wsproxy_connections_active", listener="public") == 1
    assert sample(f, "wsproxy_websocket_sessions_active", pool="chat", member="127.0.0.1:9001") == 1
    assert sample(f, "wsproxy_websocket_handshakes_total", listener="public", result="101") == 1
    m.ws_closed(conn, ws, relay(frames_in=4, frames_out=5, bytes_in=100, bytes_out=250, code=1001, by="member"))
    f = parse_text(m.render())
    assert sample(f, "wsproxy_connections_total", listener="public") == 1
    assert sample(f, "wsproxy_connections_active", listener="public") == 0
    assert sample(f, "wsproxy_member_connections_total", pool="chat", member="127.0.0.1:9001") == 1
    assert sample(f, "wsproxy_websocket_sessions_total", pool="chat", member="127.0.0.1:9001") == 1
    assert sample(f, "wsproxy_websocket_sessions_active", pool="chat", member="127.0.0.1:9001") == 0
    assert sample(f, "wsproxy_websocket_frames_total", pool="chat", direction="in") == 4
    assert sample(f, "wsproxy_websocket_frames_total", pool="chat", direction="out") == 5
    assert sample(f, "wsproxy_websocket_bytes_total", pool="chat", direction="in") == 100
    assert sample(f, "wsproxy_websocket_bytes_total", pool="chat", direction="out") == 250
    assert sample(f, "wsproxy_websocket_closes_total", code="1001", closed_by="member") == 1
    assert sample(f, "wsproxy_websocket_closes_total", code="1000", closed_by="client") == 0


def test_close_codes_outside_the_list_and_unknown_closers():
    m = make()
    conn = m.connection_opened("public")
    for code, by in ((4000, "client"), (None, "member"), (1012, None), (1011, "somebody")):
        ws = m.ws_opened(conn, "chat", "[::1]:9002")
        m.ws_closed(conn, ws, relay(code=code, by=by, tracked=False))
    f = parse_text(m.render())
    assert sample(f, "wsproxy_websocket_closes_total", code="other", closed_by="client") == 1
    assert sample(f, "wsproxy_websocket_closes_total", code="none", closed_by="member") == 1
    assert sample(f, "wsproxy_websocket_closes_total", code="1012", closed_by="unknown") == 1
    assert sample(f, "wsproxy_websocket_closes_total", code="1011", closed_by="unknown") == 1
    assert sample(f, "wsproxy_websocket_frames_total", pool="chat", direction="in") == 0  # raw relay: none
    assert sample(f, "wsproxy_websocket_bytes_total", pool="chat", direction="in") == 40


@pytest.mark.parametrize("status, member_status, result", [
    (400, None, "4xx"), (403, None, "4xx"), (404, 404, "4xx"),
    (503, 503, "5xx"), (502, None, "member_failed"), (503, None, "member_failed"), (502, 101, "member_failed"),
    (200, 200, "other"), (302, None, "other"), (None, None, "closed"),
])
def test_handshake_results(status, member_status, result):
    m = make()
    conn = m.connection_opened("public")
    m.handshake(conn, status, member_status)
    f = parse_text(m.render())
    for r in HANDSHAKE_RESULTS:
        assert sample(f, "wsproxy_websocket_handshakes_total", listener="public", result=r) == (r == result)


def test_unknown_labels_go_to_the_unknown_series_and_never_raise():
    m = make()
    conn = m.connection_opened("nope")
    m.member_connection("nope", "1.2.3.4:5")
    m.member_connection("chat", "1.2.3.4:5")
    ws = m.ws_opened(conn, "ghost", "1.2.3.4:5")
    m.ws_closed(conn, ws, relay())
    m.health_change("ghost", "x:1", "down")
    m.drain_close("ghost", "x:1")
    m.member_close("rebalance", 999)
    f = parse_text(m.render())
    assert sample(f, "wsproxy_connections_total", listener="unknown") == 1
    assert sample(f, "wsproxy_member_connections_total", pool="unknown", member="unknown") == 2
    assert sample(f, "wsproxy_websocket_sessions_total", pool="unknown", member="unknown") == 1
    assert sample(f, "wsproxy_websocket_handshakes_total", listener="unknown", result="101") == 1
    assert sample(f, "wsproxy_health_changes_total", pool="unknown", member="unknown", state="down") == 1
    assert sample(f, "wsproxy_drain_closes_total", pool="unknown", member="unknown") == 1
    assert sample(f, "wsproxy_rebalance_closes_total", pool="unknown", member="unknown") == 1


def test_control_plane_records():
    m = make()
    table = m.table
    col = table.member_slot("chat", "127.0.0.1:9001")
    m.health_change("chat", "127.0.0.1:9001", "down")
    m.health_change("chat", "127.0.0.1:9001", "up")
    m.health_change("chat", "127.0.0.1:9001", "up")
    m.member_close("drain", col)
    m.member_close("rebalance", col)
    m.rebalance_close("chat", "127.0.0.1:9001", 2)
    f = parse_text(m.render())
    labels = {"pool": "chat", "member": "127.0.0.1:9001"}
    assert sample(f, "wsproxy_health_changes_total", state="down", **labels) == 1
    assert sample(f, "wsproxy_health_changes_total", state="up", **labels) == 2
    assert sample(f, "wsproxy_drain_closes_total", **labels) == 1
    assert sample(f, "wsproxy_rebalance_closes_total", **labels) == 3


def test_member_gauges_come_from_the_table():
    m = make()
    table = m.table
    a = table.member_slot("chat", "127.0.0.1:9001")
    b = table.member_slot("chat", "[::1]:9002")
    table.set_ctrl(a, ADMIN, DRAINING)
    table.set_ctrl(b, HEALTH, HEALTH_DOWN)
    table.set_ctrl(b, RTT_US, 1500)
    table.set_ctrl(b, WEIGHT, 7)
    table.add_conns(a, 3)
    f = parse_text(m.render(generation=5))
    assert sample(f, "wsproxy_member_up", pool="chat", member="127.0.0.1:9001") == 0
    assert sample(f, "wsproxy_member_draining", pool="chat", member="127.0.0.1:9001") == 1
    assert sample(f, "wsproxy_member_connections", pool="chat", member="127.0.0.1:9001") == 3
    assert sample(f, "wsproxy_member_up", pool="chat", member="[::1]:9002") == 0
    assert sample(f, "wsproxy_member_up", pool="tcpecho", member="127.0.0.1:7001") == 1
    assert sample(f, "wsproxy_member_weight", pool="chat", member="[::1]:9002") == 7
    assert sample(f, "wsproxy_member_weight", pool="chat", member="127.0.0.1:9001") == 1
    assert sample(f, "wsproxy_member_health_rtt_seconds", pool="chat", member="[::1]:9002") == 0.0015
    with pytest.raises(KeyError):  # no check has passed yet: no RTT series
        sample(f, "wsproxy_member_health_rtt_seconds", pool="chat", member="127.0.0.1:9001")
    assert sample(f, "wsproxy_config_generation") == 5


def test_passively_ejected_member_is_not_up():
    m = make()
    table = m.table
    gauge = table.counter_slot(("member_ejected", "chat", "127.0.0.1:9001"), "gauge")
    table.add(gauge, 1)
    f = parse_text(m.render())
    assert sample(f, "wsproxy_member_up", pool="chat", member="127.0.0.1:9001") == 0


def test_label_values_are_escaped():
    assert escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    weird = 'we"ird\\na\nme'
    member = SimpleNamespace(addr="10.0.0.1:1", weight=1)
    config = SimpleNamespace(listeners={weird: None},
                             pools={weird: SimpleNamespace(name=weird, members=(member,), health=None)},
                             plugins=())
    m = Metrics(NodeTable(rows=2, members=8, counters=512))
    m.register(config)
    conn = m.connection_opened(weird)
    m.member_connection(weird, "10.0.0.1:1")
    f = parse_text(m.render())
    assert sample(f, "wsproxy_connections_total", listener=weird) == 1
    assert sample(f, "wsproxy_member_connections_total", pool=weird, member="10.0.0.1:1") == 1
    assert sample(f, "wsproxy_member_up", pool=weird, member="10.0.0.1:1") == 1
    m.connection_closed(conn)


# --- reloads, rows, flushing -----------------------------------------------------------------------

def test_reload_only_adds_series_and_keeps_columns():
    m = make()
    conn = m.connection_opened("public")
    m.member_connection("chat", "127.0.0.1:9001")
    before = dict(m.table.counter_slots)
    conf2 = {
        "listeners": {"public": {"bind": "127.0.0.1:8080", "routes": [{"pool": "chat"}]},
                      "extra": {"bind": "127.0.0.1:8081", "routes": [{"pool": "chat"}]}},
        "pools": {"chat": {"members": ["127.0.0.1:9001", "127.0.0.1:9003"]}},
    }
    m.register(parse_config(conf2))
    assert all(m.table.counter_slots[k] == v for k, v in before.items())  # nothing moved
    m.member_connection("chat", "127.0.0.1:9003")
    m.connection_opened("extra")
    f = parse_text(m.render())
    assert sample(f, "wsproxy_config_generation") == 2
    assert sample(f, "wsproxy_member_connections_total", pool="chat", member="127.0.0.1:9001") == 1
    assert sample(f, "wsproxy_member_connections_total", pool="chat", member="127.0.0.1:9003") == 1
    assert sample(f, "wsproxy_connections_total", listener="extra") == 1
    # the removed member's counters stay (monotonic); its gauges go with the config
    assert sample(f, "wsproxy_member_connections_total", pool="chat", member="[::1]:9002") == 0
    with pytest.raises(KeyError):
        sample(f, "wsproxy_member_up", pool="chat", member="[::1]:9002")
    m.connection_closed(conn)


def test_a_retired_row_keeps_counters_and_drops_gauges():
    m = make()
    table = m.table
    row = table.claim_row(12345, 1)
    table.row = row  # this process plays the worker of that row
    conn = m.connection_opened("public")
    m.ws_opened(conn, "chat", "127.0.0.1:9001")  # still open when the worker dies
    m.connection_opened("public")
    m.flush()
    table.row = 0  # back in the control plane
    f = parse_text(m.render())
    assert sample(f, "wsproxy_connections_total", listener="public") == 2
    assert sample(f, "wsproxy_connections_active", listener="public") == 2
    assert sample(f, "wsproxy_websocket_sessions_active", pool="chat", member="127.0.0.1:9001") == 1
    table.retire_row(row)
    f = parse_text(m.render())
    assert sample(f, "wsproxy_connections_total", listener="public") == 2  # never backwards
    assert sample(f, "wsproxy_websocket_sessions_total", pool="chat", member="127.0.0.1:9001") == 1
    assert sample(f, "wsproxy_websocket_handshakes_total", listener="public", result="101") == 1
    assert sample(f, "wsproxy_connections_active", listener="public") == 0  # gone with the process
    assert sample(f, "wsproxy_websocket_sessions_active", pool="chat", member="127.0.0.1:9001") == 0


def test_a_full_table_counts_in_the_unknown_series():
    members = [f"10.0.0.{i}:80" for i in range(1, 60)]
    conf = {"listeners": {"public": {"bind": "127.0.0.1:8080", "routes": [{"pool": "big"}]}},
            "pools": {"big": {"members": members}}}
    table = NodeTable(rows=2, members=128, counters=200)
    m = Metrics(table)
    m.register(parse_config(conf))  # does not raise
    assert len(table.counter_slots) == 200
    for addr in members:
        m.member_connection("big", addr)
    f = parse_text(m.render())
    counted = sum(v for (_, ls), v in f["wsproxy_member_connections_total"]["samples"].items())
    assert counted == len(members)
    assert sample(f, "wsproxy_member_connections_total", pool="unknown", member="unknown") > 0


def test_counts_reach_the_table_by_the_flush_timer(monkeypatch):
    monkeypatch.setattr(metrics_mod, "FLUSH_INTERVAL", 0.02)
    m = make()
    col = m._families["wsproxy_connections_total"].series[("public",)]

    async def main():
        m.connection_opened("public")
        assert m.table.total(col) == 0  # pending in this process
        await asyncio.sleep(0.1)
        assert m.table.total(col) == 1
        m.connection_opened("public")
        await asyncio.sleep(0.1)
        assert m.table.total(col) == 2
        m.stop()

    asyncio.run(main())


def test_a_forked_child_starts_with_no_pending_counts():
    m = make()
    m.connection_opened("public")  # pending in the parent, not flushed
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, str(sum(m._local)).encode())
        finally:
            os._exit(0)
    os.close(write)
    got = os.read(read, 100)
    os.close(read)
    os.waitpid(pid, 0)
    assert got == b"0"
    assert sum(m._local) > 0
    assert m.value("wsproxy_connections_total", "public") == 1


def test_records_before_register_count_as_unknown():
    m = Metrics(NodeTable(rows=2, members=8, counters=512))
    conn = m.connection_opened("public")
    m.member_connection("chat", "127.0.0.1:9001")
    ws = m.ws_opened(conn, "chat", "127.0.0.1:9001")
    m.ws_closed(conn, ws, relay())
    m.plugin_error(0)
    f = parse_text(m.render())
    assert sample(f, "wsproxy_connections_total", listener="unknown") == 1
    assert sample(f, "wsproxy_connections_active", listener="unknown") == 0
    assert sample(f, "wsproxy_websocket_sessions_total", pool="unknown", member="unknown") == 1
    assert sample(f, "wsproxy_plugin_errors_total", plugin="unknown", path="unknown") == 1
    assert sample(f, "wsproxy_websocket_closes_total", code="1000", closed_by="client") == 1
