"""Route of /api/v1/datasets/{id}/leaderboard: the best succeeded jobs on a dataset."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.auth import CurrentProject
from app.db import SessionDep
from app.sweeps import service
from app.sweeps.schemas import Leaderboard

router = APIRouter(prefix="/datasets", tags=["leaderboard"])


@router.get("/{dataset_id}/leaderboard", response_model=Leaderboard)
def dataset_leaderboard(
    dataset_id: str,
    project: CurrentProject,
    session: SessionDep,
    metric: Annotated[str, Query(description="A final metric, split.name: test.rmse, test.accuracy, …")] = "test.rmse",
    limit: Annotated[int, Query(ge=1, le=500)] = 10,
) -> Leaderboard:
    """Sorted in the metric's natural direction (errors and losses ascending, scores descending)."""
    return service.leaderboard(session, project, dataset_id, metric, limit)
