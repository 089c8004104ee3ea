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
    listing = keys_sub.add_parser("list", help="a tenant's keys (prefixes only)")
    listing.add_argument("--tenant", required=True)
    listing.set_defaults(func=list_keys)
    revoke = keys_sub.add_parser("revoke", help="revoke the key with this prefix")
    revoke.add_argument("prefix", help="the key's prefix, as `keys list` shows it")
    revoke.set_defaults(func=revoke_key)


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
        issued = make_key(session, args.tenant)
    if issued.webhook_secret is not None:
        print(f"created tenant {args.tenant!r} (id {issued.tenant_id})")
        print(f"its webhook signing secret, shown only once: {issued.webhook_secret}")
    print(
        f"created an API key for tenant {args.tenant!r} (prefix {issued.prefix}); "
        "it is shown only once:"
    )
    print(issued.key)
    return 0


def list_keys(args: argparse.Namespace) -> int:
    from service.db import transaction
    from service.keys import list_keys as keys_of

    with transaction() as session:
        keys = keys_of(session, args.tenant)
    if not keys:
        print(f"no keys for tenant {args.tenant!r}")
        return 1
    print(f"{'prefix':<14}{'created':<22}{'last used':<22}revoked")
    for k in keys:
        print(
            f"{k.prefix:<14}{_when(k.created_at):<22}{_when(k.last_used_at):<22}"
            f"{_when(k.revoked_at)}"
        )
    return 0


def revoke_key(args: argparse.Namespace) -> int:
    from contract import UserError
    from service.db import transaction
    from service.keys import UnknownKeyPrefix
    from service.keys import revoke_key as revoke

    try:
        with transaction() as session:
            key = revoke(session, args.prefix)
    except UnknownKeyPrefix as e:
        raise UserError("prefix", str(e)) from None
    print(f"revoked key {key.prefix} at {_when(key.revoked_at)}")
    return 0


def _when(moment) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment is not None else "-"
