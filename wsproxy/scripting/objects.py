"""The objects handed to Python handlers, and the actions they record.

The proxy builds these from plain inputs (method, target, ``[(name, value)]`` headers, a
status), so this module knows nothing of the proxy's parsed heads. Lua handlers get plain
Lua tables with the same field and method names, built by the prelude (``lua_prelude.py``)
from the same inputs; no Python object ever reaches Lua (plugin-api.md §3.2-3.3).

- ``Request`` / ``Response`` are views over a header list. Edits are copy-on-write (each
  edit builds a new list), so the chain can snapshot a head before a handler and put it
  back if the handler fails: "actions take effect only if the handler returns normally"
  (§2.2). ``headers`` is the final list the proxy forwards.
- ``Ctx`` is one plugin's view of a connection: ``vars`` is private to the plugin, and the
  methods record operations (``use_pool``...) that the chain validates and merges into the
  event's ``Actions`` only once the handler has returned.
- ``Frame`` / ``Message`` / ``WsClose`` / ``LbInfo`` are small slotted records, built only
  for subscribers whose filters matched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from wsproxy.protocol.cookies import cookie_value
from wsproxy.routing.router import request_host
from wsproxy.scripting.events import ACTIONS, DIRS, EVENTS
from wsproxy.scripting.verdicts import check_close, check_header

if TYPE_CHECKING:
    from wsproxy.scripting.chain import PluginSession

__all__ = ["Request", "Response", "LbInfo", "Frame", "Message", "WsClose", "Ctx", "Actions",
           "PROTECTED_HEADERS", "check_op", "edit_set", "edit_del"]

Headers = list[tuple[str, str]]

# The proxy owns message framing and the handshake; a plugin rewriting these would desync
# the connection, so editing them is a plugin error.
PROTECTED_HEADERS = frozenset({
    "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer", "keep-alive",
    "proxy-connection", "sec-websocket-key", "sec-websocket-accept",
})
SEND_OPCODES = frozenset({"text", "binary", "ping", "pong"})


def _first(headers: Headers, name: str) -> str | None:
    key = name.lower()
    for field, value in headers:
        if field.lower() == key:
            return value
    return None


def _editable(name, value=None) -> tuple[str, str]:
    name, value = check_header(name, "" if value is None else value)
    if name.lower() in PROTECTED_HEADERS:
        raise ValueError(f"header {name} belongs to the proxy (framing/handshake) and may not be edited")
    return name, value


def edit_set(headers: Headers, name: str, value: str) -> Headers:
    """A new list: the first ``name`` field gets ``value`` in place, later ones go; else appended."""
    key = name.lower()
    out: Headers = []
    done = False
    for field in headers:
        if field[0].lower() == key:
            if not done:
                out.append((name, value))
                done = True
        else:
            out.append(field)
    if not done:
        out.append((name, value))
    return out


def edit_del(headers: Headers, name: str) -> Headers:
    """A new list without any ``name`` field."""
    key = name.lower()
    return [field for field in headers if field[0].lower() != key]


class _HeadView:
    """Header lookup and copy-on-write edits shared by Request and Response."""

    __slots__ = ("_headers", "edited")

    def __init__(self, headers: Headers) -> None:
        self._headers = headers
        self.edited = False

    @property
    def headers(self) -> Headers:
        """The current header list (the caller's own list if nothing was edited)."""
        return self._headers

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        return _first(self._headers, name)

    def header_all(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in order (Set-Cookie...)."""
        key = name.lower()
        return [v for n, v in self._headers if n.lower() == key]

    def set_header(self, name: str, value: str) -> None:
        name, value = _editable(name, value)
        self._headers = edit_set(self._headers, name, value)
        self.edited = True

    def del_header(self, name: str) -> None:
        name, _ = _editable(name)
        self._headers = edit_del(self._headers, name)
        self.edited = True

    def _snapshot(self) -> tuple[Headers, bool]:
        return self._headers, self.edited

    def _restore(self, snapshot: tuple[Headers, bool]) -> None:
        self._headers, self.edited = snapshot


class Request(_HeadView):
    """A request head (HTTP_REQUEST). ``host`` is the Host header without port, lower case."""

    __slots__ = ("method", "target", "_query")

    def __init__(self, method: str, target: str, headers: Headers) -> None:
        super().__init__(headers)
        self.method = method
        self.target = target
        self._query: list[tuple[str, str]] | None = None

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query_string(self) -> str:
        return self.target.partition("?")[2]

    @property
    def host(self) -> str | None:
        return request_host(self.header("host"))

    @property
    def upgrade(self) -> str | None:
        """The Upgrade header in lower case ("websocket" on a WebSocket handshake), or None."""
        value = self.header("upgrade")
        return value.strip().lower() if value is not None else None

    def cookie(self, name: str) -> str | None:
        """The value of cookie ``name`` (the first one, quotes stripped), or None."""
        return cookie_value(self._headers, name)

    def query(self, name: str) -> str | None:
        """The first value of query parameter ``name`` (percent-decoded, + as space), or None."""
        if self._query is None:
            self._query = parse_qsl(self.query_string, keep_blank_values=True)
        for key, value in self._query:
            if key == name:
                return value
        return None


class Response(_HeadView):
    """A member's response head (HTTP_RESPONSE), the 101 included."""

    __slots__ = ("status", "reason")

    def __init__(self, status: int, headers: Headers, reason: str = "") -> None:
        super().__init__(headers)
        self.status = status
        self.reason = reason


class LbInfo:
    """LB_SELECTED / LB_FAILED: ``member`` is None when no member was available.

    ``reason`` (LB_FAILED): "no_member" | "refused" | "timeout" | "tls" | "status" (then
    ``status`` is the member's non-101 answer); ``attempt`` counts from 1; ``tried`` lists
    the members tried so far.
    """

    __slots__ = ("pool", "member", "attempt", "reason", "tried", "status")

    def __init__(self, pool: str, member: str | None, attempt: int = 1, reason: str | None = None,
                 tried: tuple[str, ...] = (), status: int | None = None) -> None:
        self.pool = pool
        self.member = member
        self.attempt = attempt
        self.reason = reason
        self.tried = tuple(tried)
        self.status = status


class Frame:
    """WS_FRAME: one frame. ``len`` is the full payload length from the header; ``payload``
    is the unmasked payload (None with ``payload=False``, the first N bytes with ``payload=N``).
    ``ts`` is monotonic seconds, so a rate limiter needs no clock call."""

    __slots__ = ("dir", "opcode", "fin", "len", "payload", "ts")

    def __init__(self, dir: str, opcode: str, fin: bool, len: int, payload: bytes | None, ts: float) -> None:
        self.dir = dir
        self.opcode = opcode
        self.fin = fin
        self.len = len
        self.payload = payload
        self.ts = ts


class Message(Frame):
    """WS_MESSAGE: one reassembled data message (opcode "text" or "binary", ``fin`` True)."""

    __slots__ = ()


class WsClose:
    """WS_CLOSE: a Close frame seen going ``dir``; ``code`` 1005 when it carried none."""

    __slots__ = ("dir", "code", "reason")

    def __init__(self, dir: str, code: int, reason: str) -> None:
        self.dir = dir
        self.code = code
        self.reason = reason


def check_op(event: str, op: tuple) -> tuple:
    """Validate one recorded ctx operation for ``event``; returns it normalized (str, ints)."""
    name = op[0]
    if name not in ACTIONS[event]:
        raise ValueError(f"ctx:{name}() is not available in {event}")
    if name == "use_pool" or name == "hash_key":
        value = op[1]
        if isinstance(value, bytes):
            value = value.decode("utf-8", "surrogateescape")
        elif name == "hash_key" and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value:
            raise ValueError(f"ctx:{name}() needs a non-empty string, got {value!r}")
        return (name, value)
    if name == "use_member":
        addr = op[1].decode("utf-8", "replace") if isinstance(op[1], bytes) else op[1]
        if not isinstance(addr, str) or not addr:
            raise ValueError(f"ctx:use_member() needs an address like '10.0.0.5:9001', got {addr!r}")
        return (name, addr, bool(op[2]))
    if name == "close":
        code, reason = check_close(op[1], op[2] if op[2] is not None else "")
        return (name, code, reason)
    if name == "send":
        to, data, opcode = op[1], op[2], op[3]
        to = to.decode("ascii", "replace") if isinstance(to, bytes) else to
        opcode = opcode.decode("ascii", "replace") if isinstance(opcode, bytes) else opcode
        if to not in DIRS:
            raise ValueError(f'ctx:send() goes to "client" or "server", got {to!r}')
        if opcode not in SEND_OPCODES:
            raise ValueError(f"ctx:send() opcode must be text, binary, ping or pong, got {opcode!r}")
        if isinstance(data, str):
            data = data.encode("utf-8")
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"ctx:send() data must be bytes or str, got {type(data).__name__}")
        data = bytes(data)
        if opcode == "text":
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError("ctx:send() text data must be valid UTF-8") from None
        elif opcode in ("ping", "pong") and len(data) > 125:
            raise ValueError("ctx:send() ping/pong data is limited to 125 bytes")
        return (name, to, data, opcode)
    if name == "disable":
        event_name = op[1].decode("ascii", "replace") if isinstance(op[1], bytes) else op[1]
        if event_name not in EVENTS:
            raise ValueError(f"ctx:disable() needs an event name, got {event_name!r}")
        return (name, event_name)
    raise ValueError(f"unknown ctx operation {name!r}")  # pragma: no cover - ACTIONS guards it


class Actions:
    """What the plugins asked for during one event, merged in chain order.

    Routing choices are last-writer-wins, as if each plugin set a variable: a later plugin
    sees the earlier choice in ``ctx.pool`` and may override it. ``close`` is the first
    ``ctx:close()``; ``sends`` are in order; ``disabled`` lists the (plugin, event) pairs a
    plugin switched off for this connection (the chain applies them itself).
    """

    __slots__ = ("pool", "member", "strict", "hash_key", "close", "sends", "disabled")

    def __init__(self) -> None:
        self.pool: str | None = None
        self.member: str | None = None
        self.strict = False
        self.hash_key: str | None = None
        self.close: tuple[int, str] | None = None
        self.sends: list[tuple[str, bytes, str]] = []
        self.disabled: list[tuple[str, str]] = []

    def apply(self, op: tuple, plugin: str) -> None:
        name = op[0]
        if name == "use_pool":
            self.pool = op[1]
        elif name == "use_member":
            self.member, self.strict = op[1], op[2]
        elif name == "hash_key":
            self.hash_key = op[1]
        elif name == "close":
            if self.close is None:
                self.close = (op[1], op[2])
        elif name == "send":
            self.sends.append((op[1], op[2], op[3]))
        elif name == "disable":
            self.disabled.append((plugin, op[1]))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__ if getattr(self, k))
        return f"Actions({fields})"


