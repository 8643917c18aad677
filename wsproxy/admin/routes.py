"""AdminApi: admin requests (method, target, body) to ControlPlane and Metrics calls.

No sockets here: ``server.py`` parses HTTP and writes the ``Response``. Routes (the
CONFIG.md contract first; the others are extras):

    GET  /                                          the stats page (HTML)
    GET  /metrics                                   Prometheus text format 0.0.4
    GET  /api/status                                generation, workers, pid, uptime, version
    GET  /api/pools                                 control.status(): pools, members, state, conns
    GET  /api/pools/{pool}                          one pool of it
    GET  /api/pools/{pool}/members/{addr}           one member of it
    POST /api/pools/{pool}/members/{addr}/drain     optional {"spread": "10s" | 10} or ?spread=10s
    POST /api/pools/{pool}/members/{addr}/enable
    POST /api/pools/{pool}/members/{addr}/weight    {"weight": N} or ?weight=N
    POST /api/pools/{pool}/rebalance

``{addr}`` is "host:port", percent-decoded per path segment ("[::1]:9001" may come as
``%5B%3A%3A1%5D%3A9001``). Answers: JSON; unknown pool or member (the control plane's
KeyError) -> 404 naming it; a bad value (ValueError, bad JSON) -> 400; an unknown path ->
404; a known path with the wrong method -> 405 with ``Allow``. HEAD is answered like GET.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote

from wsproxy import __version__
from wsproxy.admin.page import STATS_PAGE
from wsproxy.config.units import parse_duration

JSON = "application/json"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
HTML = "text/html; charset=utf-8"
_GET = ("GET", "HEAD")
_POST = ("POST",)


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_response(status: int, data) -> Response:
    return Response(status, (json.dumps(data, indent=1, sort_keys=False) + "\n").encode())


def error(status: int, message: str, **extra) -> Response:
    return json_response(status, {"error": message, **extra})


def _message(exc: BaseException) -> str:
    """A KeyError's str() is its repr (quotes); the control plane's carry a full sentence."""
    return str(exc.args[0]) if exc.args else type(exc).__name__


class AdminApi:
    def __init__(self, control, metrics=None) -> None:
        self.control = control
        self.metrics = metrics
        self.started = time.time()

    async def handle(self, method: str, target: str, body: bytes = b"") -> Response:
        path, _, query_text = target.partition("?")
        segments = [unquote(s) for s in path.split("/")[1:]] if path.startswith("/") else None
        if segments is None:
            return error(400, "the request target must be a path")
        if len(segments) > 1 and segments[-1] == "":
            segments.pop()  # "/api/pools/" is "/api/pools"
        try:
            query = parse_qs(query_text, keep_blank_values=True, strict_parsing=False)
        except ValueError:
            return error(400, "malformed query string")
        found = self._route(segments)
        if found is None:
            return error(404, f"no such path: {path}")
        allowed, handler, args = found
        if method not in allowed:
            response = error(405, f"{method} is not allowed on {path}", allow=list(allowed))
            response.headers.append(("Allow", ", ".join(allowed)))
            return response
        try:
            params = _params(body, query) if method == "POST" else {}
            result = handler(*args, params) if method == "POST" else handler(*args)
            if inspect.isawaitable(result):
                result = await result
        except KeyError as exc:
            return error(404, _message(exc))
        except (ValueError, TypeError) as exc:
            return error(400, _message(exc))
        except Exception as exc:  # a bug of ours or of the control plane: say so, stay up
            logging.getLogger("wsproxy").exception("admin %s %s failed", method, path)
            return error(500, f"internal error: {type(exc).__name__}")
        return result if isinstance(result, Response) else json_response(200, result)

    def _route(self, s: list[str]):
        """(allowed methods, handler, args) for the path segments, or None."""
        n = len(s)
        if s == [""]:
            return _GET, self.page, ()
        if s == ["metrics"]:
            return _GET, self.metrics_text, ()
        if n < 2 or s[0] != "api":
            return None
        if s[1] == "status" and n == 2:
            return _GET, self.status, ()
        if s[1] != "pools":
            return None
        if n == 2:
            return _GET, self.pools, ()
        if n == 3:
            return _GET, self.pool, (s[2],)
        if n == 4 and s[3] == "rebalance":
            return _POST, self.rebalance, (s[2],)
        if n >= 5 and s[3] == "members":
            if n == 5:
                return _GET, self.member, (s[2], s[4])
            if n == 6 and s[5] in ("drain", "enable", "weight"):
                return _POST, getattr(self, s[5]), (s[2], s[4])
        return None

    # -- reads ---------------------------------------------------------------------------------
    def page(self) -> Response:
        return Response(200, STATS_PAGE.encode(), HTML)

    def metrics_text(self) -> Response:
        if self.metrics is None:
            return error(404, "metrics are not collected in this process")
        return Response(200, self.metrics.render(getattr(self.control, "generation", None)).encode(), PROMETHEUS)

    def status(self) -> dict:
        control = self.control
        config = getattr(control, "config", None)
        table = getattr(control, "table", None)
        workers = getattr(getattr(config, "server", None), "workers", None)
        return {
            "generation": getattr(control, "generation", None),
            "pid": os.getpid(),
            "version": __version__,
            "uptime_s": round(time.time() - self.started, 3),
            "workers": {"configured": workers,
                        "alive": len(table.live_rows()) if table is not None else None},
            "pools": len(getattr(config, "pools", ()) or ()),
            "listeners": list(getattr(config, "listeners", {}) or {}),
        }

    def pools(self) -> dict:
        return self.control.status()

    def pool(self, name: str) -> dict:
        status = self.control.status()
        pool = status.get("pools", {}).get(name)
        if pool is None:
            raise KeyError(f"no pool named {name!r}")
        return {"generation": status.get("generation"), "pool": name, **pool}

    def member(self, pool_name: str, addr: str) -> dict:
        pool = self.pool(pool_name)
        for member in pool.get("members", ()):
            if member.get("addr") == addr:
                return {"pool": pool_name, **member}
        raise KeyError(f"pool {pool_name!r} has no member {addr!r}")

    # -- actions -------------------------------------------------------------------------------
    def drain(self, pool: str, addr: str, params: dict):
        spread = params.get("spread")
        if spread is not None:
            spread = _seconds(spread, "spread")
        return self.control.drain(pool, addr, spread=spread)

    def enable(self, pool: str, addr: str, params: dict):
        return self.control.enable(pool, addr)

    def weight(self, pool: str, addr: str, params: dict):
        if "weight" not in params:
            raise ValueError('the weight is missing: send {"weight": N} or ?weight=N')
        weight = params["weight"]
        if isinstance(weight, str):
            try:
                weight = int(weight)
            except ValueError:
                raise ValueError(f"weight must be an integer, got {params['weight']!r}") from None
        return self.control.set_weight(pool, addr, weight)

    def rebalance(self, pool: str, params: dict):
        return self.control.rebalance(pool)


def _params(body: bytes, query: dict[str, list[str]]) -> dict:
    """A POST's parameters: the query's, overridden by a JSON object body."""
    params = {key: values[-1] for key, values in query.items()}
    if body.strip():
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"the body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError("the body must be a JSON object")
        params.update(data)
    return params


def _seconds(value, name: str) -> float:
    """10, 2.5, "10", "10s", "250ms" -> seconds."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a duration like \"10s\" or a number of seconds")
    seconds = None
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value)
        except ValueError:
            try:
                seconds = parse_duration(value)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{name} must be a duration like \"10s\" or a number of seconds, zero or more")
    return seconds
