"""The service's command-line commands, registered on the `blockprune` CLI's subparsers:

    blockprune db upgrade [REV] | db downgrade REV   apply / revert migrations
    blockprune api [--host H] [--port P]           serve the REST API
    blockprune worker [--no-reaper]                run a worker (with the reaper, by default)
    blockprune reaper [--once]                     run the reaper alone
    blockprune keys create --tenant NAME           print a new API key (alone on its last line)

Heavy imports (uvicorn, celery, alembic) happen inside the commands.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def add_service_commands(subparsers: argparse._SubParsersAction) -> None:
    db = subparsers.add_parser("db", help="database migrations")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="apply migrations (default: to head)")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(func=db_upgrade)
    down = db_sub.add_parser("downgrade", help="revert migrations (e.g. -1, or base for all)")
    down.add_argument("revision")
    down.set_defaults(func=db_downgrade)

    api = subparsers.add_parser("api", help="serve the REST API")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.set_defaults(func=serve_api)

    worker = subparsers.add_parser("worker", help="run a pruning worker (and the reaper)")
    worker.add_argument("--no-reaper", action="store_true", help="do not run the reaper here")
    worker.add_argument("--loglevel", default="INFO")
    worker.add_argument("--pool", default="prefork", help="celery pool: prefork (default), solo")
    worker.set_defaults(func=run_worker)

    reaper = subparsers.add_parser("reaper", help="run the reaper alone")
    reaper.add_argument("--once", action="store_true", help="one pass, then exit")
    reaper.set_defaults(func=run_reaper)

    keys = subparsers.add_parser("keys", help="API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key for a tenant (made if new)")
    create.add_argument("--tenant", required=True)
    create.set_defaults(func=create_key)


def alembic_config():
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


def serve_api(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run("api.app:create_app", factory=True, host=args.host, port=args.port)
    return 0


def run_worker(args: argparse.Namespace) -> int:
    if args.no_reaper:
        os.environ["BLOCKPRUNE_WORKER_RUNS_REAPER"] = "false"
        from worker.settings import get_settings

        get_settings.cache_clear()
    from worker.celery_app import app

    # Concurrency 1: one job at a time per worker (run more workers to run more jobs).
    argv = ["worker", f"--loglevel={args.loglevel}", f"--pool={args.pool}", "--concurrency=1"]
    argv += ["--without-gossip", "--without-mingle"]
    app.worker_main(argv)
    return 0


def run_reaper(args: argparse.Namespace) -> int:
    from worker.reaper import ReaperThread, reap_once
    from worker.settings import get_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = get_settings()
    if args.once:
        print(f"re-enqueued {len(reap_once(settings))} jobs")
        return 0
    try:
        ReaperThread(settings).run()  # in the foreground, until interrupted
    except KeyboardInterrupt:
        pass
    return 0


def create_key(args: argparse.Namespace) -> int:
    from worker.db import transaction
    from worker.keys import create_key as make_key

    with transaction() as session:
        key = make_key(session, args.tenant)
    print(f"created an API key for tenant {args.tenant!r}; it is shown only once:")
    print(key)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m worker ...`: the same commands without the engine's CLI."""
    parser = argparse.ArgumentParser(prog="python -m worker")
    add_service_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
