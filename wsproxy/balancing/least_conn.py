"""Weighted least connections: the right default for long-lived WebSockets.

Picks the candidate with the lowest load ``active / weight``; among the candidates that
share the lowest load, smooth weighted round robin decides (the ``current`` credit of
round_robin.py). This is nginx's least_conn (ngx_http_upstream_least_conn_module.c), down to
comparing cross-multiplied integers, ``a1 * w2 < a2 * w1``: exact, with no float rounding.

Why the tie-break matters: with short requests every connection is released before the next
pick, so every member is idle at every pick and they all tie at 0. Round robin over the tie
then shares the picks exactly by weight (3:1 gives 75 % / 25 %). Comparing the load *after*
this connection, ``(active + 1) / weight`` as HAProxy's fwlc does, would make the heaviest
idle member win every such pick (3:1 gives 100 % / 0 %). With connections that stay open,
loaded members are steered away from until the others catch up, and the open connections
settle at the weight ratio. The price: an idle member beats a busy one whatever the weights.
A weight-1 member takes the second connection before a weight-10 member has its share, and
with only a few connections open at a time the light members get more than their share of
picks (nginx does the same); round_robin keeps exact shares for such traffic.

Weight 0 means "only when nothing else is left": such a member takes part only when every
candidate has weight 0, and then they share as if each had weight 1.
"""

from __future__ import annotations

from typing import Sequence

from wsproxy.balancing.member import Member


class WeightedLeastConn:
    name = "least_conn"

    def __init__(self, members: Sequence[Member]) -> None:
        # Smooth WRR credit, used only to break ties; only tied members take part in a round.
        self._current: dict[Member, int] = {m: 0 for m in members}

    def pick(self, candidates: Sequence[Member]) -> Member:
        # One pass for the minimum that builds no list, tuple or float (this runs for every
        # connection): `tied` says whether another member has the same load, and only then
        # is there a round robin round to run.
        best = None
        best_active = best_weight = 0
        tied = False
        for member in candidates:
            weight = member.weight
            if weight <= 0:
                continue  # weight 0: only when nothing else is left (_last_resort)
            active = member.active  # read once: a property over the node table's cells
            if best is None:
                best, best_active, best_weight = member, active, weight
                continue
            left, right = active * best_weight, best_active * weight
            if left < right:
                best, best_active, best_weight, tied = member, active, weight, False
            elif left == right:
                tied = True
        if best is None:
            return self._last_resort(candidates)
        if not tied:
            return best
        return self._round_robin(candidates, best_active, best_weight)

    def _round_robin(
        self, candidates: Sequence[Member], active: int, weight: int, unit: bool = False
    ) -> Member:
        """Smooth WRR among the candidates whose load equals ``active / weight``, as nginx
        does for its tied peers. ``unit``: every weight counts as 1 (the last resort)."""
        current = self._current
        total = 0
        best = None
        best_current = 0
        for member in candidates:
            member_weight = 1 if unit else member.weight
            if member_weight <= 0 or member.active * weight != active * member_weight:
                continue
            value = current.get(member, 0) + member_weight
            current[member] = value
            total += member_weight
            # Strict ">" keeps the first of equals, which is what makes the order stable.
            if best is None or value > best_current:
                best, best_current = member, value
        assert best is not None  # the member that set the minimum is among them
        current[best] = best_current - total
        return best

    def _last_resort(self, candidates: Sequence[Member]) -> Member:
        """Only weight-0 members are left: least connections among them, weight 1 each."""
        fewest = min(member.active for member in candidates)
        return self._round_robin(candidates, fewest, 1, unit=True)
