"""CPU time and memory of a proxy read from /proc (Linux only, no dependencies).

A proxy is identified by its process group: run.py starts each proxy in a new session,
so the nginx master and its worker, or wsproxy and anything it forks, all share the
leader's pgid. CPU is utime + stime of every live process of the group (all threads
included: /proc/PID/stat sums them), in clock ticks converted to seconds.
"""
from __future__ import annotations

import os

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # "pid (comm) state ppid pgrp ..."; comm may hold spaces and ')'
    return raw[raw.rindex(")") + 2:].split()


def group_pids(pgid: int) -> list[int]:
    """Live pids whose process group is ``pgid``."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        f = _stat_fields(int(name))
        if f is not None and int(f[2]) == pgid and f[0] != "Z":
            pids.append(int(name))
    return sorted(pids)


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of ``pids`` (each with all its threads), in seconds."""
    ticks = 0
    for pid in pids:
        f = _stat_fields(pid)
        if f is not None:
            ticks += int(f[11]) + int(f[12])
    return ticks / CLK_TCK


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """(utime, stime) of ``pids``, in seconds: user space and kernel."""
    u = k = 0
    for pid in pids:
        f = _stat_fields(pid)
        if f is not None:
            u += int(f[11])
            k += int(f[12])
    return u / CLK_TCK, k / CLK_TCK


def rss_kib(pids: list[int]) -> int:
    """Sum of VmRSS of ``pids``, KiB."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def fd_count(pids: list[int]) -> int:
    n = 0
    for pid in pids:
        try:
            n += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return n


class Group:
    """The processes of one proxy (a pgid), re-listed on every reading."""

    def __init__(self, pgid: int | None):
        self.pgid = pgid

    def pids(self) -> list[int]:
        return group_pids(self.pgid) if self.pgid else []

    def cpu(self) -> float:
        return cpu_seconds(self.pids())

    def cpu_split(self) -> tuple[float, float]:
        return cpu_split(self.pids())

    def rss_kib(self) -> int:
        return rss_kib(self.pids())

    def fds(self) -> int:
        return fd_count(self.pids())


def system_cpu() -> dict:
    """Machine-wide CPU seconds from /proc/stat: user+nice+system ("tasks"), irq+softirq, idle."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq = v[:7]
    steal = v[7] if len(v) > 7 else 0
    return {"tasks": (user + nice + system) / CLK_TCK, "irq": (irq + softirq) / CLK_TCK,
            "idle": (idle + iowait) / CLK_TCK, "steal": steal / CLK_TCK}
