"""`blockprune api [--host H] [--port P]`: serve the REST API with uvicorn."""

from __future__ import annotations

import argparse


def add_api_commands(subparsers: argparse._SubParsersAction) -> None:
    api = subparsers.add_parser("api", help="serve the REST API")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.set_defaults(func=serve_api)


def serve_api(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run("api.app:create_app", factory=True, host=args.host, port=args.port)
    return 0
