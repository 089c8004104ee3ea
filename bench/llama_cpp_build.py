"""llama-cpp-python's compile, side by side in one run: as scripts/test.sh built it before (the
whole package: llama, ggml, llama.cpp's `common` and the multimodal library) and as
scripts/install-llama-cpp.sh builds it now (libllama and ggml only). Each build starts from the
sdist with no pip cache; the two wheels are then loaded in turn and must give the same logits on
one GGUF file. Prints each wall time and the ratio.

    .venv/bin/python bench/llama_cpp_build.py [--version 0.3.36] [--order now-first]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEFORE = "-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"


def locked_version() -> str:
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.startswith("llama-cpp-python=="):
            return line.split("==")[1].split(";")[0].strip()
    raise SystemExit("constraints.txt has no llama-cpp-python pin")


def build(name: str, cmake_args: str, version: str, work: Path) -> tuple[float, Path]:
    out = work / name
    env = {**os.environ, "CMAKE_ARGS": cmake_args, "PIP_NO_CACHE_DIR": "1"}
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-binary",
        "llama-cpp-python",
        "-w",
        str(out),
        f"llama-cpp-python=={version}",
    ]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{name} build failed:\n{done.stderr[-3000:]}")
    [wheel] = out.glob("*.whl")
    return seconds, wheel


# Loads one wheel (unpacked on sys.path) and prints the last-token logits of a GGUF file.
LOGITS = """
import json, sys
sys.path.insert(0, sys.argv[1])
import llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[2], logits_all=True, verbose=False, n_ctx=64)
llm.eval([1, 5, 9, 13])
print(json.dumps([float(x) for x in llm.scores[3][:64]]))
"""


def logits(wheel: Path, gguf: Path, work: Path) -> list[float]:
    unpacked = work / (wheel.parent.name + "-site")
    subprocess.run([sys.executable, "-m", "zipfile", "-e", str(wheel), str(unpacked)], check=True)
    done = subprocess.run(
        [sys.executable, "-c", LOGITS, str(unpacked), str(gguf)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def tiny_gguf(work: Path) -> Path:
    """A pruned tiny Llama with a BPE tokenizer, exported and written as GGUF by the product's
    own code (the fixtures of tests/test_gguf.py)."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import tiny_model
    from test_gguf import RECORD, REMOVED, bpe_tokenizer

    from core.export import export_pruned
    from core.export.gguf import export_gguf

    model = tiny_model("llama", layers=6, vocab=300)
    export = export_pruned(model, bpe_tokenizer(), REMOVED, work / "export", **RECORD)
    return export_gguf(export, work / "tiny.gguf", "f16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", default=None, help="llama-cpp-python (default: the lock's)")
    parser.add_argument("--order", choices=("before-first", "now-first"), default="before-first")
    args = parser.parse_args()
    version = args.version or locked_version()
    now = subprocess.run(
        ["bash", str(REPO / "scripts/install-llama-cpp.sh"), "--cmake-args"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    builds = {"before": BEFORE, "now": now}
    order = list(builds) if args.order == "before-first" else list(reversed(builds))
    print(f"llama-cpp-python {version}, {os.cpu_count()} cores, order: {' then '.join(order)}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results = {}
        for name in order:
            seconds, wheel = build(name, builds[name], version, work)
            results[name] = (seconds, wheel)
            print(f"  {name:7s} {seconds:7.1f} s   wheel {wheel.stat().st_size / 2**20:5.1f} MiB")
        gguf = tiny_gguf(work)
        same = logits(results["before"][1], gguf, work) == logits(results["now"][1], gguf, work)
    ratio = results["before"][0] / results["now"][0]
    print(f"RESULT build_speedup={ratio:.2f} same_logits={str(same).lower()}")


if __name__ == "__main__":
    main()
