"""The plugin event model: names in connection order, what each event may do, and filters.

Everything here is data, shared by the Python and the Lua side so that both enforce the same
contract (../shared/design/PLUGINS.md; the study is ../shared/research/plugin-api.md §2.1-2.3):

- ``EVENTS`` in connection order. ``ASYNC_EVENTS`` may have ``async def`` Python handlers
  (awaited with a timeout); every other event is sync only, like ``balancer_by_lua`` that
  cannot yield (§1.3). ``FRAME_EVENTS`` are the hot path: a route whose plugins subscribe
  to none of them never needs the ``inspect`` relay mode.
- ``VERDICTS[event]``: the verdicts a handler may return there (the "may" column of
  PLUGINS.md). Anything else is a plugin error, so a typo fails loudly instead of passing.
- ``ACTIONS[event]``: the ``ctx`` methods that mean something there (``use_pool`` after the
  member is chosen would be silently ignored otherwise, so it is an error too).
- ``Filter``: the subscription filters (§2.3) the chain checks before it builds any event
  object, so a frame nobody wants costs a few comparisons and no allocation.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CLIENT_ACCEPTED", "HTTP_REQUEST", "LB_SELECTED", "LB_FAILED", "HTTP_RESPONSE", "WS_OPEN",
    "WS_FRAME", "WS_MESSAGE", "WS_CLOSE", "CLIENT_CLOSED",
    "EVENTS", "ASYNC_EVENTS", "FRAME_EVENTS", "PRE_UPGRADE_EVENTS", "LOG_ONLY_EVENTS",
    "VERDICTS", "ACTIONS", "OPCODE_NAMES", "OPCODES", "MESSAGE_OPCODES", "DIRS", "Filter",
]

CLIENT_ACCEPTED = "CLIENT_ACCEPTED"
HTTP_REQUEST = "HTTP_REQUEST"
LB_SELECTED = "LB_SELECTED"
LB_FAILED = "LB_FAILED"
HTTP_RESPONSE = "HTTP_RESPONSE"
WS_OPEN = "WS_OPEN"
WS_FRAME = "WS_FRAME"
WS_MESSAGE = "WS_MESSAGE"
WS_CLOSE = "WS_CLOSE"
CLIENT_CLOSED = "CLIENT_CLOSED"

EVENTS = (CLIENT_ACCEPTED, HTTP_REQUEST, LB_SELECTED, LB_FAILED, HTTP_RESPONSE, WS_OPEN,
          WS_FRAME, WS_MESSAGE, WS_CLOSE, CLIENT_CLOSED)
ASYNC_EVENTS = frozenset({HTTP_REQUEST, HTTP_RESPONSE, WS_OPEN})
FRAME_EVENTS = frozenset({WS_FRAME, WS_MESSAGE})
# An abort here becomes an HTTP 500 (a plain TCP close at CLIENT_ACCEPTED); after WS_OPEN it
# becomes Close 1011 to both peers.
PRE_UPGRADE_EVENTS = frozenset({CLIENT_ACCEPTED, HTTP_REQUEST, LB_SELECTED, LB_FAILED, HTTP_RESPONSE})
# The connection is ending anyway: an error is logged and counted, never turned into an abort.
LOG_ONLY_EVENTS = frozenset({WS_CLOSE, CLIENT_CLOSED})

VERDICTS: dict[str, frozenset[str]] = {
    CLIENT_ACCEPTED: frozenset({"reject"}),
    HTTP_REQUEST: frozenset({"respond", "redirect", "reject"}),
    LB_SELECTED: frozenset({"reselect"}),
    LB_FAILED: frozenset({"reselect", "respond"}),
    HTTP_RESPONSE: frozenset(),
    WS_OPEN: frozenset({"close"}),  # extension: refuse a session after the 101 (async auth)
    WS_FRAME: frozenset({"drop", "replace", "close"}),
    WS_MESSAGE: frozenset({"drop", "replace", "close"}),
    WS_CLOSE: frozenset(),
    CLIENT_CLOSED: frozenset(),
}

_ROUTING = frozenset({"use_pool", "use_member", "hash_key"})
_SESSION = frozenset({"close", "send"})
ACTIONS: dict[str, frozenset[str]] = {
    CLIENT_ACCEPTED: _ROUTING | {"disable"},
    HTTP_REQUEST: _ROUTING | {"disable"},
    LB_SELECTED: frozenset({"disable"}),
    LB_FAILED: frozenset({"disable"}),
    HTTP_RESPONSE: frozenset({"disable"}),
    WS_OPEN: _SESSION | {"disable"},
    WS_FRAME: _SESSION | {"disable"},
    WS_MESSAGE: _SESSION | {"disable"},
    WS_CLOSE: frozenset({"disable"}),
    CLIENT_CLOSED: frozenset(),
}

OPCODE_NAMES = {0: "cont", 1: "text", 2: "binary", 8: "close", 9: "ping", 10: "pong"}
OPCODES = {name: number for number, name in OPCODE_NAMES.items()}
MESSAGE_OPCODES = frozenset({1, 2})  # a reassembled message is text or binary
DIRS = ("client", "server")  # "client": travels client -> member; "server": member -> client

_DIR_EVENTS = frozenset({WS_FRAME, WS_MESSAGE, WS_CLOSE})


@dataclass(frozen=True, slots=True)
class Filter:
    """What a subscription wants to see; the defaults see everything.

    ``dir``: "client" | "server" | None (both). ``opcodes``: opcode numbers, None = all.
    ``payload``: True (all of it), False (header fields only, ``payload`` is None/nil) or N
    (the first N bytes, like iRules ``WS::collect frame N``). ``max_message_size``
    (WS_MESSAGE): larger messages skip this subscriber. ``fin_only`` (WS_FRAME): only final
    frames. ``min_len``: only frames/messages at least this long.
    """

    dir: str | None = None
    opcodes: frozenset[int] | None = None
    payload: bool | int = True
    max_message_size: int | None = None
    fin_only: bool = False
    min_len: int = 0

    @classmethod
    def build(cls, event: str, *, dir: str | None = None, opcodes=None, payload: bool | int = True,
              max_message_size: int | None = None, fin_only: bool = False, min_len: int = 0,
              max_size: int | None = None) -> "Filter":
        """Validate filter arguments for ``event`` (ValueError/TypeError with the reason).

        ``max_size`` is accepted as a spelling of ``max_message_size`` (the study's name).
        """
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; events are {', '.join(EVENTS)}")
        if max_size is not None:
            if max_message_size is not None:
                raise ValueError("give max_message_size or max_size, not both")
            max_message_size = max_size
        given = {"dir": dir is not None, "opcodes": opcodes is not None, "payload": payload is not True,
                 "max_message_size": max_message_size is not None, "fin_only": bool(fin_only),
                 "min_len": min_len != 0}
        applies = {
            "dir": _DIR_EVENTS, "opcodes": FRAME_EVENTS, "payload": FRAME_EVENTS,
            "max_message_size": frozenset({WS_MESSAGE}), "fin_only": frozenset({WS_FRAME}),
            "min_len": FRAME_EVENTS,
        }
        for key, is_given in given.items():
            if is_given and event not in applies[key]:
                where = ", ".join(sorted(applies[key]))
                raise ValueError(f"filter {key!r} does not apply to {event} (only to {where})")
        if dir is not None and dir not in DIRS:
            raise ValueError(f'dir must be "client" or "server", got {dir!r}')
        codes = None
        if opcodes is not None:
            if isinstance(opcodes, (str, int)):
                opcodes = (opcodes,)
            codes = set()
            for op in opcodes:
                number = OPCODES.get(op) if isinstance(op, str) else op
                if number not in OPCODE_NAMES or isinstance(number, bool):
                    raise ValueError(f"unknown opcode {op!r}; opcodes are {', '.join(OPCODES)}")
                if event == WS_MESSAGE and number not in MESSAGE_OPCODES:
                    raise ValueError(f'WS_MESSAGE opcodes are "text" and "binary", got {op!r}')
                codes.add(number)
            if not codes:
                raise ValueError("opcodes is empty: the handler would never run")
            codes = frozenset(codes)
        if not isinstance(payload, bool):
            if not isinstance(payload, int) or payload < 0:
                raise ValueError(f"payload must be true, false or a byte count >= 0, got {payload!r}")
        for key, value in (("max_message_size", max_message_size), ("min_len", min_len)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{key} must be a byte count >= 0, got {value!r}")
        return cls(dir, codes, payload, max_message_size, bool(fin_only), min_len)

    @property
    def payload_limit(self) -> int | None:
        """Bytes of payload this subscriber reads: None = all, 0 = none."""
        if self.payload is True:
            return None
        if self.payload is False:
            return 0
        return self.payload
