"""ConnectionPlugins: one client connection's plugins, as the proxy's code sees them.

The runtime (wsproxy.scripting) is sans-I/O: it takes plain objects and returns an
``Outcome``. This module is the thin layer between it and the proxy: it builds the event
objects from the proxy's own heads, writes header edits back into them, keeps the routing
choices (``ctx:use_pool`` / ``use_member`` / ``hash_key``) for the request being routed,
and guarantees CLIENT_CLOSED exactly once. What a verdict does to the connection is decided
by the caller, which knows the phase (session.py before the upgrade, relay.py after).
"""

from __future__ import annotations

import itertools

from wsproxy.scripting.objects import LbInfo, Request, Response

__all__ = ["ConnectionPlugins", "Routing"]

_CONNECTION_IDS = itertools.count(1)  # unique in the worker: the runtime keys Lua state by it


class Routing:
    """A request's routing choices made by plugins (None: not chosen)."""

    __slots__ = ("pool", "member", "strict", "hash_key")

    def __init__(self) -> None:
        self.pool: str | None = None
        self.member: str | None = None
        self.strict = False
        self.hash_key: bytes | None = None

    def merge(self, actions) -> None:
        if actions is None:
            return
        if actions.pool is not None:
            self.pool = actions.pool
        if actions.member is not None:
            self.member, self.strict = actions.member, actions.strict
        if actions.hash_key is not None:
            key = actions.hash_key
            self.hash_key = key if isinstance(key, bytes) else str(key).encode("utf-8", "surrogateescape")

    def copy(self) -> "Routing":
        other = Routing()
        other.pool, other.member, other.strict, other.hash_key = self.pool, self.member, self.strict, self.hash_key
        return other


class ConnectionPlugins:
    __slots__ = ("chain", "session", "accepted_routing", "closed")

    def __init__(self, chain, client_ip: str) -> None:
        self.chain = chain
        self.session = chain.session(next(_CONNECTION_IDS), client_ip)
        self.accepted_routing = Routing()  # choices made at CLIENT_ACCEPTED, for every request
        self.closed = False

    # -- before the upgrade ----------------------------------------------------------
    def accepted(self):
        """CLIENT_ACCEPTED: the verdict (reject, or abort) or None."""
        outcome = self.chain.client_accepted(self.session)
        if outcome is None:
            return None
        self.accepted_routing.merge(outcome.actions)
        return outcome.verdict

    async def request(self, head) -> tuple[object, Routing]:
        """HTTP_REQUEST: (verdict or None, the routing choices). Header edits are written
        into ``head`` (its ``names`` too)."""
        routing = self.accepted_routing.copy()
        self.routed(None, None)  # a new request: no pool or member yet (keep-alive)
        if not self.chain.hooks("HTTP_REQUEST"):
            return None, routing
        req = Request(head.method, head.target, head.headers)
        outcome = await self.chain.http_request(self.session, req)
        if req.edited:
            head.headers = list(req.headers)
            head.names = tuple(name.lower() for name, _ in head.headers)
        if outcome is None:
            return None, routing
        routing.merge(outcome.actions)
        return outcome.verdict, routing

    def routed(self, pool: str, member: str | None) -> None:
        self.session.pool = pool
        self.session.member = member

    def selected(self, pool: str, member: str, attempt: int):
        """LB_SELECTED: a verdict (reselect, abort) or None."""
        if not self.chain.hooks("LB_SELECTED"):
            return None
        self.routed(pool, member)
        outcome = self.chain.lb_selected(self.session, LbInfo(pool, member, attempt))
        return outcome.verdict if outcome is not None else None

    def failed(self, pool: str, member: str | None, attempt: int, reason: str, tried=(), status=None):
        """LB_FAILED: a verdict (reselect, respond, abort) or None."""
        if not self.chain.hooks("LB_FAILED"):
            return None
        outcome = self.chain.lb_failed(self.session, LbInfo(pool, member, attempt, reason, tried, status))
        return outcome.verdict if outcome is not None else None

    async def response(self, rh):
        """HTTP_RESPONSE: header edits are written into ``rh``; returns an abort verdict or None."""
        if not self.chain.hooks("HTTP_RESPONSE"):
            return None
        res = Response(rh.status, rh.headers, rh.reason)
        outcome = await self.chain.http_response(self.session, res)
        if res.edited:
            rh.headers = list(res.headers)
            rh.names = tuple(name.lower() for name, _ in rh.headers)
        return outcome.verdict if outcome is not None else None

    # -- after the upgrade -----------------------------------------------------------
    async def ws_open(self):
        """WS_OPEN: the Outcome (verdict close/abort, actions close/send) or None."""
        if not self.chain.hooks("WS_OPEN") and not self.chain.frame_events:
            return None
        return await self.chain.ws_open(self.session)

    def ws_close(self, dir: str, code: int, reason: str = "") -> None:
        if self.chain.hooks("WS_CLOSE"):
            self.chain.ws_close(self.session, dir, code, reason)

    def close(self) -> None:
        """CLIENT_CLOSED, exactly once per connection, whatever ended it."""
        if not self.closed:
            self.closed = True
            self.chain.client_closed(self.session)
