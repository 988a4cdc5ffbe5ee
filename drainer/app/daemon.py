"""``drainer run``: the daemon. APScheduler 3.x runs the very same ``run_once`` as ``drainer check``
every ``[daemon] poll_interval`` seconds (one at a time, missed runs coalesced).

- SIGTERM / SIGINT: no new check starts; the running one gets ``stop_timeout`` seconds to finish, else
  it is abandoned (every step is crash-safe: the next start completes it). The run lock is the kernel's
  and goes with the process.
- The same error is logged once, then at most every ``error_log_interval`` seconds with a count, and
  once more when checks succeed again.
- ``[metrics] enabled``: ``/metrics`` (Prometheus) and ``/healthz`` on ``[metrics] address`` (loopback
  by default), and only there.
- ``[drain] method = "probe"``: the readiness URL on ``[probe] address`` answers 200 in rotation and
  503 while drained; that address serves nothing else.
- Both servers bound their connections and time them out (``drainer.io.httpserve``): idle or slow
  clients cannot take the descriptors or threads a drain needs. An address that cannot be bound is
  one line on stderr and exit code 2 (for metrics: an error in the log, and no metrics).
- Socket activation (``drainer.io.listenfds``; packaging/systemd/drainer-probe.socket and
  drainer-metrics.socket): a socket systemd passed named ``probe`` or ``metrics`` (or, named
  otherwise, on one of the two configured addresses) is served instead of binding, so the port stays
  ours while the daemon is down. The socket unit is the source of truth: a passed socket on another
  address than the config's is served all the same, with a warning naming both (refusing it would
  leave nobody able to bind the configured address while systemd holds the port, and the unit is
  where the load balancer's probe port is decided). A passed socket is served whatever the config
  says: ``probe`` answers readiness from the drain state with any drain method, ``metrics`` answers
  /healthz (and /metrics when ``[metrics] enabled``). Without passed sockets, the daemon binds the
  configured addresses itself.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from drainer.act.effects import Resident, effects_for
from drainer.act.probe import out_of_rotation
from drainer.app.runner import RunResult, Seams, run_once
from drainer.base.errors import EXIT_OK, ConfigError, DrainerError, LockedError
from drainer.base.typing import Logger
from drainer.config import Config, parse_address
from drainer.io.httpserve import QuietHandler, serve
from drainer.io.imds import ImdsClient
from drainer.io.listenfds import address_of, listen_fds, serves


class ErrorThrottle:
    """Logs an error the first time, then the same error at most every ``interval`` seconds."""

    def __init__(self, log: Logger, interval: float) -> None:
        self.log = log
        self.interval = interval
        self.key: str | None = None
        self.count = 0
        self.last_logged = 0.0

    def failed(self, error: str, kind: str) -> None:
        now = time.monotonic()
        if error != self.key:
            self.key, self.count, self.last_logged = error, 1, now
            self.log.error("check failed; retrying every poll", error=error, error_type=kind)
            return
        self.count += 1
        if now - self.last_logged >= self.interval:
            self.last_logged = now
            self.log.error("check still failing", error=error, error_type=kind, failures=self.count)

    def succeeded(self) -> None:
        if self.key is not None:
            self.log.info("checks succeed again", failures=self.count)
        self.key, self.count = None, 0


class _Status:
    """What the HTTP endpoints report."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.last_ok: float | None = None
        self.recorder: Any = None

    def healthy(self) -> tuple[bool, str]:
        limit = max(3 * self.config.daemon.poll_interval, 30.0)
        if self.last_ok is None:
            return False, "no successful check yet"
        age = time.time() - self.last_ok
        return (age <= limit), f"last successful check {age:.1f}s ago"


