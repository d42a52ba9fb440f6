"""``Client``: the Python client of an rnnlab server (httpx, synchronous).

It speaks HTTP only: the server's code is never imported. Job specs are checked locally with the
engine's own ``JobSpec`` (the one pydantic definition the server validates with) before they are sent.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Literal
from urllib.parse import quote

import httpx

from rnnlab.errors import RnnlabError

if TYPE_CHECKING:
    from worker.engine.spec import JobSpec

DEFAULT_URL = "http://127.0.0.1:8000"
FINISHED_STATUSES = frozenset({"succeeded", "failed", "cancelled", "pruned"})
ModelFormat = Literal["pt", "onnx", "safetensors"]
ProgressCallback = Callable[[int, int], None]  # (bytes sent, total bytes)


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event of ``GET /jobs/{id}/events``: ``status``, ``epoch`` or ``end``."""

    event: str
    data: dict[str, Any]
    id: str | None = None  # ``EPOCH.RUN``; sent back as ``Last-Event-ID`` to resume a dropped stream


class _CountingReader:
    """A binary file that reports how many bytes have been read, for upload progress."""

    def __init__(self, file: BinaryIO, total: int, callback: ProgressCallback) -> None:
        self._file, self._total, self._callback, self._sent = file, total, callback, 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(size)
        self._sent += len(chunk)
        self._callback(self._sent, self._total)
        return chunk

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(1024 * 1024):
            yield chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()


def _file_size(file: BinaryIO) -> int:
    try:
        return os.fstat(file.fileno()).st_size - file.tell()
    except (OSError, AttributeError, ValueError):
        start = file.tell()
        end = file.seek(0, os.SEEK_END)
        file.seek(start)
        return end - start


