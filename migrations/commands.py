"""`blockprune db upgrade [REV]` and `blockprune db downgrade REV`: apply or revert the
migrations of this package, registered on the `blockprune` CLI's subparsers (blockprune/cli.py)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from migrations import MIGRATIONS_DIR

if TYPE_CHECKING:
    from alembic.config import Config


def add_db_commands(subparsers: argparse._SubParsersAction) -> None:
    db = subparsers.add_parser("db", help="database migrations")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="apply migrations (default: to head)")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(func=db_upgrade)
    down = db_sub.add_parser("downgrade", help="revert migrations (e.g. -1, or base for all)")
    down.add_argument("revision")
    down.set_defaults(func=db_downgrade)


def alembic_config() -> Config:
    """Alembic's config without an ini file, so an installed package can migrate too."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def db_upgrade(args: argparse.Namespace) -> int:
    from alembic import command

    command.upgrade(alembic_config(), args.revision)
    print(f"database upgraded to {args.revision}")
    return 0


def db_downgrade(args: argparse.Namespace) -> int:
    from alembic import command

    command.downgrade(alembic_config(), args.revision)
    print(f"database downgraded to {args.revision}")
    return 0
