"""The job filter language of ``GET /jobs?where=`` and metric sorting.

    test.rmse < 0.5 and model.cell in ("lstm", "gru")
    (val.accuracy >= 0.9 or status = "failed") and training.seed != 3

Fields: ``<split>.<metric>`` of final metrics (train/val/test), the job columns ``status``,
``task``, ``name``, ``dataset_id``, ``sweep_id``, ``device``, ``attempts``, and any dotted path of the
normalized spec (``model.hidden_size``, ``training.learning_rate``). Operators: = == != < <= > >= in, not in.
"""

from __future__ import annotations

import operator
import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, not_, or_, select
from sqlalchemy.orm import aliased

from app.errors import AppError, BadRequest
from app.models import Job, JobMetric
from worker.engine.metrics import CLASSIFICATION_METRICS, REGRESSION_METRICS

METRIC_SPLITS = ("train", "val", "test")
JOB_COLUMNS = {
    "status": Job.status,
    "task": Job.task,
    "name": Job.name,
    "dataset_id": Job.dataset_id,
    "sweep_id": Job.sweep_id,
    "device": Job.device,
    "attempts": Job.attempts,
    "model.cell": Job.cell,
    "created_at": Job.created_at,
    "finished_at": Job.finished_at,
}
_TOKEN = re.compile(
    r"""\s*(?:(?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)|(?P<str>"[^"]*"|'[^']*')|(?P<op><=|>=|!=|==|=|<|>)"""
    r"""|(?P<punct>[(),])|(?P<word>[A-Za-z_][A-Za-z0-9_.]*))"""
)


def _bad(message: str) -> AppError:
    return BadRequest("invalid_where", message)


