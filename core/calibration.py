"""Calibration text -> a [samples, seq_len] block of token ids.

Every source becomes one text stream, tokenized once with the tokenizer's defaults and cut into
consecutive, non-overlapping `seq_len` chunks (the tail is dropped); the first `samples` chunks
are the calibration set. Row-based sources (.jsonl, hf:alpaca) are shuffled with the seed before
joining, so the seed picks which rows land in the first chunks.

Sources: a local ``.txt`` / ``.jsonl`` file, ``builtin:stdlib-docs`` (offline English prose that
ships with every Python), ``hf:wikitext2`` and ``hf:alpaca`` (need the optional ``datasets``
package and a reachable hub).

A ``.txt`` file is read only as far as its first chunks need (`_read_txt`): a 1 GB file gives
its first 32k tokens without being read, decoded or tokenized whole, and the ids are the same
as tokenizing the whole file would give.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from contract import ErrorCode, UserError
from contract.sources import BUILTIN_CALIBRATION, HUB_CALIBRATION
from core.hub import hub_offline

FIELD = "calibration"
ROW_SEPARATOR = "\n\n"
# A .txt file's first read: this many bytes per token wanted (English BPE takes about 4, so one
# read is nearly always enough), at least MIN_READ_BYTES; each further read doubles the text.
BYTES_PER_TOKEN = 8
MIN_READ_BYTES = 1 << 16
# Tokens that a prefix of a .txt file must hold past the last one used (see _read_txt).
MARGIN_TOKENS = 256


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
    first_read: int | None = None,
) -> Calibration:
    """Tokenize `source` as one stream and return its first `samples` chunks of `seq_len` ids.
    `first_read`: the bytes of a .txt file's first read (None: from the tokens needed)."""
    if not isinstance(samples, int) or samples < 1:
        raise UserError("samples", f"must be an integer >= 1, got {samples!r}")
    if not isinstance(seq_len, int) or seq_len < 2:
        raise UserError("seq_len", f"must be an integer >= 2 (next-token loss), got {seq_len!r}")
    text, ids, details, complete = read_tokens(
        source, tokenizer, samples * seq_len, seed, text_field, first_read
    )
    chunks_available = len(ids) // seq_len
    if chunks_available < samples:  # only ever when the whole text was read
        raise UserError(
            FIELD,
            f"{source} has too little text: {len(ids)} tokens = {chunks_available} chunks of "
            f"{seq_len} tokens available, {samples} requested ({samples * seq_len} tokens); "
            "lower samples or seq_len, or use a longer source",
            code=ErrorCode.NOT_ENOUGH_TEXT,
        )
    input_ids = torch.tensor(ids[: samples * seq_len], dtype=torch.long).view(samples, seq_len)
    # The text the ids came from: the whole stream, or (a .txt file read in part) its first
    # text_chars characters, which text_sha256 hashes: what a reader can check against the file.
    # The counts of the whole file are unknown then (None). Nothing downstream reads these
    # figures (pruning.json records them), so a prefix's hash changes no result.
    description = {
        "source": source,
        "samples": samples,
        "seq_len": seq_len,
        "seed": seed,
        "tokens_available": len(ids) if complete else None,
        "chunks_available": chunks_available if complete else None,
        "tokens_used": samples * seq_len,
        "text_chars": len(text),
        "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "text_complete": complete,
        **details,
    }
    return Calibration(input_ids=input_ids, description=description)


def read_tokens(
    source: str,
    tokenizer,
    wanted: int | None,
    seed: int = 0,
    text_field: str = "text",
    first_read: int | None = None,
) -> tuple[str, list[int], dict, bool]:
    """(text, its ids, source facts, whether that is the whole source) of `source` as one
    token stream. A .txt file is read only as far as `wanted` ids need (None: whole); its first
    `wanted` ids are those of the whole file. Other sources are read whole."""
    path = _local_file(source)
    if path is not None and path.suffix == ".txt":  # read only as far as the chunks need
        if wanted is None:
            text, ids, complete = _read_txt(source, tokenizer, None, first_read)
        else:
            text, ids, complete = _read_txt(source, tokenizer, wanted + MARGIN_TOKENS, first_read)
        return text, ids, {}, complete
    if path is None:
        text, details = _read_source(source, seed)
    else:
        text, details = _read_jsonl(path, source, seed, text_field)
    return text, _tokenize(tokenizer, text), details, True


def _tokenize(tokenizer, text: str) -> list[int]:
    # verbose=False: a long stream is the point here, not a mistake worth a warning.
    return tokenizer(text, verbose=False)["input_ids"]


