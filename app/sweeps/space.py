"""The typed parameter space of a "tpe" search: checks, Optuna distributions, and the points that
are tried against the dataset before anything runs."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from pydantic import BaseModel, ConfigDict, Field

from app.errors import AppError
from app.sweeps import grid as grids
from app.sweeps.grid import RESERVED_PATHS, SPEC_PATHS, grid_error

# A stepped range with more values than this is refused (Optuna divides with decimals: a step of
# 1e-300 raised decimal.InvalidOperation, a 500).
MAX_STEPS = 1_000_000

# What Optuna can store as a categorical choice.
Scalar = bool | int | float | str | None


class ParameterRange(BaseModel):
    """A numeric range (``low``, ``high``, optional ``log`` and ``step``) or a list of ``choices``."""

    model_config = ConfigDict(extra="forbid")

    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = Field(None, description="Grid of the range (int ranges step 1 by default).")
    choices: list[Scalar] | None = None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_space(space: Mapping[str, ParameterRange]) -> None:
    """422 naming ``space.<path>…`` for an unknown or reserved path or an ill-formed range."""
    if not space:
        raise grid_error("a tpe search needs a non-empty 'space' of parameters to search", "space", "invalid_space")
    for path, rng in space.items():
        field = f"space.{path}"

        def bad(message: str, where: str = "", *, code: str = "invalid_space", _field: str = field) -> AppError:
            return grid_error(message, _field + where, code)

        if path in RESERVED_PATHS:
            raise bad(RESERVED_PATHS[path].replace("grid", "space"))
        if path not in SPEC_PATHS:
            raise bad(f"space path '{path}' is not a JobSpec field")
        if rng.choices is not None:
            if rng.low is not None or rng.high is not None or rng.log or rng.step is not None:
                raise bad(f"'{path}' gives choices and a range; give one or the other")
            if not rng.choices:
                raise bad(f"'{path}' has no choices; give at least one", ".choices")
            seen: set[str] = set()
            for index, value in enumerate(rng.choices):
                number = isinstance(value, int | float) and not isinstance(value, bool)
                key = json.dumps(float(value) if number and value is not None else value)  # 2 and 2.0: one
                if key in seen:
                    raise bad(f"'{path}' repeats the choice {key}", f".choices[{index}]")
                seen.add(key)
            continue
        if rng.low is None or rng.high is None:
            missing = "low" if rng.low is None else "high"
            raise bad(f"'{path}' needs 'low' and 'high' (or 'choices')", f".{missing}")
        for name in ("low", "high"):
            if not math.isfinite(getattr(rng, name)):
                raise bad(f"'{path}'.{name} must be a finite number", f".{name}")
        if rng.low > rng.high:
            raise bad(f"'{path}': low {rng.low} is greater than high {rng.high}", ".low")
        if rng.log and rng.low <= 0:
            raise bad(f"'{path}': a log range needs low > 0, got {rng.low}", ".low")
        if rng.step is not None:
            if rng.log:
                raise bad(f"'{path}': step and log cannot be combined", ".step")
            if rng.step <= 0:
                raise bad(f"'{path}': step must be positive, got {rng.step}", ".step")
            if not math.isfinite(rng.step) or (rng.high - rng.low) / rng.step > MAX_STEPS:
                message = f"'{path}': step {rng.step} makes more than {MAX_STEPS:,} values; give a larger step"
                raise bad(message, ".step")
        if grids.takes_only_whole_numbers(path):
            # An integer field searched over a float range (2 to 4.0) drew 3.27 and every ask failed.
            for name in ("low", "high", "step"):
                value = getattr(rng, name)
                if value is None:
                    continue
                if not float(value).is_integer():
                    raise bad(f"'{path}' takes whole numbers; {name} is {value}", f".{name}")
                setattr(rng, name, int(value))
        try:
            distribution(rng)
        except (ValueError, ArithmeticError) as exc:  # what Optuna itself refuses
            raise bad(f"'{path}': {exc}") from None
    for path in space:
        for other in space:
            if other != path and other.startswith(path + "."):
                raise grid_error(f"space paths '{path}' and '{other}' overlap", f"space.{other}", "invalid_space")


def distribution(rng: ParameterRange) -> BaseDistribution:
    """Optuna's distribution for one range: integers when low, high (and step) are whole JSON numbers."""
    if rng.choices is not None:
        return CategoricalDistribution(rng.choices)
    assert rng.low is not None and rng.high is not None
    if _is_int(rng.low) and _is_int(rng.high) and (rng.step is None or _is_int(rng.step)):
        return IntDistribution(int(rng.low), int(rng.high), log=rng.log, step=int(rng.step or 1))
    return FloatDistribution(float(rng.low), float(rng.high), log=rng.log, step=rng.step)


def distributions(space: Mapping[str, ParameterRange]) -> dict[str, BaseDistribution]:
    return {path: distribution(rng) for path, rng in space.items()}


def extremes(rng: ParameterRange) -> list[tuple[str, Any]]:
    """(field suffix, value) of each value that bounds a range: its ends, or every choice."""
    if rng.choices is not None:
        return [(f".choices[{i}]", value) for i, value in enumerate(rng.choices)]
    dist = distribution(rng)
    assert isinstance(dist, IntDistribution | FloatDistribution)
    return [(".low", dist.low), (".high", dist.high)]


def check_points(space: Mapping[str, ParameterRange]) -> list[tuple[str, dict[str, Any]]]:
    """The points tried against the dataset before a search starts, each with the field it blames.

    The spec's limits are per field and monotone (sizes, fractions, window lengths), so each
    parameter is tried alone at each of its ends (every choice) over the base spec, then all at
    their lowest and all at their highest together: a point the dataset cannot run fails here,
    naming the parameter (or the space, when only the combination fails).
    """
    points: list[tuple[str, dict[str, Any]]] = []
    for path, rng in space.items():
        for suffix, value in extremes(rng):
            points.append((f"space.{path}{suffix}", {path: value}))
    points.append(("space", {path: extremes(rng)[0][1] for path, rng in space.items()}))
    points.append(("space", {path: extremes(rng)[-1][1] for path, rng in space.items()}))
    return points