class Ctx:
    """One plugin's view of one connection (``ctx`` in handlers).

    ``vars`` is a dict private to this plugin that lives until CLIENT_CLOSED. The methods
    record operations; they take effect when the handler returns normally. ``pool`` and
    ``member`` are read-only: the routing decision so far (this event's choices included).
    """

    __slots__ = ("_session", "vars", "_ops", "_event")

    def __init__(self, session: "PluginSession") -> None:
        self._session = session
        self.vars: dict[str, Any] = {}
        self._ops: list[tuple] | None = None
        self._event = ""

    @property
    def id(self):
        return self._session.id

    @property
    def client_addr(self) -> str | None:
        return self._session.client_addr

    @property
    def pool(self) -> str | None:
        for op in reversed(self._ops or ()):
            if op[0] == "use_pool":
                return op[1]
        return self._session.current_pool()

    @property
    def member(self) -> str | None:
        for op in reversed(self._ops or ()):
            if op[0] == "use_member":
                return op[1]
        return self._session.current_member()

    def _record(self, op: tuple) -> None:
        # Validated now, so a mistake raises at the plugin's own line (with its traceback).
        op = check_op(self._event, op)
        if self._ops is None:
            self._ops = [op]
        else:
            self._ops.append(op)

    def use_pool(self, name: str) -> None:
        """Route this request to pool ``name`` (CLIENT_ACCEPTED, HTTP_REQUEST)."""
        self._record(("use_pool", name))

    def use_member(self, addr: str, strict: bool = False) -> None:
        """Send this request to member ``addr``; ``strict``: fail (503) rather than pick another."""
        self._record(("use_member", addr, strict))

    def hash_key(self, key: str) -> None:
        """Balance by consistent hash of ``key`` instead of the pool's algorithm."""
        self._record(("hash_key", key))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the WebSocket with ``code`` to both peers once this event is handled."""
        self._record(("close", code, reason))

    def send(self, to: str, data: bytes | str, opcode: str | None = None) -> None:
        """Inject a message to ``to`` ("client" or "server"); opcode defaults to "text" for
        str and "binary" for bytes."""
        if opcode is None:
            opcode = "text" if isinstance(data, str) else "binary"
        self._record(("send", to, data, opcode))

    def disable(self, event: str) -> None:
        """Stop calling this plugin's ``event`` handler(s) for this connection (iRules ``event
        disable``); disabling every frame handler lets the relay leave inspect mode."""
        self._record(("disable", event))
