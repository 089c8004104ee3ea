"""What the engine writes for others to read (an export, a converted model): file modes that
let another account read it, and tokenizer files that every transformers version we support
reads."""

from __future__ import annotations

import json
import os
from pathlib import Path


def apply_umask(folder: Path) -> None:
    """Give `folder` and its files the modes a plain `mkdir`/`open` would have: temp folders
    (mkdtemp) and some writers (safetensors' save_file) make them owner-only, which would keep a
    model from the account that serves it."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        if f.is_file():
            f.chmod(0o666 & ~umask)


# transformers 5 saves a tokenizer.json-backed tokenizer as class "TokenizersBackend", a name that
# transformers 4 does not know ("Tokenizer class TokenizersBackend does not exist"); 5 still reads
# the older name of the same class, so that is the one written.
PORTABLE_TOKENIZER_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}
# Written by transformers 5 as a record of how it was loaded; meaningless to whoever loads it next.
_LOAD_TIME_KEYS = ("is_local", "local_files_only")


def save_tokenizer(tokenizer: object, folder: Path) -> None:
    """`tokenizer.save_pretrained(folder)`, with a tokenizer_config.json that loads in both
    transformers 4 and 5."""
    tokenizer.save_pretrained(folder)  # type: ignore[attr-defined]
    path = Path(folder) / "tokenizer_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    name = config.get("tokenizer_class")
    portable = {k: v for k, v in config.items() if k not in _LOAD_TIME_KEYS}
    if name in PORTABLE_TOKENIZER_CLASSES:
        portable["tokenizer_class"] = PORTABLE_TOKENIZER_CLASSES[name]
    if portable != config:
        path.write_text(json.dumps(portable, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
