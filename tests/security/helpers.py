"""Uploading through the API as a tenant would: presigned PUTs, then completion."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx


def upload(client, headers: dict, kind: str, files: dict[str, bytes]) -> dict:
    """Announce, PUT and complete an upload; returns its view (status "complete")."""
    announced = [announce(name, data) for name, data in files.items()]
    created = client.post("/v1/uploads", json={"kind": kind, "files": announced}, headers=headers)
    assert created.status_code == 201, created.text
    view = created.json()
    parts: dict[str, list[dict]] = {}
    for f in view["files"]:
        data = files[f["name"]]
        if f["url"] is not None:
            httpx.put(f["url"], content=data, headers=f["headers"]).raise_for_status()
            continue
        size = view["part_size_bytes"]
        for part in f["parts"]:
            start = (part["part_number"] - 1) * size
            answer = httpx.put(part["url"], content=data[start : start + size])
            answer.raise_for_status()
            parts.setdefault(f["name"], []).append(
                {"part_number": part["part_number"], "etag": answer.headers["ETag"]}
            )
    done = client.post(f"/v1/uploads/{view['id']}/complete", json={"parts": parts}, headers=headers)
    assert done.status_code == 200, done.text
    return done.json()


def announce(name: str, data: bytes) -> dict:
    """A file as POST /v1/uploads announces it: name, size, sha256."""
    return {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def model_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