class Client:
    """A connection to one rnnlab server as one project (its API key).

    ``url`` and ``api_key`` default to ``RNNLAB_URL`` (else http://127.0.0.1:8000) and
    ``RNNLAB_API_KEY``. Every error answer raises :class:`RnnlabError`.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        http: httpx.Client | None = None,
    ) -> None:
        self.url = (url or os.environ.get("RNNLAB_URL") or DEFAULT_URL).rstrip("/")
        try:
            parsed = httpx.URL(self.url)
        except httpx.InvalidURL as exc:
            raise ValueError(f"the server URL {self.url!r} is not a valid URL: {exc}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"the server URL {self.url!r} must start with http:// or https:// and name a host")
        key = api_key if api_key is not None else os.environ.get("RNNLAB_API_KEY")
        if key is not None and not key.isascii():
            raise ValueError("the API key holds characters outside ASCII; rnnlab keys are ASCII (copy it again)")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = http or httpx.Client(base_url=self.url, timeout=timeout)
        self._http.headers.update(headers)
        self.datasets = Datasets(self)
        self.jobs = Jobs(self)
        self.sweeps = Sweeps(self)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request to ``/api/v1{path}``; an error answer raises :class:`RnnlabError`."""
        try:
            response = self._http.request(method, f"/api/v1{path}", **kwargs)
        except httpx.TransportError as exc:
            raise RnnlabError(0, "connection_error", f"cannot reach rnnlab at {self.url}: {exc}") from exc
        except ValueError as exc:
            if "JSON compliant" not in str(exc):
                raise
            # httpx's JSON encoder refuses NaN and infinity (JSON has neither) before anything is sent.
            raise ValueError(
                f"{method} {path}: the body holds NaN or infinity, which JSON cannot carry; "
                "the API takes finite numbers (fill or drop the missing values)"
            ) from None
        raise_for_error(response)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def pages(self, path: str, params: Mapping[str, Any] | None = None, page_size: int = 100) -> Iterator[Any]:
        """Every item of a paginated list, following ``next_cursor`` page by page."""
        query: dict[str, Any] = {k: v for k, v in (params or {}).items() if v is not None}
        query["limit"] = page_size
        while True:
            page = self.json("GET", path, params=query)
            yield from page["items"]
            if not page.get("next_cursor"):
                return
            query["cursor"] = page["next_cursor"]

    def stream_to(
        self, path: str, destination: str | Path | IO[bytes], params: Mapping[str, Any] | None = None
    ) -> None:
        """Write the body of ``GET /api/v1{path}`` to a path or binary file, chunk by chunk."""
        try:
            # follow_redirects: a server on object storage may answer a model download with a 307 to
            # a presigned URL of the store (httpx drops the Authorization header for the other host).
            with self._http.stream("GET", f"/api/v1{path}", params=params, follow_redirects=True) as response:
                if response.is_error:
                    response.read()
                    raise_for_error(response)
                if isinstance(destination, str | Path):
                    with open(destination, "wb") as out:
                        for chunk in response.iter_bytes():
                            out.write(chunk)
                else:
                    for chunk in response.iter_bytes():
                        destination.write(chunk)
        except httpx.TransportError as exc:
            raise RnnlabError(0, "connection_error", f"cannot reach rnnlab at {self.url}: {exc}") from exc

    def events(
        self,
        path: str,
        last_event_id: str | None = None,
        read_timeout: float | None = None,
        keepalives: bool = False,
    ) -> Generator[Event, None, None]:
        """Server-Sent Events from ``GET /api/v1{path}``, parsed, until the server closes the stream;
        ``last_event_id`` (an earlier event's ``id``) resumes after that event. ``read_timeout``: the
        longest wait for the next bytes (``httpx.ReadTimeout`` after it); ``None`` waits for ever.
        ``keepalives``: the server's keep-alive comments come through too, as ``Event("keep-alive")``
        (a caller with a deadline gets control back at each one)."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else None
        timeout = httpx.Timeout(60.0, read=read_timeout)
        with self._http.stream("GET", f"/api/v1{path}", headers=headers, timeout=timeout) as response:
            if response.is_error:
                response.read()
                raise_for_error(response)
            name, data, event_id = "message", list[str](), last_event_id
            for line in response.iter_lines():
                if not line:
                    if data:
                        yield Event(name, json.loads("\n".join(data)), event_id)
                    name, data = "message", []
                elif line.startswith(":"):
                    if keepalives:  # a comment: the server's keep-alive
                        yield Event("keep-alive", {}, event_id)
                elif line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line.startswith("id:"):
                    event_id = line[3:].strip()


def raise_for_error(response: httpx.Response) -> None:
    if not response.is_error:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    raise RnnlabError.from_body(response.status_code, body, response.text)


# --- datasets ------------------------------------------------------------------------------------


class Datasets:
    """``client.datasets``: upload, list, get, preview, delete."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def upload(
        self,
        file: str | Path | BinaryIO,
        *,
        name: str | None = None,
        filename: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> dict[str, Any]:
        """Upload a .csv, .csv.gz, .parquet or .npz file, streamed from a path or a binary file object.

        ``filename`` (which tells the server the format) defaults to the path's or file's name;
        ``progress(sent, total)`` is called as bytes go out.
        """
        if isinstance(file, str | Path):
            with open(file, "rb") as handle:
                return self.upload(handle, name=name, filename=filename or Path(file).name, progress=progress)
        filename = filename or Path(str(getattr(file, "name", "upload"))).name
        body: Any = file
        if progress is not None:
            body = _CountingReader(file, _file_size(file), progress)
        data = {"name": name} if name else None
        return dict(self._client.json("POST", "/datasets", files={"file": (filename, body)}, data=data))

    def list(self, page_size: int = 100) -> Iterator[dict[str, Any]]:
        """Every dataset of the project, newest first (pages fetched as the iteration goes)."""
        return self._client.pages("/datasets", page_size=page_size)

    def get(self, dataset_id: str) -> dict[str, Any]:
        return dict(self._client.json("GET", f"/datasets/{path_id('dataset', dataset_id)}"))

    def preview(self, dataset_id: str, rows: int = 20) -> dict[str, Any]:
        path = f"/datasets/{path_id('dataset', dataset_id)}/preview"
        return dict(self._client.json("GET", path, params={"rows": rows}))

    def delete(self, dataset_id: str) -> None:
        self._client.request("DELETE", f"/datasets/{path_id('dataset', dataset_id)}")

    def leaderboard(self, dataset_id: str, metric: str = "test.rmse", limit: int = 10) -> dict[str, Any]:
        """The dataset's best jobs by a final metric (``test.rmse``, ``test.accuracy``, …)."""
        params = {"metric": metric, "limit": limit}
        return dict(self._client.json("GET", f"/datasets/{path_id('dataset', dataset_id)}/leaderboard", params=params))


