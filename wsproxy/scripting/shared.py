"""``shared``: the per-worker key-value store with TTLs that every plugin of a worker sees.

Modelled on iRules ``table`` and OpenResty's ``ngx.shared.DICT`` (plugin-api.md §1.1, §1.3,
§2.2): string keys; values are str, int, float or bool only, so a Lua plugin and a Python
plugin can share them (Lua strings arrive as bytes and are stored as str, UTF-8 with
surrogateescape, so any byte string round-trips). v1 lives in one process; the API leaves
room for a shared-memory or Redis backend (§4).

Expiry is lazy (an expired key is gone when read) plus an amortized sweep, and the store is
bounded: when ``max_keys`` is reached, expired keys are swept, then the oldest inserted keys
are evicted (``ngx.shared`` evicts least recently used; insertion order is close and O(1)).
The clock is injectable so tests can move time.
"""

from __future__ import annotations

import math
import time
from typing import Callable

__all__ = ["SharedStore", "SharedValue"]

SharedValue = str | int | float | bool
_NO_EXPIRY = math.inf


def _key(key) -> str:
    if isinstance(key, bytes):
        key = key.decode("utf-8", "surrogateescape")
    if not isinstance(key, str) or not key:
        raise TypeError(f"shared keys are non-empty strings, got {key!r}")
    return key


def _value(value) -> SharedValue:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"shared values are strings, numbers or booleans, got {type(value).__name__}")


class SharedStore:
    """get / set / add / incr / touch / delete, each key with an optional TTL in seconds."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._data: dict[str, tuple[SharedValue, float]] = {}
        self._writes = 0

    def __len__(self) -> int:
        return len(self._data)

    def __bool__(self) -> bool:
        # A store is a service, not a value: "shared or SharedStore()" must keep an empty one.
        return True

    def _expiry(self, ttl) -> float:
        if ttl is None or ttl == 0:
            return _NO_EXPIRY
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl < 0 or ttl != ttl:
            raise ValueError(f"ttl must be seconds >= 0 (0 or none = no expiry), got {ttl!r}")
        return self._clock() + ttl

    def _live(self, key: str):
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            del self._data[key]
            return None
        return entry

    def _store(self, key: str, value: SharedValue, expiry: float) -> None:
        data = self._data
        if key not in data and len(data) >= self._max_keys:
            self.sweep()
            while len(data) >= self._max_keys:
                del data[next(iter(data))]
        data[key] = (value, expiry)
        self._writes += 1
        if self._writes >= 1024:  # amortized sweep so dead keys do not pile up unread
            self._writes = 0
            self.sweep()

    def sweep(self) -> int:
        """Drop every expired key now; returns how many went."""
        now = self._clock()
        dead = [key for key, (_, expiry) in self._data.items() if expiry <= now]
        for key in dead:
            del self._data[key]
        return len(dead)

    def get(self, key: str) -> SharedValue | None:
        entry = self._live(_key(key))
        return None if entry is None else entry[0]

    def set(self, key: str, value: SharedValue, ttl: float | None = None) -> bool:
        self._store(_key(key), _value(value), self._expiry(ttl))
        return True

    def add(self, key: str, value: SharedValue, ttl: float | None = None) -> bool:
        """Set only if the key is absent; True if it was added."""
        key = _key(key)
        if self._live(key) is not None:
            return False
        self._store(key, _value(value), self._expiry(ttl))
        return True

    def incr(self, key: str, delta: int | float = 1, ttl: float | None = None) -> int | float:
        """Add ``delta`` (a missing key counts as 0) and return the new value. ``ttl`` sets
        the expiry; without it an existing key keeps its own."""
        key = _key(key)
        if isinstance(delta, bool) or not isinstance(delta, (int, float)):
            raise TypeError(f"incr delta must be a number, got {type(delta).__name__}")
        entry = self._live(key)
        if entry is None:
            value, expiry = delta, self._expiry(ttl)
        else:
            old = entry[0]
            if isinstance(old, bool) or not isinstance(old, (int, float)):
                raise TypeError(f"shared key {key!r} holds a {type(old).__name__}, not a number")
            value = old + delta
            expiry = self._expiry(ttl) if ttl is not None else entry[1]
        self._store(key, value, expiry)
        return value

    def touch(self, key: str, ttl: float | None = None) -> bool:
        """Give a live key a new TTL; False if it is absent."""
        key = _key(key)
        entry = self._live(key)
        if entry is None:
            return False
        self._data[key] = (entry[0], self._expiry(ttl))
        return True

    def delete(self, key: str) -> bool:
        """Remove a key; True if it was there (and live)."""
        key = _key(key)
        entry = self._live(key)
        if entry is None:
            return False
        del self._data[key]
        return True

    def ttl(self, key: str) -> float | None:
        """Seconds left before ``key`` expires (inf without expiry), None if absent."""
        entry = self._live(_key(key))
        return None if entry is None else entry[1] - self._clock()
