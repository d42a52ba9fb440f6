"""Model export: how long each format takes, and ONNX Runtime against the torch predictor behind /predict.

Prints, for one LSTM (2 layers, hidden 64, 24 steps, 4 features, forecast horizon 3):
- export seconds per format (median of --repeats), and the torch.export-based ONNX exporter
  (dynamo=True) for comparison when onnxscript is installed;
- predictions per second of the ONNX model in onnxruntime and of ``Predictor.predict`` on the same
  windows (alternated, median of --repeats), their ratio, and the largest difference between them.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
import warnings
from typing import Any

import numpy as np
import torch

from worker.engine.export import ONNX_INPUT, ONNX_OPSET, ONNX_OUTPUT, OnnxPredictor, export_model
from worker.engine.models import RecurrentModel
from worker.engine.predictor import ARTIFACT_FORMAT, Predictor
from worker.engine.spec import JobSpec


def artifact(hidden: int, layers: int, steps: int, features: int, horizon: int) -> dict[str, Any]:
    spec = JobSpec.model_validate(
        {
            "dataset_id": "bench",
            "task": "forecast",
            "data": {"layout": "series", "target": "f0", "lookback": steps, "horizon": horizon},
            "model": {"cell": "lstm", "hidden_size": hidden, "num_layers": layers},
        }
    )
    torch.manual_seed(0)
    model = RecurrentModel(spec.model, features, horizon)
    rng = np.random.default_rng(0)
    return {
        "format": ARTIFACT_FORMAT,
        "spec": spec.normalized(),
        "state_dict": model.state_dict(),
        "scalers": {
            "x": {"center": rng.normal(0, 10, features).tolist(), "scale": rng.uniform(1, 5, features).tolist()},
            "y": {"center": [100.0] * horizon, "scale": [20.0] * horizon},
        },
        "classes": None,
        "input": {"steps": steps, "features": [f"f{i}" for i in range(features)]},
    }


def timed(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def dynamo_export_seconds(art: dict[str, Any], repeats: int) -> float | None:
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        return None
    predictor = Predictor(art)
    example = torch.zeros(2, predictor.steps, len(predictor.features))

    def export() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                predictor.scaled_model,
                (example,),
                io.BytesIO(),  # type: ignore[arg-type]
                input_names=[ONNX_INPUT],
                output_names=[ONNX_OUTPUT],
                dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}},
                opset_version=ONNX_OPSET,
                dynamo=True,
                verbose=False,
            )

    return timed(export, repeats)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    art = artifact(hidden=64, layers=2, steps=24, features=4, horizon=3)

    for model_format in ("pt", "safetensors", "onnx"):
        seconds = timed(lambda f=model_format: export_model(art, f), args.repeats)  # type: ignore[misc]
        print(f"export {model_format}: {seconds:.3f} s ({len(export_model(art, model_format)) / 1e3:.0f} kB)")
    dynamo = dynamo_export_seconds(art, max(1, args.repeats // 2))
    if dynamo is None:
        print("export onnx with dynamo=True: skipped (onnxscript is not installed)")
    else:
        print(f"export onnx with dynamo=True: {dynamo:.3f} s")

    torch_predictor = Predictor(art)
    onnx_predictor = OnnxPredictor(export_model(art, "onnx"), threads=1)
    x = np.random.default_rng(1).normal(0, 10, (args.windows, 24, 4)).astype(np.float32)
    torch_times, onnx_times = [], []
    for _ in range(args.repeats):  # alternated, so load on the machine hits both alike
        torch_times.append(timed(lambda: torch_predictor.predict(x), 1))
        onnx_times.append(timed(lambda: onnx_predictor.predict(x), 1))
    torch_rate = args.windows / statistics.median(torch_times)
    onnx_rate = args.windows / statistics.median(onnx_times)
    difference = np.max(np.abs(np.asarray(onnx_predictor.predict(x)) - np.asarray(torch_predictor.predict(x))))
    print(f"predict: torch {torch_rate:,.0f} windows/s, onnxruntime {onnx_rate:,.0f} windows/s (1 thread)")
    print(
        f"onnxruntime/torch predict throughput ratio: {onnx_rate / torch_rate:.2f}; max |difference| {difference:.2e}"
    )


if __name__ == "__main__":
    main()