# --- jobs ----------------------------------------------------------------------------------------


def path_id(kind: str, value: Any) -> str:
    """An id as one URL path segment: a non-empty string, percent-encoded (``/``, ``?`` and ``#``
    included), so an odd id asks for that id and nothing else."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"a {kind} id must be a non-empty string, not {value!r}")
    return quote(value, safe="")


def spec_payload(spec: JobSpec | Mapping[str, Any]) -> dict[str, Any]:
    """A spec as the JSON the API takes: a ``JobSpec`` is dumped, a mapping is sent as given.

    A mapping is not validated here: the server validates it against its dataset and names any
    bad field in a 422, which is more than a local check can know.
    """
    if isinstance(spec, Mapping):
        return dict(spec)
    if not hasattr(spec, "model_dump"):
        raise TypeError(f"a job spec must be a mapping (JSON object) or a JobSpec, not {type(spec).__name__}")
    return dict(spec.model_dump(mode="json", exclude_unset=True))


class Job:
    """A job on the server. ``info`` is the last ``Job`` body read (see ``refresh``)."""

    def __init__(self, client: Client, info: dict[str, Any]) -> None:
        self._client = client
        self.info = info

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, status={self.status!r})"

    @property
    def id(self) -> str:
        return str(self.info["id"])

    @property
    def status(self) -> str:
        return str(self.info["status"])

    @property
    def done(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def summary(self) -> dict[str, Any] | None:
        return self.info.get("summary")

    def refresh(self) -> Job:
        self.info = dict(self._client.json("GET", f"/jobs/{self.id}"))
        return self

    def follow(self, timeout: float | None = None) -> Iterator[Event]:
        """The job's events (``status``, ``epoch``, ``end``) as they happen, until it has finished.

        A dropped connection is resumed (``Last-Event-ID``: the server sends only the epochs after the
        last one seen); epochs already seen are not repeated. With ``timeout`` (seconds) a job still
        running after it raises ``TimeoutError``.
        """
        last_epoch, run, last_id = 0, None, None
        deadline = None if timeout is None else time.monotonic() + timeout

        def expired() -> bool:
            return deadline is not None and time.monotonic() >= deadline

        while True:
            if expired():
                raise TimeoutError(f"job {self.id} is still {self.status} after {timeout}s")
            # With a deadline, a read waits at most until it, and the server's keep-alives (every 15 s)
            # come through, so a queued job or a slow epoch cannot hold the loop past it.
            read_timeout = None if deadline is None else max(0.1, deadline - time.monotonic())
            try:
                events = self._client.events(f"/jobs/{self.id}/events", last_id, read_timeout, deadline is not None)
                with contextlib.closing(events):  # leaving early closes the stream too
                    for event in events:
                        if event.event == "keep-alive":
                            if expired():
                                break
                            continue
                        last_id = event.id or last_id
                        current = (event.id or "").partition(".")[2] or run  # the id names the run
                        if run is not None and current != run:
                            last_epoch = 0  # a retried or handed-back job starts its epochs again
                        run = current
                        if event.event == "status":
                            self.info.update(event.data)
                        if event.event == "epoch":
                            if int(event.data["epoch"]) <= last_epoch:
                                continue
                            last_epoch = int(event.data["epoch"])
                        yield event
                        if event.event == "end":
                            self.refresh()
                            return
                        if expired():
                            break
            except httpx.ReadTimeout:
                pass  # the deadline came while the stream was silent
            except httpx.TransportError:
                time.sleep(1.0)
            if self.refresh().done:
                return

    def wait(self, *, progress: bool = False, timeout: float | None = None, poll_seconds: float = 1.0) -> Job:
        """Block until the job has finished (succeeded, failed, cancelled or pruned); returns it.

        ``progress=True`` shows a live bar per epoch (rich) on stderr, following the event stream.
        ``timeout`` (seconds, either way): ``TimeoutError`` if the job is still running after it.
        """
        if progress:
            from rnnlab.progress import follow_with_progress

            follow_with_progress(self, timeout=timeout)
            return self
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.refresh().done:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} is still {self.status} after {timeout}s")
            time.sleep(poll_seconds)
        return self

    def metrics(self) -> dict[str, Any]:
        """``{"series": [{"name", "split", "epochs", "values"}, …]}``: per-epoch history."""
        return dict(self._client.json("GET", f"/jobs/{self.id}/metrics"))

    def evaluation(self) -> dict[str, Any]:
        """Metrics per split with bootstrap intervals, baselines, confusion matrix, attribution."""
        return dict(self._client.json("GET", f"/jobs/{self.id}/evaluation"))

    def download_model(self, path: str | Path | IO[bytes], format: ModelFormat = "pt") -> None:
        """Save the trained model: ``pt`` (torch), ``onnx`` (scalers folded in) or ``safetensors``."""
        self._client.stream_to(f"/jobs/{self.id}/model", path, params={"format": format})

    def predict(self, inputs: Any) -> Any:
        """Predictions for raw input windows ``[N, T, F]`` (or ``[N, T]``) in original units, or for a
        text model a list of strings."""
        if hasattr(inputs, "tolist"):
            inputs = inputs.tolist()
        return self._client.json("POST", f"/jobs/{self.id}/predict", json={"inputs": inputs})["predictions"]

    def cancel(self) -> Job:
        self.info = dict(self._client.json("POST", f"/jobs/{self.id}/cancel"))
        return self

    def delete(self) -> None:
        self._client.request("DELETE", f"/jobs/{self.id}")


class Jobs:
    """``client.jobs``: submit, get, list (every page, with ``where`` / ``sort``)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def submit(self, spec: JobSpec | Mapping[str, Any]) -> Job:
        return Job(self._client, dict(self._client.json("POST", "/jobs", json=spec_payload(spec))))

    def get(self, job_id: str) -> Job:
        return Job(self._client, dict(self._client.json("GET", f"/jobs/{path_id('job', job_id)}")))

    def list(
        self,
        *,
        where: str | None = None,
        sort: str | None = None,
        status: str | list[str] | None = None,
        dataset_id: str | None = None,
        task: str | None = None,
        cell: str | None = None,
        sweep_id: str | None = None,
        limit: int | None = None,
        page_size: int = 100,
    ) -> Iterator[Job]:
        """Jobs matching the filters, across every page (at most ``limit`` when given).

        ``where`` takes final metrics and spec fields, e.g. ``'test.rmse < 0.5 and model.cell in ("lstm","gru")'``;
        ``sort`` a field with ``-`` for descending, e.g. ``test.rmse`` or ``-created_at``.
        """
        params = {
            "where": where,
            "sort": sort,
            "status": [status] if isinstance(status, str) else status,
            "dataset_id": dataset_id,
            "task": task,
            "cell": cell,
            "sweep_id": sweep_id,
        }
        page_size = min(page_size, limit) if limit else page_size
        for count, item in enumerate(self._client.pages("/jobs", params, page_size=page_size)):
            if limit is not None and count >= limit:
                return
            yield Job(self._client, dict(item))


