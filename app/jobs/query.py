"""The job filter language of ``GET /jobs?where=`` and metric sorting.

    test.rmse < 0.5 and model.cell in ("lstm", "gru")
    (val.accuracy >= 0.9 or status = "failed") and training.seed != 3

Fields: ``<split>.<metric>`` of final metrics (train/val/test), ``best.<split>.<metric>`` and
``last.<split>.<metric>`` for the epoch metrics at the best and at the last epoch (train: loss; val:
loss and rmse or accuracy), the job columns ``id``, ``status``,
``task``, ``name``, ``dataset_id``, ``sweep_id``, ``device``, ``attempts``, ``model.cell``, ``created_at``,
``finished_at``, and any dotted path of the
normalized spec (``model.hidden_size``, ``training.learning_rate``). Operators: = == != < <= > >= in, not in,
and ``contains`` (a substring of a text field, any case: ``name contains "lstm"``).

A job without a value for a field (no name, no sweep, no ``test.rmse``, a spec value of another type
than the one compared with, such as ``model.ar_ridge = "loo"`` under ``model.ar_ridge > 0.5``) matches
no comparison of it (=, <, in, contains, …), and so matches every negation: ``a != v`` is the complement
of ``a = v``, ``a not in (…)`` of ``a in (…)``, ``not (…)`` of ``(…)``, over all jobs. SQL's NULL
would drop such jobs from both sides; the compiled conditions never leave a NULL for NOT to keep.
"""

from __future__ import annotations

import difflib
import functools
import math
import operator
import re
import typing
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Float,
    Select,
    String,
    and_,
    case,
    false,
    func,
    literal,
    literal_column,
    not_,
    or_,
    select,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import aliased
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.type_api import TypeEngine
from sqlalchemy.sql.visitors import InternalTraversal

from app.errors import AppError, BadRequest
from app.jobs.final_values import EPOCH_SCOPES, EPOCH_SPLITS, FINAL_SPLITS
from app.models import Job, JobMetric, JobStatus
from worker.engine.metrics import CLASSIFICATION_METRICS, REGRESSION_METRICS, TAGGING_METRICS
from worker.engine.spec import JobSpec, ModelSpec

