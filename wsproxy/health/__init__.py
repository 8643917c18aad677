"""Member health: active checks (HealthService, run by the control plane) and the data
path's passive reports (passive.py).

One module per check type (tcp.py, http.py, ws.py), like HAProxy's one file per checker;
service.py schedules them and writes the verdicts into the NodeTable, where every process's
Pool reads them (HEALTH, UP_SINCE_MS for slow start, RTT_US, the check counters).
"""

from __future__ import annotations

from wsproxy.health.probe import CheckFailed, Probe
from wsproxy.health.service import CHECKS, HealthService

__all__ = ["CHECKS", "CheckFailed", "HealthService", "Probe"]
