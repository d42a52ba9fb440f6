"""The layering rules of docs/architecture.md, checked on the source (an AST walk of every import).

worker/engine  ← app  ← worker (the shell)        and the client package ``rnnlab`` beside them:
- the engine imports nothing of app, the worker shell or the client;
- app imports nothing of the worker shell (only worker.engine), and the client only from app/cli.py;
- the client imports nothing of app or the worker shell (worker.engine, the pure library, is allowed).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIRST_PARTY = ("app", "worker", "rnnlab")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import in the file, relative ones resolved, function-level too."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:  # `from worker import runner` imports worker.runner
                yield node.lineno, f"{module}.{alias.name}"


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _sources(top: str) -> list[Path]:
    folder = ROOT / top
    return sorted(folder.rglob("*.py")) if folder.exists() else []


def _violations(top: str, allowed: callable) -> list[str]:  # type: ignore[valid-type]
    found = []
    for path in _sources(top):
        for line, module in _imports(path):
            if module.split(".")[0] in FIRST_PARTY and not allowed(path, module):
                found.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return found


def test_the_engine_imports_only_itself() -> None:
    def allowed(_: Path, module: str) -> bool:
        return _within(module, "worker.engine") or module == "worker"

    assert _violations("worker/engine", allowed) == []


def test_app_imports_only_the_engine_of_worker() -> None:
    def allowed(path: Path, module: str) -> bool:
        if _within(module, "app") or _within(module, "worker.engine") or module == "worker":
            return True
        # The `rnnlab` command is composed in app/cli.py: the server's commands and the client's.
        return _within(module, "rnnlab") and path == ROOT / "app" / "cli.py"

    assert _violations("app", allowed) == []


def test_the_client_never_imports_the_server() -> None:
    def allowed(_: Path, module: str) -> bool:
        return _within(module, "rnnlab") or _within(module, "worker.engine") or module == "worker"

    assert _violations("rnnlab", allowed) == []


def test_the_worker_shell_never_imports_the_client() -> None:
    def allowed(_: Path, module: str) -> bool:
        return not _within(module, "rnnlab")

    assert _violations("worker", allowed) == []


def test_the_import_walk_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    # The checker itself: a rule that can never fail would prove nothing.
    source = ROOT / "worker" / "engine" / "engine.py"
    modules = {m for _, m in _imports(source)}
    assert "worker.engine.spec" in modules and "worker.engine.results.Evaluation" in modules
    runner = {m for _, m in _imports(ROOT / "worker" / "runner.py")}
    assert "app.errors" in runner  # imported inside a function


def test_importing_the_api_builds_no_celery_app_and_creates_no_broker_folder(tmp_path: Path) -> None:
    code = (
        "import app.main, app.jobs.service, app.jobs.dispatch, app.queue, sys\n"
        "assert app.queue._celery is None, 'the Celery app was built at import'\n"
        "assert 'worker.celery_app' not in sys.modules and 'worker.tasks' not in sys.modules\n"
        "assert 'torch' not in sys.modules\n"
    )
    env = {"RNNLAB_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)
    assert not (tmp_path / "home" / "broker").exists()


# --- one vocabulary ----------------------------------------------------------------------------

STATUS_WORDS = {"queued", "running", "succeeded", "failed", "cancelled"}


def test_job_statuses_are_spelled_only_in_the_status_module() -> None:
    """Every status check and query uses JobStatus: no bare status strings in app/ or the worker shell."""
    found = []
    for top in ("app", "worker"):
        for path in _sources(top):
            if path.name == "status.py" or _within(_module_name(path), "worker.engine"):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value in STATUS_WORDS:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert found == []


def test_every_transition_is_in_the_table() -> None:
    from app.jobs.status import ACTIVE, FINISHED, TRANSITIONS, JobStatus, allowed

    assert set(JobStatus) == ACTIVE | FINISHED and not ACTIVE & FINISHED
    assert not any(source in FINISHED for source, _ in TRANSITIONS), "a finished job never moves again"
    assert allowed(JobStatus.QUEUED, JobStatus.RUNNING) and not allowed(JobStatus.SUCCEEDED, JobStatus.RUNNING)


def test_finishing_a_job_with_a_status_the_table_refuses_raises() -> None:
    from app.jobs import state
    from app.jobs.status import JobStatus

    claim = state.Claim("job", "worker", 1)
    with pytest.raises(ValueError, match="cannot finish as"):
        state.finish_job(None, claim, JobStatus.QUEUED)  # type: ignore[arg-type]


# --- errors by meaning -------------------------------------------------------------------------

ERROR_KINDS = {"BadRequest", "Unauthorized", "NotFound", "Conflict", "TooLarge", "UnsupportedFormat", "InvalidInput"}
ERROR_KINDS |= {"Unavailable"}


def _raised_codes() -> Iterator[tuple[str, str]]:
    for path in _sources("app"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ERROR_KINDS
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                yield f"{path.relative_to(ROOT)}:{node.lineno}", str(node.args[0].value)


def test_every_error_code_is_documented() -> None:
    from app.errors import ERROR_CODES

    codes = list(_raised_codes())
    assert len(codes) > 40  # the walk finds the kinds in use
    assert [f"{where} {code}" for where, code in codes if code not in ERROR_CODES] == []


def test_no_http_numbers_in_domain_code() -> None:
    """Kinds carry the status: no AppError is built with a number outside app/errors.py."""
    found = []
    for path in _sources("app"):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "AppError":
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


def test_the_evaluation_and_error_schemas_are_in_the_openapi_document(client) -> None:
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    evaluation = schemas["Evaluation"]
    assert {"metrics", "intervals", "baselines", "comparison", "attribution"} <= set(evaluation["properties"])
    route = doc["paths"]["/api/v1/jobs/{job_id}/evaluation"]["get"]["responses"]
    assert route["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/Evaluation")
    assert route["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert "dataset_in_use" in schemas["ErrorDetail"]["description"]
    assert "API.md" not in client.get("/openapi.json").text


def test_no_reference_to_files_outside_the_repository() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    found = [
        name
        for name in tracked
        if name.endswith((".py", ".md", ".js", ".html"))
        and (ROOT / name).exists()
        and ("API.md" in (ROOT / name).read_text() or "shared/" in (ROOT / name).read_text())
        and name != "tests/test_architecture.py"
    ]
    assert found == []


def test_docs_list_every_error_code() -> None:
    from app.errors import ERROR_CODES

    text = (ROOT / "docs" / "api.md").read_text()
    assert [code for code in ERROR_CODES if f"| `{code}` |" not in text] == []


def test_embedded_broker_messages_appear_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A consumer listing the queue folder never sees a message file before its content is complete."""
    import json
    import threading

    from app.config import get_settings
    from app.queue import get_celery, send_job

    monkeypatch.setenv("RNNLAB_HOME", str(tmp_path))
    get_settings.cache_clear()
    try:
        queue_dir = tmp_path / "broker" / "queue"
        get_celery()  # creates the broker folders
        seen: list[str] = []
        torn: list[str] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                for path in queue_dir.glob("*.msg"):
                    text = path.read_text()
                    try:
                        seen.append(json.loads(text)["headers"]["id"])
                    except ValueError:
                        torn.append(text)

        watcher = threading.Thread(target=watch)
        watcher.start()
        for i in range(200):
            send_job(f"job-{i}", "default")
        stop.set()
        watcher.join()
        assert torn == []
        assert {json.loads(p.read_text())["headers"]["id"] for p in queue_dir.glob("*.msg")} == {
            f"job-{i}" for i in range(200)
        }
        assert seen and not list(queue_dir.glob(".*.partial"))
    finally:
        get_settings.cache_clear()
