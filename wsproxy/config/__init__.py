"""site.conf: load, validate and describe the configuration.

    from wsproxy.config import load_config, parse_config, format_plan

The package is pure Python (no asyncio, no sockets): ``wsproxy check`` runs it without
binding anything. The contract for the file is design/CONFIG.md; the dataclasses it
produces are in ``schema.py``.
"""

from __future__ import annotations

from wsproxy.config.load import load_config, parse_config
from wsproxy.config.plan import format_plan
from wsproxy.config.schema import (
    Address,
    Config,
    HealthConfig,
    ListenerConfig,
    MemberConfig,
    PersistConfig,
    PluginConfig,
    PoolConfig,
    RouteConfig,
    ServerConfig,
    TlsConfig,
    effective_relay,
    effective_ws_idle_timeout,
)
from wsproxy.config.validate import NOT_SUPPORTED_YET

__all__ = [
    "Address",
    "Config",
    "HealthConfig",
    "ListenerConfig",
    "MemberConfig",
    "NOT_SUPPORTED_YET",
    "PersistConfig",
    "PluginConfig",
    "PoolConfig",
    "RouteConfig",
    "ServerConfig",
    "TlsConfig",
    "effective_relay",
    "effective_ws_idle_timeout",
    "format_plan",
    "load_config",
    "parse_config",
]