# --- sweeps --------------------------------------------------------------------------------------


class Sweep:
    """A sweep on the server. ``info`` is the last ``Sweep`` body read, with its jobs and report."""

    def __init__(self, client: Client, info: dict[str, Any]) -> None:
        self._client = client
        self.info = info

    def __repr__(self) -> str:
        return f"Sweep(id={self.id!r}, progress={self.info.get('progress')!r})"

    @property
    def id(self) -> str:
        return str(self.info["id"])

    @property
    def done(self) -> bool:
        """Every job has ended and, for a search (tpe), nothing is left to ask: the report's
        ``complete``. (Between two trials every job so far can have ended while the search goes on.)"""
        report = self.info.get("report")
        if isinstance(report, dict) and "complete" in report:
            return bool(report["complete"])
        progress = self.info.get("progress") or {}
        finished = bool(progress.get("total")) and progress.get("finished") == progress.get("total")
        return finished and self.info.get("search") != "tpe"  # a list item has no report: refresh

    def refresh(self) -> Sweep:
        self.info = dict(self._client.json("GET", f"/sweeps/{self.id}"))
        return self

    def wait(self, *, timeout: float | None = None, poll_seconds: float = 2.0) -> Sweep:
        """Block until every job of the sweep has finished (for a search: and no trial is left to ask)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.refresh().done:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"sweep {self.id} is not finished after {timeout}s: {self.info.get('progress')}")
            time.sleep(poll_seconds)
        return self

    def report(self) -> dict[str, Any]:
        """Per setting: each metric's mean, std and 95% CI over seeds; the best setting; parameter effects."""
        return dict(self.refresh().info["report"])

    def jobs(self) -> list[Job]:
        return [self._client.jobs.get(item["id"]) for item in self.refresh().info["jobs"]]

    def leaderboard(self, metric: str | None = None, limit: int = 10) -> dict[str, Any]:
        """The sweep dataset's leaderboard by ``metric`` (default: the sweep's main test metric)."""
        report = self.info.get("report") or self.report()
        metric = metric or f"test.{report['main_metric']}"
        return self._client.datasets.leaderboard(str(self.info["dataset_id"]), metric, limit)

    def cancel(self) -> dict[str, Any]:
        return dict(self._client.json("POST", f"/sweeps/{self.id}/cancel"))

    def delete(self) -> None:
        self._client.request("DELETE", f"/sweeps/{self.id}")


