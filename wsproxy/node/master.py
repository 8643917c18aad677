"""Master: ``workers = N | "auto"``. One process that never serves traffic supervises N
worker processes that do.

The master builds the NodeTable (before any fork, so every worker shares its pages), the
Metrics and the ControlPlane (health checks, rebalancing, the admin API) in its own asyncio
loop. For each listener it opens N listening sockets with SO_REUSEPORT, one per worker
*slot*: the kernel spreads new connections over them. Worker k is forked with slot k's
sockets and closes every other inherited socket; it runs a fresh uvloop and an App that
serves from those sockets.

Signals to the master:
- SIGHUP: reload. The new config is validated here first (parse, plugins, pools, routers);
  a bad one is logged with its key paths and nothing changes. A good one: the control plane
  takes it, sockets open for new binds, a new generation of N workers is forked on the same
  slot sockets, and once every new worker is serving, each old worker gets SIGQUIT (below).
  An old worker only closes its *own* descriptor of a slot socket: the master and the new
  worker keep the socket, so connections queued in it are accepted by the new worker, never
  reset. The reload is logged when the old workers have stopped accepting: from then on
  every new connection gets the new config.
- SIGTERM, SIGINT, SIGQUIT: graceful stop. Every worker gets SIGTERM, the master waits for
  them (SIGKILL after close_spread + grace + a linger), then exits.
- SIGCHLD: reap. A worker that dies unexpectedly is logged (pid, exit status or signal),
  its table row retired (its connection counts vanish with it: never negative, never
  stuck), and a new one forked on the same slot sockets (backing off if it keeps dying).

Signals to a worker (sent by the master; an operator may send them too):
- SIGQUIT: drain. Stop accepting; requests in flight finish; WebSockets may live
  ``drain_timeout`` more, then get Close 1001 spread over ``close_spread``; then exit.
- SIGTERM: graceful stop now: stop accepting, Close 1001 spread over ``close_spread``, wait
  up to ``grace``, exit.
- SIGHUP and SIGINT are ignored (reloads and Ctrl-C are the master's).
A worker whose master dies gets SIGTERM from the kernel (PR_SET_PDEATHSIG) and checks its
parent every second too.

Plugins are loaded once per generation, here, and inherited by its workers: what a reload
validated is exactly what runs. Their ``shared`` store is per process (each worker starts
from the master's, which serves nothing), so unlike with ``workers = 1`` it does not carry
a worker's keys over a reload.

A new worker starts accepting one tick after its table row was claimed, so every other
process already sums its connection counts (max_conns and least_conn hold per node even
at that moment).

Old processes never pile up (anchors-features.md §2 item 2): a draining worker that is still
alive ``drain_timeout + close_spread`` + a linger after its SIGQUIT is killed with SIGKILL,
and the log says so.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import secrets
import signal
import socket
import stat
import sys
import time

from wsproxy import __version__, _speedups
from wsproxy.app import (BACKLOG, CUT_LINGER, TICK, App, apply_logging, coalesced_reloads, config_changes,
                         make_admin, make_control, make_live, make_metrics, prepare, read_reload,
                         restart_admin, run_loop, with_node_secret, worker_count)
from wsproxy.logs import event
from wsproxy.node.table import NodeTable
from wsproxy.scripting import SharedStore

SIGNAL_DRAIN = signal.SIGQUIT  # master -> worker: finish and exit (a reload replaced it)
SIGNAL_STOP = signal.SIGTERM  # master -> worker: graceful stop now
READY_TIMEOUT = 15.0  # a new worker must be serving within this, or the reload is abandoned
KILL_LINGER = 3.0  # beyond a worker's own deadlines, before the master SIGKILLs it
SUPERVISE = 0.25  # seconds between the master's checks (reaping, stragglers)
ACK_TIMEOUT = 5.0  # how long a reload waits for the old workers to stop accepting
SIBLINGS_SEE_ROW = 1.5 * TICK  # a new worker accepts once every other process has ticked since its row appeared
RESPAWN_MAX_DELAY = 10.0
_BLOCKED = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD}
_PR_SET_PDEATHSIG = 1

# Worker -> master status bytes, on a pipe per worker.
READY = b"R"  # listening: serving connections
STOPPED = b"S"  # no longer accepting (drain or stop began)


class Spec:
    """A generation as the master sees it: the config, its plugin chains (loaded here once,
    inherited by every worker forked for it) and its worker count."""

    def __init__(self, number: int, config, chains, count: int) -> None:
        self.number = number
        self.config = config
        self.chains = chains
        self.count = count
        self.pids: set[int] = set()

    @property
    def binds(self) -> set:
        return {lc.bind for lc in self.config.listeners.values()}


class Worker:
    __slots__ = ("pid", "slot", "row", "spec", "status", "started", "state", "ready", "stopped", "kill_at",
                 "killed")

    def __init__(self, pid: int, slot: int, row: int, spec: Spec, status: int, started: float, loop) -> None:
        self.pid, self.slot, self.row, self.spec, self.status = pid, slot, row, spec, status
        self.started = started
        self.state = "starting"  # starting | serving | draining | stopping
        self.ready = loop.create_future()  # True once serving; False if it exited first
        self.stopped = loop.create_future()  # set once it no longer accepts (or exited)
        self.kill_at: float | None = None
        self.killed = False


def open_slot_sockets(bind, count: int) -> list[socket.socket]:
    """``count`` listening sockets on ``bind`` in one SO_REUSEPORT group."""
    family = socket.AF_INET6 if ":" in bind.host else socket.AF_INET
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((bind.host, bind.port))
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


def _describe_status(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            return "killed by %s" % signal.Signals(-code).name
        except ValueError:
            return "killed by signal %d" % -code
    return "exit code %d" % code


class Master:
    def __init__(self, config, *, log_level: str | None = None, log_format: str | None = None) -> None:
        self.pid = os.getpid()
        self.log_level, self.log_format = log_level, log_format
        self.secret = secrets.token_urlsafe(32)  # one sticky-cookie key for every worker (app.with_node_secret)
        config = with_node_secret(config, self.secret)
        self.table = NodeTable()
        self.metrics = make_metrics(self.table)
        self.control = make_control(config, self.table, self.metrics)
        self.shared = SharedStore()
        chains = prepare(config, self.shared, self.table)  # ConfigErrors: nothing started yet
        self.current = Spec(1, config, chains, worker_count(config.server))
        self.specs: dict[int, Spec] = {1: self.current}
        self.sockets: dict = {}  # Address -> [slot socket, ...]
        self.workers: dict[int, Worker] = {}  # pid -> Worker
        self.admin = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.serving = False  # the first generation is up: dead workers are replaced from now on
        self.stopping = False
        self.crashes: dict[int, int] = {}  # slot -> workers that died young in a row
        self.claimed: dict[int, float] = {}  # table row -> when it was claimed (monotonic), until forked
        self._stop_requested: asyncio.Event | None = None
        self._reloading: asyncio.Task | None = None
        self._reload_again = False

    # -- the master's life ---------------------------------------------------------------
    async def run(self) -> int:
        loop = self.loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        spec = self.current
        # Before the sockets open: a SIGHUP from then on must reload, never kill the master.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            loop.add_signal_handler(sig, self.request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        loop.add_signal_handler(signal.SIGCHLD, self._reap)
        try:
            for bind in spec.binds:
                self.sockets[bind] = open_slot_sockets(bind, spec.count)
        except OSError as exc:
            event(logging.ERROR, "cannot start: cannot listen (%s)" % exc)
            self._close_sockets(set())
            return 1
        self.control.start()
        self.admin = make_admin(spec.config, self.control, self.metrics)
        if self.admin is not None:
            try:
                await self.admin.start()
            except OSError as exc:
                event(logging.ERROR, "cannot start: the admin API cannot listen (%s)" % exc)
                await self._shutdown()
                return 1
            event(logging.INFO, "admin API listening", bind=str(spec.config.server.admin))
        for name, lc in spec.config.listeners.items():
            event(logging.INFO, "listening", listener=name, bind=str(lc.bind), mode=lc.mode, sockets=spec.count)
        supervisor = loop.create_task(self._supervise())
        fresh = self._spawn_all(spec)
        if not await self._wait_ready(fresh):
            event(logging.ERROR, "cannot start: a worker did not start")
            await self._shutdown()
            supervisor.cancel()
            return 1
        self.serving = True
        if self._reload_again:  # a SIGHUP came while starting
            self.request_reload()
        event(logging.INFO, "wsproxy %s ready" % __version__, build=_speedups.IMPLEMENTATION,
              listeners=len(spec.binds), pid=self.pid, workers=spec.count, generation=spec.number)
        await self._stop_requested.wait()
        await self._shutdown()
        supervisor.cancel()
        event(logging.INFO, "stopped")
        return 0

    def request_stop(self, sig=None) -> None:
        if not self.stopping:
            event(logging.INFO, "stop requested", signal=signal.Signals(sig).name if sig else None)
            self._stop_requested.set()

    async def _shutdown(self) -> None:
        """Every worker stops gracefully (SIGTERM); stragglers are killed; then the master's own services."""
        self.stopping = True
        if self._reloading is not None and not self._reloading.done():
            self._reloading.cancel()
        now = self.loop.time()
        for worker in list(self.workers.values()):
            server = worker.spec.config.server
            limit = now + server.close_spread + server.grace + KILL_LINGER
            worker.kill_at = min(worker.kill_at or limit, limit)
            worker.state = "stopping"
            self._signal(worker, SIGNAL_STOP)
        if self.workers:
            event(logging.INFO, "stopping: workers close their connections", workers=len(self.workers))
        while self.workers:
            self._reap()
            self._kill_stragglers()
            await asyncio.sleep(0.05)
        if self.admin is not None:
            await self.admin.stop()
            self.admin = None
        await self.control.stop()
        self._close_sockets(set())

    async def _supervise(self) -> None:
        """Reap (in case SIGCHLDs coalesced) and kill the workers past their deadline."""
        while True:
            await asyncio.sleep(SUPERVISE)
            try:
                self._reap()
                self._kill_stragglers()
            except Exception:
                logging.getLogger("wsproxy").exception("master supervision failed")

    def _kill_stragglers(self) -> None:
        now = self.loop.time()
        for worker in self.workers.values():
            if worker.kill_at is not None and now >= worker.kill_at and not worker.killed:
                worker.killed = True
                event(logging.WARNING, "worker outlived its deadline: killed", pid=worker.pid,
                      generation=worker.spec.number, state=worker.state, slot=worker.slot)
                self._signal(worker, signal.SIGKILL)

    def _signal(self, worker: Worker, sig) -> None:
        try:
            os.kill(worker.pid, sig)
        except ProcessLookupError:
            pass

    # -- workers -------------------------------------------------------------------------
    def _spawn_all(self, spec: Spec) -> list[Worker]:
        """Fork every worker of ``spec``. Their table rows are claimed first, so each worker
        sums its siblings' counts from its first connection (a worker learns of rows claimed
        later at its next tick, within 100 ms)."""
        rows: list[int] = []
        try:
            for _ in range(spec.count):
                rows.append(self.table.claim_row(0, spec.number))
        except RuntimeError:  # the table is full: give back what this call took
            for row in rows:
                self.table.retire_row(row)
            raise
        now = time.monotonic()
        self.claimed.update((row, now) for row in rows)
        workers = []
        try:
            for slot, row in enumerate(rows):
                workers.append(self._spawn(spec, slot, row))
        except OSError:
            for row in rows[len(workers):]:
                self.table.retire_row(row)
            raise
        return workers

    def _spawn(self, spec: Spec, slot: int, row: int | None = None) -> Worker:
        """Fork the worker of ``spec`` on ``slot`` (module docstring)."""
        keep = {bind: self.sockets[bind][slot] for bind in spec.binds}
        if row is None:
            row = self.table.claim_row(0, spec.number)
        claimed = self.claimed.pop(row, time.monotonic())
        r, w = os.pipe()
        # The child starts with these signals blocked: none can reach the master's handlers
        # (and its loop's wakeup fd) before the child has reset them; its loop unblocks them.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
        gc.freeze()  # the child inherits every object as permanent: its collections never walk (or touch) them
        try:
            pid = os.fork()
        except OSError:
            gc.unfreeze()
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(r)
            os.close(w)
            self.table.retire_row(row)
            raise
        if pid == 0:  # the worker: never returns
            _worker_process(self, spec, row, w, keep, [wk.status for wk in self.workers.values()] + [r], claimed)
        gc.unfreeze()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(w)
        self.table.set_row_pid(row, pid)
        os.set_blocking(r, False)
        worker = Worker(pid, slot, row, spec, r, self.loop.time(), self.loop)
        self.workers[pid] = worker
        spec.pids.add(pid)
        self.loop.add_reader(r, self._on_status, worker)
        event(logging.INFO, "worker started", pid=pid, slot=slot, generation=spec.number, row=row)
        return worker

    def _on_status(self, worker: Worker) -> None:
        try:
            data = os.read(worker.status, 64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the worker exited (or closed its end)
            self._close_status(worker)
            return
        if READY in data and not worker.ready.done():
            if worker.state == "starting":
                worker.state = "serving"
            worker.ready.set_result(True)
        if STOPPED in data and not worker.stopped.done():
            worker.stopped.set_result(True)

    def _close_status(self, worker: Worker) -> None:
        if worker.status >= 0:
            self.loop.remove_reader(worker.status)
            os.close(worker.status)
            worker.status = -1
        if not worker.ready.done():
            worker.ready.set_result(False)
        if not worker.stopped.done():
            worker.stopped.set_result(True)

    async def _wait_ready(self, workers: list[Worker]) -> bool:
        """True once every one of ``workers`` is serving; False as soon as one exited first,
        or after READY_TIMEOUT."""
        pending = {w.ready for w in workers}
        deadline = self.loop.time() + READY_TIMEOUT
        while pending:
            done, pending = await asyncio.wait(pending, timeout=deadline - self.loop.time(),
                                               return_when=asyncio.FIRST_COMPLETED)
            if not done or not all(f.result() for f in done):
                return False
        return True

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is not None:
                self._exited(worker, status)

    def _exited(self, worker: Worker, status: int) -> None:
        self.table.retire_row(worker.row)  # its counts vanish with it
        self._close_status(worker)
        spec = worker.spec
        spec.pids.discard(worker.pid)
        how = _describe_status(status)
        ran = round(self.loop.time() - worker.started, 3)
        if worker.state in ("draining", "stopping") or self.stopping:
            clean = status == 0 or worker.killed
            event(logging.INFO if clean else logging.WARNING, "worker exited", pid=worker.pid,
                  generation=spec.number, slot=worker.slot, status=how, ran_s=ran)
        else:
            event(logging.ERROR, "worker died unexpectedly", pid=worker.pid, generation=spec.number,
                  slot=worker.slot, status=how, ran_s=ran, row=worker.row)
            if self.serving and spec is self.current and not self.stopping:
                self._respawn_later(worker, ran)
        if not spec.pids and spec is not self.current and self.specs.pop(spec.number, None) is not None:
            event(logging.INFO, "generation %d ended" % spec.number, generation=spec.number)

    def _respawn_later(self, worker: Worker, ran: float) -> None:
        slot = worker.slot
        young = ran < 5.0
        crashes = self.crashes[slot] = self.crashes.get(slot, 0) + 1 if young else 1
        delay = 0.0 if crashes <= 1 else min(RESPAWN_MAX_DELAY, 0.25 * 2 ** (crashes - 2))
        self.loop.call_later(delay, self._respawn, slot, self.current, worker.pid)

    def _respawn(self, slot: int, spec: Spec, dead_pid: int) -> None:
        if self.stopping or spec is not self.current or slot >= spec.count:
            return
        if any(w.slot == slot and w.spec is spec and w.state in ("starting", "serving") for w in self.workers.values()):
            return
        try:
            worker = self._spawn(spec, slot)
        except OSError as exc:
            event(logging.ERROR, "cannot fork a worker", slot=slot, error=str(exc))
            self.loop.call_later(1.0, self._respawn, slot, spec, dead_pid)
            return
        event(logging.WARNING, "worker restarted", pid=worker.pid, replaces=dead_pid, slot=slot,
              generation=spec.number)

    def _drain(self, worker: Worker) -> None:
        server = worker.spec.config.server
        worker.state = "draining"
        worker.kill_at = self.loop.time() + server.drain_timeout + server.close_spread + CUT_LINGER + KILL_LINGER
        self._signal(worker, SIGNAL_DRAIN)

    def _close_sockets(self, keep_binds: set, count: int = 0) -> None:
        """Close the master's slot sockets of binds not in ``keep_binds``, and slots >= ``count``."""
        for bind in list(self.sockets):
            socks = self.sockets[bind]
            if bind not in keep_binds:
                for sock in socks:
                    sock.close()
                del self.sockets[bind]
            elif len(socks) > count:
                for sock in socks[count:]:
                    sock.close()
                del socks[count:]

    # -- reload --------------------------------------------------------------------------
    def request_reload(self) -> None:
        if self.stopping:
            return
        if not self.serving:  # still starting: reload once the first generation serves
            self._reload_again = True
            return
        if self._reloading is not None and not self._reloading.done():
            self._reload_again = True
            return
        self._reloading = self.loop.create_task(coalesced_reloads(self))


    async def reload(self) -> bool:
        old = self.current
        path = old.config.source
        event(logging.INFO, "reloading", source=path, generation=old.number)
        read = read_reload(path, self.shared, self.table, self.secret, old.number)
        if read is None:
            return False
        config, chains = read
        count = worker_count(config.server)
        alive = len(self.table.live_rows())
        if alive + count > self.table.rows - 1:
            # Every generation keeps its processes until its drain ends: too many reloads
            # within drain_timeout would need more rows than the table has.
            event(logging.ERROR, "reload rejected: %d worker processes are alive (draining generations "
                  "included) and %d more would exceed the node's %d; wait for old generations to drain "
                  "or lower server.drain_timeout; generation %d keeps running"
                  % (alive, count, self.table.rows - 1, old.number), source=path)
            return False
        added: dict = {}
        try:
            for lc in config.listeners.values():
                have = len(self.sockets.get(lc.bind, ()))
                if have < count:
                    added[lc.bind] = open_slot_sockets(lc.bind, count - have)
        except OSError as exc:
            for socks in added.values():
                for sock in socks:
                    sock.close()
            event(logging.ERROR, "reload rejected: cannot listen (%s); generation %d keeps running"
                  % (exc.strerror or exc, old.number), source=path)
            return False
        for bind, socks in added.items():
            self.sockets.setdefault(bind, []).extend(socks)
        spec = Spec(old.number + 1, config, chains, count)
        self.specs[spec.number] = spec
        self.control.apply(config)  # member columns and metric series first: the workers inherit them
        self.control.generation = spec.number
        self._apply_logging(config.server)
        fresh: list[Worker] = []
        try:
            fresh = self._spawn_all(spec)
            ok = await self._wait_ready(fresh)
        except (OSError, RuntimeError) as exc:
            event(logging.ERROR, "cannot start a worker", error=str(exc))
            ok = False
        if not ok:
            event(logging.ERROR, "reload failed: the new workers did not start; generation %d keeps running"
                  % old.number, generation=spec.number)
            now = self.loop.time()
            server = config.server
            for worker in [w for w in self.workers.values() if w.spec is spec]:
                worker.state = "stopping"  # it may have taken a few connections: a graceful stop
                worker.kill_at = now + server.close_spread + server.grace + KILL_LINGER
                self._signal(worker, SIGNAL_STOP)
            self.control.apply(old.config)
            self.control.generation = old.number
            self._apply_logging(old.config.server)
            # The master's copies of what only the failed generation needed (new binds, extra
            # slots) close now: nobody would accept on them. Its workers hold their own.
            survivors = [s for s in self.specs.values() if s is not spec and (s is old or s.pids)]
            self._close_sockets({b for s in survivors for b in s.binds}, max(s.count for s in survivors))
            if not spec.pids:
                self.specs.pop(spec.number, None)
            return False
        self.current = spec
        self.admin = await restart_admin(self.admin, old.config, config, self.control, self.metrics)
        previous = [w for w in self.workers.values() if w.spec is not spec and w.state in ("starting", "serving")]
        for worker in previous:
            self._drain(worker)
        # The master's copies of sockets no longer in the config (or of slots beyond the new
        # count) close now; old workers close theirs as they stop accepting.
        self._close_sockets(spec.binds, count)
        if previous:
            _, late = await asyncio.wait([w.stopped for w in previous], timeout=ACK_TIMEOUT)
            if late:
                event(logging.WARNING, "some old workers did not confirm they stopped accepting",
                      pids=",".join(str(w.pid) for w in previous if not w.stopped.done()))
        draining = sum(1 for w in self.workers.values() if w.state == "draining")
        event(logging.INFO, "reloaded: generation %d serves" % spec.number, generation=spec.number,
              previous=old.number, workers=count, draining=draining, **config_changes(old.config, config))
        return True

    def _apply_logging(self, server) -> None:
        apply_logging(server, self.log_level, self.log_format)


# -- the worker side ---------------------------------------------------------------------------

def _die_with_parent() -> None:
    """Ask the kernel for SIGTERM (a graceful stop) when the master dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux: the tick's parent check remains
        pass


def _close_inherited(keep: set[int], pipes: list[int]) -> None:
    """Close the master's sockets (admin API, health checks, other slots) and the other
    workers' status pipes in a new worker: holding them would keep ports bound and
    connections open after the master closed them."""
    for fd in pipes:
        if fd >= 0 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:  # pragma: no cover - no /proc
        return
    for name in names:
        fd = int(name)
        if fd in keep or fd <= 2:
            continue
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                os.close(fd)
        except OSError:
            pass


def _worker_process(master: Master, spec: Spec, row: int, status: int, sockets: dict, pipes: list[int],
                    claimed: float):
    """The forked child: from the master's state to a worker's App; never returns.

    We are inside a callback of the master's loop (which this process never runs again): the
    objects of the master stay alive (and frozen, see _spawn) but unused; the worker gets
    its own loop."""
    code = 70
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGQUIT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        _die_with_parent()
        if os.getppid() != master.pid:
            os._exit(0)
        _close_inherited({status, *(s.fileno() for s in sockets.values())}, pipes)
        asyncio.events._set_running_loop(None)
        table = master.table
        table.row = row
        table.refresh_rows()
        code = run_loop(_serve_worker(spec, table, master.metrics, sockets, status, master.pid, claimed))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        logging.getLogger("wsproxy").exception("worker failed")
        code = 70
    finally:
        for handler in logging.getLogger("wsproxy").handlers:
            try:
                handler.flush()
            except Exception:
                pass
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        os._exit(code)


def _tell(status: int, what: bytes) -> None:
    try:
        os.write(status, what)
    except OSError:
        pass  # the master is gone: the parent check stops us


async def _serve_worker(spec: Spec, table: NodeTable, metrics, sockets: dict, status: int, master_pid: int,
                        claimed: float) -> int:
    # Every other process sums this worker's row from its next tick on: accepting before
    # that could let a member go over max_conns for a moment (counts it cannot see yet).
    await asyncio.sleep(max(0.0, claimed + SIBLINGS_SEE_ROW - time.monotonic()))
    app = App(spec.config, table=table, metrics=metrics, control=None, live=make_live(table, metrics),
              generation=spec.number, chains=spec.chains, sockets=sockets)
    loop = asyncio.get_running_loop()
    await app.start()
    gc.freeze()
    server = spec.config.server
    finished = loop.create_future()
    tasks: dict[str, asyncio.Task] = {}

    def settle(_task) -> None:
        if all(t.done() for t in tasks.values()) and not finished.done():
            finished.set_result(None)

    def drain() -> None:
        if "drain" in tasks or "stop" in tasks:
            return
        event(logging.INFO, "worker draining", pid=os.getpid(), generation=spec.number,
              drain_timeout_s=server.drain_timeout)
        app.stop_accepting()
        _tell(status, STOPPED)
        tasks["drain"] = loop.create_task(app.drain_and_stop())
        tasks["drain"].add_done_callback(settle)

    def stop(why: str = "SIGTERM") -> None:
        if "stop" in tasks:
            return
        event(logging.INFO, "worker stopping", pid=os.getpid(), generation=spec.number, why=why)
        app.stop_accepting()
        _tell(status, STOPPED)
        tasks["stop"] = loop.create_task(app.stop(server.grace))
        tasks["stop"].add_done_callback(settle)

    ticks = 0

    def check_master() -> None:
        nonlocal ticks
        ticks += 1
        if ticks % 10 == 0 and os.getppid() != master_pid:
            stop("the master is gone")

    loop.add_signal_handler(SIGNAL_DRAIN, drain)
    loop.add_signal_handler(SIGNAL_STOP, stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _BLOCKED)
    app.on_tick = check_master
    _tell(status, READY)
    await finished
    if metrics is not None:
        metrics.stop()  # this worker's last counts into its row (the master keeps them at retire)
    event(logging.INFO, "worker stopped", pid=os.getpid(), generation=spec.number)
    return 0


def run_master(config, *, log_level: str | None = None, log_format: str | None = None) -> int:
    """The master's main: its own (plain asyncio) loop; returns the exit code."""
    master = Master(config, log_level=log_level, log_format=log_format)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(master.run())
    finally:
        loop.close()
