"""``hf:ORG/NAME[@revision]`` models: checked on their listing and config.json, then fetched.

A hub model is refused before any weight byte is downloaded: from the repository's file listing
(names and sizes) when it has no config.json, when its only weights are pickles or when its
safetensors weigh more than the caller's cap; from its config.json (the one file fetched first)
when its architecture is not one the loader takes. The caller then checks the config (the memory
planner, core.pipeline) and only then calls `fetch`, which downloads the config, tokenizer and
safetensors. Offline (HF_HUB_OFFLINE, or a hub that cannot be reached) the same checks run on the
local Hugging Face cache, and a model that is not wholly there is a clear error.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from contract import ErrorCode, UserError
from contract.memory import human
from contract.sources import pickle_refusal
from core.families import family_of

FIELD = "model"
REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What a snapshot needs beside its weights: config and tokenizer (json, sentencepiece, bpe
# merges, tiktoken, chat template). Files in subfolders (onnx/, original/...) are never needed.
SIDE_SUFFIXES = (".json", ".model", ".txt", ".tiktoken", ".jinja")
# transformers loads model.safetensors or the shards its index names (model-00001-of-00002...).
# Other safetensors beside them (Mistral's consolidated.safetensors: the same weights again)
# would double the download and the size checked against the cap, so they are left out.
TRANSFORMERS_WEIGHTS = re.compile(r"^model(-\d+-of-\d+)?\.safetensors$")
SETTING = "BLOCKPRUNE_MAX_MODEL_GB"  # the only caller that sets a cap is the service's worker

Fetch = Callable[[], Path]


def hub_offline() -> bool:
    """HF_HUB_OFFLINE read now, not at import (huggingface_hub caches it when first imported)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def locate_hub_model(name: str, max_weight_bytes: int | None = None) -> tuple[Path, Fetch]:
    """(a folder holding the config.json of hub model `name` (ORG/NAME[@revision]), the function
    that downloads the rest and returns the whole snapshot folder), once the listing and config
    checks have passed. `max_weight_bytes`: the most its safetensors may weigh (None: any)."""
    repo, _, revision = name.partition("@")
    if not REPO_RE.match(repo) or (revision == "" and "@" in name):
        raise UserError(FIELD, f"hub spec must be hf:ORG/NAME[@revision], got hf:{name}")
    cause: BaseException | None = None
    if not hub_offline():
        try:
            with _hub_errors(name, cause=None, falls_back=True):
                return _from_hub(name, repo, revision or None, max_weight_bytes)
        except _Unreachable as e:
            cause = e.__cause__  # what snapshot_download does too: try the local cache
    with _hub_errors(name, cause):
        return _from_cache(name, repo, revision or None, max_weight_bytes)


# ---- online: the listing, then config.json, then (fetch) the rest --------------------------
def _from_hub(
    name: str, repo: str, revision: str | None, max_weight_bytes: int | None
) -> tuple[Path, Fetch]:
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    wanted = _check_listing(name, _sizes(info), max_weight_bytes)
    # The revision as given, so the cache records its ref and finds it again offline. The file
    # lands in snapshots/<commit>/: a push since the listing means listing that commit again.
    folder = Path(hf_hub_download(repo, "config.json", revision=revision)).parent
    if folder.name != info.sha:
        info = HfApi().model_info(repo, revision=folder.name, files_metadata=True)
        wanted = _check_listing(name, _sizes(info), max_weight_bytes)
    _check_config(name, folder / "config.json")
    commit = folder.name

    def fetch() -> Path:
        # The checked commit's files, by exact name (escaped: the patterns are globs).
        patterns = [glob.escape(n) for n in wanted]
        with _hub_errors(name, cause=None):
            return Path(snapshot_download(repo, revision=commit, allow_patterns=patterns))

    return folder, fetch


def _sizes(info: Any) -> dict[str, int]:
    return {s.rfilename: s.size or 0 for s in info.siblings or []}


# ---- offline: the local Hugging Face cache ---------------------------------------------------
def _from_cache(
    name: str, repo: str, revision: str | None, max_weight_bytes: int | None
) -> tuple[Path, Fetch]:
    from huggingface_hub import snapshot_download

    # Asks only for config.json, so a snapshot with some files missing is found (and the missing
    # ones named below) instead of reported as absent.
    folder = Path(
        snapshot_download(
            repo, revision=revision, allow_patterns=["config.json"], local_files_only=True
        )
    )
    files = _cached_listing(repo, revision)
    if files is None:  # no listing cached: what the folder holds is all that is known
        files = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()}
        if not any(n.endswith(".safetensors") for n in files):
            _not_cached(name, ["*.safetensors"])
    wanted = _check_listing(name, files, max_weight_bytes)
    missing = [n for n in wanted if not (folder / n).is_file()]
    if missing:
        _not_cached(name, missing)
    _check_config(name, folder / "config.json")
    return folder, lambda: folder


