"""Routing: Host + path -> RouteConfig. Pure; compiled at config time (see router.py)."""

from wsproxy.routing.router import Router, request_host

__all__ = ["Router", "request_host"]
