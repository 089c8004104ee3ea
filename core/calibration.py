"""Calibration text -> a [samples, seq_len] block of token ids.

Every source becomes one text stream, tokenized once with the tokenizer's defaults and cut into
consecutive, non-overlapping `seq_len` chunks (the tail is dropped); the first `samples` chunks
are the calibration set. Row-based sources (.jsonl, hf:alpaca) are shuffled with the seed before
joining, so the seed picks which rows land in the first chunks.

Sources: a local ``.txt`` / ``.jsonl`` file, ``builtin:stdlib-docs`` (offline English prose that
ships with every Python), ``hf:wikitext2`` and ``hf:alpaca`` (need the optional ``datasets``
package and a reachable hub).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from contract import ErrorCode, UserError
from contract.sources import BUILTIN_CALIBRATION, HUB_CALIBRATION
from core.models import hub_offline

FIELD = "calibration"
ROW_SEPARATOR = "\n\n"


@dataclass
class Calibration:
    input_ids: torch.Tensor  # LongTensor [samples, seq_len]
    description: dict  # JSON-serialisable record of where the ids came from


def load_calibration(
    source: str,
    tokenizer,
    samples: int,
    seq_len: int,
    seed: int = 0,
    text_field: str = "text",
) -> Calibration:
    """Tokenize `source` as one stream and return its first `samples` chunks of `seq_len` ids."""
    if not isinstance(samples, int) or samples < 1:
        raise UserError("samples", f"must be an integer >= 1, got {samples!r}")
    if not isinstance(seq_len, int) or seq_len < 2:
        raise UserError("seq_len", f"must be an integer >= 2 (next-token loss), got {seq_len!r}")
    text, details = _read_source(source, seed, text_field)
    # verbose=False: a long stream is the point here, not a mistake worth a warning.
    ids = tokenizer(text, verbose=False)["input_ids"]
    chunks_available = len(ids) // seq_len
    if chunks_available < samples:
        raise UserError(
            FIELD,
            f"{source} has too little text: {len(ids)} tokens = {chunks_available} chunks of "
            f"{seq_len} tokens available, {samples} requested ({samples * seq_len} tokens); "
            "lower samples or seq_len, or use a longer source",
            code=ErrorCode.NOT_ENOUGH_TEXT,
        )
    input_ids = torch.tensor(ids[: samples * seq_len], dtype=torch.long).view(samples, seq_len)
    description = {
        "source": source,
        "samples": samples,
        "seq_len": seq_len,
        "seed": seed,
        "tokens_available": len(ids),
        "chunks_available": chunks_available,
        "tokens_used": samples * seq_len,
        "text_chars": len(text),
        "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        **details,
    }
    return Calibration(input_ids=input_ids, description=description)


def _read_source(source: str, seed: int, text_field: str) -> tuple[str, dict]:
    """The whole text stream of a source, plus source-specific facts for the description."""
    if source == "builtin:stdlib-docs":
        from pydoc_data.topics import topics

        return ROW_SEPARATOR.join(topics[k] for k in sorted(topics)), {}
    if source.startswith("builtin:"):
        raise UserError(FIELD, f"unknown builtin source {source!r}; known: {BUILTIN_CALIBRATION}")
    if source.startswith("hf:"):
        return _read_hub_dataset(source, seed)
    path = Path(source)
    if path.suffix not in (".txt", ".jsonl"):
        raise UserError(
            FIELD,
            f"unknown source {source!r}: expected a .txt or .jsonl file, "
            f"{', '.join(BUILTIN_CALIBRATION + HUB_CALIBRATION)}",
        )
    if not path.is_file():
        raise UserError(FIELD, f"file not found: {source}", code=ErrorCode.NOT_FOUND)
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(FIELD, f"{source} is not UTF-8 text: {e}") from None
    if path.suffix == ".txt":
        return content, {}
    rows = _jsonl_rows(content, source, text_field)
    return _shuffled_join(rows, seed), {"rows": len(rows), "text_field": text_field}


def _jsonl_rows(content: str, source: str, text_field: str) -> list[str]:
    rows = []
    for line_no, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(FIELD, f"{source} line {line_no}: invalid JSON ({e.msg})") from None
        value = row.get(text_field) if isinstance(row, dict) else None
        if not isinstance(value, str):
            raise UserError(
                FIELD, f"{source} line {line_no}: no string field {text_field!r} (text_field)"
            )
        rows.append(value)
    return rows


def _shuffled_join(rows: list[str], seed: int) -> str:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return ROW_SEPARATOR.join(rows)


def _read_hub_dataset(source: str, seed: int) -> tuple[str, dict]:
    if source not in HUB_CALIBRATION:
        raise UserError(
            FIELD, f"unknown hub source {source!r}; known: {', '.join(HUB_CALIBRATION)}"
        )
    offline_hint = "use a local .txt/.jsonl file or builtin:stdlib-docs instead"
    if hub_offline():
        raise UserError(
            FIELD,
            f"{source} needs the Hugging Face hub but HF_HUB_OFFLINE is set; {offline_hint}",
            code=ErrorCode.HUB_UNREACHABLE,
        )
    try:
        import datasets
    except ImportError:
        raise UserError(
            FIELD,
            f"{source} needs the optional 'datasets' package (pip install datasets); "
            + offline_hint,
            code=ErrorCode.MISSING_DEPENDENCY,
        ) from None
    try:
        if source == "hf:wikitext2":
            rows = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="train")["text"]
            return ROW_SEPARATOR.join(rows), {"rows": len(rows)}
        rows = datasets.load_dataset("tatsu-lab/alpaca", split="train")["text"]
    except Exception as e:  # datasets raises many types for network/cache failures
        raise UserError(
            FIELD,
            f"could not load {source} from the hub ({e}); {offline_hint}",
            ErrorCode.HUB_UNREACHABLE,
        ) from None
    return _shuffled_join(list(rows), seed), {"rows": len(rows)}
