"""`blockprune export-gguf DIR OUT.gguf [--type f16|q8_0]`: an export as one GGUF file for
llama.cpp, ollama and LM Studio (docs/gguf.md). The writer loads lazily, so that building the
CLI's parser imports no torch."""

from __future__ import annotations

import argparse
import time

GGUF_TYPES = ("f16", "q8_0")  # core.export.gguf.GGUF_TYPES, which checks it again


def add_export_gguf_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-gguf", help="write an export DIR as one GGUF file (llama.cpp, ollama, LM Studio)"
    )
    p.add_argument("dir", metavar="DIR", help="a BlockPrune export directory (what `prune` writes)")
    p.add_argument("out", metavar="OUT.gguf", help="the file to write (replaced if it exists)")
    # no argparse `choices`: a bad type is a UserError, one line and exit 2 like every mistake
    p.add_argument(
        "--type",
        default="f16",
        dest="gguf_type",
        metavar="TYPE",
        help=f"weight type of the 2-D matrices: {' or '.join(GGUF_TYPES)} (default f16)",
    )
    p.set_defaults(func=cmd_export_gguf)


def cmd_export_gguf(args: argparse.Namespace) -> int:
    from core.export.gguf import export_gguf

    start = time.perf_counter()
    out = export_gguf(args.dir, args.out, args.gguf_type)
    size = out.stat().st_size / 2**20
    print(f"wrote {out} ({size:.1f} MiB, {time.perf_counter() - start:.1f} s)")
    return 0
