"""Train / val / test splits, checked to be disjoint."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import DataError

PARTS = ("train", "val", "test")


@dataclass
class Split:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    notes: list[str] = field(default_factory=list)

    def parts(self) -> dict[str, np.ndarray]:
        return {"train": self.train, "val": self.val, "test": self.test}


def _part_sizes(n: int, val_fraction: float, test_fraction: float, where: str) -> tuple[int, int, int]:
    """Sizes with at least one test example and, when asked for, one validation example."""
    n_test = max(1, round(n * test_fraction))
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    n_train = n - n_test - n_val
    if n_train < 1:
        raise DataError(
            f"{where} has only {n} examples: too few to split into train / val / test",
            field="data.split",
        )
    return n_train, n_val, n_test


def assert_disjoint(split: Split) -> None:
    # Explicit check rather than `assert`, which `python -O` would strip.
    seen = np.concatenate([split.train, split.val, split.test])
    if len(np.unique(seen)) != len(seen):
        raise RuntimeError("internal error: train, val and test share examples")


def split_indices(
    method: str,
    n: int,
    *,
    val_fraction: float,
    test_fraction: float,
    rng: np.random.Generator,
    group: np.ndarray | None = None,
    time: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    split_labels: np.ndarray | None = None,
    purge: int = 0,
    group_names: list[str] | None = None,
) -> Split:
    """Indices of the train, val and test examples.

    ``temporal`` splits each group (series) by ``time``: its earliest examples train, its latest test,
    with ``purge`` examples dropped at each boundary so overlapping forecast targets never cross parts.
    ``column`` reads ``split_labels`` (``""`` marks excluded examples) and carves validation out of
    training when the column has no ``val`` rows, so early stopping never looks at test data.
    """
    if method == "random":
        sizes = _part_sizes(n, val_fraction, test_fraction, "the dataset")
        perm = rng.permutation(n)
        split = Split(perm[: sizes[0]], perm[sizes[0] : sizes[0] + sizes[1]], perm[sizes[0] + sizes[1] :])
    elif method == "temporal":
        split = _temporal(n, val_fraction, test_fraction, group, time, purge, group_names)
    elif method == "stratified":
        if labels is None:
            raise DataError("split.method 'stratified' needs class labels", field="data.split.method")
        split = _stratified(labels, val_fraction, test_fraction, rng)
    elif method == "column":
        if split_labels is None:
            raise DataError("split.method 'column' needs a split column", field="data.split.column")
        split = _column(split_labels, val_fraction, rng, time, labels)
    else:
        raise ValueError(f"unknown split method {method!r}")
    split.train, split.val, split.test = (np.sort(p).astype(np.int64) for p in (split.train, split.val, split.test))
    assert_disjoint(split)
    return split


def _temporal(
    n: int,
    val_fraction: float,
    test_fraction: float,
    group: np.ndarray | None,
    time: np.ndarray | None,
    purge: int,
    group_names: list[str] | None,
) -> Split:
    group = np.zeros(n, dtype=np.int64) if group is None else group
    time = np.arange(n) if time is None else time
    parts: dict[str, list[np.ndarray]] = {p: [] for p in PARTS}
    for g in np.unique(group):
        members = np.flatnonzero(group == g)
        members = members[np.argsort(time[members], kind="stable")]
        where = "the dataset" if group_names is None or len(group_names) == 1 else f"series '{group_names[g]}'"
        boundaries = 2 if val_fraction > 0 else 1
        gaps = purge * boundaries
        try:
            n_train, n_val, n_test = _part_sizes(len(members) - gaps, val_fraction, test_fraction, where)
        except DataError:
            if not purge:
                raise
            raise _purged_too_few(where, len(members), purge, boundaries) from None
        parts["train"].append(members[:n_train])
        start = n_train + purge
        parts["val"].append(members[start : start + n_val])
        start += n_val + (purge if n_val else 0)
        parts["test"].append(members[start : start + n_test])
    split = Split(np.concatenate(parts["train"]), np.concatenate(parts["val"]), np.concatenate(parts["test"]))
    if purge:
        split.notes.append(
            f"temporal split dropped {purge} window(s) at each boundary so that forecast targets of "
            "different parts never overlap"
        )
    return split


def _purged_too_few(where: str, windows: int, purge: int, boundaries: int) -> DataError:
    left = max(0, windows - purge * boundaries)
    at = "each of its 2 boundaries (train/val, val/test)" if boundaries == 2 else "the train/test boundary"
    return DataError(
        f"{where} has {windows} forecast windows; the temporal split drops {purge} window(s) at {at} so "
        f"that targets data.horizon steps long never overlap two parts, which leaves {left}: too few for "
        "train / val / test. Lower data.horizon or data.lookback, or upload a longer series",
        field="data.horizon",
    )


def _stratified(labels: np.ndarray, val_fraction: float, test_fraction: float, rng: np.random.Generator) -> Split:
    parts: dict[str, list[np.ndarray]] = {p: [] for p in PARTS}
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = round(len(members) * test_fraction)
        n_val = round(len(members) * val_fraction)
        n_train = len(members) - n_test - n_val
        parts["train"].append(members[:n_train])
        parts["val"].append(members[n_train : n_train + n_val])
        parts["test"].append(members[n_train + n_val :])
    split = Split(np.concatenate(parts["train"]), np.concatenate(parts["val"]), np.concatenate(parts["test"]))
    if val_fraction > 0 and len(split.val) == 0 and len(split.train) > 1:
        # Classes too small for a validation share each: one example of the largest class, so
        # early stopping still has something to watch.
        counts = np.bincount(labels[split.train])
        donor = np.flatnonzero(labels[split.train] == counts.argmax())[0]
        split.val = split.train[donor : donor + 1]
        split.train = np.delete(split.train, donor)
    if len(split.test) == 0 or len(split.train) == 0:
        raise DataError(
            f"only {len(labels)} examples: too few for a stratified split with test_fraction {test_fraction}",
            field="data.split",
        )
    return split


def _carve_stratified(
    train: np.ndarray, labels: np.ndarray, n_val: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n_val`` of ``train`` for validation, in proportion to the classes; each class keeps a training example."""
    classes, counts = np.unique(labels[train], return_counts=True)
    share = n_val * counts / counts.sum()
    take = np.minimum(np.floor(share).astype(np.int64), counts - 1)
    # Largest remainders first, then round-robin, until n_val (never a class's last example).
    for i in np.argsort(-(share - np.floor(share)), kind="stable"):
        if take.sum() >= n_val:
            break
        if take[i] < counts[i] - 1:
            take[i] += 1
    val_parts, train_parts = [], []
    for c, k in zip(classes, take, strict=True):
        members = rng.permutation(train[labels[train] == c])
        val_parts.append(members[:k])
        train_parts.append(members[k:])
    return np.concatenate(val_parts), np.concatenate(train_parts)


