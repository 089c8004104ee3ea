"""An export's tokenizer as GGUF keys: llama.cpp's "gpt2" tokenizer (byte-level BPE).

llama.cpp does not run a tokenizer.json; it has its own BPE and a fixed set of pre-tokenizers
(the regex splits before BPE), chosen by name in `tokenizer.ggml.pre` (src/llama-vocab.cpp). Its
converter picks the name by hashing how the tokenizer splits a test text; we recognise the few
byte-level pre-tokenizers of Llama-family models by the shape of tokenizer.json instead, and refuse
the others, since a wrong name would tokenize some texts differently without any error.

The tokens, their types and the merges follow llama.cpp's converter (`get_vocab_base`): ids the
tokenizer lacks below the model's vocab size become unused `[PAD{id}]` tokens, added special
tokens are control tokens, other added tokens user-defined. Special ids, the merges, whether BOS or
EOS is added and the chat template come from gguf's own `SpecialVocab` reader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gguf

from contract import ErrorCode, UserError

FIELD = "tokenizer"

# The regexes of tokenizer.json's Split pre-tokenizer, as the models ship them (llama.cpp's
# src/llama-vocab.cpp quotes them next to its adapted versions).
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLIT_PRE_NAMES = {LLAMA3_REGEX: "llama-bpe", QWEN2_REGEX: "qwen2"}


@dataclass
class Vocab:
    tokens: list[str]
    token_types: list[int]
    pre: str
    special: gguf.SpecialVocab

    def add_to(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        self.special.add_to_gguf(writer, quiet=True)


def read_vocab(directory: Path, vocab_size: int) -> Vocab:
    """The tokenizer in `directory` (tokenizer.json), padded to the model's `vocab_size`."""
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise UserError(
            FIELD,
            f"{directory} has no tokenizer.json; a GGUF file needs the tokenizer (export with one)",
            code=ErrorCode.MISSING_TOKENIZER,
        )
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(FIELD, f"{path} is not valid JSON: {err}", ErrorCode.BAD_TOKENIZER) from err
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or not _is_byte_level(spec.get("decoder")):
        raise UserError(
            FIELD,
            f"a {model.get('type')} tokenizer: only byte-level BPE tokenizers (GPT-2 style, "
            "as SmolLM2, Llama 3 and Qwen2 have) can be written to GGUF",
            ErrorCode.BAD_TOKENIZER,
        )
    pre = bpe_pre_name(spec.get("pre_tokenizer"))
    if pre is None:
        raise UserError(
            FIELD,
            f"its pre-tokenizer {json.dumps(spec.get('pre_tokenizer'))[:200]} matches none that "
            f"llama.cpp knows here ({', '.join(KNOWN_PRE_NAMES)})",
            ErrorCode.BAD_TOKENIZER,
        )
    tokens, token_types = _tokens(model.get("vocab") or {}, spec.get("added_tokens") or [])
    if len(tokens) > vocab_size:
        raise UserError(
            FIELD,
            f"has ids up to {len(tokens) - 1}, beyond the model's vocab_size {vocab_size}",
            ErrorCode.BAD_TOKENIZER,
        )
    for i in range(len(tokens), vocab_size):  # embedding rows no token maps to
        tokens.append(f"[PAD{i}]")
        token_types.append(int(gguf.TokenType.UNUSED))
    special = gguf.SpecialVocab(directory, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise UserError(FIELD, "tokenizer.json has no merges", ErrorCode.BAD_TOKENIZER)
    # Write both flags: without them llama.cpp applies its own default, which may differ from
    # what the transformers tokenizer does.
    special.add_special_token.setdefault("bos", False)
    special.add_special_token.setdefault("eos", False)
    return Vocab(tokens, token_types, pre, special)


def bpe_pre_name(pre_tokenizer: object) -> str | None:
    """llama.cpp's name for a tokenizer.json pre-tokenizer, or None when it is not one we know."""
    if not isinstance(pre_tokenizer, dict):
        return None
    steps = [pre_tokenizer]
    if pre_tokenizer.get("type") == "Sequence":
        steps = pre_tokenizer.get("pretokenizers") or []
    if not steps or not all(isinstance(step, dict) for step in steps):
        return None
    *first, byte_level = steps
    if byte_level.get("type") != "ByteLevel" or byte_level.get("add_prefix_space"):
        return None
    if byte_level.get("use_regex", True):  # ByteLevel's own split is GPT-2's regex
        if not first:
            return "gpt-2"
        if first == [{"type": "Digits", "individual_digits": True}]:
            return "smollm"  # GPT-2's regex after every digit is split apart
        return None
    if len(first) != 1:
        return None
    split = first[0]
    pattern = split.get("pattern") or {}
    if split.get("type") != "Split" or split.get("behavior") != "Isolated" or split.get("invert"):
        return None
    regex = pattern.get("Regex")
    return SPLIT_PRE_NAMES.get(regex) if isinstance(regex, str) else None


KNOWN_PRE_NAMES = ("gpt-2", "smollm", *SPLIT_PRE_NAMES.values())


def _is_byte_level(decoder: object) -> bool:
    if not isinstance(decoder, dict):
        return False
    if decoder.get("type") == "Sequence":
        return any(_is_byte_level(d) for d in decoder.get("decoders") or [])
    return decoder.get("type") == "ByteLevel"


def _tokens(vocab: dict[str, int], added: list[dict]) -> tuple[list[str], list[int]]:
    by_id: dict[int, tuple[str, int]] = {i: (t, gguf.TokenType.NORMAL) for t, i in vocab.items()}
    for entry in added:
        # llama.cpp matches control and user-defined tokens as raw text before BPE
        kind = gguf.TokenType.CONTROL if entry.get("special") else gguf.TokenType.USER_DEFINED
        by_id[int(entry["id"])] = (str(entry["content"]), kind)
    size = max(by_id, default=-1) + 1
    tokens = [by_id.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED)) for i in range(size)]
    return [t for t, _ in tokens], [int(k) for _, k in tokens]
