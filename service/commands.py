"""The service's administration commands, registered on the `blockprune` CLI's subparsers:

blockprune keys create --tenant NAME           print a new API key (alone on its last line)
blockprune keys list --tenant NAME | keys revoke PREFIX

(`blockprune db upgrade` lives with the migrations: migrations/commands.py.)
"""

from __future__ import annotations

import argparse


def add_admin_commands(subparsers: argparse._SubParsersAction) -> None:
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