def _tokenize(text: str) -> list[tuple[str, Any]]:
    tokens: list[tuple[str, Any]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise _bad(f"cannot read the filter at character {pos + 1}: {text[pos : pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup
        value = m.group(kind or "")
        if kind == "num":
            tokens.append(("value", float(value)))
        elif kind == "str":
            tokens.append(("value", value[1:-1]))
        elif kind == "word" and value.lower() in ("and", "or", "in", "not"):
            tokens.append((value.lower(), value))
        elif kind == "word" and value.lower() in ("true", "false", "null"):
            tokens.append(("value", {"true": True, "false": False, "null": None}[value.lower()]))
        else:
            tokens.append((kind or "", value))
    return tokens


KNOWN_METRICS = (*REGRESSION_METRICS, *CLASSIFICATION_METRICS)


def metric_value(
    field: str, code: str = "invalid_where", error: type[AppError] = BadRequest
) -> ColumnElement[Any] | None:
    """A correlated scalar for a final metric like ``test.rmse``, or None if ``field`` is not one.

    A known split with an unknown metric name (``test.rsme``) is an error naming the known ones,
    not a filter that silently matches nothing.
    """
    split, _, name = field.partition(".")
    if split not in METRIC_SPLITS or not name or "." in name:
        return None
    if name not in KNOWN_METRICS:
        raise error(code, f"unknown metric {name!r} in {field!r}; metrics are: {', '.join(KNOWN_METRICS)}")
    m = aliased(JobMetric)
    return select(m.value).where(m.job_id == Job.id, m.split == split, m.name == name).scalar_subquery()


STRING_COLUMNS = {"status", "task", "name", "dataset_id", "sweep_id", "device", "model.cell"}
TIME_COLUMNS = {"created_at", "finished_at"}
MAX_NESTING = 32
OPERATORS = {
    "=": operator.eq,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _coerce(field: str, value: Any, kind: str) -> Any:
    """The value as the field's type, or 400 naming the mismatch (never a database cast error)."""
    if value is None:
        return None
    if kind == "string" and isinstance(value, str):
        return value
    if kind == "number" and isinstance(value, int | float) and not isinstance(value, bool):
        return value
    if kind == "boolean" and isinstance(value, bool):
        return value
    if kind == "time" and isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
            return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
        except (ValueError, OverflowError):
            pass
    wanted = {
        "string": "a quoted string",
        "number": "a number",
        "boolean": "true or false",
        "time": 'an ISO 8601 time like "2026-01-31T12:00:00Z"',
    }[kind]
    raise _bad(f"{field} compares with {wanted}; got {value!r}")


def field_expression(field: str, sample: Any) -> tuple[ColumnElement[Any], str]:
    """The SQL expression for a field and the kind of value it compares with."""
    if field in JOB_COLUMNS:
        kind = "string" if field in STRING_COLUMNS else "time" if field in TIME_COLUMNS else "number"
        return JOB_COLUMNS[field], kind  # type: ignore[return-value]
    metric = metric_value(field)
    if metric is not None:
        return metric, "number"
    path = tuple(field.split("."))
    if path[0] in ("data", "model", "training", "evaluation") and len(path) >= 2:
        # Spec values are typed by what they are compared with; the spec schema fixes each path's
        # type, so a mismatched comparison simply matches nothing.
        element = Job.spec[path]
        if isinstance(sample, bool):
            return element.as_boolean(), "boolean"
        if isinstance(sample, int | float):
            return element.as_float(), "number"
        return element.as_string(), "string"
    raise _bad(
        f"unknown field {field!r}; use a final metric like test.rmse, a spec path like model.hidden_size, "
        f"or one of: {', '.join(sorted(JOB_COLUMNS))}"
    )


class _Parser:
    def __init__(self, tokens: list[tuple[str, Any]]) -> None:
        self.depth = 0
        self.tokens = tokens
        self.i = 0

    def peek(self) -> str | None:
        return self.tokens[self.i][0] if self.i < len(self.tokens) else None

    def take(self, kind: str) -> Any:
        if self.peek() != kind:
            found = self.tokens[self.i][1] if self.i < len(self.tokens) else "end of filter"
            raise _bad(f"expected {kind} but found {found!r}")
        self.i += 1
        return self.tokens[self.i - 1][1]

    def expr(self) -> ColumnElement[bool]:
        node = self.conj()
        while self.peek() == "or":
            self.take("or")
            node = or_(node, self.conj())
        return node

    def conj(self) -> ColumnElement[bool]:
        node = self.atom()
        while self.peek() == "and":
            self.take("and")
            node = and_(node, self.atom())
        return node

    def atom(self) -> ColumnElement[bool]:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise _bad(f"the filter nests deeper than {MAX_NESTING} levels")
        try:
            return self._atom()
        finally:
            self.depth -= 1

    def _atom(self) -> ColumnElement[bool]:
        if self.peek() == "not":
            self.take("not")
            return not_(self.atom())
        if self.peek() == "punct" and self.tokens[self.i][1] == "(":
            self.take("punct")
            node = self.expr()
            if self.take("punct") != ")":
                raise _bad("missing ')'")
            return node
        field = self.take("word")
        if self.peek() in ("in", "not"):
            negate = self.peek() == "not"
            if negate:
                self.take("not")
            self.take("in")
            values = self.value_list()
            column, kind = field_expression(field, values[0])
            if any(v is None for v in values):
                raise _bad(f"null cannot be in a list; use {field} = null")
            clause = column.in_([_coerce(field, v, kind) for v in values])
            return not_(clause) if negate else clause
        op = self.take("op")
        value = self.take("value")
        column, kind = field_expression(field, value)
        if value is None:
            if op in ("=", "=="):
                return column.is_(None)
            if op == "!=":
                return column.is_not(None)
            raise _bad(f"null can only be compared with = or != (field {field!r})")
        if kind == "boolean" and op not in ("=", "==", "!="):
            raise _bad(f"{field} is true or false: compare it with = or !=")
        return OPERATORS[op](column, _coerce(field, value, kind))

    def value_list(self) -> list[Any]:
        if self.take("punct") != "(":
            raise _bad("'in' needs a parenthesised list of values")
        values = [self.take("value")]
        while self.peek() == "punct" and self.tokens[self.i][1] == ",":
            self.take("punct")
            values.append(self.take("value"))
        if self.take("punct") != ")":
            raise _bad("missing ')' after the list of values")
        return values


MAX_WHERE_CHARS = 4000
MAX_COMPARISONS = 64


def parse_where(text: str) -> ColumnElement[bool]:
    """Parse a filter into a SQL condition on Job; 400 ``invalid_where`` naming what is wrong."""
    if len(text) > MAX_WHERE_CHARS:
        raise _bad(f"the filter is longer than {MAX_WHERE_CHARS} characters")
    parser = _Parser(_tokenize(text))
    if sum(1 for kind, _ in parser.tokens if kind in ("op", "in")) > MAX_COMPARISONS:
        raise _bad(f"the filter has more than {MAX_COMPARISONS} comparisons")
    if not parser.tokens:
        raise _bad("empty filter")
    node = parser.expr()
    if parser.i != len(parser.tokens):
        raise _bad(f"unexpected {parser.tokens[parser.i][1]!r} in the filter")
    return node


def apply_sort(query: Select[Any], sort: str) -> Select[Any]:
    """Order by a job column or a final metric (``test.rmse``, ``-created_at``); missing values last."""
    descending = sort.startswith("-")
    field = sort.lstrip("-+")
    if field in ("created_at", "finished_at", "name", "status", "attempts"):
        column: Any = JOB_COLUMNS[field]
    else:
        column = metric_value(field, code="invalid_sort")
        if column is None:
            raise BadRequest(
                "invalid_sort",
                f"cannot sort by {field!r}; use created_at, finished_at, or a metric like test.rmse",
            )
    ordered = column.desc() if descending else column.asc()
    return query.order_by(column.is_(None), ordered, Job.id)
