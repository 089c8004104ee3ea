"""File modes of what the engine writes for others to read (an export, a converted model)."""

from __future__ import annotations

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
