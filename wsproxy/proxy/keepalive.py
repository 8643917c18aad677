"""Keep-alive on both legs: when to ping a leg of a WebSocket, and when a leg is dead.

Per route, ``ping_interval`` (0 = off, the default) and ``pong_timeout``
(``config.schema.effective_keepalive``). No load balancer pings WebSockets itself (research
anchors-features.md §1 item 5, §4.2 item 6): idle WebSockets die in NAT tables and behind
other proxies' idle timers, and a peer that vanished without a FIN goes unnoticed. Here the
proxy pings both legs, answers nothing (the peers answer our pings), and keeps what it
learns to itself:

- Every ``ping_interval`` each leg gets a Ping carrying the process's ``TOKEN``: unmasked to
  the client, masked to the member. It goes in between frames of the stream towards that
  leg (a control frame may sit between the fragments of a message, never inside a frame):
  if that stream is inside a frame at the sweep, the relay core sends it at the frame's end
  (``KeepAlive.want``, protocol/relay_core.py).
- The Pongs carrying ``TOKEN`` are cut out of the stream by the relay core: the other side
  never sees them. Any other Pong (an application's own ping/pong) passes untouched.
- A leg is alive when its Pong comes back within ``pong_timeout`` of our Ping, and also
  while it keeps sending: any data from the leg while we wait pushes the deadline another
  ``pong_timeout`` away. That is Envoy's rule for its HTTP/2 keepalive since 1.23
  (envoyproxy/envoy#21077: "if we receive *any* frame extend the timeout", because the PING
  ACK may be queued behind other frames) and Kestrel's (KeepAlivePingTimeout: closed if no
  frame arrives within it). For WebSockets it is more than a courtesy: our Ping to a slow
  reader waits behind the data we already sent it, and a peer in the middle of sending a
  large frame cannot answer before that frame ends (no control frame inside a frame), so a
  pong-only rule would cut healthy connections under load. A peer that sends but never
  answers is therefore kept; one that neither sends nor answers is dead.
- A dead leg is aborted (no Close can be expected from it) and the live side gets Close 1001
  at a frame boundary, as relay.py does for 1014; the access log says why (closed_by
  "proxy", reason "member did not answer a ping within 5s").
- While the keep-alive runs, ``ws_idle_timeout`` does not close the WebSocket: the pings
  judge it (relay.py, ``idle_tick``). Only a stream stuck inside a frame, where no Ping can
  go, is left to the idle timeout.
- Keep-alive needs frame boundaries: a raw relay cannot ping. Config validation refuses a
  route that sets ``ping_interval`` and is raw; a pool's ``ping_interval`` applies to its
  track and inspect routes only, and its raw routes log a warning once (``ignored``).

Timers: one sweep for every relay with keep-alive (a TimerHandle per WebSocket would cost
about 600 bytes each, see idle.py), every quarter of the shortest interval or timeout
registered (at most 5 s). A ping thus leaves up to one period late, and a dead leg is closed
between ``pong_timeout`` and ``pong_timeout`` + one period after its Ping. Relays start their
first Ping at a random point of the last 15 % of the interval (Envoy's jitter), so
connections opened together do not ping together.
"""

from __future__ import annotations

import logging
import os
import random

from wsproxy.logs import event
from wsproxy.protocol.relay_core import LEG_CLIENT, LEG_MEMBER
from wsproxy.proxy.idle import Sweeper

__all__ = ["TOKEN", "KeepAliveSweeper", "first_due"]

# The payload of our Pings, per process: a Pong carrying it answers us. Random, so that an
# application's own ping (relayed untouched) cannot collide with it.
TOKEN = os.urandom(8)
JITTER = 0.15


def first_due(now: float, interval: float) -> float:
    """When a new relay's first Ping is due."""
    return now + interval * (1.0 - JITTER * random.random())


class KeepAliveSweeper(Sweeper):
    """Walks the relays with keep-alive (``relay.ka`` set, ``relay.keepalive_open()``)."""

    def __init__(self) -> None:
        super().__init__()
        self.warned: set[str] = set()  # routes whose ping_interval a raw relay ignores

    def ignored(self, route: str, interval: float) -> None:
        """A WebSocket of ``route`` got a raw relay although its pool pings: say so once."""
        if route not in self.warned:
            self.warned.add(route)
            event(logging.WARNING, 'ping_interval ignored: keep-alive needs relay = "track" or "inspect", '
                  "and this route's relay is raw", route=route, ping_interval=interval)

    def period_of(self, relay) -> float:
        ka = relay.ka
        return min(ka.interval, ka.timeout) / 4

    def tick(self, relay, now: float) -> None:
        if not relay.keepalive_open():
            relay.stop_keepalive()
            return
        ka = relay.ka
        if not self._leg(relay, ka, LEG_CLIENT, now):
            self._leg(relay, ka, LEG_MEMBER, now)

    @staticmethod
    def _leg(relay, ka, bit: int, now: float) -> bool:
        """One leg's turn; True if it was found dead (the relay is closing)."""
        client = bit == LEG_CLIENT
        deadline = ka.deadline_client if client else ka.deadline_member
        if ka.answered & bit:  # our Pong came back
            ka.answered &= ~bit
            deadline = 0.0
        elif deadline:
            if ka.heard & bit:  # the leg sent something while we wait: alive, wait on
                ka.heard &= ~bit
                deadline = now + ka.timeout
            elif now >= deadline:
                relay.leg_silent(bit)
                return True
        if client:
            ka.deadline_client = deadline
        else:
            ka.deadline_member = deadline
        if not deadline and not ka.want & bit and now >= (ka.due_client if client else ka.due_member):
            if relay.out_at_boundary(bit):
                relay.ping(bit, now)
            else:
                ka.want |= bit  # the relay core sends it at that stream's next frame boundary
        return False
