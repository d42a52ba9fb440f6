"""Portable model files: ONNX (scalers folded in) and safetensors (no pickle), and loading them back.

Every format carries the same facts as the ``.pt`` artifact (``engine.build_artifact``): the
normalized spec, the input steps and feature names, the classes and the scalers. Export runs the
predictor's own ``ScaledModel``, so the ONNX graph computes exactly what ``/predict`` computes.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .errors import DataError
from .predictor import ARTIFACT_FORMAT, Predictor, check_inputs, format_predictions
from .spec import JobSpec
from .text import TextCodec, check_text_inputs

ModelFormat = Literal["pt", "onnx", "safetensors"]
MODEL_FORMATS: tuple[str, ...] = ("pt", "onnx", "safetensors")
ONNX_OPSET = 17
ONNX_INPUT = "inputs"
ONNX_OUTPUT = "outputs"
# Artifact fields other than the weights, stored as JSON strings in the file's metadata.
_METADATA_FIELDS = ("spec", "scalers", "classes", "input")


def artifact_metadata(artifact: dict[str, Any]) -> dict[str, str]:
    """The artifact without its weights, as string → JSON string (safetensors and ONNX metadata).

    Token-input models add ``text``: the tokenizer with its vocabulary (``text.TextCodec.to_dict``).
    """
    metadata = {"format": ARTIFACT_FORMAT, **{name: json.dumps(artifact[name]) for name in _METADATA_FIELDS}}
    if artifact.get("text") is not None:
        metadata["text"] = json.dumps(artifact["text"])
    return metadata


def artifact_from_metadata(metadata: dict[str, str], state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    if metadata.get("format") != ARTIFACT_FORMAT:
        raise DataError(f"not an rnnlab model (format {metadata.get('format')!r})")
    return {
        "format": ARTIFACT_FORMAT,
        "state_dict": state_dict,
        **{name: json.loads(metadata[name]) for name in _METADATA_FIELDS},
        "text": json.loads(metadata["text"]) if "text" in metadata else None,
    }


def to_safetensors(artifact: dict[str, Any]) -> bytes:
    """The weights as safetensors, the spec, scalers, classes and input as JSON metadata."""
    from safetensors.torch import save

    state = {name: tensor.contiguous() for name, tensor in artifact["state_dict"].items()}
    return bytes(save(state, metadata=artifact_metadata(artifact)))


def from_safetensors(data: bytes) -> dict[str, Any]:
    """The ``.pt``-shaped artifact back from ``to_safetensors`` output."""
    from safetensors.torch import load

    state = load(data)
    return artifact_from_metadata(safetensors_metadata(data), state)


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file: its header is an 8-byte little-endian length, then JSON."""
    if len(data) < 8:
        raise DataError("not a safetensors file (too short)")
    length = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8 : 8 + length])
    except ValueError as exc:
        raise DataError("not a safetensors file (unreadable header)") from exc
    return dict(header.get("__metadata__") or {})


