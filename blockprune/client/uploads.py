"""`client.uploads`: put a local model folder or calibration file in the service's storage
through the API's upload flow (api/routers/uploads.py), and get the `upload:<id>` that jobs
name in `model`, `calibration` or `evaluation.data`.

1. POST /v1/uploads with the files' names, sizes and sha256: a presigned PUT URL for each file,
   or one per part for a file above the service's multipart threshold.
2. PUT each file (with the headers its URL was signed with), or each `part_size_bytes` slice of
   it, keeping every part's ETag.
3. POST /v1/uploads/{id}/complete with the ETags: the service checks every size; the worker
   checks every sha256 before it uses a file.
"""

from __future__ import annotations

import os
from pathlib import Path

from blockprune.client.errors import ClientError
from blockprune.client.models import Upload
from blockprune.client.session import Session
from contract.sources import CALIBRATION_SUFFIXES, SAFE_SUFFIXES, sha256_file


class Uploads:
    def __init__(self, session: Session) -> None:
        self._s = session

    def model(self, folder: str | os.PathLike[str]) -> str:
        """Upload a model folder: its config.json, tokenizer files and *.safetensors (the
        files the service ever reads; a README or pickle weights beside them stay here)."""
        root = Path(folder)
        if not root.is_dir():
            raise ClientError(f"{root} is not a folder")
        files = [
            p
            for p in sorted(root.iterdir())
            if p.is_file() and p.name.endswith(SAFE_SUFFIXES) and not p.name.startswith(".")
        ]
        return self._upload("model", files)

    def calibration(self, path: str | os.PathLike[str]) -> str:
        """Upload one .txt or .jsonl text, for a job's calibration or evaluation data."""
        file = Path(path)
        if not file.is_file() or not file.name.endswith(CALIBRATION_SUFFIXES):
            raise ClientError(f"{file} is not a .txt or .jsonl file")
        return self._upload("calibration", [file])

    def get(self, upload_id: str) -> Upload:
        return Upload.model_validate(self._s.api("GET", f"/v1/uploads/{upload_id}"))

    def _upload(self, kind: str, files: list[Path]) -> str:
        announced = [
            {"name": p.name, "size": p.stat().st_size, "sha256": sha256_file(p)} for p in files
        ]
        # Not retried: each POST makes a new upload; a lost answer leaves an unused one.
        view = Upload.model_validate(
            self._s.api("POST", "/v1/uploads", json={"kind": kind, "files": announced}, retry=False)
        )
        paths = {p.name: p for p in files}
        parts: dict[str, list[dict[str, object]]] = {}
        for f in view.files:
            if f.url is not None:
                self._s.put(f.url, f.name, paths[f.name], headers=f.headers, written_once=True)
                continue
            for part in f.parts or []:
                offset = (part.part_number - 1) * view.part_size_bytes
                what = f"{f.name} part {part.part_number}"
                etag = self._s.put(part.url, what, paths[f.name], offset, view.part_size_bytes)
                parts.setdefault(f.name, []).append({"part_number": part.part_number, "etag": etag})
        done = self._s.api("POST", f"/v1/uploads/{view.id}/complete", json={"parts": parts})
        return Upload.model_validate(done).ref
