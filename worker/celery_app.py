"""The worker's handle on the Celery app (``celery -A worker.celery_app:celery_app worker``).

The app itself is built by :mod:`app.queue`; the tasks are registered on it by :mod:`worker.tasks`.
"""

from __future__ import annotations

from app.queue import get_celery

celery_app = get_celery()
