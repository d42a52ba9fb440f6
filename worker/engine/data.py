"""From a dataset and a spec to split, scaled arrays — and the cheap pre-flight check the API runs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .defaults import TrainingShape, resolve_defaults
from .layouts import Data, Examples, build_examples
from .scaling import Scaler, fit_scaler
from .spec import CLASS_TASKS, JobSpec
from .splits import Split, purge_windows, split_indices


@dataclass
class PreparedData:
    examples: Examples
    split: Split
    x_scaler: Scaler
    y_scaler: Scaler | None  # None for classification
    notes: list[str] = field(default_factory=list)
    # Each part's scaled arrays, computed on first use: training, evaluation and the baselines all
    # read them, and the scaler's transform is the largest pass over the data outside training.
    _scaled: dict[tuple[str, str], np.ndarray] = field(default_factory=dict, repr=False)

    def x_scaled(self, part: str) -> np.ndarray:
        """The part's inputs in scaled units, float32 (computed once; do not modify in place)."""
        cached = self._scaled.get(("x", part))
        if cached is None:
            assert self.examples.x is not None
            idx = self.split.parts()[part]
            cached = self._scaled[("x", part)] = self.x_scaler.transform(self.examples.x[idx]).astype(np.float32)
        return cached

    def y_original(self, part: str) -> np.ndarray:
        assert self.examples.y is not None
        return self.examples.y[self.split.parts()[part]]

    def y_scaled(self, part: str) -> np.ndarray:
        """The part's targets in scaled units (class indices for classification); computed once."""
        cached = self._scaled.get(("y", part))
        if cached is None:
            y = self.y_original(part)
            cached = y if self.y_scaler is None else self.y_scaler.transform(y).astype(np.float32)
            self._scaled[("y", part)] = cached
        return cached


def _split(spec: JobSpec, examples: Examples, rng: np.random.Generator) -> Split:
    d = spec.data
    series = d.layout == "series"
    assert d.split.method is not None  # filled in by the spec validator
    return split_indices(
        d.split.method,
        examples.n,
        val_fraction=d.split.val_fraction,
        test_fraction=d.split.test_fraction,
        rng=rng,
        group=examples.group,
        time=examples.time if series else None,
        labels=examples.y if spec.task == "classification" else None,
        split_labels=examples.split_labels,
        purge=purge_windows(d.horizon, d.stride) if series else 0,
        group_names=examples.group_names,
    )


def prepare_data(spec: JobSpec, data: Data, rng: np.random.Generator) -> PreparedData:
    """Build examples, split them and fit the scalers on the training part only."""
    examples = build_examples(spec, data)
    split = _split(spec, examples, rng)
    if examples.texts is not None:
        tokenize_examples(spec, examples, split)
    assert examples.x is not None and examples.y is not None
    notes = list(split.notes)
    if spec.data.layout == "series" and spec.data.split.method == "random":
        notes.append(
            "random split of overlapping windows: test targets can appear inside training inputs; "
            "prefer split.method 'temporal' for honest forecast scores"
        )
    scaling = spec.data.scaling
    if examples.texts is not None:
        scaling = "none"  # token ids
    if scaling == "auto":
        shape = TrainingShape(len(split.train), len(split.val), len(examples.feature_names), examples.steps)
        scaling = resolve_defaults(spec, shape).data.scaling
    x_scaler = fit_scaler(examples.x[split.train], scaling)
    y_scaler = None
    if spec.task not in CLASS_TASKS:
        # Targets have no steps to normalise over: per-example inputs go with standardised targets.
        y_scaler = fit_scaler(examples.y[split.train], "standard" if scaling == "per_example" else scaling)
    return PreparedData(examples, split, x_scaler, y_scaler, notes)


def tokenize_examples(spec: JobSpec, examples: Examples, split: Split) -> None:
    """Token ids into ``examples.x`` (float32 ``[N, T, 1]``), with a tokenizer trained on the training part."""
    from .text import fit_codec, pad_step_targets

    assert examples.texts is not None
    codec, _ = fit_codec(spec, examples.texts, split.train)
    ids, _ = codec.encode(examples.texts)
    examples.x = ids.astype(np.float32)[:, :, None]  # exact: ids stay far below 2**24
    examples.steps = codec.max_length
    examples.codec = codec
    if examples.step_targets is not None:
        examples.y = pad_step_targets(examples.step_targets, codec.max_length)


def check_spec_fits(spec: JobSpec, data: Data) -> TrainingShape:
    """Raise ``DataError`` for anything the data cannot satisfy, without building windows or training.

    Returns the sizes the data-aware defaults are derived from.
    """
    examples = build_examples(spec, data, materialize=False)
    split = _split(spec, examples, np.random.default_rng(spec.training.seed))
    if examples.texts is not None:  # the tokenizer decides the steps (and refuses a too-long max_length)
        from .text import fit_codec

        codec, _ = fit_codec(spec, examples.texts, split.train)
        return TrainingShape(len(split.train), len(split.val), 1, codec.max_length, codec.vocab_size)
    return TrainingShape(len(split.train), len(split.val), len(examples.feature_names), examples.steps)


def training_shape(spec: JobSpec, data: Data) -> TrainingShape:
    return check_spec_fits(spec, data)
