"""Circuit breaker: a plugin that keeps failing is taken out of service for a while.

Following proxy-wasm's "plugin crashes" guidance (plugin-api.md §1.4, §2.5): ``threshold``
errors within ``window`` seconds trip the breaker, which stays open for ``cooldown`` seconds.
While it is open the plugin is not called: its events fail the way its ``on_error`` says
without running it ("abort" keeps failing closed, so a guard that throws never lets traffic
through unchecked; "continue"/"disable" skip it). When the cool-down ends the breaker closes
again with a clean slate, and a Lua plugin gets a fresh runtime (which also clears a runtime
stuck at its memory cap). Defaults: 50 errors in 10 s -> open for 30 s.
"""

from __future__ import annotations

from collections import deque

__all__ = ["CircuitBreaker", "DEFAULT_THRESHOLD", "DEFAULT_WINDOW", "DEFAULT_COOLDOWN"]

DEFAULT_THRESHOLD = 50
DEFAULT_WINDOW = 10.0
DEFAULT_COOLDOWN = 30.0


class CircuitBreaker:
    """Counts errors in a sliding window; ``open_until`` > 0 while tripped."""

    __slots__ = ("threshold", "window", "cooldown", "open_until", "trips", "_times")

    def __init__(self, threshold: int = DEFAULT_THRESHOLD, window: float = DEFAULT_WINDOW,
                 cooldown: float = DEFAULT_COOLDOWN) -> None:
        self.trips = 0
        self.configure(threshold, window, cooldown)

    def configure(self, threshold: int, window: float, cooldown: float) -> None:
        """New thresholds (the object stays the same: subscriptions hold a reference); resets."""
        if threshold < 1 or window <= 0 or cooldown < 0:
            raise ValueError("breaker: threshold >= 1, window > 0 and cooldown >= 0")
        self.threshold = threshold
        self.window = window
        self.cooldown = cooldown
        self.open_until = 0.0
        self._times: deque[float] = deque(maxlen=threshold)

    def record_error(self, now: float) -> bool:
        """Count one error; True if this one tripped the breaker."""
        times = self._times
        times.append(now)
        if len(times) == self.threshold and now - times[0] <= self.window:
            times.clear()
            self.open_until = now + self.cooldown if self.cooldown > 0 else 0.0
            self.trips += 1
            return True
        return False

    def is_open(self, now: float) -> bool:
        """True while tripped. Call ``close`` once this turns False after a trip."""
        return now < self.open_until

    def close(self) -> None:
        self.open_until = 0.0
        self._times.clear()
