"""The where language refuses names it cannot match: a mistyped spec path or an unknown status, cell or
task is a 400 naming it (it used to match nothing, so a typo looked like "no jobs"). No database needed."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.errors import BadRequest
from app.jobs.query import apply_where, spec_paths
from app.models import Job


@pytest.mark.parametrize(
    ("where", "says"),
    [
        ("model.hiden_size = 8", "did you mean 'model.hidden_size'"),
        ("model.hidden_size.foo = 1", "unknown spec path 'model.hidden_size.foo'"),
        ("data.split = 1", "unknown spec path 'data.split'"),
        ("training.nope in (1, 2)", "unknown spec path 'training.nope'"),
        ('status = "bogus"', "status is one of queued, running"),
        ('model.cell in ("lstm", "gruu")', "got 'gruu'"),
        ('task != "forcast"', "task is one of forecast"),
    ],
)
def test_unknown_names_are_400(where: str, says: str) -> None:
    with pytest.raises(BadRequest) as caught:
        apply_where(select(Job), where)
    assert caught.value.code == "invalid_where" and says in caught.value.message


@pytest.mark.parametrize(
    "where",
    [
        "model.hidden_size = 8",
        'data.split.method = "temporal"',
        'text.column = "review"',
        "training.learning_rate < 0.01 and evaluation.attribution = true",
        'status in ("queued", "running") and task = "forecast" and model.cell != "rnn"',
    ],
)
def test_every_spec_leaf_and_value_is_accepted(where: str) -> None:
    apply_where(select(Job), where)


def test_spec_paths_are_the_job_specs_leaves() -> None:
    leaves, _ = spec_paths()
    assert {"model.hidden_size", "data.split.method", "training.epochs", "text.column"} <= leaves
    assert "data.split" not in leaves and "model" not in leaves  # sections, not values
