"""The service's administration commands, registered on the `blockprune` CLI's subparsers:

blockprune db upgrade [REV] | db downgrade REV   apply / revert migrations
blockprune keys create --tenant NAME           print a new API key (alone on its last line)
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alembic.config import Config


def add_admin_commands(subparsers: argparse._SubParsersAction) -> None:
    db = subparsers.add_parser("db", help="database migrations")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="apply migrations (default: to head)")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(func=db_upgrade)
    down = db_sub.add_parser("downgrade", help="revert migrations (e.g. -1, or base for all)")
    down.add_argument("revision")
    down.set_defaults(func=db_downgrade)

    keys = subparsers.add_parser("keys", help="API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key for a tenant (made if new)")
    create.add_argument("--tenant", required=True)
    create.set_defaults(func=create_key)


def alembic_config() -> Config:
    """Alembic's config without an ini file, so an installed package can migrate too."""
    from alembic.config import Config

    from migrations import MIGRATIONS_DIR

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


def create_key(args: argparse.Namespace) -> int:
    from service.db import transaction
    from service.keys import create_key as make_key

    with transaction() as session:
        key = make_key(session, args.tenant)
    print(f"created an API key for tenant {args.tenant!r}; it is shown only once:")
    print(key)
    return 0
