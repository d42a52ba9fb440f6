"""Uploading each format: what is inferred, what is stored, and identical content stored once."""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from app.config import get_settings
from tests.datasets.conftest import (
    csv_bytes,
    npz_bytes,
    parquet_bytes,
    storage_files,
    upload,
)

MIXED_CSV = csv_bytes(
    [
        "when,station,temp,count,ok",
        "2024-01-01 00:00:00,north,1.5,3,true",
        "2024-01-01 01:00:00,,NaN,4,false",
        "2024-01-01 02:00:00,south,,5,",
        "2024-01-01 03:00:00,north,-0.25,,true",
    ]
)
MIXED_COLUMNS = [
    {"name": "when", "dtype": "timestamp", "missing": 0},
    {"name": "station", "dtype": "string", "missing": 1},
    {"name": "temp", "dtype": "float64", "missing": 2},
    {"name": "count", "dtype": "int64", "missing": 1},
    {"name": "ok", "dtype": "bool", "missing": 1},
]


def stored_path(dataset_id: str) -> object:
    from app.db import new_session
    from app.models import Dataset

    with new_session() as session:
        row = session.get(Dataset, dataset_id)
        assert row is not None
        return get_settings().storage_root / row.storage_key


def test_csv_upload_infers_columns_and_stores_parquet(client, auth) -> None:
    r = upload(client, auth, "weather.csv", MIXED_CSV)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == "weather" and body["filename"] == "weather.csv" and body["format"] == "csv"
    assert body["size_bytes"] == len(MIXED_CSV)
    assert body["sha256"] == hashlib.sha256(MIXED_CSV).hexdigest()
    assert body["num_rows"] == 4 and body["columns"] == MIXED_COLUMNS and body["arrays"] is None
    assert body["created_at"].endswith("Z") or body["created_at"].endswith("+00:00")

    path = stored_path(body["id"])
    assert path.name == f"{body['sha256']}.parquet" and path.parent.name == body["sha256"][:2]
    table = pq.read_table(path)
    assert table.num_rows == 4 and table.column("temp").to_pylist() == [1.5, None, None, -0.25]
    assert storage_files() == [path]  # nothing left in tmp


def test_name_field_overrides_the_default(client, auth) -> None:
    r = upload(client, auth, "weather.csv", MIXED_CSV, name="  hourly weather ")
    assert r.status_code == 201 and r.json()["name"] == "hourly weather"


def test_csv_gz_upload(client, auth) -> None:
    r = upload(client, auth, "weather.csv.gz", gzip.compress(MIXED_CSV))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["format"] == "csv.gz" and body["name"] == "weather"
    assert body["num_rows"] == 4 and body["columns"] == MIXED_COLUMNS
    assert pq.read_table(stored_path(body["id"])).num_rows == 4


def test_csv_type_surprise_after_the_first_block_widens_the_column(client, auth) -> None:
    # Inference sees only the first block (1 MiB); the odd values sit far beyond it.
    lines = ["id,level,code"] + [f"{i},{i % 7},{i % 3}" for i in range(150_000)]
    lines += ["150000,2.5,x9"]
    r = upload(client, auth, "late.csv", csv_bytes(lines))
    assert r.status_code == 201, r.text
    assert r.json()["columns"] == [
        {"name": "id", "dtype": "int64", "missing": 0},
        {"name": "level", "dtype": "float64", "missing": 0},
        {"name": "code", "dtype": "string", "missing": 0},
    ]
    assert r.json()["num_rows"] == 150_001


def test_csv_quoted_fields_bom_and_crlf(client, auth) -> None:
    content = '\ufeffid,text\r\n1,"a, b"\r\n2,"multi\nline"\r\n3,"ünïcode ✓"\r\n'.encode()
    r = upload(client, auth, "notes.csv", content)
    assert r.status_code == 201, r.text
    assert [c["name"] for c in r.json()["columns"]] == ["id", "text"]
    rows = client.get(f"/api/v1/datasets/{r.json()['id']}/preview", headers=auth).json()["rows"]
    assert [row["text"] for row in rows] == ["a, b", "multi\nline", "ünïcode ✓"]


def test_parquet_upload_is_stored_as_is(client, auth) -> None:
    table = pa.table(
        {
            "x": pa.array([1.0, None, 3.0], pa.float64()),
            "label": pa.array(["a", "b", None]),
            "n": pa.array([1, 2, 3], pa.int32()),
        }
    )
    content = parquet_bytes(table)
    r = upload(client, auth, "t.parquet", content)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["format"] == "parquet" and body["num_rows"] == 3
    assert body["columns"] == [
        {"name": "x", "dtype": "float64", "missing": 1},
        {"name": "label", "dtype": "string", "missing": 1},
        {"name": "n", "dtype": "int32", "missing": 0},
    ]
    assert stored_path(body["id"]).read_bytes() == content


def test_npz_upload_records_array_shapes(client, auth) -> None:
    content = npz_bytes(
        compressed=True,
        X=np.zeros((10, 5, 2), np.float32),
        y=np.arange(10),
        split=np.array(["train"] * 6 + ["val"] * 2 + ["test"] * 2),
    )
    r = upload(client, auth, "seqs.npz", content)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["format"] == "npz" and body["num_rows"] is None and body["columns"] is None
    assert body["arrays"] == {"X": [10, 5, 2], "y": [10], "split": [10]}
    path = stored_path(body["id"])
    assert path.suffix == ".npz" and path.read_bytes() == content


def test_same_project_same_content_returns_the_existing_dataset(client, auth) -> None:
    first = upload(client, auth, "a.csv", MIXED_CSV)
    again = upload(client, auth, "b.csv", MIXED_CSV, name="other name")
    assert first.status_code == 201 and again.status_code == 200
    assert again.json() == first.json()  # the existing dataset, unchanged
    assert len(client.get("/api/v1/datasets", headers=auth).json()["items"]) == 1
    assert len(storage_files()) == 1


def test_other_project_same_content_shares_the_blob(client, auth, other_auth) -> None:
    mine = upload(client, auth, "a.csv", MIXED_CSV).json()
    theirs = upload(client, other_auth, "b.csv", MIXED_CSV)
    assert theirs.status_code == 201
    assert theirs.json()["id"] != mine["id"] and theirs.json()["columns"] == MIXED_COLUMNS
    assert stored_path(theirs.json()["id"]) == stored_path(mine["id"])
    assert len(storage_files()) == 1

    # The blob outlives the first row and goes with the last.
    assert client.delete(f"/api/v1/datasets/{mine['id']}", headers=auth).status_code == 204
    assert len(storage_files()) == 1
    assert client.get(f"/api/v1/datasets/{theirs.json()['id']}/preview", headers=other_auth).status_code == 200
    assert client.delete(f"/api/v1/datasets/{theirs.json()['id']}", headers=other_auth).status_code == 204
    assert storage_files() == []