def _column(
    split_labels: np.ndarray,
    val_fraction: float,
    rng: np.random.Generator,
    time: np.ndarray | None,
    labels: np.ndarray | None = None,
) -> Split:
    train, val, test = (np.flatnonzero(split_labels == p) for p in PARTS)
    if len(train) == 0 or len(test) == 0:
        raise DataError(
            f"the split column needs train and test rows (found {len(train)} train, {len(test)} test)",
            field="data.split.column",
        )
    notes = []
    if len(val) == 0 and val_fraction > 0:
        n_val = max(1, round(len(train) * val_fraction))
        if n_val >= len(train):
            raise DataError("too few train rows to carve out a validation part", field="data.split.column")
        if labels is not None and time is None:
            # Classification: in proportion to the classes, so a small validation part sees them all.
            val, train = _carve_stratified(train, labels, n_val, rng)
        else:
            # Time-ordered data gives validation its latest training examples; otherwise a random subset.
            order = np.argsort(time[train], kind="stable") if time is not None else rng.permutation(len(train))
            val, train = train[order[-n_val:]], train[order[:-n_val]]
        notes.append(
            f"the split column has no val rows: {n_val} training examples were set aside for "
            "validation (early stopping never sees test data)"
        )
    excluded = int(np.sum(split_labels == ""))
    if excluded:
        notes.append(f"{excluded} window(s) whose targets straddle two parts of the split column were dropped")
    return Split(train, val, test, notes)


def purge_windows(horizon: int, stride: int) -> int:
    """Windows to drop at a temporal boundary so targets ``horizon`` steps long never overlap."""
    return math.ceil((horizon - 1) / stride)
