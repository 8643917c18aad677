"""A real Socket.IO cluster behind wsproxy: sticky sessions by cookie (issue #3).

Two python-socketio servers (AsyncServer under aiohttp, ``servers/socketio_server.py``)
share their broadcasts through a real redis-server (``socketio.AsyncRedisManager``); wsproxy
balances them round robin with ``persist = { cookie = "WSPROXY_SRV" }``. Engine.IO keeps each
session in the memory of the member that opened it, so every request of a long-polling
client (and its WebSocket upgrade) must reach that member: the other one answers
400 "Invalid session".

- with persistence, clients of the three transport setups (default: long-polling, then the
  upgrade to WebSocket; polling only; WebSocket only) connect, exchange acked messages and
  stay on one server, and a broadcast from a client on either server reaches every client;
- without persistence (the negative control, which shows these tests can fail), polling
  clients break: the other member answers 400 for their sid, and their connect fails;
- a client that does not keep the cookie is not sticky either (aiohttp's default cookie
  jar ignores cookies from IP-address hosts such as 127.0.0.1; see ``SioClient``).

redis-server comes from the Debian package ``redis-server`` (``.ci/run`` installs it); when it
is missing these tests fail with that hint, they do not skip.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass

import aiohttp
import pytest
import socketio

from .redis_support import start_redis
from .support import Member, run, site_conf, start_member, wait_until

COOKIE = "WSPROXY_SRV"
KINDS = ("default", "polling", "websocket")
TRANSPORTS = {"default": None, "polling": ["polling"], "websocket": ["websocket"]}
# A short heartbeat: each long poll lasts about a second, so a polling client sends a new
# request (a new balancing decision without stickiness) every second, and a client whose
# session broke gives up quickly. A short ping timeout too: python-engineio's server leaves
# the long poll that a polling client has pending when it disconnects unanswered until
# ping_interval + ping_timeout (25 s + 20 s by default), answers it 400 then, and the client's
# disconnect() waits for it.
PING_INTERVAL = "1"
PING_TIMEOUT = "2"

_client_ids = itertools.count(1)


# ----------------------------------------------------------------------------- cluster

@dataclass
class Cluster:
    redis_url: str
    a: Member
    b: Member

    @property
    def members(self) -> tuple[Member, Member]:
        return self.a, self.b

    def by_name(self, name: str) -> Member:
        return {"a": self.a, "b": self.b}[name]

    def records(self, kind: str | None = None) -> list[dict]:
        return [r for m in self.members for r in m.records() if kind is None or r["kind"] == kind]

    def opener_of(self, eio_sid: str) -> str | None:
        """The member that handed out this Engine.IO sid (polling handshakes only)."""
        return next((r["name"] for r in self.records("open") if r["sid"] == eio_sid), None)

    def connect_record(self, sid: str) -> dict | None:
        """The Socket.IO connect record of this Socket.IO sid (it carries the Engine.IO sid)."""
        return next((r for r in self.records("connect") if r["sid"] == sid), None)


@pytest.fixture
def cluster(tmp_path):
    """redis-server on a free port and two Socket.IO members subscribed to it."""
    redis_server = start_redis(tmp_path)
    started: list[Member] = []
    try:
        for name in ("a", "b"):
            started.append(start_member("socketio_server.py", name, tmp_path, record=True,
                                        extra_args=("--redis", redis_server.url,
                                                    "--ping-interval", PING_INTERVAL,
                                                    "--ping-timeout", PING_TIMEOUT)))
        # Both members' Redis listeners are subscribed before any broadcast is sent.
        def numsub() -> int:
            return redis_server.command("PUBSUB", "NUMSUB", "socketio")[1]

        assert wait_until(lambda: numsub() >= 2, 10), f"{numsub()} of the 2 members subscribed to redis"
        yield Cluster(redis_server.url, *started)
    finally:
        for m in started:
            m.kill()
        redis_server.stop()


def cluster_conf(cluster: Cluster, *, persist: bool) -> str:
    pool = {"balance": "round_robin", "members": [cluster.a.addr, cluster.b.addr]}
    if persist:
        pool["persist"] = {"cookie": COOKIE}
    return site_conf({"socketio": pool}, routes=[{"path_prefix": "/socket.io/", "pool": "socketio"}])


# ----------------------------------------------------------------------------- client

class SioClient:
    """A ``socketio.AsyncClient`` of one transport setup, recording its acks and broadcasts.

    Cookies: python-socketio's asyncio client does its HTTP through an aiohttp ClientSession
    (long polling and the WebSocket handshake alike), and the session's cookie jar is what
    returns the proxy's sticky cookie. aiohttp's default ``CookieJar`` silently ignores
    cookies set by an IP-address host such as 127.0.0.1 (RFC 6265 domain matching), so a
    client given ``http://127.0.0.1:PORT`` never sends the cookie back and is not sticky.
    The fix is to hand the client a session whose jar accepts them,
    ``http_session=aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))``
    (``keep_cookies=True``, the default here), or to use a host name (``localhost``).
    A session passed in is not closed by the client: ``close()`` does it. One session per
    client: a shared jar would share the cookie, hence the member, between clients.
    """

    def __init__(self, kind: str, *, keep_cookies: bool = True) -> None:
        self.kind = kind
        self.id = next(_client_ids)
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) if keep_cookies else None
        self.sio = socketio.AsyncClient(reconnection=False, handle_sigint=False, http_session=self.http)
        self.answers: list[dict] = []
        self.broadcasts: list[dict] = []
        self.error: Exception | None = None
        self.sio.on("broadcast", self._on_broadcast)

    async def _on_broadcast(self, data) -> None:
        self.broadcasts.append(data)

    def __repr__(self) -> str:
        return f"<{self.kind} client {self.id} servers={sorted(self.servers)} error={self.error!r}>"

    @property
    def servers(self) -> set[str]:
        return {a["server"] for a in self.answers}

    @property
    def sid(self) -> str | None:
        return self.answers[0]["sid"] if self.answers and "sid" in self.answers[0] else None

    async def connect(self, url: str, *, wait_timeout: float = 5) -> bool:
        try:
            await self.sio.connect(url, transports=TRANSPORTS[self.kind], wait_timeout=wait_timeout)
            return True
        except socketio.exceptions.ConnectionError as exc:
            self.error = exc
            return False

    async def exchange(self, rounds: int = 4, pause: float = 0.4) -> None:
        """Acked messages both ways python-socketio offers: ``call`` (awaits the ack) and
        ``emit`` with an ack callback; every answer names the server that gave it."""
        loop = asyncio.get_running_loop()
        for i in range(rounds):
            got = loop.create_future()
            await self.sio.emit("whoami", callback=lambda ans, got=got: got.done() or got.set_result(ans))
            self.answers.append(await asyncio.wait_for(got, 5))
            token = f"c{self.id}-{i}"
            ans = await self.sio.call("echo", {"token": token}, timeout=5)
            assert ans["data"] == {"token": token}, ans
            self.answers.append(ans)
            await asyncio.sleep(pause)

    def cookie(self) -> str | None:
        """The sticky cookie this client holds, if any."""
        if self.http is None:
            return None
        return next((m.value for m in self.http.cookie_jar if m.key == COOKIE), None)

    async def close(self) -> None:
        try:
            await self.sio.disconnect()
        finally:
            if self.http is not None:
                await self.http.close()


async def wait_for_broadcasts(client: SioClient, n: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while len(client.broadcasts) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    got = len(client.broadcasts)
    assert got >= n, f"{client}: {got} of {n} broadcasts: {client.broadcasts}"


def sids_in_path(path: str) -> str | None:
    for part in path.split("?", 1)[-1].split("&"):
        if part.startswith("sid="):
            return part[4:]
    return None


# ----------------------------------------------------------------------------- direct

def test_cluster_direct_broadcast_through_redis(cluster):
    """Sanity check of the cluster itself, no proxy: each member answers with its own name,
    and a broadcast sent on either member reaches a client of the other through Redis."""

    async def main():
        clients = {"a": SioClient("websocket"), "b": SioClient("polling")}
        try:
            for name, c in clients.items():
                assert await c.connect(cluster.by_name(name).url), c.error
                await c.exchange(rounds=2, pause=0)
                assert c.servers == {name}, c.answers
            for name, c in clients.items():
                await c.sio.call("shout", f"from-{name}", timeout=5)
            expected = [{"from": "a", "data": "from-a"}, {"from": "b", "data": "from-b"}]
            for c in clients.values():
                await wait_for_broadcasts(c, 2)
                assert sorted(c.broadcasts, key=lambda d: d["from"]) == expected, c.broadcasts
        finally:
            for c in clients.values():
                await c.close()

    run(main(), timeout=30)


# ----------------------------------------------------------------------------- sticky

def test_sticky_cookie_keeps_every_transport_on_one_server(cluster, proxy):
    """persist = { cookie }: three clients of each transport setup, connected at once, each
    stay on one server for every acked message (across several long-poll heartbeats and,
    for the default setup, the upgrade to WebSocket); broadcasts from a client on each
    server reach all nine; no member ever saw a request for a session it does not hold."""
    p = proxy(cluster_conf(cluster, persist=True))
    url = p.url
    clients: list[SioClient] = []

    async def main():
        clients.extend(SioClient(kind) for kind in KINDS for _ in range(3))  # inside the loop
        try:
            connected = await asyncio.gather(*(c.connect(url) for c in clients))
            assert all(connected), [c for c in clients if c.error]
            await asyncio.gather(*(c.exchange() for c in clients))
            on = {name: next((c for c in clients if c.servers == {name}), None) for name in ("a", "b")}
            assert on["a"] and on["b"], f"round robin left a server without clients: {clients}"
            for name, c in on.items():
                assert await c.sio.call("shout", f"hello-from-{name}", timeout=5) == {"server": name}
            for c in clients:
                await wait_for_broadcasts(c, 2)
            transports = {c.id: c.sio.transport() for c in clients}
            cookies = {c.id: c.cookie() for c in clients}
        finally:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        return transports, cookies

    transports, cookies = run(main(), timeout=60)

    expected = [{"from": "a", "data": "hello-from-a"}, {"from": "b", "data": "hello-from-b"}]
    for c in clients:
        assert len(c.servers) == 1, f"{c} was answered by both servers: {c.answers}"
        assert len(c.answers) == 8 and len({a["sid"] for a in c.answers if "sid" in a}) == 1, c.answers
        assert sorted(c.broadcasts, key=lambda d: d["from"]) == expected, (c, c.broadcasts)
        want = "polling" if c.kind == "polling" else "websocket"
        assert transports[c.id] == want and c.answers[-1]["transport"] == want, (c, transports[c.id])
        # the cookie came with the polling handshake, or with the 101 of a WebSocket-only
        # client (which needs it only to come back to the same server after a reconnect)
        assert cookies[c.id], f"{c} holds no {COOKIE} cookie"
    # one cookie value per server
    values = {name: {cookies[c.id] for c in clients if c.servers == {name}} for name in ("a", "b")}
    assert len(values["a"]) == 1 and len(values["b"]) == 1 and values["a"] != values["b"], values
    print("clients per server:", {n: sorted(f"{c.kind}#{c.id}" for c in clients if c.servers == {n})
                                   for n in ("a", "b")})

    # The members' own view: every request for a session reached the member holding it
    # (the one that opened it, or took the WebSocket-only connection). That member may have
    # answered one 400 itself: its late answer to the long poll that a polling client left
    # pending when it disconnected (see PING_TIMEOUT).
    wait_until(lambda: len(cluster.records("disconnect")) >= len(clients), 5)
    http = cluster.records("http")
    for c in clients:
        rec = cluster.connect_record(c.sid)
        assert rec is not None and {rec["name"]} == c.servers, (c, rec)
        owner, eio_sid = rec["name"], rec["eio_sid"]
        on_sid = {(r["name"], r["transport"], r["status"]) for r in http if r["sid"] == eio_sid}
        assert {name for name, _, _ in on_sid} <= {owner}, f"{c}: requests for {eio_sid} reached {on_sid}"
        if c.kind != "websocket":
            assert cluster.opener_of(eio_sid) == owner, (c, eio_sid)
        if c.kind == "default":  # polled, then upgraded on the same member
            assert (owner, "websocket", 101) in on_sid, (c, on_sid)
    # The proxy's cookie is its own: it is not passed on to the members.
    assert not [r for r in http if COOKIE in r.get("cookies", [])], "the sticky cookie reached a member"


# ----------------------------------------------------------------------------- negative

def failed_sessions(cluster: Cluster, p, before: set[str]) -> list[tuple[str, str, set[str], list]]:
    """Engine.IO sessions opened since ``before``, as (sid, opener, refusers, proxy log lines):
    the member that handed out the sid, the members that answered 400 for it, and the
    proxy's access log lines of those 400s."""
    out = []
    http = cluster.records("http")
    for r in cluster.records("open"):
        sid = r["sid"]
        if sid in before:
            continue
        refusers = {h["name"] for h in http if h["sid"] == sid and h["status"] == 400}
        lines = [line for line in p.access_logs("http")
                 if sids_in_path(line.get("path", "")) == sid and line.get("status") == 400]
        out.append((sid, r["name"], refusers, lines))
    return out