def _cached_listing(repo: str, revision: str | None) -> dict[str, int] | None:
    """The repository's listing that snapshot_download cached with the snapshot, if any."""
    try:
        from huggingface_hub import get_cached_repo_tree  # huggingface_hub >= 1.2
    except ImportError:
        return None
    try:
        tree = get_cached_repo_tree(repo, revision=revision)
    except Exception:  # CachedRepoTreeNotFoundError, or a listing it cannot read
        return None
    return {f.path: f.size or 0 for f in tree}


def _not_cached(name: str, missing: list[str]) -> None:
    why = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub is unreachable"
    raise UserError(
        FIELD,
        f"hf:{name}: {why} and the model is not wholly in the local Hugging Face cache "
        f"(missing {', '.join(missing[:3])}); use a local directory or builtin:smollm2-135m",
        code=ErrorCode.HUB_UNREACHABLE,
    )


# ---- the checks ------------------------------------------------------------------------------
def _check_listing(name: str, files: dict[str, int], max_weight_bytes: int | None) -> list[str]:
    """The files to download, once a listing (name: size) passes the checks that need no file."""
    root = {n: size for n, size in files.items() if "/" not in n}
    if "config.json" not in root:
        raise UserError(FIELD, f"hf:{name} has no config.json", code=ErrorCode.MISSING_CONFIG)
    weights = sorted(n for n in root if n.endswith(".safetensors"))
    weights = [n for n in weights if TRANSFORMERS_WEIGHTS.match(n)] or weights
    if not weights:
        refusal = pickle_refusal(sorted(root))
        if refusal is not None:
            message = f"hf:{name} has no *.safetensors weights, and {refusal}"
            raise UserError(FIELD, message, code=ErrorCode.UNSAFE_WEIGHTS)
        raise UserError(
            FIELD, f"hf:{name} has no *.safetensors weights", code=ErrorCode.MISSING_WEIGHTS
        )
    total = sum(root[n] for n in weights)
    if max_weight_bytes is not None and total > max_weight_bytes:
        raise UserError(
            FIELD,
            f"hf:{name}: its safetensors weights are {human(total)} ({total:,} bytes), over "
            f"this service's limit of {human(max_weight_bytes)} ({max_weight_bytes:,} bytes, "
            f"{SETTING})",
        )
    return sorted(n for n in root if n.endswith(SIDE_SUFFIXES)) + weights


def _check_config(name: str, path: Path) -> None:
    """The loader's own refusals (core.models) that config.json alone decides."""
    try:
        config = json.loads(path.read_text())
        model_type = config.get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(
            FIELD, f"hf:{name}: unreadable config.json ({e})", ErrorCode.BAD_CONFIG
        ) from None
    if model_type == "blockprune":  # one of our exports: core.export loads it
        return
    family_of(model_type)  # before a weight is downloaded


# ---- the hub's errors, as the user's ---------------------------------------------------------
class _Unreachable(Exception):
    """The hub could not answer (its __cause__ says why): the local cache may still serve."""


@contextmanager
def _hub_errors(name: str, cause: BaseException | None, falls_back: bool = False) -> Iterator[None]:
    """huggingface_hub's exceptions as UserErrors; with `falls_back`, an unreachable hub (a
    connection or a server error) as _Unreachable instead, for the caller to try the cache."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except LocalEntryNotFoundError as e:  # neither the hub nor the cache had it
        if falls_back:
            raise _Unreachable() from e
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub is unreachable"
        raise UserError(
            FIELD,
            f"hf:{name}: {why} and the model is not in the local Hugging Face cache; "
            "use a local directory or builtin:smollm2-135m",
            code=ErrorCode.HUB_UNREACHABLE,
        ) from cause
    except GatedRepoError:
        raise UserError(FIELD, f"hf:{name} is gated: accept its terms and set HF_TOKEN") from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise UserError(
            FIELD, f"hf:{name} not found on the hub ({e})", ErrorCode.NOT_FOUND
        ) from None
    except EntryNotFoundError:  # the listing named config.json, then it was gone
        raise UserError(
            FIELD, f"hf:{name} has no config.json", code=ErrorCode.MISSING_CONFIG
        ) from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", 0) or 0
        if falls_back and status >= 500:
            raise _Unreachable() from e
        raise UserError(FIELD, f"hf:{name}: hub error ({e})", ErrorCode.HUB_UNREACHABLE) from None
    except Exception as e:
        if not _connection_error(e):
            raise
        if falls_back:
            raise _Unreachable() from e
        # A download cut off midway: hub_unreachable is what a worker waits out (worker.outages).
        raise UserError(
            FIELD, f"hf:{name}: the hub is unreachable ({e})", ErrorCode.HUB_UNREACHABLE
        ) from e


def _connection_error(e: BaseException) -> bool:
    """A connection refused, reset or timed out, or offline mode. huggingface_hub raises its
    HTTP client's own types (httpx's or httpx2's, not re-exported), so they go by name."""
    names = {c.__name__ for c in type(e).__mro__}
    return isinstance(e, ConnectionError | TimeoutError) or "TransportError" in names