class Sweeps:
    """``client.sweeps``: submit, get, list."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def submit(
        self,
        base: JobSpec | Mapping[str, Any],
        grid: Mapping[str, list[Any]] | None = None,
        *,
        seeds: list[int] | None = None,
        name: str | None = None,
        **options: Any,
    ) -> Sweep:
        """One job per (setting, seed). ``options`` are the other ``POST /sweeps`` fields (search, max_jobs, …)."""
        body: dict[str, Any] = {"base": spec_payload(base), "grid": dict(grid or {}), **options}
        if seeds is not None:
            body["seeds"] = seeds
        if name is not None:
            body["name"] = name
        return Sweep(self._client, dict(self._client.json("POST", "/sweeps", json=body)))

    def submit_body(self, body: Mapping[str, Any]) -> Sweep:
        """Submit a whole ``POST /sweeps`` body (as read from a YAML or JSON file)."""
        payload = dict(body)
        if "base" in payload:
            payload["base"] = spec_payload(payload["base"])
        return Sweep(self._client, dict(self._client.json("POST", "/sweeps", json=payload)))

    def get(self, sweep_id: str) -> Sweep:
        return Sweep(self._client, dict(self._client.json("GET", f"/sweeps/{path_id('sweep', sweep_id)}")))

    def list(self, page_size: int = 100) -> Iterator[dict[str, Any]]:
        return self._client.pages("/sweeps", page_size=page_size)
