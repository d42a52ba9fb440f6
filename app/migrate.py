"""Apply Alembic migrations programmatically (``rnnlab migrate``, ``make up`` and the tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parent.parent


def alembic_config() -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    return cfg


def upgrade_database(revision: str = "head") -> None:
    command.upgrade(alembic_config(), revision)
