"""Dataset routes: upload, list, get, preview, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, status

from app.auth import CurrentProject
from app.datasets import service
from app.datasets.formats import ACCEPTED
from app.datasets.schemas import DatasetPreview, DatasetRead, DatasetSummary
from app.db import SessionDep
from app.pagination import Page, PageParams, page_params

router = APIRouter(prefix="/datasets", tags=["datasets"])

# The body is parsed as a stream by the service (not by FastAPI), so its shape is declared here.
_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": f"One of {ACCEPTED}."},
                        "name": {
                            "type": "string",
                            "description": "Defaults to the filename without extension.",
                        },
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetRead,
    openapi_extra=_UPLOAD_BODY,
    responses={
        200: {
            "description": "This project already has identical content: that dataset.",
            "model": DatasetRead,
        }
    },
    summary="Upload a dataset (.csv, .csv.gz, .parquet, .npz)",
)
async def upload_dataset(
    request: Request, response: Response, session: SessionDep, project: CurrentProject
) -> DatasetRead:
    dataset, created = await service.upload_dataset(session, project.id, request)
    if not created:
        response.status_code = status.HTTP_200_OK
    return DatasetRead.model_validate(dataset)


@router.get("", response_model=Page[DatasetSummary])
def list_datasets(
    session: SessionDep, project: CurrentProject, params: Annotated[PageParams, Depends(page_params)]
) -> Page[DatasetSummary]:
    """Newest first, with column counts; ``GET /datasets/{id}`` has each dataset's columns."""
    rows, next_cursor = service.list_datasets(session, project.id, params)
    items = [
        DatasetSummary(
            id=r.id,
            name=r.name,
            filename=r.filename,
            format=r.format,
            size_bytes=r.size_bytes,
            sha256=r.sha256,
            created_at=r.created_at,
            num_rows=r.num_rows,
            num_columns=None if r.format == "npz" else count,
            arrays=r.arrays,
        )
        for r, count in rows
    ]
    return Page[DatasetSummary](items=items, next_cursor=next_cursor)


@router.get("/{dataset_id}", response_model=DatasetRead)
def get_dataset(dataset_id: str, session: SessionDep, project: CurrentProject) -> DatasetRead:
    return DatasetRead.model_validate(service.get_dataset(session, project.id, dataset_id))


@router.get("/{dataset_id}/preview", response_model=DatasetPreview)
def preview_dataset(
    dataset_id: str,
    session: SessionDep,
    project: CurrentProject,
    rows: Annotated[int, Query(ge=1, le=1000, description="Rows (or array entries) to show.")] = 20,
) -> DatasetPreview:
    return service.preview_dataset(service.get_dataset(session, project.id, dataset_id), rows)


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_dataset(dataset_id: str, session: SessionDep, project: CurrentProject) -> Response:
    service.delete_dataset(session, project.id, dataset_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
