"""Alembic migrations of the service's schema: `blockprune db upgrade` or `alembic upgrade head`."""

from pathlib import Path

MIGRATIONS_DIR = Path(__file__).resolve().parent
