"""The admin API on ``server.admin``: JSON status and actions, /metrics, a stats page.

- ``server.AdminServer(bind, control, metrics)``: a small HTTP/1.1 server on asyncio
  streams, in the control-plane process (it reads the NodeTable, which every worker writes).
- ``routes.AdminApi``: paths to ControlPlane calls; the contract is in
  /work/shared/design/CONFIG.md ("Admin API contract").
- ``page.STATS_PAGE``: the HTML at ``/`` (no external assets).

Admin is off unless ``server.admin`` is set; every example binds it to loopback, since it
has no authentication: anyone who can reach it can drain members.
"""

from wsproxy.admin.routes import AdminApi, Response
from wsproxy.admin.server import AdminServer

__all__ = ["AdminServer", "AdminApi", "Response"]
