"""A job that asks for an evaluation: a baseline method end to end on the service stack, its
report in the job and in the artifacts, computed like the engine computes it, on one worker and
through the fanned-out search; tenants' evaluation texts are checked like calibration texts."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest
import torch

from .helpers import events, job_body, wait_for

HELDOUT = "builtin:stdlib-docs-heldout"


def download(service, headers, job_id: str, folder) -> dict[str, bytes]:
    files = service.get(f"/v1/jobs/{job_id}/artifacts", headers=headers).json()["files"]
    folder.mkdir()
    got = {}
    for f in files:
        content = httpx.get(f["url"]).raise_for_status().content
        assert hashlib.sha256(content).hexdigest() == f["sha256"]
        (folder / f["name"]).write_bytes(content)
        got[f["name"]] = content
    return got


@pytest.mark.parametrize(
    "fields",
    [
        {"method": "sleb", "num_blocks": 4},
        {"method": "blockpruner", "num_blocks": 3, "parallelism": 2},  # the work items' export
    ],
    ids=["sleb", "fanned-out"],
)
def test_a_job_with_an_evaluation_reports_it_everywhere(
    service, workers, key_a, tiny_llama, tmp_path, fields
):
    from core.evaluation.perplexity import heldout_ppl
    from core.export import load_pruned
    from core.models import load_model

    workers.ensure()
    evaluation = {"data": [tiny_llama["calibration"], HELDOUT], "seq_len": 32, "speed": True}
    body = job_body(tiny_llama, evaluation=evaluation, **fields)
    created = service.post("/v1/jobs", json=body, headers=key_a)
    assert created.status_code == 201, created.text
    job = wait_for(service, key_a, created.json()["id"], timeout=120)
    assert job["status"] == "succeeded", job
    phases = [e["data"]["phase"] for e in events(service, key_a, job["id"], "phase")]
    assert "evaluating" in phases and phases.index("evaluating") < phases.index("exporting")

    report = job["evaluation"]["report"]
    assert job["evaluation"]["seq_len"] == 32 and report["variants"] == ["before", "after"]
    assert set(report["perplexity"]) == {tiny_llama["calibration"], HELDOUT}
    assert report["speed"]["after"]["params"] < report["speed"]["before"]["params"]
    if fields["method"] == "sleb":
        layers = [r["layer"] for r in job["removed"]]
        assert layers[::2] == layers[1::2]  # whole layers

    # The artifacts hold the same report, its plot and a model card with the table.
    files = download(service, key_a, job["id"], tmp_path / "export")
    assert json.loads(files["report.json"]) == report
    assert files["evaluation.svg"].startswith(b"<svg")
    assert b"## Evaluation" in files["README.md"]
    assert json.loads(files["pruning.json"])["method"] == fields["method"]

    # The "after" perplexity is the downloaded export's, measured here on the same text.
    tokenizer = load_model(str(tiny_llama["local_dir"])).tokenizer
    stream = torch.tensor(tokenizer(tiny_llama["calibration_path"].read_text())["input_ids"])
    mine = heldout_ppl(load_pruned(tmp_path / "export"), stream[:65536], 32)
    assert report["perplexity"][tiny_llama["calibration"]]["after"] == pytest.approx(
        mine.ppl, rel=1e-5
    )

    # `blockprune eval` on the downloaded artifacts, with the job's model as the base (an s3://
    # model is not reachable from here): the job's report again.
    if fields["method"] == "sleb":
        from blockprune.cli import main

        out = tmp_path / "eval"
        args = ["eval", "--model", str(tmp_path / "export"), "--base", str(tiny_llama["local_dir"])]
        args += ["--data", str(tiny_llama["calibration_path"]), "--seq-len", "32"]
        assert main([*args, "--output", str(out)]) == 0
        again = json.loads((out / "report.json").read_text())
        for name in ("before", "after"):
            assert again["perplexity"][str(tiny_llama["calibration_path"])][name] == pytest.approx(
                report["perplexity"][tiny_llama["calibration"]][name], rel=1e-5
            )


def test_evaluation_texts_are_checked_like_calibration_texts(service, key_a, key_b, tiny_llama):
    from security.helpers import upload

    theirs = upload(service, key_b, "calibration", {"t.txt": b"text of tenant b " * 50})
    for source, (status, code) in {
        theirs["ref"]: (404, "not_found"),
        "s3://blockprune-test/uploads/someone/x.txt": (422, "input_not_allowed"),
    }.items():
        body = job_body(tiny_llama, evaluation={"data": [HELDOUT, source]})
        answer = service.post("/v1/jobs", json=body, headers=key_a)
        assert answer.status_code == status, answer.text
        error = answer.json()["error"]
        assert error["code"] == code and error["field"] == "evaluation.data[1]", error
    mine = upload(service, key_a, "calibration", {"t.txt": b"text of tenant a " * 50})
    evaluation = {"data": [mine["ref"]], "seq_len": 64}  # the tiny model has 128 positions
    body = job_body(tiny_llama, evaluation=evaluation, num_blocks=1)
    answer = service.post("/v1/jobs", json=body, headers=key_a)
    assert answer.status_code == 201, answer.text
    service.post(f"/v1/jobs/{answer.json()['id']}/cancel", headers=key_a)
