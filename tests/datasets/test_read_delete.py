"""Listing, getting, previewing and deleting datasets; project isolation; the jobs hook."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from app.config import get_settings
from tests.datasets.conftest import (
    assert_error,
    csv_bytes,
    delete_jobs,
    insert_job,
    npz_bytes,
    parquet_bytes,
    storage_files,
    upload,
)


def small_csv(i: int) -> bytes:
    return csv_bytes(["t,value"] + [f"{t},{t * i}" for t in range(5)])


def test_list_is_newest_first_with_a_cursor(client, auth, other_auth) -> None:
    ids = [upload(client, auth, f"d{i}.csv", small_csv(i)).json()["id"] for i in range(5)]
    upload(client, other_auth, "theirs.csv", small_csv(99))

    first = client.get("/api/v1/datasets?limit=2", headers=auth).json()
    assert [d["id"] for d in first["items"]] == ids[::-1][:2] and first["next_cursor"]
    second = client.get(f"/api/v1/datasets?limit=2&cursor={first['next_cursor']}", headers=auth).json()
    third = client.get(f"/api/v1/datasets?limit=2&cursor={second['next_cursor']}", headers=auth).json()
    assert [d["id"] for d in second["items"] + third["items"]] == ids[::-1][2:]
    assert third["next_cursor"] is None
    assert client.get("/api/v1/datasets?cursor=bogus", headers=auth).status_code == 400


def test_the_cursor_is_a_position_so_uploads_and_deletes_between_pages_skip_or_repeat_nothing(client, auth) -> None:
    ids = [upload(client, auth, f"d{i}.csv", small_csv(i)).json()["id"] for i in range(5)]
    first = client.get("/api/v1/datasets?limit=2", headers=auth).json()
    assert [d["id"] for d in first["items"]] == ids[::-1][:2]
    upload(client, auth, "newer.csv", small_csv(50))  # lands before the first page: not in the next ones
    assert client.delete(f"/api/v1/datasets/{ids[4]}", headers=auth).status_code == 204  # one already seen
    rest, cursor = [], first["next_cursor"]
    while cursor:
        page = client.get("/api/v1/datasets", params={"limit": 2, "cursor": cursor}, headers=auth).json()
        rest += [d["id"] for d in page["items"]]
        cursor = page["next_cursor"]
    assert rest == ids[::-1][2:]  # an offset cursor repeated ids[2] here and skipped ids[0]


def test_get_returns_the_dataset(client, auth) -> None:
    created = upload(client, auth, "d.csv", small_csv(1)).json()
    r = client.get(f"/api/v1/datasets/{created['id']}", headers=auth)
    assert r.status_code == 200 and r.json() == created


def test_another_projects_dataset_is_404(client, auth, other_auth) -> None:
    dataset_id = upload(client, auth, "d.csv", small_csv(1)).json()["id"]
    for method, path in [
        ("GET", f"/api/v1/datasets/{dataset_id}"),
        ("GET", f"/api/v1/datasets/{dataset_id}/preview"),
        ("DELETE", f"/api/v1/datasets/{dataset_id}"),
    ]:
        r = client.request(method, path, headers=other_auth)
        assert_error(r, 404, "dataset_not_found", dataset_id)
    assert client.get(f"/api/v1/datasets/{dataset_id}", headers=auth).status_code == 200
    assert client.get("/api/v1/datasets", headers=other_auth).json()["items"] == []


def test_preview_table_rows(client, auth) -> None:
    content = csv_bytes(
        ["when,name,x"] + [f"2024-01-0{d} 00:00:00,n{d},{d / 2 if d != 3 else 'NaN'}" for d in range(1, 8)]
    )
    dataset = upload(client, auth, "p.csv", content).json()
    body = client.get(f"/api/v1/datasets/{dataset['id']}/preview?rows=3", headers=auth).json()
    assert body["num_rows"] == 7 and body["columns"] == dataset["columns"]
    assert body["rows"] == [
        {"when": "2024-01-01T00:00:00", "name": "n1", "x": 0.5},
        {"when": "2024-01-02T00:00:00", "name": "n2", "x": 1.0},
        {"when": "2024-01-03T00:00:00", "name": "n3", "x": None},
    ]
    assert len(client.get(f"/api/v1/datasets/{dataset['id']}/preview", headers=auth).json()["rows"]) == 7


@pytest.mark.parametrize("rows", [0, 1001])
def test_preview_rows_are_bounded(client, auth, rows) -> None:
    dataset_id = upload(client, auth, "d.csv", small_csv(1)).json()["id"]
    r = client.get(f"/api/v1/datasets/{dataset_id}/preview?rows={rows}", headers=auth)
    err = assert_error(r, 422, "validation_error")
    assert err["details"][0]["field"] == "rows"


def test_preview_parquet_with_small_row_groups(client, auth) -> None:
    import io

    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.table({"v": list(range(50))}), sink, row_group_size=4)
    dataset_id = upload(client, auth, "rg.parquet", sink.getvalue()).json()["id"]
    rows = client.get(f"/api/v1/datasets/{dataset_id}/preview?rows=10", headers=auth).json()["rows"]
    assert rows == [{"v": v} for v in range(10)]


def test_preview_npz_arrays(client, auth) -> None:
    X = np.arange(60, dtype=np.float32).reshape(10, 3, 2)
    content = npz_bytes(X=X, y=np.arange(10) % 2, scale=np.float64(2.5), wide=np.ones((3, 20_000)))
    dataset_id = upload(client, auth, "a.npz", content).json()["id"]
    arrays = client.get(f"/api/v1/datasets/{dataset_id}/preview?rows=2", headers=auth).json()["arrays"]
    assert arrays["X"] == {"shape": [10, 3, 2], "dtype": "float32", "head": X[:2].tolist(), "shown": 2}
    assert arrays["y"]["head"] == [0, 1] and arrays["y"]["dtype"] == "int64"
    assert arrays["scale"] == {"shape": [], "dtype": "float64", "head": 2.5, "shown": 1}
    assert arrays["wide"]["head"] is None and arrays["wide"]["shown"] == 0  # one entry is too large to show


def test_delete_removes_row_and_blob(client, auth) -> None:
    dataset_id = upload(client, auth, "d.parquet", parquet_bytes(pa.table({"a": [1, 2]}))).json()["id"]
    assert len(storage_files()) == 1
    r = client.delete(f"/api/v1/datasets/{dataset_id}", headers=auth)
    assert r.status_code == 204 and r.content == b""
    assert storage_files() == []
    assert_error(client.get(f"/api/v1/datasets/{dataset_id}", headers=auth), 404, "dataset_not_found")
    assert_error(client.delete(f"/api/v1/datasets/{dataset_id}", headers=auth), 404, "dataset_not_found")


@pytest.mark.parametrize("status", ["queued", "running"])
def test_delete_is_409_while_a_job_uses_the_dataset(client, auth, status) -> None:
    dataset_id = upload(client, auth, "d.csv", small_csv(1)).json()["id"]
    job_id = insert_job(dataset_id, status)
    err = assert_error(client.delete(f"/api/v1/datasets/{dataset_id}", headers=auth), 409, "dataset_in_use", job_id)
    assert err["details"]["jobs"] == err["details"]["job_ids"] == [job_id]  # named as in job_active
    assert client.get(f"/api/v1/datasets/{dataset_id}", headers=auth).status_code == 200
    assert len(storage_files()) == 1

    delete_jobs()
    assert client.delete(f"/api/v1/datasets/{dataset_id}", headers=auth).status_code == 204


def test_delete_is_409_while_finished_jobs_refer_to_it(client, auth) -> None:
    dataset_id = upload(client, auth, "d.csv", small_csv(1)).json()["id"]
    insert_job(dataset_id, "succeeded")
    err = assert_error(
        client.delete(f"/api/v1/datasets/{dataset_id}", headers=auth),
        409,
        "dataset_referenced",
        "1 finished job",
    )
    assert err["details"] == {"jobs": 1, "sweeps": 0}
    assert len(storage_files()) == 1


def test_missing_blob_is_reported_not_crashed(client, auth) -> None:
    dataset_id = upload(client, auth, "d.csv", small_csv(1)).json()["id"]
    for path in storage_files():
        path.unlink()
    r = client.get(f"/api/v1/datasets/{dataset_id}/preview", headers=auth)
    assert_error(r, 503, "dataset_file_missing", dataset_id)
    assert get_settings().storage_root.exists()
