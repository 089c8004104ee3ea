"""`blockprune api [--host H] [--port P] [--workers N]`: serve the REST API with uvicorn."""

from __future__ import annotations

import argparse


def add_api_commands(subparsers: argparse._SubParsersAction) -> None:
    api = subparsers.add_parser("api", help="serve the REST API")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    # More processes serve more requests where cores are free (a request's work is Python,
    # held by the GIL); on the 2-core dev machine, shared with the load, 2 did not beat 1.
    api.add_argument("--workers", type=int, default=1, help="API processes (default 1)")
    api.set_defaults(func=serve_api)


def serve_api(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run(
        "api.app:create_app", factory=True, host=args.host, port=args.port, workers=args.workers
    )
    return 0
