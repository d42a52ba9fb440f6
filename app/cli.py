"""The ``rnnlab`` command: migrations, API keys, and the api / worker / embedded processes."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Annotated, Any

import typer

app = typer.Typer(help="rnnlab: train and evaluate recurrent neural networks.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _own_command() -> str:
    """How to run this ``rnnlab`` again: its name when it is the one on PATH, else its path."""
    found, own = shutil.which("rnnlab"), sys.argv[0]
    if (found and os.path.realpath(found) == os.path.realpath(own)) or own.endswith(".py") or os.sep not in own:
        return "rnnlab"  # on PATH, or run as ``python -m app.cli``
    return os.path.relpath(own)


@app.command()
def migrate() -> None:
    """Apply database migrations up to the latest revision."""
    from app.migrate import upgrade_database

    upgrade_database()
    typer.echo("database is up to date", err=True)


def _database_state() -> tuple[str, str]:
    """("ready" | "missing" | "uninitialised" | "unreachable", what to tell the user)."""
    import sqlalchemy as sa

    from app.config import get_settings
    from app.db import new_session

    settings = get_settings()
    if settings.database_url.startswith("sqlite") and not (settings.home / "rnnlab.db").exists():
        # Connecting would create an empty database file (and its directory) here.
        return "missing", (
            f"no rnnlab database at {settings.home / 'rnnlab.db'}: run this from the directory where you ran "
            "`rnnlab up` (or `rnnlab migrate`), or set RNNLAB_HOME to that .rnnlab directory"
        )
    with new_session() as session:
        try:
            session.execute(sa.text("SELECT 1 FROM api_keys WHERE 1 = 0"))
        except sa.exc.DBAPIError as exc:
            text = str(exc.orig).lower()
            if isinstance(exc, sa.exc.OperationalError) and "no such table" not in text:
                return "unreachable", f"cannot reach the database at {settings.database_url}: {exc.orig}"
            return "uninitialised", (
                f"the database at {settings.database_url} is not initialised: run `rnnlab migrate`, or start "
                "`rnnlab up` (which migrates) first — from the directory whose .rnnlab/ you use, or with "
                "RNNLAB_HOME set"
            )
    return "ready", ""


def _database_session() -> Any:
    """A session, or a clear exit when the database is missing, not created yet or unreachable."""
    from app.db import new_session

    state, message = _database_state()
    if state != "ready":
        typer.echo(message, err=True)
        raise typer.Exit(1)
    return new_session()


@keys_app.command("create")
def keys_create(project: Annotated[str, typer.Option(help="Project the key belongs to (created if new).")]) -> None:
    """Create an API key; prints the key alone on stdout (it is stored hashed and shown only once)."""
    from app.auth import create_key

    with _database_session() as session:
        try:
            plain, _ = create_key(session, project)  # the name is checked before anything is written
        except ValueError as exc:
            typer.echo(str(exc), err=True)
            from rnnlab.cli import EXIT_USAGE

            raise typer.Exit(EXIT_USAGE) from None  # a usage error (64), as for every other command
    typer.echo(plain)


@keys_app.command("list")
def keys_list() -> None:
    """List API keys (prefix, project, created, revoked)."""
    from app.auth import list_keys

    with _database_session() as session:
        for key, project in list_keys(session):
            revoked = key.revoked_at.isoformat() if key.revoked_at else "-"
            typer.echo(f"{key.id}\t{key.prefix}…\t{project}\t{key.created_at.isoformat()}\trevoked={revoked}")


@keys_app.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="Key id or prefix, as shown by 'keys list', or the whole key.")],
) -> None:
    """Revoke an API key."""
    from app.auth import revoke_key

    with _database_session() as session:
        count = revoke_key(session, key)
    if not count:
        typer.echo(f"no active key matches {key!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {count} key(s)", err=True)


def default_api_workers() -> int:
    """One API process per CPU this process may run on, at most 4 (the database is the limit beyond)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 4))


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="Defaults to RNNLAB_HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Defaults to RNNLAB_PORT.")] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, max=64, help="API processes; defaults to RNNLAB_API_WORKERS, else one per CPU (max 4)."),
    ] = None,
) -> None:
    """Serve the HTTP API (uvicorn), in several processes when the machine has the cores."""
    import uvicorn

    from app.config import get_settings
    from app.serving import balanced_sockets_supported, serve

    settings = get_settings()
    processes = workers or settings.api_workers or default_api_workers()
    options: dict[str, Any] = {
        "factory": True,
        "host": host or settings.host,
        "port": port or settings.port,
        "workers": processes,
        # httptools and uvloop, as uvicorn[standard] installs them (and picks them when present).
        "http": "auto",
        "loop": "auto",
        "access_log": settings.access_log,
        # Event streams stay open while a job runs: without a bound, a stop (SIGTERM, a restart) waited
        # for every open job page and `rnnlab jobs follow` (clients reconnect to the next server).
        "timeout_graceful_shutdown": settings.shutdown_grace_seconds,
    }
    if processes > 1 and balanced_sockets_supported():
        # A listening socket per process, so that connections spread over the processes.
        serve(uvicorn.Config("app.main:create_app", **options))
    else:
        uvicorn.run("app.main:create_app", **options)


