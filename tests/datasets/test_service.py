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
    from app.datasets.service import get_dataset, load_dataset_data
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
    from app.datasets.service import get_dataset, load_dataset_data
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
