"""Power of two choices over weighted active connections (nginx ``random two least_conn``,
HAProxy ``random(2)``, Envoy's least request).

Draw two distinct candidates, each with probability proportional to its weight, and keep
the one with the lower load ``active / weight``, compared as cross-multiplied integers
(``a1 * w2 < a2 * w1``: exact, no float rounding), as nginx's ``random two least_conn`` does.
Why not just least_conn: every worker process keeps its own counters, and with several
workers a strict minimum sends every worker's next connection to the same member; two
random choices spread those bursts while still steering away from a loaded member.

A tie goes to the first draw. With short requests every member is idle at every pick, so
every pick is a tie and the first draw, which is proportional to weight, decides: the
picks follow the weights. Comparing the load after this connection, ``(active + 1) /
weight``, would instead hand every such pick to the heavier of the two (with two members
both are always drawn, so weights 3:1 would give 100 % / 0 %). Weight 0 means "only when
nothing else is left", as in least_conn.

The generator is the balancer's own ``random.Random``, seeded with a fixed value so a run can
be replayed (tests, bug reports), like the other balancers, which are deterministic. Each
worker process must seed its own differently (``pool.balancer.rng.seed(worker_index)``):
identical seeds make every worker draw the same pairs. OS seeding at construction would not
guarantee that either: Python reseeds only the global generator in a forked child, so pools
built before a fork would share one sequence anyway.
"""

from __future__ import annotations

import random
from typing import Sequence

from wsproxy.balancing.member import Member

DEFAULT_SEED = 0  # see the module docstring: workers reseed


class RandomTwoChoices:
    name = "random_two"

    def __init__(self, members: Sequence[Member], rng: random.Random | None = None) -> None:
        # One generator per balancer, so no other user of the global `random` module can
        # disturb its sequence; tests inject their own.
        self.rng = rng if rng is not None else random.Random(DEFAULT_SEED)

    def pick(self, candidates: Sequence[Member]) -> Member:
        weighted = [m for m in candidates if m.weight > 0]
        if len(weighted) < 2:
            if weighted:
                return weighted[0]
            return candidates[0] if len(candidates) == 1 else self.rng.choice(candidates)
        total = sum(m.weight for m in weighted)
        first = self._draw(weighted, total, skip=None)
        second = self._draw(weighted, total - first.weight, skip=first)
        if second.active * first.weight < first.active * second.weight:
            return second  # strictly less loaded; a tie keeps the weight-proportional first
        return first

    def _draw(self, members: list[Member], total: int, skip: Member | None) -> Member:
        """One member with probability weight/total, ``skip`` left out (its weight is not in
        ``total``). A linear walk: pools are small, and it needs no per-pick tables."""
        point = self.rng.random() * total
        chosen = None
        for member in members:
            if member is skip:
                continue
            chosen = member
            point -= member.weight
            if point < 0:
                break
        assert chosen is not None  # members holds at least two, so one is not `skip`
        return chosen
