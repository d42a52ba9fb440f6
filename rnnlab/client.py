"""``Client``: the Python client of an rnnlab server (httpx, synchronous).

It speaks HTTP only: the server's code is never imported. Job specs are checked locally with the
engine's own ``JobSpec`` (the one pydantic definition the server validates with) before they are sent.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import os
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
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
MODEL_FORMATS: tuple[ModelFormat, ...] = ("pt", "onnx", "safetensors")
ProgressCallback = Callable[[int, int], None]  # (bytes sent, total bytes)
Notify = Callable[[str], None]  # a one-line notice: the connection dropped, or is back
# How long ``follow`` and the ``wait``s keep reconnecting while the server cannot be reached (the API
# restarted by `rnnlab up`'s supervisor, a deploy) before they give up with ``connection_error``.
RECONNECT_SECONDS = 60.0
# A 429 answer is retried after its ``Retry-After``, at most this many times per request.
RATE_LIMIT_RETRIES = 10
log = logging.getLogger("rnnlab")


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
        self._reported = -1  # the callback is called once per new count (not again for the final b"")

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(size)
        self._sent += len(chunk)
        if self._sent != self._reported:
            self._reported = self._sent
            self._callback(self._sent, self._total)
        return chunk

    def restart(self, start: int) -> None:
        """Back to ``start`` for a retried upload (a 429): the count starts again from 0, and says so."""
        self._file.seek(start)
        self._sent = self._reported = 0
        self._callback(0, self._total)

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(1024 * 1024):
            yield chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()


def _clean_key(key: str | None) -> str | None:
    """The API key with surrounding whitespace (a pasted newline) removed; a key with a space or a
    control character inside is refused. The message never holds the key: it is a secret."""
    if key is None:
        return None
    key = key.strip()
    if not key.isascii():
        raise ValueError("the API key holds characters outside ASCII; rnnlab keys are ASCII (copy it again)")
    if any(not ch.isprintable() or ch.isspace() for ch in key):
        raise ValueError(
            "the API key holds a space or a control character inside it; rnnlab keys are one word (copy it "
            "again; the key is not shown here)"
        )
    return key or None


def _header_error() -> ValueError:
    # httpx's LocalProtocolError quotes the bad header value: the key itself. Never shown.
    return ValueError(
        "the request was not sent: a header holds a character HTTP does not allow (check the API key; "
        "it is not shown here)"
    )


def _retry_after(response: httpx.Response) -> float | None:
    """The ``Retry-After`` header in seconds (a number or an HTTP date), or None."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _replayable(kwargs: Mapping[str, Any]) -> bool:
    """Whether a request can be sent again as it is: no file or streamed body (they are read once)."""
    return "files" not in kwargs and isinstance(kwargs.get("content"), bytes | str | None)


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
        max_retry_wait: float = 120.0,
    ) -> None:
        self.url = (url or os.environ.get("RNNLAB_URL") or DEFAULT_URL).rstrip("/")
        try:
            parsed = httpx.URL(self.url)
        except httpx.InvalidURL as exc:
            raise ValueError(f"the server URL {self.url!r} is not a valid URL: {exc}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"the server URL {self.url!r} must start with http:// or https:// and name a host")
        key = _clean_key(api_key if api_key is not None else os.environ.get("RNNLAB_API_KEY"))
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.max_retry_wait = max_retry_wait
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

    def request(
        self,
        method: str,
        path: str,
        *,
        rewind: Callable[[], None] | None = None,
        retry_rate_limit: bool = True,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send a request to ``/api/v1{path}``; an error answer raises :class:`RnnlabError`.

        A 429 (``rate_limited``) is sent again after its ``Retry-After``, up to ``max_retry_wait``
        seconds in all; a body read from a file is sent again only with ``rewind`` (back to its start).
        ``retry_rate_limit=False``: a 429 raises at once (a caller with a deadline waits for it itself).
        """
        waited = 0.0
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            try:
                response = self._http.request(method, f"/api/v1{path}", **kwargs)
            except httpx.LocalProtocolError:
                raise _header_error() from None
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
            pause = self._rate_limit_pause(response, attempt, waited) if retry_rate_limit else None
            if pause is None or not (rewind is not None or _replayable(kwargs)):
                break
            response.close()
            time.sleep(pause)
            waited += pause
            if rewind is not None:
                rewind()
        raise_for_error(response)
        return response

    def _rate_limit_pause(self, response: httpx.Response, attempt: int, waited: float) -> float | None:
        """Seconds to wait before sending a 429'd request again, or None: not a 429, or out of retries."""
        if response.status_code != 429 or attempt >= RATE_LIMIT_RETRIES:
            return None
        pause = _retry_after(response)
        pause = 1.0 if pause is None else pause
        return pause if waited + pause <= self.max_retry_wait else None

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
        waited = 0.0
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            try:
                # follow_redirects: a server on object storage may answer a model download with a 307 to
                # a presigned URL of the store (httpx drops the Authorization header for the other host).
                with self._http.stream("GET", f"/api/v1{path}", params=params, follow_redirects=True) as response:
                    if response.is_error:
                        response.read()
                        pause = self._rate_limit_pause(response, attempt, waited)
                        if pause is not None:
                            time.sleep(pause)
                            waited += pause
                            continue
                        raise_for_error(response)
                    if isinstance(destination, str | Path):
                        with open(destination, "wb") as out:
                            for chunk in response.iter_bytes():
                                out.write(chunk)
                    else:
                        for chunk in response.iter_bytes():
                            destination.write(chunk)
                    return
            except httpx.LocalProtocolError:
                raise _header_error() from None
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
        # With a deadline (read_timeout), connecting waits no longer than it either.
        timeout = httpx.Timeout(60.0 if read_timeout is None else min(60.0, read_timeout), read=read_timeout)
        try:
            yield from self._read_events(path, headers, timeout, last_event_id, keepalives)
        except httpx.LocalProtocolError:
            raise _header_error() from None

    def _read_events(
        self, path: str, headers: dict[str, str] | None, timeout: httpx.Timeout, event_id: str | None, keepalives: bool
    ) -> Generator[Event, None, None]:
        with self._http.stream("GET", f"/api/v1{path}", headers=headers, timeout=timeout) as response:
            if response.is_error:
                response.read()
                raise_for_error(response)
            name, data = "message", list[str]()
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
    raise RnnlabError.from_body(response.status_code, body, response.text, _retry_after(response))


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
        rewind: Callable[[], None] | None = None  # a rate-limited upload is sent again from its start
        seekable = getattr(file, "seekable", None)
        if callable(seekable) and seekable():
            start = file.tell()

            def back_to_start() -> None:
                if isinstance(body, _CountingReader):
                    body.restart(start)
                else:
                    file.seek(start)

            rewind = back_to_start

        data = {"name": name} if name else None
        return dict(self._client.json("POST", "/datasets", files={"file": (filename, body)}, data=data, rewind=rewind))

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


def model_format(path: str | Path | None, format: str | None = None) -> str:
    """The format to save a model in: a path's suffix (``.pt``, ``.onnx``, ``.safetensors``, any case)
    picks it, as ``rnnlab jobs model -o`` and the loaders read it; a path without a suffix, or a file
    object (``path`` None), takes ``format``, else ``pt``. A path with another suffix, or whose suffix
    says another format than ``format``, is refused (``ValueError``)."""
    chosen = format.lower() if isinstance(format, str) and format else None
    if path is None:
        return chosen or "pt"
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix in MODEL_FORMATS:
        if chosen is not None and chosen != suffix:
            raise ValueError(f"{path} says {suffix} but the format asked for is {format}")
        return suffix
    if suffix:
        raise ValueError(f"{path}: a model file ends in .pt, .onnx or .safetensors")
    return chosen or "pt"


def _reason(error: BaseException) -> str:
    """What went wrong with the connection, in a few words (an httpx error's text is often empty)."""
    if isinstance(error, RnnlabError):
        if error.status_code == 0 and error.__cause__ is not None:
            return _reason(error.__cause__)
        return str(error)
    return str(error) or type(error).__name__


def _transient(error: BaseException) -> bool:
    """A failure that reconnecting can cure: the server unreachable or restarting, or a 429 / 502–504."""
    if isinstance(error, httpx.LocalProtocolError):
        return False
    if isinstance(error, httpx.TransportError):
        return True
    return isinstance(error, RnnlabError) and error.status_code in (0, 429, 502, 503, 504)


class _Reconnecting:
    """Retries while the server cannot be reached: 0.5 s, 1 s, 2 s … (at most 10 s, at least a 429's
    Retry-After) between tries, for at most ``window`` seconds of one outage and never past
    ``deadline``; then ``RnnlabError`` ``connection_error``. ``notify`` hears when the connection is
    lost and when it is back (by default: a warning on the ``rnnlab`` logger)."""

    FIRST_DELAY, MAX_DELAY = 0.5, 10.0

    def __init__(self, url: str, what: str, window: float, deadline: float | None, notify: Notify | None) -> None:
        self.url, self.what, self.window, self.deadline = url, what, window, deadline
        self.notify = notify or log.warning
        self.since: float | None = None
        self.delay = self.FIRST_DELAY

    def ok(self) -> None:
        """The server answered: an outage, if any, is over."""
        if self.since is not None:
            self.notify(f"reconnected to rnnlab at {self.url}")
        self.since, self.delay = None, self.FIRST_DELAY

    def wait(self, error: BaseException) -> None:
        """Sleep before the next try, or raise ``connection_error`` once the outage has lasted ``window``.
        Returns at once when the deadline has come (the caller raises its ``TimeoutError``)."""
        now = time.monotonic()
        first = self.since is None
        since = self.since = now if self.since is None else self.since
        if now - since >= self.window:
            raise RnnlabError(
                0,
                "connection_error",
                f"gave up {self.what} after {self.window:g} s without a connection to rnnlab at {self.url}: "
                f"{_reason(error)}",
            ) from error
        if first:
            self.notify(
                f"lost the connection to rnnlab at {self.url} ({_reason(error)}); "
                f"reconnecting for up to {self.window:g} s"
            )
        retry_after = error.retry_after if isinstance(error, RnnlabError) else None
        pause = min(max(self.delay, retry_after or 0.0), since + self.window - now)
        if self.deadline is not None:
            pause = min(pause, self.deadline - now)
        self.delay = min(self.delay * 2, self.MAX_DELAY)
        if pause > 0:
            time.sleep(pause)


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

    def _poll(self, deadline: float | None) -> Job:
        """``refresh`` for a loop with a deadline: a 429 raises (the loop's backoff waits for it, never
        past the deadline) and the request waits no longer than the time left."""
        self.info = dict(self._client.json("GET", f"/jobs/{self.id}", **_polling(deadline)))
        return self

    def follow(
        self,
        timeout: float | None = None,
        *,
        reconnect_seconds: float = RECONNECT_SECONDS,
        notify: Notify | None = None,
    ) -> Iterator[Event]:
        """The job's events (``status``, ``epoch``, ``end``) as they happen, until it has finished.

        A dropped connection is resumed (``Last-Event-ID``: the server sends only the epochs after the
        last one seen); epochs already seen are not repeated. While the server cannot be reached (an
        API restart) it reconnects with backoff for up to ``reconnect_seconds``, then raises
        ``RnnlabError`` ``connection_error`` (status 0); ``notify(message)`` hears when the connection
        is lost and when it is back (default: a warning on the ``rnnlab`` logger). With ``timeout``
        (seconds) a job still running after it raises ``TimeoutError``, reconnecting or not.
        """
        last_epoch, run, last_id = 0, None, None
        deadline = None if timeout is None else time.monotonic() + timeout
        retry = _Reconnecting(self._client.url, f"following job {self.id}", reconnect_seconds, deadline, notify)

        def expired() -> bool:
            return deadline is not None and time.monotonic() >= deadline

        while True:
            if expired():
                raise TimeoutError(f"job {self.id} is still {self.status} after {timeout}s")
            # With a deadline, a read waits at most until it, and the server's keep-alives (every 15 s)
            # come through, so a queued job or a slow epoch cannot hold the loop past it.
            read_timeout = None if deadline is None else max(0.1, deadline - time.monotonic())
            closed = False
            try:
                events = self._client.events(f"/jobs/{self.id}/events", last_id, read_timeout, deadline is not None)
                with contextlib.closing(events):  # leaving early closes the stream too
                    for event in events:
                        retry.ok()
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
                            try:
                                self._poll(deadline)
                            except RnnlabError as exc:  # the server went just now: the end event says it
                                if not _transient(exc):
                                    raise
                                self.info["status"] = event.data.get("status", self.status)
                            return
                        if expired():
                            break
                    else:
                        closed = True  # the server closed the stream without an end event
            except httpx.ReadTimeout:
                pass  # the deadline came while the stream was silent
            except (httpx.TransportError, RnnlabError) as exc:  # dropped, refused, restarting, 429
                if not _transient(exc):
                    raise
                retry.wait(exc)
            try:
                if self._poll(deadline).done:
                    return
            except RnnlabError as exc:
                if not _transient(exc):
                    raise
                retry.wait(exc)
                continue
            if closed:
                # Closed without an end event while the job runs on: reconnect after a pause, not at
                # once (a proxy answering an empty 200 would make this loop spin).
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                time.sleep(_Reconnecting.FIRST_DELAY if left is None else min(_Reconnecting.FIRST_DELAY, left))

    def wait(
        self,
        *,
        progress: bool = False,
        timeout: float | None = None,
        poll_seconds: float = 1.0,
        reconnect_seconds: float = RECONNECT_SECONDS,
        notify: Notify | None = None,
    ) -> Job:
        """Block until the job has finished (succeeded, failed, cancelled or pruned); returns it.

        ``progress=True`` shows a live bar per epoch (rich) on stderr, following the event stream.
        ``timeout`` (seconds, either way): ``TimeoutError`` if the job is still running after it.
        ``reconnect_seconds`` and ``notify``: while the server cannot be reached, as for ``follow``.
        """
        if progress:
            from rnnlab.progress import follow_with_progress

            follow_with_progress(self, timeout=timeout, reconnect_seconds=reconnect_seconds, notify=notify)
            return self
        deadline = None if timeout is None else time.monotonic() + timeout
        retry = _Reconnecting(self._client.url, f"waiting for job {self.id}", reconnect_seconds, deadline, notify)
        while not _refreshed(lambda: self._poll(deadline).done, retry):
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.id} is still {self.status} after {timeout}s")
            time.sleep(poll_seconds)
        return self

    def metrics(self) -> dict[str, Any]:
        """``{"series": [{"name", "split", "epochs", "values"}, …]}``: per-epoch history."""
        return dict(self._client.json("GET", f"/jobs/{self.id}/metrics"))

    def evaluation(self) -> dict[str, Any]:
        """Metrics per split with bootstrap intervals, baselines, confusion matrix, attribution."""
        return dict(self._client.json("GET", f"/jobs/{self.id}/evaluation"))

    def download_model(self, path: str | Path | IO[bytes], format: ModelFormat | None = None) -> None:
        """Save the trained model: ``pt`` (torch), ``onnx`` (scalers folded in) or ``safetensors``.

        A path's suffix picks the format (``m.onnx`` → onnx), as the CLI and the loaders read it; a
        path without a suffix, or a binary file object, takes ``format`` (default ``pt``). A suffix
        that is no model format, or says another than ``format``, is refused (``ValueError``).
        """
        chosen = model_format(path if isinstance(path, str | Path) else None, format)
        self._client.stream_to(f"/jobs/{self.id}/model", path, params={"format": chosen})

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


def _polling(deadline: float | None) -> dict[str, Any]:
    """Request options of a poll inside a loop that reconnects (``_Reconnecting``) until ``deadline``."""
    options: dict[str, Any] = {"retry_rate_limit": False}
    if deadline is not None:
        options["timeout"] = max(0.1, min(60.0, deadline - time.monotonic()))
    return options


def _refreshed(done: Callable[[], bool], retry: _Reconnecting) -> bool:
    """``done()`` (a refresh), retried while the server cannot be reached; False when it could not be
    read before the deadline (the caller checks it)."""
    while True:
        try:
            finished = done()
        except RnnlabError as exc:
            if not _transient(exc):
                raise
            retry.wait(exc)
            if retry.deadline is not None and time.monotonic() >= retry.deadline:
                return False
            continue
        retry.ok()
        return finished


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

    def _poll(self, deadline: float | None) -> Sweep:
        """``refresh`` within a deadline (see ``Job._poll``)."""
        self.info = dict(self._client.json("GET", f"/sweeps/{self.id}", **_polling(deadline)))
        return self

    def wait(
        self,
        *,
        timeout: float | None = None,
        poll_seconds: float = 2.0,
        reconnect_seconds: float = RECONNECT_SECONDS,
        notify: Notify | None = None,
    ) -> Sweep:
        """Block until every job of the sweep has finished (for a search: and no trial is left to ask).

        ``timeout``: ``TimeoutError`` after it. While the server cannot be reached it keeps trying
        for up to ``reconnect_seconds`` (``notify`` hears of it, as for ``Job.follow``), then raises
        ``RnnlabError`` ``connection_error``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        retry = _Reconnecting(self._client.url, f"waiting for sweep {self.id}", reconnect_seconds, deadline, notify)
        while not _refreshed(lambda: self._poll(deadline).done, retry):
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"sweep {self.id} is not finished after {timeout}s: {self.info.get('progress')}")
            time.sleep(poll_seconds)
        return self

    def report(self) -> dict[str, Any]:
        """Per setting: each metric's mean, std and 95% CI over seeds; the best setting; parameter effects."""
        return dict(self.refresh().info["report"])

    def jobs(self) -> list[Job]:
        """The sweep's jobs in full, in the sweep's order: ``GET /jobs?sweep_id=…`` page by page (500 a
        page), not one request per job."""
        order = [str(item["id"]) for item in self.refresh().info.get("jobs") or []]
        found = {job.id: job for job in self._client.jobs.list(sweep_id=self.id, page_size=500)}
        rank = {job_id: i for i, job_id in enumerate(order)}
        return sorted(found.values(), key=lambda job: rank.get(job.id, len(rank)))

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
