"""The built-in demo: two chat members behind one wsproxy listener (`wsproxy demo`).

`demo_config()` is the raw site.conf dict (see sample.conf for the same thing in TOML);
`start_backends()` / `stop_backends()` run the members in the current event loop.
"""

from __future__ import annotations

import asyncio

DEMO_BACKENDS = ("member-a", "member-b")


def _addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def demo_config(proxy_port: int, backend_ports: list[int], host: str = "127.0.0.1",
                admin_port: int = 9901) -> dict:
    """The demo's config as the dict tomllib would give for sample.conf (for parse_config).

    The admin API (stats page, /metrics, drain) listens on ``admin_port`` of the same host,
    which is loopback unless the operator asked for another."""
    return {
        "server": {"workers": 1, "log_level": "info", "access_log": True,
                   "admin": _addr(host, admin_port)},
        "listeners": {
            "public": {
                "bind": _addr(host, proxy_port),
                "mode": "http",
                "routes": [
                    {"path": "/ws", "pool": "chat"},
                    {"pool": "chat"},  # catch-all: the page, /whoami, /healthz
                ],
            },
        },
        "pools": {
            "chat": {
                "balance": "least_conn",
                "members": [_addr(host, port) for port in backend_ports],
                "health": {"type": "http", "path": "/healthz", "interval": "2s", "timeout": "1s"},
                "ping_interval": "20s",
                "drain_spread": "5s",
            },
        },
    }


async def start_backends(host: str, ports: list[int]) -> list[asyncio.AbstractServer]:
    """Start one member per port, named member-a, member-b, ... (port 0 = any free port)."""
    from wsproxy.demo.backend import serve_backend

    if len(ports) > len(DEMO_BACKENDS):
        raise ValueError(f"at most {len(DEMO_BACKENDS)} demo members")
    servers: list[asyncio.AbstractServer] = []
    try:
        for name, port in zip(DEMO_BACKENDS, ports):
            servers.append(await serve_backend(host, port, name))
    except BaseException:
        await stop_backends(servers)
        raise
    return servers


async def stop_backends(servers: list[asyncio.AbstractServer], code: int = 1001) -> None:
    """Stop the members: Close `code` to every WebSocket they hold, then close the sockets."""
    from wsproxy.demo.backend import stop_backend

    await asyncio.gather(*(stop_backend(server, code) for server in servers))


def bound_port(server: asyncio.AbstractServer) -> int:
    """The port a server listens on (useful after starting it on port 0)."""
    return server.sockets[0].getsockname()[1]


__all__ = ["DEMO_BACKENDS", "demo_config", "start_backends", "stop_backends", "bound_port"]
