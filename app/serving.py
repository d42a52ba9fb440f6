"""Serving the API in several processes, each with its own listening socket (Linux's SO_REUSEPORT).

uvicorn's ``--workers`` binds one socket in the parent and every process accepts from it. Its event
loop accepts every connection waiting when it wakes, so a burst of new connections (a load balancer
or a client pool opening its keep-alive connections at once) often lands whole on one process: with
2 processes and 16 connections, one process served all 16 in some runs while the other idled, and
status reads ran at 1,164–1,968 requests/s against 2,263–2,289 when the connections were split.

Here the parent binds one socket per process on the same address with SO_REUSEPORT, and each
process serves only its own. The kernel spreads new connections over the sockets by a hash of their
addresses, as nginx's ``reuseport`` does. The parent keeps every socket open, so connections that
arrive while a process restarts wait in its socket's queue for the replacement instead of being
refused. Supervision (health checks, restarts, signals) is uvicorn's own ``Multiprocess``; only the
socket each process gets differs.
"""

from __future__ import annotations

import errno
import logging
import socket
import sys

from uvicorn import Config
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

log = logging.getLogger("uvicorn.error")


def balanced_sockets_supported() -> bool:
    """Linux's SO_REUSEPORT balances connections across the sockets; BSD's gives them all to one."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def listening_sockets(host: str, port: int, count: int, backlog: int) -> list[socket.socket]:
    """``count`` sockets listening on (host, port) with SO_REUSEPORT.

    The port is first bound without SO_REUSEPORT and released: a port that another server already
    listens on is an error (EADDRINUSE), as it is for uvicorn, instead of a share of its traffic.
    Port 0 picks a free port, and every socket then uses that one.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        port = probe.getsockname()[1]
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(_group_member(family, (host, port), backlog))
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _group_member(family: socket.AddressFamily, address: tuple[str, int], backlog: int) -> socket.socket:
    sock = socket.socket(family)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class OneSocketEach(Multiprocess):
    """uvicorn's supervisor, with process i serving socket i (and a restart of it the same socket)."""

    def __init__(self, config: Config, sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets=[])
        self.own = list(sockets)
        self.processes_num = len(self.own)

    def _start(self, index: int) -> Process:
        process = Process(self.config, [self.own[index]])
        process.start()
        return process

    def init_processes(self) -> None:
        self.processes = [self._start(index) for index in range(len(self.own))]

    def keep_subprocess_alive(self) -> None:
        for index, process in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()  # hung or dead
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                # Broken before serving (the app or its settings): every restart would fail alike.
                log.error("Child process [%s] failed to start, stopping the parent process.", process.pid)
                self.should_exit.set()
                return
            log.info("Child process [%s] died", process.pid)
            self.processes[index] = self._start(index)

    def restart_all(self) -> None:
        """Each process in turn: its replacement serves the same socket before the old one stops."""
        for index, old in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new = self._start(index)
            if not new.wait_until_ready(self.config.timeout_worker_healthcheck, self.should_exit):
                new.kill()
                new.join()
                log.error("New child process [%s] was not ready in time; keeping [%s].", new.pid, old.pid)
                return
            old.terminate()
            old.join()
            self.processes[index] = new

    def handle_ttin(self) -> None:
        log.info("Received SIGTTIN, increasing the number of processes.")
        first = self.own[0]
        self.own.append(_group_member(first.family, first.getsockname()[:2], self.config.backlog))
        self.processes_num = len(self.own)
        self.processes.append(self._start(len(self.own) - 1))

    def handle_ttou(self) -> None:
        log.info("Received SIGTTOU, decreasing the number of processes.")
        if len(self.processes) <= 1:
            log.info("Already reached one process, cannot decrease the number of processes anymore.")
            return
        process = self.processes.pop()
        process.terminate()
        process.join()
        self.own.pop().close()
        self.processes_num = len(self.own)


def serve(config: Config) -> None:
    """Run ``config`` (an import string, ``config.workers`` > 1) with one socket per process."""
    try:
        sockets = listening_sockets(config.host, config.port, config.workers, config.backlog)
    except OSError as exc:
        log.error(
            "%s",
            exc
            if exc.errno != errno.EADDRINUSE
            else f"{config.host}:{config.port} is in use ({exc}); pick another port with --port N or RNNLAB_PORT=N",
        )
        sys.exit(STARTUP_FAILURE)
    host, port = sockets[0].getsockname()[:2]
    log.info("Uvicorn running on http://%s:%d, %d processes with a socket each", host, port, len(sockets))
    supervisor = OneSocketEach(config, sockets)
    try:
        supervisor.run()
    finally:
        for sock in supervisor.own:  # with those SIGTTIN added and without those SIGTTOU closed
            sock.close()
