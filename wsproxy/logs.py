"""Logging setup: text or JSON lines on stderr, plus the access log.

The access log is one record per HTTP request and one per WebSocket session, written
once, when the request or session ends. Fields are listed in docs/INTERFACES.md.
"""

from __future__ import annotations

import json
import logging
import sys
import time

LOG = logging.getLogger("wsproxy")
ACCESS = logging.getLogger("wsproxy.access")

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        line = f"{stamp}.{int(record.msecs):03d} {record.levelname:<7} {record.getMessage()}"
        fields = getattr(record, "fields", None)
        if fields and record.name != ACCESS.name:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str = "info", fmt: str = "text", stream=None) -> None:
    root = logging.getLogger("wsproxy")
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, logging.INFO))
    root.propagate = False


def event(level: int, msg: str, **fields) -> None:
    """Log ``msg`` with structured ``fields`` (JSON keys, or key=value in text)."""
    if LOG.isEnabledFor(level):
        LOG.log(level, msg, extra={"fields": fields})


def access(fields: dict) -> None:
    """Write one access-log record (already complete)."""
    if not ACCESS.isEnabledFor(logging.INFO):
        return
    fields = {"type": "access", **fields}
    ACCESS.info(_access_text(fields), extra={"fields": fields})


def _access_text(f: dict) -> str:
    if f.get("kind") == "tcp":
        return _tcp_text(f)
    parts = [
        f.get("kind", "-"),
        f.get("client") or "-",
        f.get("route") or "-",
        f"{f.get('pool') or '-'}/{f.get('member') or '-'}",
        f'"{f.get("method") or "-"} {f.get("path") or "-"}"',
        str(f.get("status") if f.get("status") is not None else "-"),
        f"in={f.get('bytes_in', 0)} out={f.get('bytes_out', 0)}",
    ]
    if f.get("kind") == "ws":
        parts.append(f"frames={f.get('frames_in', 0)}/{f.get('frames_out', 0)}")
        parts.append(f"close={f.get('close_code') if f.get('close_code') is not None else '-'}")
        parts.append(f"by={f.get('closed_by') or '-'}")
    parts.append(f"{f.get('duration_ms', 0)}ms")
    if f.get("pick"):
        parts.append(f"pick={f['pick']}")
    if f.get("reason"):
        parts.append(f'reason="{f["reason"]}"')
    return "ACCESS " + " ".join(parts)


def _tcp_text(f: dict) -> str:
    parts = [
        "tcp",
        f.get("client") or "-",
        f.get("listener") or "-",
        f"{f.get('pool') or '-'}/{f.get('member') or '-'}",
        f"in={f.get('bytes_in', 0)} out={f.get('bytes_out', 0)}",
        f"by={f.get('closed_by') or '-'}",
        f"{f.get('duration_ms', 0)}ms",
    ]
    if f.get("reason"):
        parts.append(f'reason="{f["reason"]}"')
    return "ACCESS " + " ".join(parts)
