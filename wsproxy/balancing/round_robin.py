"""Smooth weighted round robin (nginx, ngx_http_upstream_round_robin.c).

Each pick: every candidate's ``current`` grows by its weight, the largest ``current`` wins,
and the winner pays back the total weight of this round's candidates. Weights 5,1,1 give
a a b a c a a, spreading the light members out instead of a burst of a's.

The candidate list may change between picks (full, down or already-tried members are left
out by the Pool). Only this round's candidates take part, as in nginx: the sum of all
``current`` values stays 0, so a member that sat out keeps a bounded credit and rejoins
smoothly, and over any stretch with the same candidates the shares are exact.
"""

from __future__ import annotations

from typing import Sequence

from wsproxy.balancing.member import Member


class SmoothWeightedRoundRobin:
    name = "round_robin"

    def __init__(self, members: Sequence[Member]) -> None:
        self._current: dict[Member, int] = {m: 0 for m in members}

    def pick(self, candidates: Sequence[Member]) -> Member:
        current = self._current
        total = 0
        best = candidates[0]
        best_current = None
        for member in candidates:
            value = current.get(member, 0) + member.weight
            current[member] = value
            total += member.weight
            # Strict ">" keeps the first of equals, which is what makes the order stable.
            if best_current is None or value > best_current:
                best, best_current = member, value
        current[best] = best_current - total
        return best