JOB_COLUMNS = {
    "id": Job.id,
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
            number = float(value)
            if not math.isfinite(number):
                raise _bad(f"{value} is beyond the float range (at most about 1.8e308)")
            tokens.append(("value", number))
        elif kind == "str":
            tokens.append(("value", value[1:-1]))
        elif kind == "word" and value.lower() in ("and", "or", "in", "not", "contains"):
            tokens.append((value.lower(), value))
        elif kind == "word" and value.lower() in ("true", "false", "null"):
            tokens.append(("value", {"true": True, "false": False, "null": None}[value.lower()]))
        else:
            tokens.append((kind or "", value))
    return tokens


KNOWN_METRICS = tuple(dict.fromkeys((*REGRESSION_METRICS, *CLASSIFICATION_METRICS, *TAGGING_METRICS)))
# What the engine reports per epoch (worker/engine/training.py): train only its loss; val its loss and
# rmse (regression, forecast) or accuracy (classification, tagging). Another name can never have a value.
EPOCH_SPLIT_METRICS: dict[str, tuple[str, ...]] = {"train": ("loss",), "val": ("loss", "rmse", "accuracy")}
EPOCH_METRICS = tuple(dict.fromkeys(m for split in EPOCH_SPLITS for m in EPOCH_SPLIT_METRICS[split]))


def metric_key(field: str, code: str = "invalid_where", error: type[AppError] = BadRequest) -> tuple[str, str] | None:
    """The (split, name) row of job_metrics a field like ``test.rmse`` or ``best.val.loss`` reads, or None.

    A known split with an unknown metric name (``test.rsme``), or an epoch value no job can have
    (``best.train.rmse``: train reports only its loss per epoch), is an error naming the valid ones,
    not a filter or sort that silently matches nothing. A metric of another task (``test.accuracy``
    among forecasts) stays valid: a project may mix tasks.
    """
    parts = field.split(".")
    if parts[0] in FINAL_SPLITS and len(parts) == 2:
        split, name = parts
        if name not in KNOWN_METRICS:
            hint = f"; per-epoch values are best.{split}.{name} and last.{split}.{name}" if name == "loss" else ""
            raise error(code, f"unknown metric {name!r} in {field!r}; metrics are: {', '.join(KNOWN_METRICS)}{hint}")
        return split, name
    if parts[0] in EPOCH_SCOPES:
        if len(parts) != 3 or parts[2] not in EPOCH_SPLIT_METRICS.get(parts[1], ()):
            valid = ", ".join(f"{parts[0]}.{split}.{m}" for split in EPOCH_SPLITS for m in EPOCH_SPLIT_METRICS[split])
            raise error(
                code,
                f"unknown epoch value {field!r}; use {parts[0]}.<split>.<metric>, one of: {valid} "
                "(train reports only its loss per epoch)",
            )
        return f"{parts[0]}.{parts[1]}", parts[2]
    return None


def metric_value(
    field: str, code: str = "invalid_where", error: type[AppError] = BadRequest
) -> ColumnElement[Any] | None:
    """A correlated scalar for a final metric like ``test.rmse`` (one job at a time), or None if not one."""
    key = metric_key(field, code, error)
    if key is None or key[0] not in FINAL_SPLITS:
        return None
    m = aliased(JobMetric)
    return select(m.value).where(m.job_id == Job.id, m.split == key[0], m.name == key[1]).scalar_subquery()


class MetricJoins:
    """One LEFT JOIN of job_metrics per metric a filter names.

    Per job it is a primary-key lookup; with the project in the condition the planner may also
    range-scan the (project, split, name, value) index for a selective filter instead.
    """

    def __init__(self, project_id: str | None) -> None:
        self.project_id = project_id
        self.aliases: dict[tuple[str, str], Any] = {}

    def value(self, key: tuple[str, str]) -> ColumnElement[Any]:
        if key not in self.aliases:
            self.aliases[key] = aliased(JobMetric, name=f"where_{len(self.aliases)}")
        return self.aliases[key].value  # type: ignore[no-any-return]

    def apply(self, query: Select[Any]) -> Select[Any]:
        for (split, name), alias in self.aliases.items():
            condition = and_(alias.job_id == Job.id, alias.split == split, alias.name == name)
            if self.project_id is not None:
                condition = and_(condition, alias.project_id == self.project_id)
            query = query.outerjoin(alias, condition)
        return query


SPEC_SECTIONS = ("data", "model", "training", "evaluation", "text")
STRING_COLUMNS = {"id", "status", "task", "name", "dataset_id", "sweep_id", "device", "model.cell"}
TIME_COLUMNS = {"created_at", "finished_at"}
# Columns with a fixed set of values: another value is a typo, not an empty result.
ENUM_COLUMNS: dict[str, tuple[str, ...]] = {
    "status": tuple(s.value for s in JobStatus),
    "task": typing.get_args(JobSpec.model_fields["task"].annotation),
    "model.cell": typing.get_args(ModelSpec.model_fields["cell"].annotation),
}
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
        choices = ENUM_COLUMNS.get(field)
        if choices is not None and value not in choices:
            raise _bad(f"{field} is one of {', '.join(choices)}; got {value!r}")
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


def annotation_members(annotation: Any) -> list[Any]:
    """The types inside ``X | None``, ``Annotated[X, …]``, ``Literal``-free unions, as a flat list."""
    args = typing.get_args(annotation)
    if not args or typing.get_origin(annotation) in (typing.Literal, list, tuple, set, frozenset):
        return [annotation]
    if typing.get_origin(annotation) is typing.Annotated:
        return annotation_members(args[0])
    if typing.get_origin(annotation) is dict:
        return [dict]
    return [m for a in args for m in annotation_members(a)]


@functools.cache
def spec_paths() -> tuple[frozenset[str], frozenset[str]]:
    """The JobSpec's leaf paths (``model.hidden_size``) and the paths of free-form mappings below
    which any key is allowed."""
    from pydantic import BaseModel

    leaves: set[str] = set()
    mappings: set[str] = set()

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            path = f"{prefix}{name}"
            members = annotation_members(info.annotation)
            nested = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
            for sub in nested:
                walk(sub, path + ".")
            if dict in members:
                mappings.add(path)
            if not nested or any(m is not type(None) and m not in nested for m in members):
                leaves.add(path)

    walk(JobSpec, "")
    return frozenset(leaves), frozenset(mappings)


def _check_spec_path(field: str) -> None:
    """A spec path that names no field of the spec is a 400 (it would silently match nothing)."""
    leaves, mappings = spec_paths()
    if field in leaves or any(field.startswith(m + ".") for m in mappings):
        return
    section = field.split(".")[0]
    known = sorted(p for p in leaves if p.startswith(section + "."))
    close = difflib.get_close_matches(field, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; {section} has: {', '.join(known)}"
    raise _bad(f"unknown spec path {field!r}{hint}")


# Job columns a job may leave empty (NULL); the others always hold a value.
NULLABLE_COLUMNS = frozenset(f for f, column in JOB_COLUMNS.items() if Job.__table__.c[column.key].nullable)
# How each database names the JSON types a spec value is compared as (json_typeof / json_type).
_JSON_TYPES: dict[str, dict[str, tuple[str, ...]]] = {
    "postgresql": {"number": ("number",), "string": ("string",), "boolean": ("boolean",)},
    "sqlite": {"number": ("integer", "real"), "string": ("text",), "boolean": ("true", "false")},
}


class SpecValue(ColumnElement[Any]):
    """A spec path's value where the job's JSON holds a ``kind`` (number, string, boolean) there, else NULL.

    A spec path may hold values of several types (``model.ar_ridge``: a number, "loo" or "auto"): a
    row of another type must not match, rather than fail the whole query (PostgreSQL's cast of "loo"
    to a number) or compare as something else (SQLite casts "loo" to 0.0, so it equalled 0).
    """

    inherit_cache = True
    _traverse_internals = [("path", InternalTraversal.dp_plain_obj), ("kind", InternalTraversal.dp_string)]

    def __init__(self, path: tuple[str, ...], kind: str) -> None:
        self.path = path
        self.kind = kind
        types: dict[str, TypeEngine[Any]] = {"number": Float(), "string": String(), "boolean": Boolean()}
        self.type = types[kind]


@compiles(SpecValue)
def _compile_spec_value(element: SpecValue, compiler: SQLCompiler, **kw: Any) -> str:
    raw = Job.spec[element.path]
    typed = {"number": raw.as_float(), "string": raw.as_string(), "boolean": raw.as_boolean()}[element.kind]
    dialect = compiler.dialect.name
    if dialect == "postgresql":
        json_type = func.json_typeof(raw)
    elif dialect == "sqlite":
        json_path = "$" + "".join(f'."{part}"' for part in element.path)
        json_type = func.json_type(Job.spec, literal(json_path))
    else:  # pragma: no cover - rnnlab runs on SQLite and PostgreSQL only
        raise NotImplementedError(f"spec filters on {dialect}")
    # The type names as literals: constants of the statement, not parameters to expand.
    names: list[ColumnElement[Any]] = [literal_column(f"'{name}'") for name in _JSON_TYPES[dialect][element.kind]]
    return compiler.process(case((json_type.in_(names), typed)), **kw)


def field_expression(field: str, sample: Any, joins: MetricJoins) -> tuple[ColumnElement[Any], str, bool]:
    """The SQL expression for a field, the kind of value it compares with, and whether it can be NULL."""
    if field in JOB_COLUMNS:
        kind = "string" if field in STRING_COLUMNS else "time" if field in TIME_COLUMNS else "number"
        return JOB_COLUMNS[field], kind, field in NULLABLE_COLUMNS  # type: ignore[return-value]
    key = metric_key(field)
    if key is not None:
        return joins.value(key), "number", True  # a LEFT JOIN: NULL for a job without the value
    path = tuple(field.split("."))
    if path[0] in SPEC_SECTIONS and len(path) >= 2:
        _check_spec_path(field)
        # Spec values are typed by what they are compared with. The spec schema does not fix one
        # type per path (model.ar_ridge is a number, "loo" or "auto"), so a job holding a value of
        # another type counts as not having one: no comparison matches it, and every negation does.
        if sample is None:  # = null / != null: a missing path or a JSON null, whatever the type
            return Job.spec[path].as_string(), "string", True
        kind = "boolean" if isinstance(sample, bool) else "number" if isinstance(sample, int | float) else "string"
        return SpecValue(path, kind), kind, True
    raise _bad(
        f"unknown field {field!r}; use a final metric like test.rmse, an epoch value like best.val.loss, "
        "a spec path like model.hidden_size, "
        f"or one of: {', '.join(sorted(JOB_COLUMNS))}"
    )


# A condition and whether it can be NULL (SQL's unknown: a comparison of an empty field). A NULL
# condition drops its job from the results just like false does, but NOT keeps it NULL: so `not`
# first turns NULL into false, and `!=` / `not in` on a field that can be empty say so explicitly.
Node = tuple[ColumnElement[bool], bool]


class _Parser:
    def __init__(self, tokens: list[tuple[str, Any]], project_id: str | None) -> None:
        self.joins = MetricJoins(project_id)
        self.reads_spec = False  # whether a comparison reads the JSON spec (no index, no statistics)
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

    def expr(self) -> Node:
        node, nullable = self.conj()
        while self.peek() == "or":
            self.take("or")
            right, right_nullable = self.conj()
            node, nullable = or_(node, right), nullable or right_nullable
        return node, nullable

    def conj(self) -> Node:
        node, nullable = self.atom()
        while self.peek() == "and":
            self.take("and")
            right, right_nullable = self.atom()
            node, nullable = and_(node, right), nullable or right_nullable
        return node, nullable

    def atom(self) -> Node:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise _bad(f"the filter nests deeper than {MAX_NESTING} levels")
        try:
            return self._atom()
        finally:
            self.depth -= 1

    def _atom(self) -> Node:
        if self.peek() == "not":
            self.take("not")
            node, nullable = self.atom()
            # The complement over all jobs: a job the condition leaves unknown (an empty field) did
            # not match it, so it matches its negation. A condition that is never NULL is negated as
            # it is, so the SQL stays as plain as it was (NOT status = 'failed').
            return not_(func.coalesce(node, false()) if nullable else node), False
        if self.peek() == "punct" and self.tokens[self.i][1] == "(":
            self.take("punct")
            inner = self.expr()
            if self.take("punct") != ")":
                raise _bad("missing ')'")
            return inner
        field = self.take("word")
        if self.peek() == "contains":
            # A substring of a text field, any case: name contains "lstm" (% and _ are plain characters).
            self.take("contains")
            value = self.take("value")
            column, kind, nullable = field_expression(field, value if isinstance(value, str) else "", self.joins)
            self.reads_spec |= field not in JOB_COLUMNS and field.split(".")[0] in SPEC_SECTIONS
            if kind != "string":
                raise _bad(f"contains works on text fields such as name or data.target; {field} is not one")
            if not isinstance(value, str):
                raise _bad(f"contains takes a quoted string; got {value!r}")
            return func.lower(column).contains(value.lower(), autoescape=True), nullable
        if self.peek() in ("in", "not"):
            negate = self.peek() == "not"
            if negate:
                self.take("not")
            self.take("in")
            values = self.value_list()
            column, kind, nullable = field_expression(field, values[0], self.joins)
            self.reads_spec |= field not in JOB_COLUMNS and field.split(".")[0] in SPEC_SECTIONS
            if any(v is None for v in values):
                raise _bad(f"null cannot be in a list; use {field} = null")
            coerced = [_coerce(field, v, kind) for v in values]
            if not negate:
                return column.in_(coerced), nullable
            if nullable:  # a job without the field is not in the list
                return or_(column.not_in(coerced), column.is_(None)), False
            return column.not_in(coerced), False
        op = self.take("op")
        value = self.take("value")
        column, kind, nullable = field_expression(field, value, self.joins)
        self.reads_spec |= field not in JOB_COLUMNS and field.split(".")[0] in SPEC_SECTIONS
        if value is None:
            if op in ("=", "=="):
                return column.is_(None), False
            if op == "!=":
                return column.is_not(None), False
            raise _bad(f"null can only be compared with = or != (field {field!r})")
        if kind == "boolean" and op not in ("=", "==", "!="):
            raise _bad(f"{field} is true or false: compare it with = or !=")
        coerced = _coerce(field, value, kind)
        if op == "!=":
            # A job without the field is not equal to the value (IS DISTINCT FROM: never NULL). A
            # column that is never empty keeps the plain != its index reads.
            return (column.is_distinct_from(coerced) if nullable else column != coerced), False
        return OPERATORS[op](column, coerced), nullable

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


def apply_where(query: Select[Any], text: str, project_id: str | None = None) -> tuple[Select[Any], bool]:
    """Filter a query on Job (of ``project_id``) by a ``where`` text; 400 ``invalid_where`` naming what is wrong.

    Also says whether the filter reads spec paths, whose selectivity a database can only guess.
    """
    if len(text) > MAX_WHERE_CHARS:
        raise _bad(f"the filter is longer than {MAX_WHERE_CHARS} characters")
    parser = _Parser(_tokenize(text), project_id)
    if sum(1 for kind, _ in parser.tokens if kind in ("op", "in")) > MAX_COMPARISONS:
        raise _bad(f"the filter has more than {MAX_COMPARISONS} comparisons")
    if not parser.tokens:
        raise _bad("empty filter")
    node, _ = parser.expr()
    if parser.i != len(parser.tokens):
        raise _bad(f"unexpected {parser.tokens[parser.i][1]!r} in the filter")
    return parser.joins.apply(query).where(node), parser.reads_spec
