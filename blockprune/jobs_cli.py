"""`blockprune jobs ...`: the service's jobs from a shell, through blockprune.client.

    export BLOCKPRUNE_API_URL=http://127.0.0.1:8000 BLOCKPRUNE_API_KEY=bp_...
    blockprune jobs submit --model my-llama/ --calibration calib.txt --num-blocks 8 --wait
    blockprune jobs download JOB_ID --dest pruned/my-llama-8

`submit` takes `blockprune prune`'s job options (the same JobSpec fields, checked the same way
before anything is sent); a --model folder or a --calibration/--eval-data file on this machine
is uploaded first and replaced by its upload:<id>.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from contract import JobSpec, JobStatus, UserError
from core.cli import add_spec_options, print_table, removed_rows, spec_from_args
from core.eval_cli import add_evaluation_options

if TYPE_CHECKING:  # the client (httpx) loads when a command runs, not to parse arguments
    from blockprune.client import Client, Job

EXIT_CODES = """exit codes:
  0  done: the job succeeded (wait, submit --wait), or the command did what it says
  1  the job failed or was cancelled (wait, submit --wait)
  2  a usage or user error, or an error answer from the API (one line on stderr)
  3  --timeout passed before the job ended (the job goes on)
  130  interrupted (the job goes on)
"""
SOURCE = re.compile(r"^[a-z][a-z0-9]*:")  # upload:, s3:, hf:, builtin: (not a local path)


def add_jobs_commands(sub: argparse._SubParsersAction) -> None:
    jobs = sub.add_parser(
        "jobs",
        help="submit, follow and download jobs of a BlockPrune service ($BLOCKPRUNE_API_URL)",
        description="The jobs of a BlockPrune service, through its API.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = jobs.add_subparsers(dest="jobs_command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--api-url", help="the service's URL (default $BLOCKPRUNE_API_URL)")
    common.add_argument("--api-key", help="an API key (default $BLOCKPRUNE_API_KEY)")

    def command(name: str, help: str, func: Callable[..., int]) -> argparse.ArgumentParser:
        p = commands.add_parser(
            name,
            help=help,
            description=help,
            parents=[common],
            epilog=EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=lambda args: _run(func, args))
        return p

    p = command("submit", "queue a job with `blockprune prune`'s job options", cmd_submit)
    add_spec_options(p, [name for name in JobSpec.model_fields if name != "evaluation"])
    add_evaluation_options(p, prefix="eval-")
    p.add_argument("--parallelism", type=int, help="workers scoring each iteration (1-64)")
    p.add_argument(
        "--metadata", action="append", default=[], metavar="KEY=VALUE", help="a label (repeat)"
    )
    p.add_argument("--webhook-url", help="receives the job's final state, signed")
    p.add_argument("--wait", action="store_true", help="then follow it until it ends")
    _wait_options(p)

    p = command("wait", "follow a job with a progress bar until it ends", cmd_wait)
    p.add_argument("id")
    _wait_options(p)
    p = command("status", "a job, as JSON", cmd_status)
    p.add_argument("id")
    p = command("events", "a job's history", cmd_events)
    p.add_argument("id")
    p = command("cancel", "cancel a queued or running job", cmd_cancel)
    p.add_argument("id")
    p = command("list", "the tenant's jobs, newest first", cmd_list)
    p.add_argument("--status", choices=[s.value for s in JobStatus])
    p = command("download", "a succeeded job's export, checked against its manifest", cmd_download)
    p.add_argument("id")
    p.add_argument("--dest", help="the folder (default pruned/<id>)")


def _wait_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, help="give up waiting after this many seconds")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between polls (default 1)")


def _run(func: Callable[[Client, argparse.Namespace], int], args: argparse.Namespace) -> int:
    """The command with a client; the client's errors as one line on stderr, like UserError."""
    from blockprune.client import Client, ClientError, WaitTimeout

    try:
        with Client.from_env(args.api_url, args.api_key) as client:
            return func(client, args)
    except WaitTimeout as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # not run_command's message: there is nothing to --resume here
        print("interrupted", file=sys.stderr)
        return 130


