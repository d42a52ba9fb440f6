"""GET /jobs at scale: every list query reads an index in order, keyset pages are exact, any value filters.

The plans are checked with EXPLAIN on the statements the route really ran, on SQLite and on
PostgreSQL, with 10,000 jobs of realistic width in the project (and others in another project).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event, select

from app.db import get_engine, new_session
from app.jobs.paging import JOB_SORTS, encode_cursor, parse_sort
from app.models import Job, JobMetric
from tests.conftest import make_key
from tests.jobs.scale import seed_jobs

PLAN_JOBS = 10_000
SORTS = [*JOB_SORTS, "test.rmse", "best.val.loss"]


class Statements:
    """The SELECTs on jobs with an ORDER BY that ran while it listened (what a list route runs)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []
        self.settings: list[str] = []

    def __call__(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if statement.startswith("SET LOCAL"):  # planner settings the route's transaction ran with
            self.settings.append(statement)
        elif "FROM jobs" in statement and "ORDER BY" in statement and not statement.startswith("EXPLAIN"):
            self.seen.append((statement, parameters))


@pytest.fixture
def statements(env: dict[str, str]) -> Iterator[Statements]:
    listener = Statements()
    event.listen(get_engine(), "before_cursor_execute", listener)
    yield listener
    event.remove(get_engine(), "before_cursor_execute", listener)


def _plan_problems(backend: str, statement: str, parameters: Any, project_jobs: int, settings: list[str]) -> list[str]:
    """What in the statement's plan reads the whole table or sorts the whole project."""
    with get_engine().connect() as conn, conn.begin():
        for setting in settings:
            conn.exec_driver_sql(setting)
        if backend == "sqlite":
            lines = [row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)]
            return [line for line in lines if line.startswith("SCAN") or "TEMP B-TREE" in line]
        (plan,) = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters).one()
    problems = []
    stack = [(plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"]]
    while stack:
        node = stack.pop()
        stack += node.get("Plans", [])
        if node["Node Type"] == "Seq Scan":
            problems.append(f"Seq Scan on {node['Relation Name']}")
        # A sort is fine over the few rows a selective filter found through an index; never the project.
        if node["Node Type"] in ("Sort", "Incremental Sort") and node["Plans"][0]["Plan Rows"] > project_jobs / 10:
            problems.append(f"Sort of ~{node['Plans'][0]['Plan Rows']} rows by {node.get('Sort Key')}")
    return problems


def _analyze(backend: str) -> None:
    if backend == "postgres":  # what autovacuum does on a live server
        from app.models import Base

        # This test process's own tables only (unqualified names resolve through its schema's
        # search_path): a bare ANALYZE takes every schema in the database, and deadlocks with
        # another test process truncating its tables.
        tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
        with get_engine().begin() as conn:
            conn.exec_driver_sql(f"ANALYZE {tables}")


def test_every_list_query_reads_an_index_in_order(client, backend, statements) -> None:
    seed_jobs("other", 2_000, seed=1)
    ids = seed_jobs("alpha", PLAN_JOBS, seed=2)
    _analyze(backend)
    headers = {"Authorization": f"Bearer {make_key('alpha')}"}
    with new_session() as session:
        newest = session.scalars(select(Job).where(Job.id.in_(ids)).order_by(Job.created_at.desc()).limit(1)).one()
    queries = [f"sort={s}" for sort in SORTS for s in (sort, f"-{sort}")]
    queries += [
        "status=failed",
        "cell=gru&status=succeeded",
        "sort=test.rmse&status=succeeded",
        "where=test.rmse < 0.5",
        "where=test.rmse < 0.05",  # selective: found through the value index
        'where=model.cell in ("lstm", "gru") and best.val.loss < 0.5&sort=-test.rmse',
        "where=test.rmse > 0.9 or status = 'failed'&sort=-finished_at",
    ]
    # Spec paths (JSON) have no index and no statistics: PostgreSQL is made to walk the sort index.
    queries += [
        "where=model.hidden_size = 16&sort=best.val.loss",
        "where=model.hidden_size = 16 and training.seed > 10",
        "where=model.hidden_size in (8, 32) and test.rmse < 0.05&sort=-name",
    ]
    # Negations keep the jobs without the value (IS DISTINCT FROM, NOT coalesce(…)): still an index walk.
    queries += [
        'where=name != "job-1" and not test.rmse < 0.5',
        'where=sweep_id != "x" and model.cell not in ("rnn")&sort=-finished_at',
        'where=status != "failed" and not (best.val.loss > 0.9 or name contains "7")&sort=name',
        "where=model.hidden_size != 16&sort=test.rmse",
    ]
    for query in queries:
        statements.seen.clear()
        statements.settings.clear()
        first = client.get(f"/api/v1/jobs?limit=50&{query}", headers=headers)
        assert first.status_code == 200, (query, first.text)
        cursor = first.json()["next_cursor"]
        assert cursor, query
        assert client.get(f"/api/v1/jobs?limit=50&{query}&cursor={cursor}", headers=headers).status_code == 200
        sort_text = dict(p.split("=", 1) for p in query.split("&")).get("sort", "-created_at")
        if parse_sort(sort_text).nullable:  # the second phase: the jobs missing the value, newest first
            missing = encode_cursor(parse_sort(sort_text), "n", newest.created_at, newest.id)
            assert client.get(f"/api/v1/jobs?{query}&cursor={missing}", headers=headers).status_code == 200
        assert len(statements.seen) >= 2, query
        for statement, parameters in statements.seen:
            problems = _plan_problems(backend, statement, parameters, PLAN_JOBS, statements.settings)
            assert not problems, f"{query}: {problems}\n{statement}"


def _expected_order(session: Any, project_id: str, sort: str) -> list[str]:
    """The list's order computed in Python: (value, id) in the sort's direction, then missing values newest first."""
    key = parse_sort(sort)
    jobs = list(session.scalars(select(Job).where(Job.project_id == project_id)))
    if key.metric is None:
        values = {j.id: getattr(j, key.field) for j in jobs}
    else:
        split, name = key.metric
        rows = session.execute(
            select(JobMetric.job_id, JobMetric.value).where(JobMetric.split == split, JobMetric.name == name)
        )
        values = {job_id: value for job_id, value in rows}
    have = sorted((j for j in jobs if values.get(j.id) is not None), key=lambda j: (values[j.id], j.id))
    if key.descending:
        have.reverse()
    missing = sorted((j for j in jobs if values.get(j.id) is None), key=lambda j: (j.created_at, j.id), reverse=True)
    return [j.id for j in have + missing]


def test_keyset_pages_walk_every_sort_exactly_once(client, auth) -> None:
    seed_jobs("alpha", 230, seed=3)
    seed_jobs("beta", 40, seed=4)  # another project's jobs never show up
    with new_session() as session:
        project_id = session.scalars(select(Job.project_id).where(Job.name.is_not(None)).limit(1)).one()
        project_id = session.execute(sa.text("SELECT id FROM projects WHERE name = 'alpha'")).scalar_one()
        for sort in [s for base in SORTS for s in (base, f"-{base}")]:
            walked: list[str] = []
            cursor = None
            while True:
                url = f"/api/v1/jobs?limit=17&sort={sort}" + (f"&cursor={cursor}" if cursor else "")
                page = client.get(url, headers=auth).json()
                walked += [j["id"] for j in page["items"]]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert walked == _expected_order(session, project_id, sort), sort


def test_cursors_belong_to_their_sort_and_forged_ones_are_400(client, auth) -> None:
    seed_jobs("alpha", 30, seed=5)
    cursor = client.get("/api/v1/jobs?limit=5&sort=test.rmse", headers=auth).json()["next_cursor"]
    other = client.get(f"/api/v1/jobs?limit=5&sort=-created_at&cursor={cursor}", headers=auth)
    assert other.status_code == 400 and "sorted by 'test.rmse'" in other.json()["error"]["message"]
    for body in ({"s": "test.rmse", "p": "v", "k": "not a number", "i": "x"}, {"s": "name", "p": "z", "k": 1, "i": 2}):
        import base64

        forged = base64.urlsafe_b64encode(json.dumps(body).encode()).decode()
        r = client.get(f"/api/v1/jobs?sort={body['s']}&cursor={forged}", headers=auth)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_cursor"
    assert client.get("/api/v1/jobs?sort=-created_at&cursor=x" * 1, headers=auth).status_code == 400


def test_best_and_last_epoch_values_filter_and_sort(client, auth) -> None:
    from app.jobs.final_values import record_final_values
    from app.models import EpochMetric

    ids = [j for j in seed_jobs("alpha", 3, seed=6)]
    with new_session() as session:
        for n, job_id in enumerate(ids):
            session.execute(sa.delete(JobMetric).where(JobMetric.job_id == job_id))
            # val.loss falls to its best at epoch 2, then rises: best and last differ.
            losses = {1: 0.9, 2: 0.3 + n / 10, 3: 0.8 - n / 10}
            session.add_all(
                EpochMetric(job_id=job_id, epoch=e, split="val", name="loss", value=v) for e, v in losses.items()
            )
            session.add(EpochMetric(job_id=job_id, epoch=3, split="train", name="loss", value=0.1))
            session.flush()
            record_final_values(session, job_id, {"test": {"rmse": 1.0 + n}}, best_epoch=2)
        session.commit()
    get = lambda q: client.get(f"/api/v1/jobs?{q}", headers=auth)  # noqa: E731
    assert [j["id"] for j in get("sort=best.val.loss").json()["items"]] == ids
    assert [j["id"] for j in get("sort=last.val.loss").json()["items"]] == ids[::-1]
    assert {j["id"] for j in get("where=best.val.loss < 0.45 and last.train.loss = 0.1").json()["items"]} == set(
        ids[:2]
    )
    assert [j["id"] for j in get("where=last.val.loss >= 0.7&sort=-test.rmse").json()["items"]] == [ids[1], ids[0]]
    for bad, says in (("val.loss < 1", "best.val.loss"), ("best.test.loss < 1", "best.<split>.<metric>")):
        r = get(f"where={bad}")
        assert r.status_code == 400 and says in r.json()["error"]["message"], r.text
    assert get("sort=last.val.nope").status_code == 400


def test_migration_0005_backfills_final_values(env, backend) -> None:
    from alembic import command

    from app.db import reset_engine
    from app.migrate import alembic_config, upgrade_database

    reset_engine()
    command.downgrade(alembic_config(), "0004")
    engine = sa.create_engine(env.get("RNNLAB_DATABASE_URL") or f"sqlite:///{env['RNNLAB_HOME']}/rnnlab.db")
    summary = json.dumps({"best_epoch": 2})
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO projects (id, name, created_at) VALUES ('p1', 'p', '2026-01-01')"))
        conn.execute(
            sa.text(
                "INSERT INTO datasets (id, project_id, name, filename, format, size_bytes, sha256, storage_key, "
                "created_at) VALUES ('d1', 'p1', 'd', 'd.csv', 'csv', 1, 's', 'k', '2026-01-01')"
            )
        )
        for job_id, status in (("j1", "succeeded"), ("j2", "failed")):
            conn.execute(
                sa.text(
                    "INSERT INTO jobs (id, project_id, dataset_id, status, spec, task, cell, queue, progress_epoch, "
                    "progress_epochs, attempts, max_attempts, cancel_requested, created_at, summary) VALUES "
                    "(:id, 'p1', 'd1', :status, '{}', 'forecast', 'gru', 'default', 3, 3, 1, 3, false, "
                    "'2026-01-01', :summary)"
                ),
                {"id": job_id, "status": status, "summary": summary},
            )
            for epoch, value in ((1, 0.9), (2, 0.2), (3, 0.5)):
                conn.execute(
                    sa.text("INSERT INTO epoch_metrics VALUES (:j, :e, 'val', 'loss', :v)"),
                    {"j": job_id, "e": epoch, "v": value},
                )
        conn.execute(sa.text("INSERT INTO job_metrics VALUES ('j1', 'test', 'rmse', 0.4), ('j1', 'test', 'mae', NULL)"))
    upgrade_database()
    reset_engine()
    with engine.connect() as conn:
        rows = set(conn.execute(sa.text("SELECT project_id, job_id, split, name, value FROM job_metrics")))
        indexes = {ix["name"] for ix in sa.inspect(conn).get_indexes("jobs")}
    assert rows == {
        ("p1", "j1", "test", "rmse", 0.4),
        ("p1", "j1", "best.val", "loss", 0.2),
        ("p1", "j1", "last.val", "loss", 0.5),
    }
    assert "ix_jobs_project_created_id" in indexes and "ix_jobs_project_created" not in indexes
    command.downgrade(alembic_config(), "0004")
    with engine.connect() as conn:
        assert set(conn.execute(sa.text("SELECT * FROM job_metrics"))) == {("j1", "test", "rmse", 0.4)}
    upgrade_database()
    engine.dispose()
