"""InspectRelay: relay = "inspect", the mode of routes whose plugins hook WS_FRAME or
WS_MESSAGE (ARCHITECTURE.md principle 3; PLUGINS.md).

Each direction's bytes are parsed into whole frames (``FrameReader``, C when built, which
keeps every frame's wire bytes) and, where WS_MESSAGE is hooked, into messages
(``MessageAssembler``). Plugins decide per frame or message:

- pass: the ORIGINAL bytes go on (no re-framing, the client's mask kept);
- replace: the new payload is framed again; towards the member it is masked with a fresh
  key from ``os.urandom`` (RFC 6455 §5.3), towards the client unmasked;
- drop: nothing goes on (a dropped Close is not dropped: Close frames always pass);
- close: Close(code, reason) to both peers, as WsRelay does for its own closes.

Whatever is forwarded goes through the track-mode core (RelayCore.on_data with the
direction's FrameTracker), so closing handshakes, Close injection at frame boundaries,
violations (1002/1007/1009), counters and the idle timeout work exactly as in track mode.

Limits (the route's ``max_message_size``, ``max_frame_size``, ``validate_utf8``): a frame is
refused (1009) from its header, before it is buffered, when it is over ``max_frame_size`` or
over the message limit; a message, by the assembler (WS_MESSAGE routes) or else by the core's
trackers, which also check UTF-8 when the route asks (the assembler always does). Inspect mode
buffers whole frames and messages, so a ``max_message_size`` of 0 still means MAX_MESSAGE here.
A violation closes as in track mode (proxy/relay.py), except that the member's answer to our
1001 is not waited for: it would reach the client without passing the plugins.

permessage-deflate is stripped from the handshake on inspect routes (websocket.py), so
plugins see plaintext and no compression state has to be kept valid across a replace: the
simple, always-correct choice, paid for in bandwidth only on inspected routes.
"""

from __future__ import annotations

import logging
import time

from wsproxy import _speedups
from wsproxy.errors import FrameError
from wsproxy.logs import event
from wsproxy.protocol.frames import OP_CLOSE, OP_PONG, parse_close_payload
from wsproxy.scripting.events import OPCODES
from wsproxy.proxy import keepalive
from wsproxy.protocol.relay_core import LEG_CLIENT, LEG_MEMBER
from wsproxy.config.schema import WsLimits
from wsproxy.proxy.relay import CLIENT, MEMBER, NO_LIMITS, PROXY, WsRelay

__all__ = ["InspectRelay"]

MAX_MESSAGE = 64 * 1024 * 1024  # a message a WS_MESSAGE route buffers at most (else 1009)
_TO_MEMBER = "client"  # PLUGINS.md dir names: "client" travels client -> member
_TO_CLIENT = "server"


class _Direction:
    """One direction's parsing state and the plugin hooks that apply to it."""

    __slots__ = ("dir", "reader", "assembler", "frames_hooked", "messages_hooked", "mask", "source", "fragmented")

    def __init__(self, dir: str, masked: bool, rsv: int, chain, source, limits: WsLimits) -> None:
        self.dir = dir
        self.mask = masked  # frames we build for this direction are masked (to the member)
        self.source = source  # the endpoint these frames come from
        self.fragmented = False  # what went on so far ends inside a fragmented message
        # The protocol's limits, not the handlers' max_message_size filters: a bigger message
        # skips those handlers (the chain checks the filter) and still passes.
        message_limit = limits.max_message_size or MAX_MESSAGE
        frame_limit = min(limits.max_frame_size or message_limit, message_limit)
        self.reader = _speedups.FrameReader(masked=masked, max_size=frame_limit, rsv_allowed=rsv)
        self.frames_hooked = bool(chain is not None and chain.hooks("WS_FRAME", dir))
        self.messages_hooked = bool(chain is not None and chain.hooks("WS_MESSAGE", dir))
        self.assembler = (_speedups.MessageAssembler(max_size=message_limit, validate_utf8=True)
                          if self.messages_hooked else None)


