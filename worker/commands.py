"""The worker's commands, registered on the `blockprune` CLI's subparsers:

    blockprune worker [--no-reaper]     run a worker (with the reaper, by default)
    blockprune reaper [--once]          run the reaper alone

Heavy imports (celery, the engine) happen inside the commands.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import nullcontext


def add_worker_commands(subparsers: argparse._SubParsersAction) -> None:
    worker = subparsers.add_parser("worker", help="run a pruning worker (and the reaper)")
    worker.add_argument("--no-reaper", action="store_true", help="do not run the reaper here")
    worker.add_argument("--loglevel", default="INFO")
    worker.add_argument("--pool", default="prefork", help="celery pool: prefork (default), solo")
    worker.set_defaults(func=run_worker)

    reaper = subparsers.add_parser("reaper", help="run the reaper alone")
    reaper.add_argument("--once", action="store_true", help="one pass, then exit")
    reaper.set_defaults(func=run_reaper)


def run_worker(args: argparse.Namespace) -> int:
    from service.logs import configure_logging
    from service.multiproc import multiprocess_dir
    from service.settings import get_settings

    if args.no_reaper:
        os.environ["BLOCKPRUNE_WORKER_RUNS_REAPER"] = "false"
        get_settings.cache_clear()
    settings = get_settings()
    # From the first line: Celery warns (running as root, say) before it sets logging up.
    configure_logging(settings.log_format, args.loglevel.upper())
    # The pool's child runs the tasks, this process serves their metrics: a folder they share,
    # set before worker.tasks imports prometheus_client (worker.metrics).
    exported = settings.worker_metrics_port or settings.pushgateway_url
    with multiprocess_dir("blockprune-worker-metrics-") if exported else nullcontext():
        from worker.tasks import app

        # Concurrency 1: one job at a time per worker (run more workers to run more jobs).
        argv = ["worker", f"--loglevel={args.loglevel}", f"--pool={args.pool}", "--concurrency=1"]
        argv += ["--without-gossip", "--without-mingle"]
        if settings.log_format == "json":
            argv.insert(0, "--quiet")  # no banner: every line of the log is a JSON object
        app.worker_main(argv)
    return 0


def run_reaper(args: argparse.Namespace) -> int:
    from service.logs import configure_logging
    from service.outbox import Relay, relay_once
    from service.settings import get_settings
    from worker.reaper import ReaperThread, reap_once
    from worker.sweep import sweep_ended_jobs, sweep_uploads

    settings = get_settings()
    configure_logging(settings.log_format)
    if args.once:
        print(f"re-enqueued {len(reap_once(settings))} jobs")
        print(f"sent {relay_once(settings)} queue messages from the outbox")
        swept = sweep_uploads(settings)
        print(f"swept {swept.uploads} abandoned uploads, {swept.multipart} multipart uploads")
        print(f"swept the prefixes of {sweep_ended_jobs(settings)} cancelled or failed jobs")
        return 0
    relay = Relay(settings)  # what the reaper re-queues goes out through the outbox
    relay.start()
    try:
        ReaperThread(settings).run()  # in the foreground, until interrupted
    except KeyboardInterrupt:
        pass
    finally:
        relay.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m worker worker|reaper`: the worker's commands without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="python -m worker")
    add_worker_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
