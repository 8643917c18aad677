"""Route table: pick the RouteConfig for a request from its Host and path.

Compiled once from a listener's routes and never changed afterwards (a reload builds a new
Router), so a Session only ever calls ``match``.

Matching rules (the contract in docs/INTERFACES.md and design/CONFIG.md):

- A route's keys are ``host``, ``path`` and ``path_prefix``, all optional. Every key present
  must match; a route with no keys is a catch-all. Routes are tried in order, first match wins.
- ``host``: exact name, or ``*.example.com`` which matches one or more labels before
  ``.example.com`` (``a.example.com``, ``a.b.example.com``) but not the apex ``example.com``.
  Compared case-insensitively, without the port, without IPv6 brackets and without one
  trailing dot (``Example.COM.:8080`` is ``example.com``; ``[::1]:8080`` is ``::1``). A route
  host may be written ``::1`` or ``[::1]``. Route hosts carry no port (the validator rejects
  one); the listener already fixes the port. A request without a Host matches no host route.
- ``path``: exact, case-sensitive string equality.
- ``path_prefix``: plain string prefix, so ``/api`` also matches ``/apiary``; write ``/api/``
  to mean the directory.
- Paths are the raw request-target path (``RequestHead.path``: the target before ``?``).
  Nothing is normalized: no percent-decoding, no dot-segment removal, no slash merging. So
  ``/live/../admin`` does not match ``path_prefix = "/admin/"``; a route that guards a path
  must not rely on members normalizing the same way. A query left on the path is dropped here
  too, so passing the whole target is harmless.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from wsproxy.config.schema import RouteConfig


def request_host(host: str | None) -> str | None:
    """The Host header value in comparable form: lower case, no port, no brackets, no trailing dot."""
    if not host:
        return None
    host = host.strip().lower()
    if host.startswith("["):
        # IPv6 literal: "[::1]:8080" -> "::1". An unclosed bracket is kept as is (no match).
        end = host.find("]")
        if end > 0:
            host = host[1:end]
    elif host.count(":") == 1:
        # "name:port"; several colons would be a bare IPv6 address (invalid in Host, kept whole).
        host = host.partition(":")[0]
    if host.endswith("."):
        host = host[:-1]
    return host or None


def _route_host(host: str) -> str:
    """A route's ``host`` key in comparable form (the port is never stripped here)."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.endswith(".") and len(host) > 1:
        host = host[:-1]
    return host


class _CompiledRoute:
    """One route reduced to the checks it needs; ``None`` means the key is absent."""

    __slots__ = ("route", "host", "host_suffix", "path", "path_prefix")

    def __init__(self, route: RouteConfig) -> None:
        self.route = route
        self.host: str | None = None
        self.host_suffix: str | None = None  # ".example.com" for "*.example.com"
        if route.host is not None:
            host = _route_host(route.host)
            if host.startswith("*."):
                self.host_suffix = host[1:]
            else:
                self.host = host
        self.path: str | None = route.path
        self.path_prefix: str | None = route.path_prefix

    def matches(self, host: str | None, path: str) -> bool:
        if self.host is not None and host != self.host:
            return False
        if self.host_suffix is not None and not _under_suffix(host, self.host_suffix):
            return False
        if self.path is not None and path != self.path:
            return False
        if self.path_prefix is not None and not path.startswith(self.path_prefix):
            return False
        return True


def _under_suffix(host: str | None, suffix: str) -> bool:
    """True when host is one or more non-empty labels followed by suffix (never the apex)."""
    if host is None or not host.endswith(suffix):
        return False
    labels = host[: -len(suffix)]
    return bool(labels) and all(labels.split("."))


class Router:
    """Immutable, ordered route table. ``match(host, path) -> RouteConfig | None``."""

    __slots__ = ("_compiled", "routes")

    def __init__(self, routes: Iterable[RouteConfig]) -> None:
        self.routes: tuple[RouteConfig, ...] = tuple(routes)
        self._compiled: tuple[_CompiledRoute, ...] = tuple(_CompiledRoute(r) for r in self.routes)

    def match(self, host: str | None, path: str) -> RouteConfig | None:
        """The first route whose keys all match, or None (the caller answers 404)."""
        host = request_host(host)
        if "?" in path:
            path = path.partition("?")[0]
        for compiled in self._compiled:
            if compiled.matches(host, path):
                return compiled.route
        return None

    def __len__(self) -> int:
        return len(self._compiled)

    def __repr__(self) -> str:
        return f"Router({len(self._compiled)} routes)"