class _MetricsHandler(QuietHandler):
    """``[metrics] address``: /metrics and /healthz, nothing else."""

    def get(self, path: str) -> None:
        status: _Status = self.server.status  # type: ignore[attr-defined]
        if path == "/metrics" and status.recorder is not None:
            self.answer(200, status.recorder.exposition(), "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/healthz":
            ok, why = status.healthy()
            self.answer(200 if ok else 503, f"{'ok' if ok else 'unhealthy'}: {why}\n".encode())
        else:
            self.answer(404, b"not found\n")


class _ProbeHandler(QuietHandler):
    """``[probe] address``, reachable by the load balancer: the readiness path only."""

    def get(self, path: str) -> None:
        status: _Status = self.server.status  # type: ignore[attr-defined]
        if path == status.config.probe.path:
            # From the persisted drain state: a restart or an emptied /run never answers 200 early.
            out = out_of_rotation(status.config.state_dir, status.config.probe.flag_file)
            self.answer(503 if out else 200, b"out of rotation\n" if out else b"in rotation\n")
        else:
            self.answer(404, b"not found\n")


# Who reads each address: a squatter's answers reach them in drainer's place.
_READERS = {"metrics": "monitoring (/healthz, /metrics)", "probe": "the load balancer's health probe"}


def _configured(config: Config, role: str) -> str:
    return config.metrics.address if role == "metrics" else config.probe.address


def _passed_sockets(config: Config, log: Any) -> dict[str, list[socket.socket]]:
    """The sockets systemd passed (drainer.io.listenfds), by role: named ``probe`` or ``metrics``, or
    named otherwise and on that role's configured address. Raises ListenFdsError (exit 2)."""
    passed, ignored = listen_fds()
    if ignored:
        log.warning("socket activation variables are not for this process: ignored", reason=ignored)
    roles = {role: passed.pop(role, []) for role in _READERS}
    for name, sockets in passed.items():
        for sock in sockets:
            role = next((r for r in roles if serves(sock, parse_address(_configured(config, r)))), None)
            if role is None:
                log.warning(
                    "a socket systemd passed is not used: named neither probe nor metrics, and on "
                    "neither configured address",
                    name=name,
                    address=address_of(sock),
                )
                sock.close()
            else:
                roles[role].append(sock)
    return roles


def _listen(
    config: Config,
    log: Any,
    role: str,
    *,
    passed: list[socket.socket],
    handler: type[QuietHandler],
    status: _Status,
) -> list[Any]:
    """Serve ``handler`` on the sockets systemd passed for ``role``, else on its configured address.
    Raises ConfigError (one line, exit 2) when it cannot listen."""
    address = _configured(config, role)
    if passed:
        for sock in passed:
            if not serves(sock, parse_address(address)):
                log.warning(
                    "the socket systemd passed is not on the configured address: serving on the socket "
                    "(the socket unit decides; make the two agree)",
                    role=role,
                    socket=address_of(sock),
                    configured=address,
                )
        return [serve(sock, handler, status=status, role=role) for sock in passed]
    try:
        return [serve(parse_address(address), handler, status=status, role=role)]
    except OSError as exc:
        raise ConfigError(config.source, f"{role}.address", _cannot_listen(role, address, exc)) from exc


def _cannot_listen(role: str, address: str, exc: OSError) -> str:
    if exc.errno != errno.EADDRINUSE:
        return f"cannot listen on {address}: {exc.strerror or exc}"
    port = parse_address(address)[1]
    return (
        f"cannot listen on {address}: another process holds port {port} (address already in use), and "
        f"{_READERS[role]} reads its answers in drainer's place; see which with ss -ltnp 'sport = :{port}'. "
        f"drainer-{role}.socket holds the port from boot and across restarts"
    )


def _record_outcome(config: Config, error: str, error_type: str) -> None:
    """For ``drainer status``: a failure is written, a success costs a failed rename (see outcome)."""
    effects_for(config, Seams()).record_outcome(config.state_dir, error or None, error_type)


def run_daemon(config: Config, log: Logger, seams: Seams | None = None) -> int:
    """Serve until SIGTERM or SIGINT. Returns the exit code."""
    from apscheduler.executors.pool import ThreadPoolExecutor  # noqa: PLC0415 - the daemon only
    from apscheduler.schedulers.blocking import BlockingScheduler  # noqa: PLC0415

    # APScheduler warns when a run is skipped because the previous one still runs: that is the point
    # of max_instances=1 here, not news.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    status = _Status(config)
    probe = config.drain.method == "probe"
    if probe and config.metrics.enabled and config.probe.address == config.metrics.address:
        raise ConfigError(
            config.source, "probe.address", "must differ from metrics.address (it serves readiness only)"
        )
    passed = _passed_sockets(config, log)
    servers: list[Any] = []
    try:
        if config.metrics.enabled:
            from drainer.io.prom import enable  # noqa: PLC0415

            status.recorder = enable()
        if config.metrics.enabled or passed["metrics"]:
            try:
                servers += _listen(
                    config, log, "metrics", passed=passed["metrics"], handler=_MetricsHandler, status=status
                )
            except ConfigError as exc:
                # /metrics is for people; the drain is the job. A taken port (another process, or a
                # local user squatting it) must not stop drainer: serve no metrics, say so, go on.
                log.error("metrics are not served; drainer runs without them", error=str(exc))
        if probe or passed["probe"]:
            servers += _listen(
                config, log, "probe", passed=passed["probe"], handler=_ProbeHandler, status=status
            )
    except ConfigError:
        for server in servers:
            server.server_close()
        raise
    imds = ImdsClient(config.imds)
    resident = Resident()  # the lock and the state database, open from one poll to the next
    throttle = ErrorThrottle(log, config.daemon.error_log_interval)
    stopping = threading.Event()
    idle = threading.Event()
    idle.set()
    disabled_said = False
    # When the last check ended (monotonic): a much later start means the VM stalled (decide.recovery).
    last_end: list[float] = []
    shed = _Shed(config.daemon.shed_sdk_after)

    def check() -> None:
        nonlocal disabled_said
        if stopping.is_set():
            return
        idle.clear()
        try:
            if Path(config.disabled_file).exists():
                if not disabled_said:
                    log.warning(
                        "disabled: doing nothing while the kill-switch file exists", file=config.disabled_file
                    )
                    disabled_said = True
                return
            if disabled_said:
                log.info("enabled again: the kill-switch file is gone", file=config.disabled_file)
                disabled_said = False
            stall = _stall(last_end, config.daemon.poll_interval)
            result = run_once(config, log, seams, imds=imds, stall_seconds=stall, resident=resident)
            status.last_ok = time.time()
            throttle.succeeded()
            _record_outcome(config, "; ".join(result.errors), "ActionError")
            if shed.due(result):
                log.info(
                    "re-executing to free the Azure SDK's memory (in rotation, nothing to do)",
                    idle_seconds=config.daemon.shed_sdk_after,
                )
                stopping.set()
                scheduler.shutdown(wait=False)
        except LockedError:
            log.debug("another drainer run holds the lock; skipping this poll")
        except DrainerError as exc:
            throttle.failed(str(exc), type(exc).__name__)
            _record_outcome(config, str(exc), type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - a bug must not kill the daemon: log it, keep polling
            log.error("unexpected error in a check (a bug)", error=repr(exc), error_type=type(exc).__name__)
            _record_outcome(config, repr(exc), type(exc).__name__)
        finally:
            last_end[:] = [time.monotonic()]
            idle.set()

    scheduler = BlockingScheduler(
        executors={"default": ThreadPoolExecutor(1)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
    )
    scheduler.add_job(
        check,
        "interval",
        seconds=config.daemon.poll_interval,
        id="check",
        next_run_time=datetime.now(),
    )

    def stop_scheduler() -> None:
        from apscheduler.schedulers import SchedulerNotRunningError  # noqa: PLC0415

        for _ in range(1200):  # a signal between the handler's installation and start(): wait for it
            try:
                scheduler.shutdown(wait=False)
            except SchedulerNotRunningError:
                time.sleep(0.05)
            else:
                return

    def on_signal(signum: int, _frame: Any) -> None:
        if stopping.is_set():
            return  # a second signal (e.g. from a supervisor and the terminal): already stopping
        stopping.set()
        log.info("stopping", signal=signal.Signals(signum).name)
        # Not here: the handler runs on the main thread, which may be inside the scheduler's
        # submit holding the executor's lock that shutdown takes (a deadlock, seen under load).
        threading.Thread(target=stop_scheduler, daemon=True).start()

    # The first record builds the logger (imports structlog): before the handlers, which log too,
    # so a signal during that import cannot re-enter it.
    log.info(
        "daemon started",
        poll_interval=config.daemon.poll_interval,
        method=config.drain.method,
        metrics=config.metrics.address if config.metrics.enabled else None,
        listening=[
            f"{server.role} {address_of(server.socket)}{' (from systemd)' if server.adopted else ''}"
            for server in servers
        ],
        pid=os.getpid(),
    )
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    scheduler.start()  # returns once shut down
    finished = idle.wait(config.daemon.stop_timeout)
    for server in servers:
        server.shutdown()
    if shed.requested and finished:
        resident.close()
        imds.close()
        _reexec(servers)  # returns only when the exec failed: then stop as usual
    for server in servers:
        server.server_close()
    if not finished:
        log.warning(
            "stopping: abandoning the running check (it is crash-safe)",
            stop_timeout=config.daemon.stop_timeout,
        )
        sys.stderr.flush()
        os._exit(EXIT_OK)  # the check's thread cannot be interrupted; the kernel releases the lock
    imds.close()
    log.info("daemon stopped")
    return EXIT_OK


class _Shed:
    """When the daemon gives the Azure SDK's memory back: the SDK is loaded (a drain, a restore or a
    reconcile imported it), and for ``after`` seconds every check found the VM in rotation with
    nothing to do. Re-executing is the only way: Python cannot unload modules."""

    def __init__(self, after: float) -> None:
        self.after = after
        self.quiet_since: float | None = None
        self.requested = False

    def due(self, result: RunResult) -> bool:
        now = time.monotonic()
        busy = result.transitions or result.errors or result.held_by or result.drain_state != "in_rotation"
        if busy or self.quiet_since is None:
            self.quiet_since = now
            return False
        if self.after <= 0 or "azure.core" not in sys.modules or now - self.quiet_since < self.after:
            return False
        self.requested = True
        return True


def _reexec(servers: list[Any]) -> None:
    """Replace this process with a fresh ``drainer run`` (same pid: systemd sees no restart), handing
    over the listening sockets by the sd_listen_fds protocol so the ports are never unbound: no local
    user can take them in between. Returns only when the exec failed."""
    import fcntl  # noqa: PLC0415

    sockets = [(server.role, server.socket.fileno()) for server in servers]
    argv = _argv()
    env = {k: v for k, v in os.environ.items() if k not in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")}
    if sockets:
        env.update(
            LISTEN_PID=str(os.getpid()),
            LISTEN_FDS=str(len(sockets)),
            LISTEN_FDNAMES=":".join(role for role, _ in sockets),
        )
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        # Out of the way first (a socket may already sit on 3 or 4), then onto 3, 4, ... inheritable.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64) for _, fd in sockets]
        for i, fd in enumerate(high):
            os.dup2(fd, 3 + i, inheritable=True)
        os.execve(sys.executable, argv, env)  # noqa: S606 - our own interpreter and argv  # nosec B606
    except OSError as exc:
        print(f"drainer: cannot re-execute {argv}: {exc}; stopping instead", file=sys.stderr)


def _argv() -> list[str]:
    """How this process was started, for ``_reexec``: ``python -m drainer ...`` or ``python SCRIPT ...``
    (a console script, or a test's entry point)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name == "drainer.__main__":
        return [sys.executable, "-m", "drainer", *sys.argv[1:]]
    return [sys.executable, *sys.argv]


def _stall(last_end: list[float], poll_interval: float) -> float:
    """Seconds between the end of the last check and now beyond the poll interval (0: none known)."""
    if not last_end:
        return 0.0
    return max(0.0, time.monotonic() - last_end[0] - poll_interval)
