from fastapi import APIRouter

router = APIRouter(prefix="/sweeps", tags=["sweeps"])