def cmd_submit(client: Client, args: argparse.Namespace) -> int:
    spec = _uploaded(client, spec_from_args(args))
    job = client.jobs.create(
        spec,
        metadata=_metadata(args.metadata),
        webhook_url=args.webhook_url,
        parallelism=args.parallelism,
    )
    print(job.id)  # alone on stdout: ID=$(blockprune jobs submit ...)
    return _follow(client, job.id, args) if args.wait else 0


def _uploaded(client: Client, spec: JobSpec) -> JobSpec:
    """`spec` with its local model folder and text files uploaded, named by upload:<id>."""
    updates: dict[str, object] = {}
    if _local(spec.model, "model"):
        print(f"uploading the model folder {spec.model}", file=sys.stderr)
        updates["model"] = client.uploads.model(spec.model)
    if _local(spec.calibration, "calibration"):
        print(f"uploading the calibration text {spec.calibration}", file=sys.stderr)
        updates["calibration"] = client.uploads.calibration(spec.calibration)
    evaluation = spec.evaluation
    if evaluation is not None and any(_local(d, "eval-data") for d in evaluation.data):
        data = [
            client.uploads.calibration(d) if _local(d, "eval-data") else d for d in evaluation.data
        ]
        updates["evaluation"] = evaluation.model_copy(update={"data": data})
    return spec.model_copy(update=updates)


def _local(value: str, field: str) -> bool:
    """Whether `value` is a path on this machine (else a source the service reads itself)."""
    if SOURCE.match(value):
        return False
    if not Path(value).exists():
        raise UserError(
            field,
            f"{value} does not exist here (give a local path, upload:ID, s3://, hf: or builtin:)",
        )
    return True


def _metadata(pairs: list[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError("metadata", f"expected KEY=VALUE, got {pair!r}")
        labels[key] = value
    return labels


def cmd_wait(client: Client, args: argparse.Namespace) -> int:
    return _follow(client, args.id, args)


def _follow(client: Client, job_id: str, args: argparse.Namespace) -> int:
    """Wait for the job with `blockprune prune`'s progress bar; 0 if it succeeded, else 1."""
    from core.progress import SearchBar

    bar = SearchBar()

    def show(job: Job) -> None:
        stage = job.phase if job.status == JobStatus.RUNNING and job.phase else job.status.value
        bar.snapshot(stage, job.progress, job.removed)

    try:
        job = client.jobs.wait(job_id, args.timeout, args.poll, on_update=show)
    except KeyboardInterrupt:
        print(f"stopped waiting; the job goes on (blockprune jobs wait {job_id})", file=sys.stderr)
        return 130
    finally:
        bar.close()
    if job.status != JobStatus.SUCCEEDED:
        reason = f": {job.error.message} ({job.error.code.value})" if job.error else ""
        print(f"job {job.id} {job.status.value}{reason}", file=sys.stderr)
        return 1
    print_table(removed_rows(job.base_ppl, [r.model_dump() for r in job.removed]))
    print(f"job {job.id} succeeded; fetch it with: blockprune jobs download {job.id}")
    return 0


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    print(client.jobs.get(args.id).model_dump_json(indent=1))
    return 0


def cmd_events(client: Client, args: argparse.Namespace) -> int:
    import json

    for event in client.jobs.events(args.id):
        print(
            f"{event.created_at.isoformat(timespec='seconds')}  {event.kind:<9} "
            f"{json.dumps(event.data, sort_keys=True)}"
        )
    return 0


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    job = client.jobs.cancel(args.id)
    print(f"job {job.id} {job.status.value}")
    return 0


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    rows = [("id", "status", "phase", "done", "model", "created")]
    for job in client.jobs.list(args.status):
        fraction = job.progress.fraction
        rows.append(
            (
                job.id,
                job.status.value,
                job.phase.value if job.phase else "-",
                "-" if fraction is None else f"{fraction:.0%}",
                job.model,
                job.created_at.isoformat(timespec="seconds"),
            )
        )
    print_table(rows)
    return 0


def cmd_download(client: Client, args: argparse.Namespace) -> int:
    folder = client.jobs.download(args.id, args.dest or Path("pruned") / args.id)
    print(folder.resolve())
    return 0
