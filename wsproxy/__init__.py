"""wsproxy: a WebSocket-aware reverse proxy and load balancer."""

__version__ = "0.1.0"

__all__ = ["__version__"]