def worker_argv(queues: str, concurrency: int | None, pool: str | None) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app:celery_app",
        "worker",
        "--queues",
        queues,
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
    ]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    if pool:
        argv += ["--pool", pool]
    return argv


def worker_command(queues: str, concurrency: int | None, pool: str | None) -> list[str]:
    """The Celery command line of ``rnnlab worker``: a worker serving only the gpu queue runs
    ``jobs_per_gpu`` jobs at once unless told otherwise, in Celery's default prefork pool. That is safe
    because the worker's main process never touches CUDA: each job initialises it in its own pool process."""
    if concurrency is None and queues.split(",") == ["gpu"]:
        from app.config import get_settings

        concurrency = get_settings().jobs_per_gpu
    return worker_argv(queues, concurrency, pool)


@app.command()
def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated queues: default, gpu.")] = "default",
    concurrency: Annotated[
        int | None,
        typer.Option(help="Parallel jobs (RNNLAB_WORKER_CONCURRENCY; RNNLAB_JOBS_PER_GPU for --queues gpu)."),
    ] = None,
    pool: Annotated[str | None, typer.Option(help="Celery pool (default prefork: one process per job).")] = None,
) -> None:
    """Run a Celery worker that trains jobs. GPU workers: --queues gpu, one worker per GPU (pick it with
    CUDA_VISIBLE_DEVICES), running --concurrency jobs on it at once."""
    _require_migrated_database()
    os.execv(sys.executable, worker_command(queues, concurrency, pool))


def _require_migrated_database() -> None:
    """Exit with the fix when the worker would find no rnnlab database (a missing SQLite file, whose
    connection would create an empty one, or tables not created yet). A database that cannot be
    reached right now is left to the worker, which keeps retrying."""
    state, message = _database_state()
    if state in ("missing", "uninitialised"):
        typer.echo(f"rnnlab worker: {message}", err=True)
        raise typer.Exit(1)