async def one_by_one(url: str, kinds, *, keep_cookies: bool) -> list[SioClient]:
    """Clients connected one at a time, each exchanging acked messages once connected.

    A failed client is closed at once; the others stay connected until every client has
    had its turn, then close together (a polling client's close takes up to
    ping_interval + ping_timeout). Run the polling kinds first: nothing else is then in
    flight while they connect (a WebSocket's heartbeats stay on its own connection), so
    round robin strictly alternates between the members for their requests.
    """
    clients = []
    try:
        for kind in kinds:
            c = SioClient(kind, keep_cookies=keep_cookies)
            clients.append(c)
            if await c.connect(url, wait_timeout=1):
                try:
                    await c.exchange(rounds=3, pause=0.2)
                except (TimeoutError, socketio.exceptions.TimeoutError) as exc:
                    c.error = exc
            if c.error is not None:
                await c.close()
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    return clients


NO_NAMESPACE = "Unexpected connection error"  # python-socketio: the namespace CONNECT got no answer


def assert_polling_broke(cluster: Cluster, p, clients: list[SioClient], opened_before: set[str]) -> None:
    """Every polling or default client failed to connect, because the member that did not
    open its session answered 400 to a request for it; WebSocket-only clients worked."""
    for c in clients:
        if c.kind == "websocket":
            assert c.error is None and len(c.servers) == 1, c
        else:
            assert isinstance(c.error, socketio.exceptions.ConnectionError), c
            assert str(c.error) == NO_NAMESPACE, c
            assert not c.answers, c
    sessions = failed_sessions(cluster, p, opened_before)
    polled = [c for c in clients if c.kind != "websocket"]
    assert len(sessions) == len(polled), sessions
    for sid, opener, refusers, lines in sessions:
        others = refusers - {opener}
        assert others, f"session {sid} opened by {opener}: no other member refused it ({refusers})"
        for other in others:
            addr = cluster.by_name(other).addr
            assert any(l.get("member") == addr for l in lines), \
                f"the proxy log has no 400 from {addr} for sid {sid}: {lines}"


