"""Compiled twin of wsproxy.protocol.relay_core.RelayCore (built from ext/relay_core.pyx)."""

from typing import Any

__all__ = ["RelayCore"]

class RelayCore:
    """The per-read data path of a WebSocket relay; WsRelay (proxy/relay.py) subclasses it.
    After attach(), each transport's protocol is a ``Leg`` (BufferedProtocol) feeding it."""

    Leg: Any
    client_leg: Any
    member_leg: Any
    client: Any
    member: Any
    answer: Any
    c2u: Any
    u2c: Any
    track: bool
    client_sent_close: bool
    member_sent_close: bool
    closed_to_client: bool
    closed_to_member: bool
    c2u_broken: bool
    u2c_broken: bool
    activity: bool
    ka: Any  # the KeepAlive state on keep-alive routes (enable_keepalive), else None
    bytes_in: int
    in_at_reply: int
    frames_at_reply: int
    bytes_out: int
    ended: int
    shut: int
    gone: int

    def __init__(self, client: Any, member: Any, c2u: Any = None, u2c: Any = None) -> None: ...
    def enable_keepalive(self, token: bytes) -> Any:
        """Absorb the Pongs carrying ``token`` both ways and offer Pings to ``_inject_ping``
        at frame boundaries (track mode only); returns the KeepAlive state (``ka``)."""
    def attach(self) -> None: ...
    def on_data(self, ep: Any, data: bytes) -> None: ...
    def on_pause_writing(self, ep: Any) -> None: ...
    def on_resume_writing(self, ep: Any) -> None: ...