def visible_gpus() -> list[str]:
    """The GPUs a worker started from here could use, as CUDA_VISIBLE_DEVICES entries; [] without one.

    Asked in a short-lived subprocess, so this process (and the workers it forks) never initialises
    CUDA; skipped without the NVIDIA driver.
    """
    if not (os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia")):
        return []
    try:
        out = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        count = int(out.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return []
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return (listed or [str(i) for i in range(count)])[:count]


def _own_group_tied_to_parent() -> None:
    """In the child before exec: a process group of its own, and SIGTERM when the parent dies."""
    os.setpgrp()
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _forward_until_ready(stream: IO[bytes], ready: threading.Event) -> None:
    """Copy a child's output to our stderr; set ``ready`` when Celery logs that the worker is ready."""
    for line in iter(stream.readline, b""):
        sys.stderr.buffer.write(line)
        sys.stderr.buffer.flush()
        if not ready.is_set() and b" ready." in line:
            ready.set()


class _all_set:  # noqa: N801 - used like a threading.Event
    """Set once every one of ``events`` is set (each worker has said it is ready)."""

    def __init__(self, events: list[threading.Event]) -> None:
        self.events = events

    def is_set(self) -> bool:
        return all(e.is_set() for e in self.events)


def _wait_until_up(
    url: str, worker_ready: threading.Event | _all_set, procs: list[subprocess.Popen[bytes]], timeout_seconds: float
) -> bool:
    """True once the API answers /readyz and the worker has said it is ready; False if a child died."""
    import httpx

    deadline = time.monotonic() + timeout_seconds
    api_ready = False
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            return False
        if not api_ready:
            with contextlib.suppress(httpx.HTTPError):
                api_ready = httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        if api_ready and worker_ready.is_set():
            return True
        time.sleep(0.2)
    return False


def _stop_group(proc: subprocess.Popen[bytes], timeout_seconds: float = 10.0) -> None:
    """Stop every process left in the process group of ``proc``, a child that has exited (each child
    leads a group of its own): SIGTERM, then SIGKILL after ``timeout_seconds``. A killed API process
    leaves its server processes running, still holding the port."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + timeout_seconds
        try:
            os.killpg(proc.pid, sig)
            while time.monotonic() < deadline:
                time.sleep(0.1)
                os.killpg(proc.pid, 0)  # raises once the group is empty
        except ProcessLookupError:
            return
        except PermissionError:  # the group's id was reused by a process not ours: nothing of ours left
            return


# ``rnnlab up`` starts a child that died again, unless it died this often within the window.
MAX_RESTARTS = 3
RESTART_WINDOW_SECONDS = 300.0


@app.command()
def up(
    host: Annotated[str | None, typer.Option(help="Interface the API listens on; defaults to RNNLAB_HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="API port; defaults to RNNLAB_PORT.")] = None,
) -> None:
    """Embedded default: apply migrations, then run the API and one real worker process until Ctrl-C."""
    from app.config import get_settings
    from app.migrate import upgrade_database

    settings = get_settings()
    host, port = host or settings.host, port or settings.port
    settings.home.mkdir(parents=True, exist_ok=True)
    upgrade_database()
    # The children get their own process group, so a terminal's Ctrl-C reaches only this process,
    # which stops them with one SIGTERM each (Celery treats a SIGINT as a failed exit, and two
    # signals as a request for a cold shutdown); they also stop if this process dies.
    # On a GPU machine: the CPU worker serves the default queue, and one GPU worker per GPU (pinned with
    # CUDA_VISIBLE_DEVICES) the gpu queue, jobs_per_gpu jobs at once. Without a GPU one worker serves
    # both, so a cuda job fails at once with a clear error instead of waiting for a GPU that never comes.
    gpus = visible_gpus()
    commands: list[tuple[list[str], dict[str, str] | None]] = [
        (worker_argv("default" if gpus else "default,gpu", settings.worker_concurrency, None), None)
    ]
    for gpu in gpus:
        pinned = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
        commands.append((worker_argv("gpu", settings.jobs_per_gpu, None) + ["--hostname", f"gpu{gpu}@%h"], pinned))
    if gpus:
        typer.echo(f"GPU workers: {len(gpus)} ({settings.jobs_per_gpu} job(s) per GPU)", err=True)
    children: dict[str, tuple[list[str], dict[str, str] | None]] = {}
    for i, (argv, env) in enumerate(commands):
        children["worker" if i == 0 else f"gpu worker {gpus[i - 1]}"] = (argv, env)
    children["api"] = ([sys.executable, "-m", "app.cli", "api", "--host", host, "--port", str(port)], None)
    ready_events: list[threading.Event] = []

    def start(name: str) -> subprocess.Popen[bytes]:
        argv, env = children[name]
        if name == "api":
            return subprocess.Popen(argv, preexec_fn=_own_group_tied_to_parent)
        proc = subprocess.Popen(
            argv, preexec_fn=_own_group_tied_to_parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
        )
        ready = threading.Event()
        assert proc.stdout is not None
        threading.Thread(target=_forward_until_ready, args=(proc.stdout, ready), daemon=True).start()
        ready_events.append(ready)
        return proc

    running = {name: start(name) for name in children}
    worker_ready = _all_set(list(ready_events))
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    # Browsers and clients on this machine reach a wildcard listener through the loopback address.
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{shown_host}:{port}"
    exits: dict[str, int | None] = {}
    try:
        if _wait_until_up(url, worker_ready, list(running.values()), timeout_seconds=120) and not stopping:
            # The command as this process was run (``.venv/bin/rnnlab`` after ``make up``: not on PATH),
            # with the data directory when it was set (keys live in it: a key made elsewhere is refused).
            command = _own_command()
            home = f"RNNLAB_HOME={shlex.quote(os.environ['RNNLAB_HOME'])} " if os.environ.get("RNNLAB_HOME") else ""
            typer.echo(
                f"rnnlab is up: {url}/ (docs at /docs); data in {settings.home}. "
                f"Create a key with: {home}{command} keys create --project demo. Ctrl-C stops.",
                err=True,
            )
        elif not stopping and all(p.poll() is None for p in running.values()):
            typer.echo(f"rnnlab is not ready after 120 s ({url}/readyz); still waiting, Ctrl-C stops.", err=True)
        # Once up, a child that dies (killed, out of memory) is started again: a worker's job goes back to
        # the queue by its lease, and the API keeps no state. One that keeps dying stops everything.
        started_up = all(p.poll() is None for p in running.values())
        restarts: dict[str, list[float]] = {name: [] for name in children}
        while not stopping:
            for name, proc in running.items():
                code = proc.poll()
                if code is None:
                    continue
                now = time.monotonic()
                recent = [t for t in restarts[name] if now - t < RESTART_WINDOW_SECONDS]
                if not started_up or len(recent) >= MAX_RESTARTS:
                    exits[name] = code
                    if started_up:
                        typer.echo(
                            f"{name} exited ({code}) {len(recent) + 1} times within {RESTART_WINDOW_SECONDS:.0f} s; "
                            "stopping",
                            err=True,
                        )
                    stopping = True
                    break
                typer.echo(f"{name} exited ({code}); starting it again", err=True)
                _stop_group(proc)  # what it started (the API's processes hold the port) goes with it
                restarts[name] = [*recent, now]
                running[name] = start(name)
            time.sleep(0.2)
    finally:
        for p in running.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for p in running.values():
            try:
                p.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                p.kill()
        for p in running.values():  # anything a child left running when it died
            _stop_group(p)
    codes = {name: exits.get(name, p.returncode) for name, p in running.items()}
    failed = {name: c for name, c in codes.items() if c not in (0, None, -signal.SIGTERM, -signal.SIGINT)}
    if failed:
        typer.echo(f"stopped with errors: {failed}", err=True)
        raise typer.Exit(next(iter(failed.values())) % 256 or 1)
    typer.echo("rnnlab stopped", err=True)


def main() -> None:
    # The composition root: the client's user commands (rnnlab.cli) next to the server commands.
    from rnnlab.cli import register, run

    register(app)
    run(app)


if __name__ == "__main__":
    main()