def to_onnx(artifact: dict[str, Any]) -> bytes:
    """An ONNX model taking raw windows ``inputs [batch, T, F]`` (float32), or for text models token
    ids ``inputs [batch, T]`` (int64, right-padded with 0; the tokenizer is in ``rnnlab.text``).

    ``outputs`` are predictions in original units (float64 ``[batch, H]``) or class probabilities
    (float32 ``[batch, C]``). The batch axis is dynamic; the opset and the artifact's facts are in
    the model's metadata (``rnnlab.*`` keys).
    """
    import onnx

    predictor = Predictor(artifact)
    module = predictor.scaled_model.eval()
    if predictor.codec is not None:  # token ids in: int64 [batch, max_length], padded with 0
        example = torch.zeros(2, predictor.steps, dtype=torch.int64)
        example[:, 0] = 1
    else:
        example = torch.zeros(2, predictor.steps, len(predictor.features), dtype=torch.float32)
    buffer = io.BytesIO()
    # The TorchScript exporter maps nn.LSTM/GRU/RNN onto ONNX's own LSTM/GRU/RNN operators and
    # exports in about 0.6 s; the torch.export-based one (dynamo=True) needs onnxscript and took
    # about 6 s for the same model here. Its deprecation and tracing warnings are expected: the
    # batch axis is the only dynamic one, and the export is checked against /predict in the tests.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*batch_size other than 1.*", category=UserWarning)
        torch.onnx.export(
            module,
            (example,),
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to file objects too
            input_names=[ONNX_INPUT],
            output_names=[ONNX_OUTPUT],
            dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    model = onnx.load_from_string(buffer.getvalue())
    metadata = {**artifact_metadata(artifact), "opset": str(ONNX_OPSET)}
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"rnnlab.{key}", value
    model.producer_name = "rnnlab"
    model.doc_string = (
        "rnnlab model: inputs [batch, steps, features] float32 raw values; outputs in original units "
        "(forecast/regression) or class probabilities (classification). See metadata rnnlab.*."
    )
    return bytes(model.SerializeToString())


def export_model(artifact: dict[str, Any], model_format: str) -> bytes:
    """The artifact in ``pt``, ``onnx`` or ``safetensors`` form."""
    if model_format == "pt":
        buffer = io.BytesIO()
        torch.save(artifact, buffer)
        return buffer.getvalue()
    if model_format == "onnx":
        return to_onnx(artifact)
    if model_format == "safetensors":
        return to_safetensors(artifact)
    raise DataError(f"unknown model format {model_format!r}; formats are: {', '.join(MODEL_FORMATS)}")


class OnnxPredictor:
    """``Predictor``'s interface on an exported ONNX model, run with onnxruntime (no torch graph)."""

    def __init__(self, data: bytes, threads: int | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        props = self.session.get_modelmeta().custom_metadata_map
        metadata = {k.removeprefix("rnnlab."): v for k, v in props.items() if k.startswith("rnnlab.")}
        facts = artifact_from_metadata(metadata, {})
        self.spec = JobSpec.model_validate(facts["spec"])
        self.steps: int = facts["input"]["steps"]
        self.features: list[str] = list(facts["input"]["features"])
        self.classes: list[Any] | None = facts["classes"]
        self.codec = TextCodec.from_dict(facts["text"]) if facts["text"] is not None else None

    def model_inputs(self, inputs: Any) -> tuple[np.ndarray, list[list[str]] | None]:
        """Float32 windows, or (texts) int64 token ids encoded with the model's own tokenizer."""
        if self.codec is None:
            return check_inputs(inputs, self.steps, self.features), None
        return self.codec.encode(check_text_inputs(inputs, self.codec.pretokenized))

    def outputs(self, inputs: Any) -> np.ndarray:
        x, _ = self.model_inputs(inputs)
        return np.asarray(self.session.run([ONNX_OUTPUT], {ONNX_INPUT: x})[0])

    def predict(self, inputs: Any) -> Any:
        x, tokens = self.model_inputs(inputs)
        out = np.asarray(self.session.run([ONNX_OUTPUT], {ONNX_INPUT: x})[0])
        return format_predictions(self.spec.task, self.classes, out, tokens)


def model_format_of(path: Path, head: bytes) -> str:
    """``pt``, ``onnx`` or ``safetensors`` from the file's suffix, else from its first bytes."""
    suffix = path.suffix.lower().lstrip(".")
    if suffix in MODEL_FORMATS:
        return suffix
    if head.startswith(b"PK"):
        return "pt"  # torch.save writes a zip archive
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"  # an 8-byte header length, then the JSON header
    return "onnx"


def load_model_file(path: str | Path) -> Predictor | OnnxPredictor:
    """A predictor for a model file downloaded from ``GET /jobs/{id}/model`` (any format), offline.

    ``.pt`` is read with ``torch.load(weights_only=True)`` and safetensors without pickle at all.
    """
    path = Path(path)
    data = path.read_bytes()
    model_format = model_format_of(path, data[:16])
    try:
        if model_format == "onnx":
            return OnnxPredictor(data)
        if model_format == "safetensors":
            return Predictor(from_safetensors(data))
        artifact = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if not isinstance(artifact, dict):
            raise DataError(f"holds a {type(artifact).__name__}, not an rnnlab model")
        return Predictor(artifact)
    except DataError as exc:
        raise DataError(f"{path.name} is not a usable rnnlab {model_format} model: {exc}") from None
    except Exception as exc:  # whatever the file's parser says about bytes that are not such a model
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"{path.name} is not a readable rnnlab {model_format} model (download it again with "
            f"`rnnlab jobs model`): {reason}"
        ) from None