def test_without_persistence_polling_clients_break(cluster, proxy):
    """The negative control: the same cluster behind plain round robin. A polling client's
    requests alternate between the members; the one that did not open its session answers
    400 "Invalid session", so its Socket.IO connect never completes. A WebSocket-only client
    (one connection, no later balancing decision) still works."""
    p = proxy(cluster_conf(cluster, persist=False))
    opened_before = {r["sid"] for r in cluster.records("open")}
    kinds = ["polling", "default", "websocket"]
    clients = run(one_by_one(p.url, kinds, keep_cookies=True), timeout=60)
    assert_polling_broke(cluster, p, clients, opened_before)
    assert "Invalid session" in cluster.a.output() + cluster.b.output()


def test_client_that_drops_the_cookie_is_not_sticky(cluster, proxy):
    """persist is on, but python-socketio's default client (aiohttp's default cookie jar)
    talking to http://127.0.0.1:PORT ignores the Set-Cookie: it breaks exactly like the
    negative control. Given ``localhost`` instead, the same default client keeps the cookie
    and stays on one server. So the cookie is what makes the sessions stick."""
    p = proxy(cluster_conf(cluster, persist=True))
    opened_before = {r["sid"] for r in cluster.records("open")}
    clients = run(one_by_one(p.url, ["polling", "default", "websocket"], keep_cookies=False), timeout=60)
    assert_polling_broke(cluster, p, clients, opened_before)

    by_name = run(one_by_one(f"http://localhost:{p.port}", ["polling", "default"], keep_cookies=False),
                  timeout=60)
    for c in by_name:
        assert c.error is None and len(c.servers) == 1 and len(c.answers) == 6, c
