"""The client side of the admin API, for ``wsproxy ctl`` (urllib; no dependency).

``AdminClient(address).call(method, path, body)`` returns the decoded JSON answer or raises
``AdminError`` with a message fit for the terminal: the API is unreachable, or it answered
an error (its JSON ``error`` text is quoted). ``format_status`` turns ``GET /api/pools``
into the table ``wsproxy ctl status`` prints.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from urllib.parse import quote

TIMEOUT = 10.0


class AdminError(Exception):
    pass


def base_url(address: str) -> str:
    """"127.0.0.1:9901", "[::1]:9901", "localhost:9901" or a full "http://..." URL."""
    address = address.strip().rstrip("/")
    if address.startswith(("http://", "https://")):
        return address
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or not host:
        raise AdminError(f'--admin must be HOST:PORT like "127.0.0.1:9901" or "[::1]:9901", got {address!r}')
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def member_path(pool: str, addr: str, action: str | None = None) -> str:
    path = f"/api/pools/{quote(pool, safe='')}/members/{quote(addr, safe='')}"
    return f"{path}/{action}" if action else path


class AdminClient:
    def __init__(self, address: str, timeout: float = TIMEOUT) -> None:
        self.url = base_url(address)
        self.timeout = timeout

    def call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                message = json.loads(raw).get("error") or raw.decode(errors="replace")
            except (ValueError, AttributeError):
                message = raw.decode(errors="replace").strip() or exc.reason
            raise AdminError(f"{method} {path}: {exc.code} {exc.reason}: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AdminError(f"cannot reach the admin API at {self.url}: {reason}") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise AdminError(f"{method} {path}: the answer is not JSON") from None


def format_status(status: dict) -> str:
    """The ``GET /api/pools`` answer as a table per pool."""
    lines = [f"config generation {status.get('generation', '-')}"]
    header = ("MEMBER", "STATE", "CONNS", "WEIGHT", "HEALTH", "RTT")
    for name, pool in status.get("pools", {}).items():
        lines.append("")
        extra = f", health check {pool['health_check']}" if pool.get("health_check") else ""
        rebalance = pool.get("rebalance")
        if rebalance:
            extra += f", rebalancing: {rebalance.get('moved')}/{rebalance.get('budget')} moved"
        lines.append(f"pool {name} ({pool.get('balance', '-')}{extra})")
        rows = [header]
        for m in pool.get("members", ()):
            rtt = m.get("rtt_ms")
            rows.append((str(m.get("addr")), str(m.get("state")), str(m.get("conns")), str(m.get("weight")),
                         str(m.get("health", "-")), f"{rtt} ms" if rtt is not None else "-"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        for row in rows:
            cells = [row[i].rjust(widths[i]) if i in (2, 3) else row[i].ljust(widths[i]) for i in range(len(row))]
            lines.append("  " + "  ".join(cells).rstrip())
    return "\n".join(lines)
