"""The functions the jobs domain calls: get_dataset and load_dataset_data."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from app.db import new_session
from app.errors import AppError
from tests.datasets.conftest import csv_bytes, npz_bytes, upload


def test_get_dataset_is_scoped_to_the_project(client, auth, other_auth) -> None:
    from app.datasets.service import get_dataset
    from app.models import Project

    dataset_id = upload(client, auth, "d.csv", csv_bytes(["a", "1"])).json()["id"]
    with new_session() as session:
        alpha = session.query(Project).filter_by(name="alpha").one()
        beta = session.query(Project).filter_by(name="beta").one()
        assert get_dataset(session, alpha.id, dataset_id).id == dataset_id
        with pytest.raises(AppError) as caught:
            get_dataset(session, beta.id, dataset_id)
    assert caught.value.status_code == 404 and caught.value.code == "dataset_not_found"


def test_load_table_all_or_some_columns(client, auth) -> None:
    from app.datasets.loading import load_dataset_data
    from app.datasets.service import get_dataset
    from app.models import Project

    content = csv_bytes(["t,value,label", "1,0.5,a", "2,,b", "3,1.5,"])
    dataset_id = upload(client, auth, "d.csv", content).json()["id"]
    with new_session() as session:
        project = session.query(Project).filter_by(name="alpha").one()
        dataset = get_dataset(session, project.id, dataset_id)
    table = load_dataset_data(dataset)
    assert isinstance(table, pa.Table) and table.column_names == ["t", "value", "label"]
    assert table.column("value").to_pylist() == [0.5, None, 1.5]
    some = load_dataset_data(dataset, ["label", "t"])
    assert isinstance(some, pa.Table) and some.column_names == ["label", "t"]
    with pytest.raises(AppError) as caught:
        load_dataset_data(dataset, ["value", "temp"])
    assert caught.value.code == "column_not_found" and "'temp'" in caught.value.message
    assert "t, value, label" in caught.value.message


def test_load_npz_arrays(client, auth) -> None:
    from app.datasets.loading import load_dataset_data
    from app.datasets.service import get_dataset
    from app.models import Project

    X = np.random.default_rng(0).normal(size=(4, 3, 2)).astype(np.float32)
    dataset_id = upload(client, auth, "a.npz", npz_bytes(X=X, y=np.arange(4))).json()["id"]
    with new_session() as session:
        project = session.query(Project).filter_by(name="alpha").one()
        dataset = get_dataset(session, project.id, dataset_id)
    arrays = load_dataset_data(dataset)
    assert isinstance(arrays, dict) and set(arrays) == {"X", "y"}
    np.testing.assert_array_equal(arrays["X"], X)
    only_y = load_dataset_data(dataset, ["y"])
    assert isinstance(only_y, dict) and list(only_y) == ["y"]
    with pytest.raises(AppError) as caught:
        load_dataset_data(dataset, ["split"])
    assert caught.value.code == "array_not_found"


def test_identical_uploads_racing_give_one_dataset(client, auth, monkeypatch) -> None:
    import app.datasets.service as service

    content = csv_bytes(["t,value", "1,0.5", "2,0.7"])
    first = upload(client, auth, "d.csv", content)
    assert first.status_code == 201
    # The second upload's duplicate check runs before the first one committed: it sees nothing.
    real = service._same_content
    calls = {"n": 0}

    def stale_then_real(*args, **kwargs):
        calls["n"] += 1
        return None if calls["n"] == 1 else real(*args, **kwargs)

    monkeypatch.setattr(service, "_same_content", stale_then_real)
    second = upload(client, auth, "d.csv", content)
    assert second.status_code == 200 and second.json()["id"] == first.json()["id"]
    assert client.get("/api/v1/datasets", headers=auth).json()["items"].__len__() == 1


def test_reupload_restores_a_lost_blob(client, auth) -> None:
    from app.models import Dataset
    from app.storage import get_storage

    content = csv_bytes(["t,value", "1,0.5", "2,0.7"])
    dataset_id = upload(client, auth, "d.csv", content).json()["id"]
    with new_session() as session:
        key = session.get(Dataset, dataset_id).storage_key
    get_storage().delete(key)
    again = upload(client, auth, "d.csv", content)
    assert again.status_code == 200 and again.json()["id"] == dataset_id
    assert get_storage().exists(key)
