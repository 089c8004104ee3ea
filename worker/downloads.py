"""A job's inputs from S3, cached per worker: a model prefix and a calibration file.

Only safetensors weights, JSON and tokenizer files are fetched: a prefix whose only weights are
pickles (.bin, .pt, ...) is refused before anything is downloaded, since loading them could run
arbitrary code. Each download lands in a temp dir and is renamed into the cache, so a cache entry
that exists is complete; its name hashes the objects' ETags, so a changed object is fetched anew.

An upload's files are checked against its row (`pinned`: the sizes and ETags S3 had when it was
completed, the sha256 its tenant announced): a file changed since is refused before it is read.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from contract import ErrorCode, UserError
from contract.sources import CALIBRATION_SUFFIXES, SAFE_SUFFIXES, pickle_refusal, sha256_file
from service.storage import parse_s3_uri
from worker.resources import check_disk
from worker.scratch import touch

NOT_FOUND_CODES = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}


def fetch_model(
    s3: Any,
    uri: str,
    cache_dir: Path,
    shown_as: str | None = None,
    pinned: dict[str, dict] | None = None,
) -> Path:
    """The local directory holding the model under the S3 prefix `uri` (which errors call
    `shown_as`: the name the tenant gave, e.g. upload:<id>). The caller has checked that the
    tenant may read `uri` (service.inputs). `pinned`: an upload's files, as its row has them;
    only those are read, and each must still be what was completed."""
    bucket, prefix = parse_s3_uri(uri, "model")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    uri = shown_as or uri  # from here on, only for messages
    listed = _list_files(s3, bucket, prefix, uri)
    if pinned is not None:
        for name, entry in pinned.items():
            _check_pinned("model", uri, name, entry, *listed.get(name, ("", -1)))
        listed = {n: v for n, v in listed.items() if n in pinned}
    objects = {name: etag for name, (etag, _) in listed.items()}
    names = sorted(objects)
    if not names:
        raise UserError("model", f"no objects under {uri}", code=ErrorCode.S3_OBJECT_NOT_FOUND)
    if not any(n.endswith(".safetensors") for n in names):
        refusal = pickle_refusal(names)
        if refusal is not None:
            message = f"{uri} has no *.safetensors weights, and {refusal}"
            raise UserError("model", message, code=ErrorCode.UNSAFE_WEIGHTS)
        raise UserError(
            "model", f"no *.safetensors weights under {uri}", code=ErrorCode.MISSING_WEIGHTS
        )
    if "config.json" not in objects:
        raise UserError("model", f"no config.json under {uri}", code=ErrorCode.MISSING_CONFIG)
    wanted = [n for n in names if n.endswith(SAFE_SUFFIXES)]
    fingerprint = "\n".join(f"{bucket}/{prefix}{n} {objects[n]}" for n in wanted)
    target = cache_dir / "models" / hashlib.sha256(fingerprint.encode()).hexdigest()[:32]
    if target.is_dir():
        touch(target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    check_disk(target.parent, sum(listed[n][1] for n in wanted), f"the download of {uri}")
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
    try:
        for name in wanted:
            s3.download_file(bucket, prefix + name, str(tmp / name))
            if pinned is not None:
                _check_digest("model", uri, tmp / name, pinned[name])
        _move_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def fetch_calibration(
    s3: Any,
    uri: str,
    cache_dir: Path,
    shown_as: str | None = None,
    max_bytes: int | None = None,
    pinned: dict[str, dict] | None = None,
) -> Path:
    """The local copy of the calibration file `uri` (its suffix kept: it selects the format);
    a file over `max_bytes` is refused before a byte of it is downloaded. `pinned`: the upload's
    row entry for it ({name: entry}), which it must still match."""
    bucket, key = parse_s3_uri(uri, "calibration")
    suffix = Path(key).suffix
    shown = shown_as or uri
    if suffix not in CALIBRATION_SUFFIXES:
        raise UserError("calibration", f"{shown}: expected a .txt or .jsonl file")
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as e:
        raise _s3_error("calibration", shown, e) from e
    etag = head["ETag"]
    entry = pinned.get(Path(key).name) if pinned is not None else None
    if pinned is not None:
        _check_pinned("calibration", shown, Path(key).name, entry, etag, head["ContentLength"])
    if max_bytes is not None and head["ContentLength"] > max_bytes:
        raise UserError(
            "calibration",
            f"{shown} is {head['ContentLength']:,} bytes, over this service's limit of "
            f"{max_bytes:,} (BLOCKPRUNE_MAX_CALIBRATION_MB)",
        )
    name = hashlib.sha256(f"{bucket}/{key} {etag}".encode()).hexdigest()[:32] + suffix
    target = cache_dir / "calibration" / name
    if target.is_file():
        touch(target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".download-", dir=target.parent)
    os.close(fd)
    try:
        s3.download_file(bucket, key, tmp)
        if entry is not None:
            _check_digest("calibration", shown, Path(tmp), entry)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _check_pinned(
    field: str, shown: str, name: str, entry: dict | None, etag: str, size: int
) -> None:
    """The object `name` (ETag, size; size -1: missing) is the one its upload completed with."""
    if entry is None or size < 0:
        raise UserError(field, f"{shown}: {name} is gone from storage", ErrorCode.INVALID_INPUT)
    if size != entry["size"] or ("etag" in entry and etag != entry["etag"]):
        raise UserError(
            field,
            f"{shown}: {name} changed after the upload was completed ({size:,} bytes, "
            f"completed with {entry['size']:,}): upload it again",
            ErrorCode.INVALID_INPUT,
        )


def _check_digest(field: str, shown: str, path: Path, entry: dict) -> None:
    """The downloaded file is the one announced: its size and the sha256 its tenant gave (rows
    from before sha256 was announced: the size)."""
    size_ok = path.stat().st_size == entry["size"]
    if not size_ok or ("sha256" in entry and sha256_file(path) != entry["sha256"]):
        raise UserError(
            field,
            f"{shown}: {entry['name']} is not the file announced (its size or sha256 differs "
            "from the upload's): upload it again",
            ErrorCode.INVALID_INPUT,
        )


def _list_files(s3: Any, bucket: str, prefix: str, uri: str) -> dict[str, tuple[str, int]]:
    """{file name: (ETag, size)} of the objects directly under `prefix` (subfolders are
    ignored)."""
    files = {}
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                name = obj["Key"][len(prefix) :]
                if name and "/" not in name:
                    files[name] = (obj["ETag"], obj["Size"])
    except ClientError as e:
        raise _s3_error("model", uri, e) from e
    return files


def _s3_error(field: str, uri: str, e: ClientError) -> Exception:
    """A user's mistake (missing object, no access) as a UserError; anything else (S3 down,
    throttling) stays an S3 error, so the job is retried rather than failed."""
    code = str(e.response.get("Error", {}).get("Code", ""))
    if code in NOT_FOUND_CODES:
        return UserError(field, f"{uri} does not exist", code=ErrorCode.S3_OBJECT_NOT_FOUND)
    if code in {"403", "AccessDenied"}:
        return UserError(field, f"{uri}: access denied", code=ErrorCode.S3_ACCESS_DENIED)
    return e


def _move_into_place(tmp: Path, target: Path) -> None:
    try:
        tmp.rename(target)
    except OSError:
        if not target.is_dir():  # not another process finishing the same download first
            raise
