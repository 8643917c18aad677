"""Consistent hashing with a Maglev lookup table (Eisenbud et al., NSDI 2016, §3.4).

Each member gets a permutation of the table's slots from two hashes of its address string,
``offset`` and ``skip``; members take turns claiming their next free preferred slot until
the table is full. A key's member is ``table[hash(key) % M]``. Why Maglev rather than a ring:
a lookup is one index, the shares are even without hundreds of virtual nodes, and removing
one of N members moves only about 1/N of the keys (those it owned, plus a few more).

Weights: a member takes a turn each round it has saved up ``max_weight`` credit, so it
claims slots in proportion to its weight. Weight 0 claims none.

Stability across workers and restarts: only blake2b over the address string and the key is
used (Python's ``hash()`` is salted per process), and members fill the table in address
order, so the same set of members and weights gives the same table in every process,
whatever order the config lists them in. Changing ``table_size`` remaps the keys.

The table covers every member of the pool with weight > 0, whether up, down or full, and is
rebuilt only when a weight changes (an admin action). A member that may not take this
connection (down, full, already tried) is skipped at pick time: the key walks on from its
slot to the next slot owned by an allowed member. That fallback is as stable as the first
choice, and a member coming back gets exactly its own keys back, without a rebuild.
"""

from __future__ import annotations

import hashlib
from array import array
from typing import Sequence

from wsproxy.balancing.member import Member

DEFAULT_TABLE_SIZE = 65537  # prime, as Maglev needs; >= 100 x the members of any sane pool


def hash64(data: bytes) -> int:
    """A stable 64-bit hash: the same in every process, on every platform."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def build_table(names: Sequence[str], weights: Sequence[int], size: int) -> array:
    """Maglev population: ``table[slot]`` = index into ``names`` of the slot's owner.

    Every weight must be > 0 and ``size`` prime (so any skip in 1..size-1 visits every slot).
    """
    count = len(names)
    position, skip = [0] * count, [0] * count
    for i, name in enumerate(names):
        digest = hashlib.blake2b(name.encode(), digest_size=16).digest()
        position[i] = int.from_bytes(digest[:8], "big") % size
        skip[i] = int.from_bytes(digest[8:], "big") % (size - 1) + 1
    table = array("i", [-1]) * size
    top = max(weights)
    credit = [0] * count
    filled = 0
    while True:
        for i in range(count):
            credit[i] += weights[i]
            if credit[i] < top:
                continue  # a lighter member skips this round: slots end up ~ weight
            credit[i] -= top
            slot = position[i]
            while table[slot] >= 0:  # walk this member's permutation to its next free slot
                slot = (slot + skip[i]) % size
            table[slot] = i
            position[i] = (slot + skip[i]) % size
            filled += 1
            if filled == size:
                return table


class MaglevHash:
    name = "hash"
    wants_key = True  # Pool.pick hands it the request's key (see Pool.pick for None)

    def __init__(self, members: Sequence[Member], table_size: int = DEFAULT_TABLE_SIZE) -> None:
        if table_size < 2 or any(table_size % d == 0 for d in range(2, int(table_size**0.5) + 1)):
            raise ValueError(f"table_size must be prime, not {table_size}")
        self.members = tuple(members)
        self.table_size = table_size
        self.rebuilds = 0
        self._weights: tuple[int, ...] | None = None  # the weights the table was built for
        self._owners: tuple[Member, ...] = ()  # table values index this
        self._table = array("i")
        self._present = 0  # how many owners hold a slot
        self._refresh()  # now, at startup, rather than on the first request

    def pick(self, candidates: Sequence[Member], key: bytes) -> Member:
        self._refresh()
        allowed = set(candidates)
        code = hash64(key)
        owners, table, size = self._owners, self._table, self.table_size
        if owners:
            slot = code % size
            member = owners[table[slot]]
            if member in allowed:
                return member
            # Walk on from the key's slot to the first slot an allowed member owns. Stop once
            # every owner has been seen, not after M slots, when none of them is allowed.
            seen = {member}
            for step in range(1, size):
                member = owners[table[(slot + step) % size]]
                if member in allowed:
                    return member
                seen.add(member)
                if len(seen) == self._present:
                    break
        # No slot owner may take it (only weight-0 members are left): still one per key.
        rest = sorted(candidates, key=lambda m: str(m.addr))
        return rest[code % len(rest)]

    def _refresh(self) -> None:
        # table_weight: the operator's or config's weight, without the slow-start ramp (a
        # ramp step would move keys and cost a rebuild; see Member.table_weight).
        weights = tuple(m.table_weight for m in self.members)
        if weights == self._weights:
            return
        owners = sorted((m for m in self.members if m.table_weight > 0), key=lambda m: str(m.addr))
        self._owners = tuple(owners)
        self._table = (
            build_table([str(m.addr) for m in owners], [m.table_weight for m in owners], self.table_size)
            if owners
            else array("i")
        )
        # Owners holding at least one slot: a share below 1/M (weights 1 and 100000) gets none.
        self._present = len(set(self._table))
        self._weights = weights
        self.rebuilds += 1
