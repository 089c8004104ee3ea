"""`blockprune api [--host H] [--port P] [--workers N]`: serve the REST API with uvicorn."""

from __future__ import annotations

import argparse
import os
from contextlib import nullcontext

DEFAULT_WORKERS = max(1, min(os.cpu_count() or 1, 4))


def add_api_commands(subparsers: argparse._SubParsersAction) -> None:
    api = subparsers.add_parser("api", help="serve the REST API")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    # A request's work is Python, held by the GIL: about 4 to 5 ms of CPU per GET, so one
    # process tops out near 200 requests/s. One process per core, up to 4 (each keeps up to
    # BLOCKPRUNE_DB_POOL_SIZE connections): on the 2-core dev machine at 200 GET/s, p99 went
    # from 114 to 490 ms with 1 to 27 and 55 ms with 2 (bench/load.py, docs/service.md).
    api.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help=f"API processes (default: one per core, at most 4; here {DEFAULT_WORKERS})",
    )
    api.set_defaults(func=serve_api)


def serve_api(args: argparse.Namespace) -> int:
    import uvicorn

    from service.logs import logging_config
    from service.multiproc import multiprocess_dir
    from service.settings import get_settings

    # Several processes: /metrics, answered by any one of them, adds up all of theirs.
    shared = multiprocess_dir("blockprune-api-metrics-") if args.workers > 1 else nullcontext()
    with shared:
        uvicorn.run(
            "api.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            # Every line in BLOCKPRUNE_LOG_FORMAT, uvicorn's too; api.telemetry writes one line
            # per request (with its id, route and duration) in place of uvicorn's access log.
            log_config=logging_config(get_settings().log_format),
            access_log=False,
        )
    return 0
