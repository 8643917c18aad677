"""Member: one upstream server of a pool, with its live state and counters.

A Member is plain mutable state owned by its Pool; the Pool changes it (acquire/release,
connect_failed/connect_ok) and balancers only read it. Members hash by identity, so
balancers may key their own bookkeeping on them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wsproxy.config.schema import Address, MemberConfig

UP = "up"
DOWN = "down"


class Member:
    __slots__ = (
        "config", "addr", "weight", "max_conns",
        "state", "active", "fail_streak", "down_until",
        "picks", "connect_failures",
    )

    def __init__(self, config: MemberConfig) -> None:
        self.config = config
        self.addr: Address = config.addr
        # Copied rather than read through config so an admin action can change them live.
        self.weight: int = config.weight
        self.max_conns: int = config.max_conns
        self.state: str = UP
        self.active = 0            # open connections (and connects in progress) to this member
        self.fail_streak = 0       # connect failures since the last success
        self.down_until = 0.0      # clock time when a down member gets its next trial
        self.picks = 0             # times chosen by Pool.pick (for logs and the admin API)
        self.connect_failures = 0  # total connect failures, never reset

    @property
    def full(self) -> bool:
        return self.active >= self.max_conns

    def __repr__(self) -> str:
        return (
            f"<Member {self.addr} {self.state} active={self.active}/{self.max_conns}"
            f" weight={self.weight}>"
        )
