"""The where language refuses names it cannot match: a mistyped spec path or an unknown status, cell or
task is a 400 naming it (it used to match nothing, so a typo looked like "no jobs"). No database needed."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

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


@pytest.mark.parametrize(
    "where", ["best.train.rmse < 1", "last.train.accuracy > 0.5", "best.val.mae < 1", "last.train.nope = 1"]
)
def test_epoch_values_no_job_can_have_are_400(where: str) -> None:
    """Train reports only its loss per epoch: best.train.rmse would match and sort nothing."""
    with pytest.raises(BadRequest) as caught:
        apply_where(select(Job), where)
    scope = where.split(".")[0]
    valid = f"{scope}.train.loss, {scope}.val.loss, {scope}.val.rmse, {scope}.val.accuracy"
    assert caught.value.code == "invalid_where" and valid in caught.value.message


@pytest.mark.parametrize("where", ["best.train.loss < 1", "last.val.accuracy > 0", "test.accuracy > 0.5"])
def test_metrics_a_job_can_have_are_accepted(where: str) -> None:
    """Another task's metric (test.accuracy among forecasts) is valid: a project may mix tasks."""
    apply_where(select(Job), where)


@pytest.mark.parametrize(
    ("where", "sql"),
    [
        # Columns that are never empty keep the plain comparison their index reads.
        ('status != "failed"', "jobs.status != "),
        ('not status = "failed"', "jobs.status != "),
        ('task not in ("forecast")', "(jobs.task NOT IN ("),
        # Columns, metrics and spec values that can be empty: the empty ones match the negation.
        ('sweep_id != "s"', "jobs.sweep_id IS DISTINCT FROM "),
        ('name not in ("a")', "OR jobs.name IS NULL"),
        ("not test.rmse < 0.5", "NOT coalesce(where_0.value < "),
        ("model.ar_ridge > 0.5", "CASE WHEN (json_typeof((jobs.spec #> "),
    ],
)
def test_negations_compile_to_two_valued_sql(where: str, sql: str) -> None:
    query, _ = apply_where(select(Job.id), where)
    text = str(query.compile(dialect=postgresql.dialect()))
    assert sql in text, text
    assert "coalesce" not in text or "not " in where.lower(), text
    str(query.compile(dialect=sqlite.dialect()))  # compiles on SQLite too
