"""The request key that ``balance = "hash"`` hashes, from ``hash_key``.

``source_ip`` (the client address, after trusted PROXY headers), ``header:NAME``,
``cookie:NAME``, ``query:NAME`` (the raw, undecoded value of the first NAME parameter) or
``path`` (without the query). An absent or empty key is None: the pool's ``hash_fallback``
balancer picks instead, and the fallback is counted.
"""

from __future__ import annotations

from wsproxy.protocol.cookies import cookie_value


def request_key(hash_key: str | None, *, client_ip: str, head=None) -> bytes | None:
    """The bytes to hash for this request or connection (``head`` is None for tcp)."""
    if hash_key is None:
        return None
    if hash_key == "source_ip":
        return client_ip.encode() if client_ip else None
    if head is None:
        return None  # a tcp connection has no header, cookie, query or path
    if hash_key == "path":
        value = head.path
    else:
        kind, _, name = hash_key.partition(":")
        if kind == "header":
            value = head.get(name)
        elif kind == "cookie":
            value = cookie_value(head.headers, name)
        else:  # query
            value = _query_value(head.query, name)
    return value.encode("latin-1", "replace") if value else None


def _query_value(query: str, name: str) -> str | None:
    for part in query.split("&"):
        key, eq, value = part.partition("=")
        if key == name:
            return value if eq else ""
    return None
