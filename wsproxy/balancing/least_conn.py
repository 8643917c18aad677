"""Weighted least connections: the right default for long-lived WebSockets.

Picks the candidate with the lowest load ``(active + 1) / weight``, i.e. the load it would
have after taking this connection (HAProxy's fwlc uses the same "+1"). Among equal loads it
picks the one picked least recently, so equal members alternate even when every connection
is released before the next pick (short requests), instead of the first always winning.

The "+1" only matters for unequal weights: with plain ``active / weight`` every idle member
ties at 0, so a weight-1 member would get the second connection before a weight-10 member
had its share. Weight 0 means "only when nothing else is left".
"""

from __future__ import annotations

from typing import Sequence

from wsproxy.balancing.member import Member

_INFINITE = float("inf")


class WeightedLeastConn:
    name = "least_conn"

    def __init__(self, members: Sequence[Member]) -> None:
        self._last_pick: dict[Member, int] = {m: 0 for m in members}
        self._picks = 0

    def pick(self, candidates: Sequence[Member]) -> Member:
        last_pick = self._last_pick
        best = candidates[0]
        best_key: tuple[float, int] | None = None
        for member in candidates:
            weight = member.weight
            load = (member.active + 1) / weight if weight > 0 else _INFINITE
            key = (load, last_pick.get(member, 0))
            if best_key is None or key < best_key:
                best, best_key = member, key
        self._picks += 1
        last_pick[best] = self._picks
        return best
