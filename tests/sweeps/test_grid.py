"""Grid expansion: enumeration, random draws, spec building and error blame (pure functions)."""

from __future__ import annotations

from typing import Any

import pytest

from app.errors import AppError
from app.sweeps import grid as grids


def test_grid_enumerates_every_setting_last_path_fastest() -> None:
    g: dict[str, list[Any]] = {"a": [1, 2], "b": ["x", "y", "z"]}
    settings = grids.enumerate_settings(g, "grid", 0, 0)
    assert len(settings) == 6 and settings[0] == {"a": 0, "b": 0} and settings[1] == {"a": 0, "b": 1}
    assert settings[-1] == {"a": 1, "b": 2}
    assert grids.enumerate_settings({}, "grid", 0, 0) == [{}]


def test_random_draws_are_distinct_deterministic_and_bounded() -> None:
    g = {"a": list(range(10)), "b": list(range(10))}
    first = grids.enumerate_settings(g, "random", 7, 3)
    assert len(first) == 7 and len({tuple(s.values()) for s in first}) == 7
    assert grids.enumerate_settings(g, "random", 7, 3) == first
    assert len(grids.enumerate_settings(g, "random", 500, 3)) == 100  # never more than the grid holds


def test_random_draw_from_an_astronomical_grid_does_not_build_it() -> None:
    g = {f"p{i}": list(range(10)) for i in range(25)}  # 1e25 settings
    drawn = grids.enumerate_settings(g, "random", 5, 1)
    assert len(drawn) == 5 and len({tuple(s.values()) for s in drawn}) == 5


def test_build_spec_sets_paths_and_seed_without_touching_the_base() -> None:
    base = {"task": "forecast", "model": {"cell": "gru"}}
    spec = grids.build_spec(base, {"model.hidden_size": 8, "data.split.val_fraction": 0.2}, 3)
    assert spec["model"] == {"cell": "gru", "hidden_size": 8}
    assert spec["data"] == {"split": {"val_fraction": 0.2}} and spec["training"] == {"seed": 3}
    assert base == {"task": "forecast", "model": {"cell": "gru"}}


def test_blame_names_the_grid_value_or_the_base_field() -> None:
    indices = {"model.hidden_size": 2, "data.split.val_fraction": 1}
    assert grids.blame_field("model.hidden_size", indices) == "grid.model.hidden_size[2]"
    assert grids.blame_field("data.split", indices) == "grid.data.split.val_fraction[1]"
    assert grids.blame_field("training.epochs", indices) == "base.training.epochs"
    assert grids.blame_field("", indices) == "grid" and grids.blame_field("", {}) == "base"


def test_check_grid_refuses_a_whole_section_and_so_overlapping_paths() -> None:
    with pytest.raises(AppError) as info:
        grids.check_grid({"model": [{"cell": "gru"}], "model.hidden_size": [4]})
    assert info.value.details[0]["field"] == "grid.model" and "e.g. model.cell" in info.value.message
    grids.check_grid({"model.cell": ["gru"], "data.split.method": ["random"]})  # nested paths are known


def test_the_optional_text_section_is_swept_field_by_field() -> None:
    """``text`` is ``TextSpec | None``: its fields are paths (they were unknown), the section a whole value
    is refused (it replaced the base's section, dropping its max_length)."""
    from app.sweeps.space import ParameterRange, check_space

    grids.check_grid({"text.max_length": [4, 8], "text.tokenizer": ["word", "bpe"]})
    check_space({"text.vocab_size": ParameterRange(low=20, high=100)})
    with pytest.raises(AppError) as info:
        grids.check_grid({"text": [{"column": "review", "tokenizer": "bpe"}]})
    assert info.value.code == "invalid_grid" and "text.tokenizer" in info.value.message
