"""The node: state shared by every process of one wsproxy node, and what acts on it.

- ``table``: NodeTable, shared memory with one writer per cell (counts, member control).
- ``live``: LiveConnections, each process's own WebSockets per member; carries out drains
  and shed requests (Close 1012).
- ``control``: ControlPlane, the node's one brain: health checks, rebalance planning,
  operator actions, the status the admin API shows.
- ``metrics``: Metrics, counters in the table rendered as Prometheus text.
- ``master``: the master process of ``workers = N``.
"""