def _read_txt(
    source: str, tokenizer, wanted: int | None, first_read: int | None
) -> tuple[str, list[int], bool]:
    """(text, its ids, whether it is the whole file) of a .txt file, read in blocks (each
    doubling what was read) until a prefix that ends at a space or line break tokenizes to
    `wanted` ids or more, else to its end.

    Why the prefix's first `wanted - MARGIN_TOKENS` ids are the whole file's: a tokenizer's
    pre-tokenizer splits the text at whitespace (byte-level BPE: GPT-2's regex; SentencePiece
    BPE: the metaspace), and its model encodes each piece on its own, so text after the cut
    changes only the pieces next to it: the last whitespace run, a few tokens. Normalizers
    (NFC...) act on single characters or short runs; a BOS is added at the start of both and an
    EOS at the end lies in the margin. MARGIN_TOKENS keeps the ids used hundreds of tokens away
    from the cut. Text with no whitespace after its start is read to the end, as before. The
    bytes are decoded as Path.read_text does (UTF-8, a character split across blocks waits for
    its other bytes; CRLF and CR become LF, a CR at a block's end waits for the next byte)."""
    utf8 = codecs.getincrementaldecoder("utf-8")()
    decoder = io.IncrementalNewlineDecoder(utf8, translate=True)
    if wanted is None:  # the whole file
        first_read = first_read or Path(source).stat().st_size + 1
    size = first_read or max(MIN_READ_BYTES, BYTES_PER_TOKEN * (wanted or 0))
    text, done = "", 0
    with open(source, "rb") as f:
        while True:
            data = f.read(size)
            final = len(data) < size
            pending = len(utf8.getstate()[0])
            try:
                text += decoder.decode(data, final=final)
            except UnicodeDecodeError as e:
                at = done - pending + e.start
                raise UserError(
                    FIELD, f"{source} is not UTF-8 text: byte {at:,} ({e.reason})"
                ) from None
            done += len(data)
            if final:
                return text, _tokenize(tokenizer, text), True
            cut = max(text.rfind(" "), text.rfind("\n")) + 1
            if cut > 0 and wanted is not None:
                ids = _tokenize(tokenizer, text[:cut])
                if len(ids) >= wanted:
                    return text[:cut], ids, False
            size = done


def _local_file(source: str) -> Path | None:
    """The path of a .txt or .jsonl source, checked; None for builtin: and hf: sources."""
    if source.startswith(("builtin:", "hf:")):
        return None
    path = Path(source)
    if path.suffix not in (".txt", ".jsonl"):
        raise UserError(
            FIELD,
            f"unknown source {source!r}: expected a .txt or .jsonl file, "
            f"{', '.join(BUILTIN_CALIBRATION + HUB_CALIBRATION)}",
        )
    if not path.is_file():
        raise UserError(FIELD, f"file not found: {source}", code=ErrorCode.NOT_FOUND)
    return path


def _read_source(source: str, seed: int) -> tuple[str, dict]:
    """The whole text stream of a builtin: or hf: source, plus source-specific facts for the
    description."""
    if source in ("builtin:stdlib-docs", "builtin:stdlib-docs-heldout"):
        from pydoc_data.topics import topics

        # -heldout reads the topics from the other end: an evaluation's first tokens are the
        # ones a calibration of the same text reaches last.
        keys = sorted(topics, reverse=source.endswith("-heldout"))
        return ROW_SEPARATOR.join(topics[k] for k in keys), {}
    if source.startswith("builtin:"):
        raise UserError(FIELD, f"unknown builtin source {source!r}; known: {BUILTIN_CALIBRATION}")
    return _read_hub_dataset(source, seed)


def _read_jsonl(path: Path, source: str, seed: int, text_field: str) -> tuple[str, dict]:
    """A .jsonl file's rows, shuffled by the seed: read whole, every row takes part."""
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(FIELD, f"{source} is not UTF-8 text: {e}") from None
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
        if source in ("hf:wikitext2", "hf:wikitext2-test"):
            split = "test" if source.endswith("-test") else "train"
            rows = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)["text"]
            return ROW_SEPARATOR.join(rows), {"rows": len(rows)}
        rows = datasets.load_dataset("tatsu-lab/alpaca", split="train")["text"]
    except Exception as e:  # datasets raises many types for network/cache failures
        raise UserError(
            FIELD,
            f"could not load {source} from the hub ({e}); {offline_hint}",
            ErrorCode.HUB_UNREACHABLE,
        ) from None
    return _shuffled_join(list(rows), seed), {"rows": len(rows)}
