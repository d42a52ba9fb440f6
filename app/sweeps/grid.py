"""Turning a sweep's grid into settings: path checks, grid or random enumeration, spec building."""

from __future__ import annotations

import copy
import json
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from app.errors import AppError, InvalidInput
from app.jobs.query import annotation_members, spec_paths
from worker.engine.spec import JobSpec

# Fixed by the sweep itself: one dataset and one task per sweep, and seeds come from ``seeds``.
RESERVED_PATHS = {
    "training.seed": "training.seed is set from the sweep's 'seeds'; list the seeds there",
    "dataset_id": "a sweep runs on the base spec's dataset; dataset_id cannot be swept",
    "task": "a sweep compares settings of one task; task cannot be swept",
    "name": "name labels a job and changes nothing it trains; name the sweep instead",
}


def _all_spec_paths() -> frozenset[str]:
    """Every JobSpec field path, sections included (``model``, ``model.hidden_size``, ``text.max_length``)."""
    leaves, _ = spec_paths()
    return frozenset(leaves) | {".".join(p.split(".")[:i]) for p in leaves for i in range(1, p.count(".") + 1)}


SPEC_PATHS = _all_spec_paths()


def takes_only_whole_numbers(path: str) -> bool:
    """The spec field at ``path`` takes integers and no other numbers (``model.hidden_size``; not
    ``model.ar_ridge``, a float or "loo")."""
    model: Any = JobSpec
    members: list[Any] = []
    for name in path.split("."):
        if model is None or name not in model.model_fields:
            return False
        members = annotation_members(model.model_fields[name].annotation)
        model = next((m for m in members if isinstance(m, type) and issubclass(m, BaseModel)), None)
    return int in members and float not in members


def grid_error(message: str, field: str, code: str = "invalid_grid", **extra: Any) -> AppError:
    return InvalidInput(code, message, [{"field": field, "message": message, "type": code, **extra}])


def check_grid(grid: Mapping[str, Sequence[Any]]) -> None:
    """422 for an unknown or reserved path, an empty value list, or a repeated value."""
    for path, values in grid.items():
        if path in RESERVED_PATHS:
            raise grid_error(RESERVED_PATHS[path], f"grid.{path}", "reserved_grid_path")
        if path not in SPEC_PATHS:
            leaves = sorted(p for p in SPEC_PATHS if p.startswith(path.split(".")[0] + "."))
            hint = f"; paths under '{path.split('.')[0]}' are: {', '.join(leaves)}" if leaves else ""
            raise grid_error(f"grid path '{path}' is not a JobSpec field{hint}", f"grid.{path}", "unknown_grid_path")
        if any(p.startswith(path + ".") for p in SPEC_PATHS):
            # A whole section would replace the base's, dropping every field it does not repeat (and
            # would overlap any path inside it).
            named = sorted({f"{path}.{key}" for value in values if isinstance(value, dict) for key in value})
            example = ", ".join(named[:6]) or next(p for p in sorted(SPEC_PATHS) if p.startswith(path + "."))
            raise grid_error(
                f"grid path '{path}' names a whole section, which would replace the base spec's; sweep its "
                f"fields one path each (e.g. {example})",
                f"grid.{path}",
            )
        if len(values) == 0:
            raise grid_error(f"grid path '{path}' has no values; give at least one", f"grid.{path}")
        seen: set[str] = set()
        for index, value in enumerate(values):
            key = json.dumps(value, sort_keys=True)
            if key in seen:
                raise grid_error(
                    f"grid.{path}[{index}] repeats the value {key if len(key) <= 80 else key[:80] + '…'}; "
                    "each value is one setting",
                    f"grid.{path}[{index}]",
                )
            seen.add(key)


_SAMPLE_MAX_POPULATION = 2**62


def grid_size(grid: Mapping[str, Sequence[Any]]) -> int:
    return math.prod(len(values) for values in grid.values())


def setting_at(grid: Mapping[str, Sequence[Any]], index: int) -> dict[str, int]:
    """The value index of each path for the ``index``-th setting (mixed radix, last path fastest)."""
    indices: dict[str, int] = {}
    for path in reversed(list(grid)):
        index, indices[path] = divmod(index, len(grid[path]))
    return {path: indices[path] for path in grid}


def enumerate_settings(
    grid: Mapping[str, Sequence[Any]], search: str, count: int, random_seed: int
) -> list[dict[str, int]]:
    """Settings as ``{path: value index}``: all of them (grid) or ``count`` distinct ones drawn (random).

    Random draws indices of the product without building it, so a huge grid costs nothing; the
    draw is a function of ``random_seed`` alone, and returned in grid order for readable reports.
    """
    size = grid_size(grid)
    chosen: Sequence[int]
    if search == "grid":
        chosen = range(size)
    elif size <= _SAMPLE_MAX_POPULATION:
        chosen = sorted(random.Random(random_seed).sample(range(size), min(count, size)))
    else:  # beyond what random.sample indexes; count is tiny next to size, so repeats are rare
        rng, picked = random.Random(random_seed), set[int]()
        while len(picked) < count:
            picked.add(rng.randrange(size))
        chosen = sorted(picked)
    return [setting_at(grid, i) for i in chosen]


def deep_set(spec: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted path in a nested dict, creating the sections the base left out."""
    *parents, leaf = path.split(".")
    node = spec
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = copy.deepcopy(value)


def build_spec(base: Mapping[str, Any], setting: Mapping[str, Any], seed: int | None) -> dict[str, Any]:
    """The raw spec of one (setting, seed): the base with each swept path and training.seed set."""
    spec = copy.deepcopy(dict(base))
    for path, value in setting.items():
        deep_set(spec, path, value)
    if seed is not None:
        deep_set(spec, "training.seed", seed)
    return spec


def cost_field(detail: Mapping[str, Any], setting: Mapping[str, Any]) -> str:
    """A too large model is blamed on the first swept path that drives its cost (``model_too_large``
    details list those fields, most direct first), else on the field the detail names."""
    driving = [path for path in detail.get("fields") or [] if path in setting]
    return driving[0] if driving else str(detail.get("field") or "")


def blame_field(field: str, setting_indices: Mapping[str, int]) -> str:
    """Rename a spec field to the grid value that produced it (``grid.model.hidden_size[2]``), if swept."""
    for path, index in setting_indices.items():
        if field == path or field.startswith(path + "."):
            return f"grid.{path}[{index}]{field[len(path) :]}"
    if not field:  # a check on the whole spec: the setting as a whole is to blame
        return "grid" if setting_indices else "base"
    for path, index in setting_indices.items():
        # A check on a section (``data.split``) that holds a swept value (``data.split.val_fraction``).
        if path.startswith(field + "."):
            return f"grid.{path}[{index}]"
    return f"base.{field}"
