"""Passive health, the data path's side: report each outcome to the Pool, log transitions.

The Pool (balancing/pool.py) keeps the state machine, per process: failure streaks,
ejection with exponential backoff, recovery. These helpers are what the I/O shell calls
after a connect (proxy/upstream.py) and after a member's answer (proxy/http_exchange.py),
so that every ejection and every return is logged the same way.
"""

from __future__ import annotations

import logging

from wsproxy.logs import event


def connect_failed(pool, member, reason: str) -> bool:
    """A connect failed; True (and logged) when it ejected the member."""
    return _logged(pool, member, pool.connect_failed(member), reason)


def answer_failed(pool, member, reason: str) -> bool:
    """A bad answer (``balancing.pool.answer_failed``), or none at all; True (and logged)
    when it ejected the member."""
    return _logged(pool, member, pool.handshake_failed(member), reason)


def connect_ok(pool, member) -> bool:
    """A connect succeeded; True (and logged) when it brought the member back."""
    if pool.connect_ok(member):
        event(logging.INFO, "member back", pool=pool.name, member=str(member.addr), after="connect")
        return True
    return False


def answer_ok(pool, member) -> bool:
    """A good answer; True (and logged) when it brought the member back."""
    if pool.handshake_ok(member):
        event(logging.INFO, "member back", pool=pool.name, member=str(member.addr), after="answer")
        return True
    return False


def _logged(pool, member, ejected: bool, reason: str) -> bool:
    if ejected:
        event(logging.WARNING, "member ejected", pool=pool.name, member=str(member.addr), reason=reason,
              for_s=round(member.down_for, 3), ejections=member.ejections)
    return ejected
