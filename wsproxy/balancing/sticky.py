"""Sticky sessions by an inserted cookie (``persist = { cookie = NAME }``).

The cookie's value is an opaque member id: the first 15 bytes of
HMAC-SHA256(secret, pool name + member address), base64url. It reveals nothing about the
address, cannot be forged for a member without the secret, and is the same in every worker
and after a restart when the secret comes from the config. Without a configured secret each
process draws a random one (the proxy logs a warning): clients then lose their stickiness on
a restart, which costs Socket.IO polling clients a reconnect.

Lookup is a dict from value to member; anything else (forged, stale, another pool's) is
unknown, and the request is balanced normally and gets a fresh cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Sequence

from wsproxy.balancing.member import Member
from wsproxy.protocol.cookies import set_cookie


class StickyCookie:
    def __init__(self, pool: str, config, members: Sequence[Member]) -> None:
        self.name: str = config.cookie
        self.max_age: float | None = config.max_age
        self.generated_secret = config.secret is None
        secret = (config.secret or secrets.token_urlsafe(32)).encode()
        self._value: dict[Member, str] = {}
        self._member: dict[str, Member] = {}
        for member in members:
            digest = hmac.new(secret, f"{pool}\0{member.addr}".encode(), hashlib.sha256).digest()
            value = base64.urlsafe_b64encode(digest[:15]).decode()
            self._value[member] = value
            self._member[value] = member

    def member_for(self, value: str | None) -> Member | None:
        """The member a request's cookie value names, or None (absent, forged, stale)."""
        return self._member.get(value) if value else None

    def value_for(self, member: Member) -> str:
        return self._value[member]

    def header(self, member: Member, *, secure: bool) -> tuple[str, str]:
        """The Set-Cookie header that sends later requests to ``member``."""
        return set_cookie(self.name, self._value[member], secure=secure, max_age=self.max_age)
