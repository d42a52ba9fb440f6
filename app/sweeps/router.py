"""Routes of /api/v1/sweeps: validate, call one service function, return a schema."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from app.auth import CurrentProject
from app.db import SessionDep
from app.pagination import Page, PageParams, page_params
from app.sweeps import service
from app.sweeps.schemas import SweepCancel, SweepCreate, SweepRead, SweepSummary

sweeps_router = APIRouter(prefix="/sweeps", tags=["sweeps"])


@sweeps_router.post("", status_code=201, response_model=SweepRead)
def create_sweep(body: SweepCreate, project: CurrentProject, session: SessionDep) -> SweepRead:
    """One job per (setting, seed), every spec checked against the dataset before anything is stored."""
    sweep = service.create_sweep(session, project, body)
    return service.read_sweep(session, project, sweep.id)


@sweeps_router.get("", response_model=Page[SweepSummary])
def list_sweeps(
    project: CurrentProject, session: SessionDep, page: Annotated[PageParams, Depends(page_params)]
) -> Page[SweepSummary]:
    items, cursor = service.list_sweeps(session, project, page)
    return Page[SweepSummary](items=items, next_cursor=cursor)


@sweeps_router.get("/{sweep_id}", response_model=SweepRead)
def get_sweep(sweep_id: str, project: CurrentProject, session: SessionDep) -> SweepRead:
    """The sweep, its jobs, and statistics over the seeds of each setting (succeeded jobs so far)."""
    return service.read_sweep(session, project, sweep_id)


@sweeps_router.post("/{sweep_id}/cancel", status_code=202, response_model=SweepCancel)
def cancel_sweep(sweep_id: str, project: CurrentProject, session: SessionDep) -> SweepCancel:
    """Queued jobs are cancelled at once; running ones stop within one epoch."""
    return service.cancel_sweep(session, project, sweep_id)


@sweeps_router.delete("/{sweep_id}", status_code=204)
def delete_sweep(sweep_id: str, project: CurrentProject, session: SessionDep) -> Response:
    """Delete the sweep and its jobs once none is queued or running (cancel it first)."""
    service.delete_sweep(session, project, sweep_id)
    return Response(status_code=204)


router = sweeps_router
