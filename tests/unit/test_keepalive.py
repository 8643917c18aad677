"""Keep-alive: the sweeper's policy (proxy/keepalive.py) on a scripted relay, the config rule
(no pings on raw routes), and WsRelay in-process between real sockets on both loops: what
keep-alive on and off register, pings and absorbed pongs, a silent leg closed."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvloop

from wsproxy.config import parse_config
from wsproxy.errors import ConfigErrors
from wsproxy.protocol import frames as py_frames
from wsproxy.protocol.relay_core import LEG_CLIENT, LEG_MEMBER, KeepAlive
from wsproxy.proxy import keepalive
from wsproxy.proxy.idle import MIN_PERIOD, IdleSweeper
from wsproxy.proxy.keepalive import KeepAliveSweeper

# ----------------------------------------------------------------------------- policy


class ScriptedRelay:
    """What the sweeper uses of a relay; records what it was asked to do."""

    def __init__(self, interval=1.0, timeout=2.0, boundary=True) -> None:
        self.ka = KeepAlive(b"token")
        self.ka.interval, self.ka.timeout = interval, timeout
        self.ka.due_client = self.ka.due_member = 10.0
        self.open = True
        self.boundary = boundary
        self.done: list = []

    def keepalive_open(self):
        return self.open

    def stop_keepalive(self):
        self.done.append("stop")

    def out_at_boundary(self, bit):
        return self.boundary

    def ping(self, bit, now):
        self.done.append(("ping", bit, now))
        ka = self.ka
        if bit == LEG_CLIENT:
            ka.deadline_client, ka.due_client = now + ka.timeout, now + ka.interval
        else:
            ka.deadline_member, ka.due_member = now + ka.timeout, now + ka.interval

    def leg_silent(self, bit):
        self.done.append(("silent", bit))


def test_pings_each_leg_when_due_and_waits_for_the_answer():
    sweeper, relay = KeepAliveSweeper(), ScriptedRelay()
    sweeper.tick(relay, 9.9)
    assert relay.done == []
    sweeper.tick(relay, 10.0)
    assert relay.done == [("ping", LEG_CLIENT, 10.0), ("ping", LEG_MEMBER, 10.0)]
    relay.ka.answered = LEG_CLIENT  # the client's pong came back; the member's did not
    sweeper.tick(relay, 10.5)
    assert relay.ka.deadline_client == 0.0 and relay.ka.deadline_member == 12.0 and relay.ka.answered == 0
    assert len(relay.done) == 2
    sweeper.tick(relay, 11.0)  # the next ping is due interval after the last one
    assert relay.done[2:] == [("ping", LEG_CLIENT, 11.0)]
    relay.ka.answered = LEG_MEMBER
    sweeper.tick(relay, 11.5)  # answered late, and already due again
    assert relay.ka.deadline_member == 13.5 and relay.done[3:] == [("ping", LEG_MEMBER, 11.5)]


def test_a_silent_leg_is_reported_once_its_deadline_passes():
    sweeper, relay = KeepAliveSweeper(), ScriptedRelay()
    sweeper.tick(relay, 10.0)
    relay.ka.answered = LEG_CLIENT
    sweeper.tick(relay, 11.99)
    assert ("silent", LEG_MEMBER) not in relay.done
    sweeper.tick(relay, 12.0)
    assert relay.done[-1] == ("silent", LEG_MEMBER)


def test_data_from_a_leg_while_it_owes_a_pong_extends_its_deadline():
    sweeper, relay = KeepAliveSweeper(), ScriptedRelay()
    sweeper.tick(relay, 10.0)
    relay.ka.heard = LEG_MEMBER | LEG_CLIENT
    sweeper.tick(relay, 11.5)
    assert relay.ka.deadline_member == relay.ka.deadline_client == 13.5 and relay.ka.heard == 0
    sweeper.tick(relay, 13.4)
    assert not any(d[0] == "silent" for d in relay.done if isinstance(d, tuple))
    sweeper.tick(relay, 13.5)
    assert relay.done[-1] == ("silent", LEG_CLIENT)  # the client leg is looked at first


def test_a_ping_owed_mid_frame_is_left_to_the_relay_core():
    sweeper, relay = KeepAliveSweeper(), ScriptedRelay(boundary=False)
    sweeper.tick(relay, 10.0)
    assert relay.done == [] and relay.ka.want == LEG_CLIENT | LEG_MEMBER
    sweeper.tick(relay, 50.0)  # no deadline runs while the ping has not gone
    assert relay.done == []


def test_a_closing_relay_stops_its_keepalive():
    sweeper, relay = KeepAliveSweeper(), ScriptedRelay()
    relay.open = False
    sweeper.tick(relay, 10.0)
    assert relay.done == ["stop"]


def test_sweep_period_and_first_ping():
    sweeper = KeepAliveSweeper()
    assert sweeper.period_of(ScriptedRelay(interval=20.0, timeout=8.0)) == 2.0
    for _ in range(100):
        due = keepalive.first_due(100.0, 20.0)
        assert 117.0 <= due <= 120.0
    assert len(keepalive.TOKEN) == 8


# ----------------------------------------------------------------------------- config


def conf(pool: dict, route: dict | None = None) -> dict:
    return {"listeners": {"pub": {"bind": "127.0.0.1:1", "routes": [{"pool": "p", **(route or {})}]}},
            "pools": {"p": {"members": ["127.0.0.1:2"], **pool}}}


def errors(data: dict) -> list[str]:
    try:
        parse_config(data)
    except ConfigErrors as exc:
        return [str(e) for e in exc.errors]
    return []


def test_config_refuses_a_raw_route_that_asks_for_pings():
    assert errors(conf({"ping_interval": "20s"})) == []
    assert errors(conf({"ping_interval": "20s", "relay": "raw"}, {"relay": "track"})) == []
    assert errors(conf({"relay": "raw"}, {"ping_interval": "0s"})) == []
    # a pool's ping_interval is ignored on its raw routes (a warning at their first WebSocket)
    assert errors(conf({"relay": "raw", "ping_interval": "20s"})) == []
    assert errors(conf({"ping_interval": "5s"}, {"relay": "raw"})) == []
    (one,) = errors(conf({}, {"relay": "raw", "ping_interval": "5s"}))
    assert one.startswith("listeners.pub.routes[0].ping_interval:") and 'relay = "track" or "inspect"' in one
    (one,) = errors(conf({"relay": "raw"}, {"ping_interval": "5s"}))
    assert one.startswith("listeners.pub.routes[0].ping_interval:")


def test_raw_relay_ignores_keepalive_and_the_route_warns_once(caplog):
    sweeper = KeepAliveSweeper()
    with caplog.at_level("WARNING", logger="wsproxy"):
        sweeper.ignored("public.routes[1]", 20.0)
        sweeper.ignored("public.routes[1]", 20.0)
    assert [r.getMessage() for r in caplog.records].count(
        'ping_interval ignored: keep-alive needs relay = "track" or "inspect", and this route\'s relay is raw') == 1


def test_route_values_override_the_pool():
    from wsproxy.config.schema import effective_keepalive

    config = parse_config(conf({"ping_interval": "20s", "pong_timeout": "5s"}, {"pong_timeout": "1s"}))
    route = config.listeners["pub"].routes[0]
    assert effective_keepalive(config, route) == (20.0, 1.0)


# ----------------------------------------------------------------------------- WsRelay, real sockets

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


async def accepted(loop):
    from wsproxy.proxy.endpoint import Endpoint

    with socket.create_server(("127.0.0.1", 0)) as lsock:
        outside = socket.create_connection(lsock.getsockname())
        inside, _ = lsock.accept()
    outside.setblocking(False)
    _, ep = await loop.connect_accepted_socket(Endpoint, inside)
    return outside, ep


async def frames_until(loop, sock, parser, pred, timeout=5.0):
    got = []
    async def read():
        while not any(pred(f) for f in got):
            data = await loop.sock_recv(sock, 65536)
            if not data:
                return
            got.extend(parser.feed(data))
    await asyncio.wait_for(read(), timeout)
    return got


async def relay_session(interval: float, member_answers: bool):
    from wsproxy.proxy.relay import WsRelay

    loop = asyncio.get_running_loop()
    sweeper = IdleSweeper()
    client_out, client_ep = await accepted(loop)
    member_out, member_ep = await accepted(loop)
    relay = WsRelay(client_ep, member_ep, mode="track", rsv=0, idle_timeout=60, sweeper=sweeper)
    relay.use_keepalive(interval, 0.3)
    relay.start(b"", b"")
    result = {"ka": relay.ka, "registered": relay in sweeper.keepalive.relays,
              "timer": sweeper.keepalive._handle is not None}
    if interval <= 0:
        await asyncio.sleep(0.2)
        client_out.close()
        member_out.close()
        await asyncio.wait_for(relay.done, 5)
        sweeper.close()
        return result
    to_client, to_member = py_frames.FrameReader(masked=False), py_frames.FrameReader(masked=True)
    got = await frames_until(loop, client_out, to_client, lambda f: f.opcode == 9)
    ping = next(f for f in got if f.opcode == 9)
    await loop.sock_sendall(client_out, py_frames.build_frame(10, ping.payload, mask=True))
    got = await frames_until(loop, member_out, to_member, lambda f: f.opcode == 9)
    if member_answers:
        await loop.sock_sendall(member_out, py_frames.build_frame(10, ping.payload, mask=False))
    await loop.sock_sendall(client_out, py_frames.build_frame(1, b"data", mask=True))
    got += await frames_until(loop, member_out, to_member, lambda f: f.opcode == 1)
    result["member_got"] = [(f.opcode, f.payload) for f in got]
    if member_answers:
        await asyncio.sleep(0.3)
        result["answered_open"] = not relay.done.done()
        client_out.close()
        member_out.close()
    else:
        closing = await frames_until(loop, client_out, to_client, lambda f: f.opcode == 8, timeout=3)
        result["client_close"] = py_frames.parse_close_payload(closing[-1].payload)
        client_out.close()
    await asyncio.wait_for(relay.done, 5)
    result["reason"], result["closed_by"] = relay.reason, relay.closed_by
    result["registered_after"] = relay in sweeper.keepalive.relays
    member_out.close()
    sweeper.close()
    return result


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_keepalive_off_registers_nothing(loop_name):
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        result = runner.run(relay_session(0, True))
    assert result == {"ka": None, "registered": False, "timer": False}


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_keepalive_on_pings_absorbs_and_closes_a_silent_leg(loop_name):
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        answered = runner.run(relay_session(0.1, True))
        silent = runner.run(relay_session(0.1, False))
    assert answered["registered"] and answered["timer"] and answered["answered_open"]
    token = keepalive.TOKEN
    # the member got our masked ping and the client's data, never the client's pong
    assert answered["member_got"][0] == (9, token) and (1, b"data") in answered["member_got"]
    assert all(op != 10 for op, _ in answered["member_got"])
    assert not answered["registered_after"]
    assert silent["client_close"][0] == 1001
    assert silent["closed_by"] == "proxy" and silent["reason"] == "member did not answer a ping within 0.3s"
    assert MIN_PERIOD <= 0.3 / 4
