"""rnnlab's Python client: ``from rnnlab import Client``.

The client speaks HTTP to a server (httpx); it never imports the server. ``load_model`` (a model
file from ``GET /jobs/{id}/model`` as an offline predictor) loads torch or onnxruntime on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rnnlab.client import Client, Datasets, Event, Job, Jobs, Sweep, Sweeps
from rnnlab.errors import RnnlabError

if TYPE_CHECKING:
    from worker.engine.export import load_model_file as load_model

__all__ = ["Client", "Datasets", "Event", "Job", "Jobs", "RnnlabError", "Sweep", "Sweeps", "load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from worker.engine.export import load_model_file

        return load_model_file
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
