"""A throwaway redis-server for the integration tests (the Socket.IO cluster shares its
broadcasts through it).

The Debian package ``redis-server`` provides the binary; ``.ci/run`` installs it. When it is
missing the tests fail (never skip) with a message that says how to install it.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from .support import HOST, _kill_group, free_port

INSTALL_HINT = ("redis-server is not on PATH: install it (Debian/Ubuntu: "
                "`apt-get install -y redis-server`; .ci/run does this in CI)")


class RedisStartError(RuntimeError):
    pass


@dataclass
class RedisServer:
    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def command(self, *args: str, timeout: float = 2.0):
        """Send one command on a fresh connection and return the decoded reply."""
        return redis_command(self.port, *args, timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            _kill_group(self.proc, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                _kill_group(self.proc, signal.SIGKILL)
                self.proc.wait(5)


def redis_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise RedisStartError(INSTALL_HINT)
    return path


def start_redis(tmp_path: Path, *, attempts: int = 3, timeout: float = 10.0) -> RedisServer:
    """Start ``redis-server`` on a free loopback port, without persistence, and wait until it
    answers PING. Retries on another port if the chosen one was taken meanwhile."""
    binary = redis_binary()
    last = ""
    for attempt in range(attempts):
        port = free_port()
        log_path = tmp_path / f"redis-{port}.log"
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(
                [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
                 "--dir", str(tmp_path), "--protected-mode", "yes", "--loglevel", "warning"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        server = RedisServer(proc, port, log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if server.command("PING", timeout=0.5) is True:
                    return server
            except redis.RedisError:
                pass
            time.sleep(0.02)
        server.stop()
        last = server.log()
        if "in use" not in last.lower():
            break
    raise RedisStartError(f"redis-server did not answer PING (exit code {proc.returncode}):\n{last[-3000:]}")


def redis_command(port: int, *args: str, timeout: float = 2.0):
    """One command on a fresh connection (redis-py, the client AsyncRedisManager uses too)."""
    client = redis.Redis(host=HOST, port=port, socket_timeout=timeout, socket_connect_timeout=timeout,
                         decode_responses=True)
    try:
        return client.execute_command(*args)
    finally:
        client.close()