class InspectRelay(WsRelay):
    __slots__ = ("plugins", "c2m", "m2c")

    def __init__(self, client, member, *, rsv: int, idle_timeout: float, sweeper=None, plugins=None,
                 limits: WsLimits | None = None) -> None:
        limits = limits or NO_LIMITS
        super().__init__(client, member, mode="track", rsv=rsv, idle_timeout=idle_timeout, sweeper=sweeper,
                         limits=limits)
        self.plugins = plugins  # plugin_hooks.ConnectionPlugins, or None (relay = "inspect" alone)
        chain = plugins.chain if plugins is not None else None
        self.c2m = _Direction(_TO_MEMBER, True, rsv, chain, client, limits)
        self.m2c = _Direction(_TO_CLIENT, False, rsv, chain, member, limits)

    def attach(self) -> None:
        """Stay on the endpoints' data_received path: every read is parsed in Python anyway,
        and a frame keeps the transport's bytes object as its ``raw`` without a copy."""

    # -- WS_OPEN -----------------------------------------------------------------------
    async def plugins_open(self, plugins) -> None:
        """WS_OPEN: its verdict/actions apply before any frame reaches a plugin."""
        try:
            outcome = await plugins.ws_open()
        except Exception:  # the chain never raises for a plugin's error; this is a bug of ours
            logging.getLogger("wsproxy").exception("WS_OPEN dispatch failed")
            outcome = None
        if outcome is not None:
            self._apply_outcome(outcome, None)

    # -- the data path -------------------------------------------------------------------
    def on_data(self, ep, data) -> None:
        if ep is self.client:
            direction = self.c2m
            if self.c2u_broken:
                return
        else:
            if self.answer is not None:
                self._member_answer(data)
                return
            direction = self.m2c
            if self.u2c_broken:
                return
        self.activity = True
        if self.ka is not None:
            # Any bytes from a leg say it is alive (keepalive.py), also those of a frame still
            # arriving, which the track core behind us sees only once the frame is whole.
            self.ka.heard |= LEG_CLIENT if ep is self.client else LEG_MEMBER
        try:
            frames = direction.reader.feed(data)
        except FrameError as exc:
            for frame in direction.reader.completed:  # the frames before the bad one
                self._frame(direction, frame)
            self._violation(direction, exc)
            return
        for frame in frames:
            self._frame(direction, frame)

    def _frame(self, d: _Direction, frame) -> None:
        plugins = self.plugins
        if plugins is not None and frame.opcode == OP_CLOSE:
            code, reason = _close_of(frame.payload)
            plugins.ws_close(d.dir, code, reason)
        if d.frames_hooked and frame.opcode != OP_CLOSE and not self._our_pong(frame):
            outcome = plugins.chain.ws_frame(plugins.session, d.dir, frame.opcode, frame.fin,
                                             len(frame.payload), frame.payload, time.monotonic())
            if outcome is not None:
                result = self._apply_outcome(outcome, (d, frame))
                if result is None:
                    return
                if isinstance(result, _Replaced):
                    frame = _speedups.Frame(frame.fin, frame.opcode, result.payload, 0, b"")
        if d.assembler is not None:
            try:
                items = d.assembler.feed((frame,))
            except FrameError as exc:
                self._violation(d, exc)
                return
            for item in items:
                if item.opcode in (1, 2) and hasattr(item, "frames"):  # a whole data message
                    self._message(d, item)
                else:
                    self._forward(d, item.raw or self._build(d, item.opcode, item.payload, item.fin))
            return
        if frame.opcode < OP_CLOSE:  # data frames: does a fragmented message stay open?
            d.fragmented = not frame.fin
        self._forward(d, frame.raw or self._build(d, frame.opcode, frame.payload, frame.fin))

    def _our_pong(self, frame) -> bool:
        """A Pong answering the proxy's own keep-alive Ping: not the application's, so the
        plugins do not see it (the track core drops it on the way out)."""
        return self.ka is not None and frame.opcode == OP_PONG and frame.payload == keepalive.TOKEN

    def _message(self, d: _Direction, message) -> None:
        plugins = self.plugins
        outcome = plugins.chain.ws_message(plugins.session, d.dir, message.opcode, message.payload,
                                           time.monotonic())
        if outcome is not None:
            replaced = self._apply_outcome(outcome, (d, message))
            if replaced is None:
                return
            if replaced is not message:
                self._forward(d, self._build(d, message.opcode, replaced.payload, True))
                return
        self._forward(d, message.raw or self._build(d, message.opcode, message.payload, True))

    def _apply_outcome(self, outcome, item):
        """Carry out a plugin outcome; returns the item to forward (the same, a replacement
        with a new ``payload``), or None when nothing is to be forwarded."""
        actions = outcome.actions
        if actions is not None:
            for to, data, opcode in actions.sends:
                self._send(to, data, opcode)
            if actions.close is not None:
                self._plugin_close(actions.close[0], actions.close[1], outcome.plugin)
                return None
        verdict = outcome.verdict
        if verdict is None:
            return item[1] if item is not None else None
        kind = verdict.kind
        if kind == "close":
            self._plugin_close(verdict.code, verdict.reason, outcome.plugin)
            return None
        if kind == "abort":
            self._plugin_close(1011, "plugin error", outcome.plugin)
            return None
        if item is None:
            return None
        if kind == "drop":
            return None
        if kind == "replace":
            return _Replaced(verdict.data)
        return item[1]

    def _plugin_close(self, code: int, reason: str, plugin: str | None) -> None:
        event(logging.INFO, "websocket closed by a plugin", plugin=plugin, code=code, reason=reason,
              client=self.client.address)
        if self.closed_by is None:
            self._first_close(PROXY, code, "closed by plugin %s%s" % (plugin, ": " + reason if reason else ""))
        self.c2u_broken = self.u2c_broken = True  # nothing more flows either way
        self.close_both(code, reason)

    def _send(self, to: str, data: bytes, opcode: str) -> None:
        """ctx:send(dir, data): a whole message of our own, between frames."""
        d = self.c2m if to == _TO_MEMBER else self.m2c
        op = OPCODES.get(opcode, 1)
        if op < OP_CLOSE and d.fragmented:  # a control frame may interleave, a message may not
            event(logging.WARNING, "plugin send dropped: the stream is inside a fragmented message",
                  to=to, client=self.client.address)
            return
        self._forward(d, self._build(d, op, data, True))

    def _build(self, d: _Direction, opcode: int, payload: bytes, fin: bool = True) -> bytes:
        return _speedups.build_frame(opcode, payload, fin=fin, mask=d.mask)

    def _forward(self, d: _Direction, data: bytes) -> None:
        # The track-mode core: tracker bookkeeping, Close handshakes, counters, write.
        super().on_data(d.source, data)

    def _violation(self, d: _Direction, exc: FrameError) -> None:
        """A frame or message broke the protocol: the violation's Close to its sender, 1001
        (the client's violation) or 1011 (the member's) to the other side. What went on so
        far is whole frames, so both streams are at a frame boundary."""
        from_client = d is self.c2m
        first = self._violation_seen(CLIENT if from_client else MEMBER, exc)
        if from_client:
            self.c2u_broken = True
        else:
            self.u2c_broken = True
        if not first:
            self._shut(self.client if from_client else self.member)
        elif from_client:
            self._fail_client(exc, member_at_boundary=True)
        else:
            self._fail_member(exc, client_at_boundary=True)

    def _member_may_answer(self) -> bool:
        """Never here: the member's answer would bypass the plugins (see the module docstring)."""
        return False


class _Replaced:
    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


def _close_of(payload: bytes) -> tuple[int, str]:
    try:
        return parse_close_payload(payload)
    except (FrameError, ValueError):
        return 1005, ""
