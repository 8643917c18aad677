"""Balancing: pools of members and the algorithms that choose among them.

One algorithm per file, each a small class behind the ``Balancer`` interface (HAProxy's
``lb_*.c`` vtable). The Pool filters out members that may not take a connection; a balancer
only ever sees that filtered, non-empty candidate list. Adding an algorithm = one file plus
one line in ``BALANCERS``.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from wsproxy.balancing.hashing import MaglevHash
from wsproxy.balancing.least_conn import WeightedLeastConn
from wsproxy.balancing.member import Member
from wsproxy.balancing.random_two import RandomTwoChoices
from wsproxy.balancing.round_robin import SmoothWeightedRoundRobin


class Balancer(Protocol):
    """Built once per Pool as ``cls(members)`` with every member of the pool.

    Optional hooks, called by the Pool when present:
    ``on_take(member)`` after a connection to it is counted, ``on_drop(member)`` after one ends.

    A balancer whose class sets ``wants_key = True`` (hash) is called as
    ``pick(candidates, key)`` with the request's key as bytes; the Pool never calls it
    without one (a pick without a key goes to the pool's ``hash_fallback`` balancer).
    """

    def pick(self, candidates: Sequence[Member]) -> Member:
        """Choose one of ``candidates`` (never empty; may differ from call to call)."""
        ...


BALANCERS: dict[str, type] = {
    "round_robin": SmoothWeightedRoundRobin,
    "least_conn": WeightedLeastConn,
    "random_two": RandomTwoChoices,
    "hash": MaglevHash,
}

# Last: pool.py reads BALANCERS and Balancer from this package while it is being imported.
from wsproxy.balancing.pool import Pool  # noqa: E402

__all__ = [
    "BALANCERS", "Balancer", "MaglevHash", "Member", "Pool", "RandomTwoChoices",
    "SmoothWeightedRoundRobin", "WeightedLeastConn",
]
