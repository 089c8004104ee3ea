"""Entry point of the `blockprune` console script: the composition root that puts the engine's
and the service's commands under one name. core/ stays free of service imports; the service
commands exist only where the service extra is installed."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from blockprune.jobs_cli import add_jobs_commands
    from contract import __version__
    from core.cli import add_engine_commands

    parser = argparse.ArgumentParser(
        prog="blockprune",
        description="Training-free block pruning of LLMs (BlockPruner, arXiv 2406.10594).",
    )
    parser.add_argument("--version", action="version", version=f"blockprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_engine_commands(sub)
    add_jobs_commands(sub)  # a service's jobs, through its API: needs only httpx
    try:
        from api.commands import add_api_commands
        from migrations.commands import add_db_commands
        from service.commands import add_admin_commands
        from worker.commands import add_worker_commands
    except ImportError:  # no [service] extra: the engine's commands alone
        pass
    else:
        add_db_commands(sub)
        add_admin_commands(sub)
        add_api_commands(sub)
        add_worker_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from core.cli import run_command

    args = build_parser().parse_args(argv)  # bad arguments: argparse exits 2 with one line
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
