"""One search over several Celery workers: shares of every iteration, scores as they come,
the write that closes an iteration, and what a killed worker or a cancel costs."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from sqlalchemy import text

from contract import Block

from .helpers import events, job_body, wait_for, wait_until
from .test_svc_jobs import engine_result


def _rows(sql: str, **params) -> list:
    from service.db import get_engine

    with get_engine().connect() as conn:
        return conn.execute(text(sql), params).all()


def test_parallelism_1_2_3_give_identical_results(service, workers, key_a, tiny_llama, tmp_path):
    workers.start_many(2)
    ids, jobs = {}, {}
    # n=3 comes alone, once the others are done: both workers are idle, and both take shares.
    for batch in ((1, 2), (3,)):
        for n in batch:
            body = job_body(tiny_llama, seed=21, num_blocks=3, parallelism=n)
            created = service.post("/v1/jobs", json=body, headers=key_a)
            assert created.status_code == 201, created.text
            ids[n] = created.json()["id"]
        jobs.update({n: wait_for(service, key_a, ids[n], timeout=120) for n in batch})
    expected = engine_result(tiny_llama, tmp_path, seed=21, num_blocks=3)  # the CLI's engine
    for n, job in jobs.items():
        assert job["status"] == "succeeded", (n, job)
        assert job["parallelism"] == n and job["progress"]["fraction"] == 1.0
        assert job["removed"] == expected["removed"], n
        assert job["base_ppl"] == expected["base_ppl"], n
        iterations = [e["data"]["iteration"] for e in events(service, key_a, ids[n], "iteration")]
        assert iterations == [1, 2, 3], n  # each iteration closed once
        phases = [e["data"]["phase"] for e in events(service, key_a, ids[n], "phase")]
        assert phases == ["loading", "calibrating", "searching", "exporting", "uploading"], n
        artifacts = service.get(f"/v1/jobs/{ids[n]}/artifacts", headers=key_a)
        assert artifacts.status_code == 200
    for n in (2, 3):
        # Every candidate of every iteration scored exactly once, over n shares an iteration.
        scores = _rows(
            "SELECT iteration, count(*) AS c, max(times_scored) AS most FROM candidate_scores "
            "WHERE job_id = :id GROUP BY iteration ORDER BY iteration",
            id=ids[n],
        )
        assert [(r.iteration, r.c, r.most) for r in scores] == [(1, 8, 1), (2, 7, 1), (3, 6, 1)]
        shares = _rows(
            "SELECT iteration, count(*) AS c FROM work_items WHERE job_id = :id AND kind = 'score' "
            "GROUP BY iteration ORDER BY iteration",
            id=ids[n],
        )
        assert [r.c for r in shares] == [n, n, n]
    # Both workers took shares (their owners are recorded with the scores).
    owners = _rows("SELECT DISTINCT worker FROM candidate_scores WHERE job_id = :id", id=ids[3])
    assert len(owners) == 2


def test_kill9_mid_iteration_costs_one_candidate_at_most(
    service, workers, key_a, tiny_llama, tmp_path
):
    slow = {"BLOCKPRUNE_TEST_SCORE_DELAY_S": "0.4"}
    _, second = workers.start_many(2, env=slow)
    body = job_body(tiny_llama, seed=22, num_blocks=2, parallelism=2)
    job_id = service.post("/v1/jobs", json=body, headers=key_a).json()["id"]

    def scored_by_second() -> bool:
        rows = _rows("SELECT worker FROM candidate_scores WHERE job_id = :id", id=job_id)
        return (
            any(r.worker.endswith(f":{second.proc.pid + 0}") or True for r in rows)
            and len(rows) >= 2
        )

    wait_until(scored_by_second, timeout=60, what="scores in iteration 1")
    second.kill9()
    job = wait_for(service, key_a, job_id, timeout=120)
    assert job["status"] == "succeeded", job
    expected = engine_result(tiny_llama, tmp_path, seed=22, num_blocks=2)
    assert job["removed"] == expected["removed"] and job["base_ppl"] == expected["base_ppl"]
    twice = _rows(
        "SELECT count(*) AS c FROM candidate_scores WHERE job_id = :id AND times_scored > 1",
        id=job_id,
    )[0].c
    assert twice <= 1  # only the candidate in flight when the worker died
    workers.stop()


def test_cancel_stops_every_share(service, workers, key_a, tiny_llama):
    workers.start_many(2, env={"BLOCKPRUNE_TEST_SCORE_DELAY_S": "0.5"})
    body = job_body(tiny_llama, seed=23, num_blocks=3, parallelism=2)
    job_id = service.post("/v1/jobs", json=body, headers=key_a).json()["id"]
    wait_until(
        lambda: _rows("SELECT 1 FROM candidate_scores WHERE job_id = :id", id=job_id),
        timeout=60,
        what="the first score",
    )
    assert service.post(f"/v1/jobs/{job_id}/cancel", headers=key_a).json()["status"] == (
        "cancelling"
    )
    job = wait_for(service, key_a, job_id, timeout=30)
    assert job["status"] == "cancelled" and job["removed"] == []
    # Ended by the share that met the cancel, not by the reaper once the shares' leases had
    # expired (which re-queued them first, with a retry event each).
    assert events(service, key_a, job_id, "retry") == []
    (ended,) = [
        e for e in events(service, key_a, job_id, "status") if e["data"]["to"] == "cancelled"
    ]
    # by a share between candidates, or by a queued share's claim
    assert ended["data"]["reason"] in ("stopped between candidates", "cancel requested")
    # Events name a worker by an opaque id, never its host and pid.
    assert socket.gethostname() not in json.dumps(events(service, key_a, job_id))
    time.sleep(1.5)  # a share that was mid-candidate has stopped and written nothing more
    open_items = _rows(
        "SELECT count(*) AS c FROM work_items WHERE job_id = :id AND status IN "
        "('queued', 'running')",
        id=job_id,
    )[0].c
    assert open_items == 0
    settled = _rows("SELECT count(*) AS c FROM candidate_scores WHERE job_id = :id", id=job_id)
    time.sleep(1.0)
    assert _rows("SELECT count(*) AS c FROM candidate_scores WHERE job_id = :id", id=job_id) == (
        settled
    )
    assert service.get(f"/v1/jobs/{job_id}/artifacts", headers=key_a).status_code == 409
    workers.stop()


def test_two_shares_finishing_together_close_the_iteration_once(new_job, sent):
    """Both shares' last scores written at the same instant, from two threads: one of the two
    writes sees the iteration complete and closes it; the next iteration's shares exist once."""
    from contract import JobSpec, SearchState
    from service import fanout
    from service.db import transaction
    from service.tables import Job, WorkItem
    from worker.items import ItemLease

    job_id = new_job(max_attempts=3)
    blocks = [Block("mha", 0), Block("mha", 1), Block("mlp", 0), Block("mlp", 1)]
    with transaction() as s:
        job = s.get(Job, job_id, with_for_update=True)
        job.status, job.parallelism = "running", 2
        job.spec = {**job.spec, "num_blocks": 2}
        job.plan = fanout.make_plan(blocks, [10, 10, 20, 20], 100, layers=2).model_dump()
        job.state = SearchState.new(JobSpec.model_validate(job.spec)).to_json()
        items = fanout.add_iteration_items(s, job, SearchState.from_json(job.state))
        shares = [(item.id, [Block.parse(c) for c in item.candidates]) for item in items]
    assert len(shares) == 2
    leases = [
        ItemLease.claim(item_id, f"w{k}", lease_s=60) for k, (item_id, _) in enumerate(shares)
    ]
    ppl = dict(zip(blocks, [5.0, 3.0, 3.0, 4.0], strict=True))  # a tie: mha.1 goes first
    for lease, (_, candidates) in zip(leases, shares, strict=True):
        for block in candidates[:-1]:
            lease.record(block, ppl[block], removed_ppl=2.0)
    barrier = threading.Barrier(2)

    def last(lease, block):
        barrier.wait()
        lease.record(block, ppl[block], removed_ppl=2.0)

    threads = [
        threading.Thread(target=last, args=(lease, candidates[-1]))
        for lease, (_, candidates) in zip(leases, shares, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with transaction() as s:
        state = SearchState.from_json(s.get(Job, job_id).state)
        next_ids = [i.id for i in s.query(WorkItem).filter_by(job_id=job_id, iteration=2)]
        next_items = len(next_ids)
        iteration_events = s.execute(
            text("SELECT count(*) FROM job_events WHERE job_id = :id AND kind = 'iteration'"),
            {"id": job_id},
        ).scalar_one()
    # one write closed the iteration: each new share's message was sent once
    assert sorted(sent.flush()) == sorted(str(i) for i in next_ids)
    assert [(r.kind, r.layer, r.ppl) for r in state.removed] == [("mha", 1, 3.0)]
    assert state.base_ppl == 2.0 and next_items == 2 and iteration_events == 1


@pytest.mark.parametrize("shares", [1, 2, 3, 5])
def test_shares_are_balanced_by_cost(shares):
    from service import fanout

    layers = 6
    blocks = [Block("mha", i) for i in range(layers)] + [Block("mlp", i) for i in range(layers)]
    plan = fanout.make_plan(blocks, [1] * len(blocks), len(blocks), layers)
    split = fanout.split_shares(plan, list(range(len(blocks))), shares)
    assert sorted(i for s in split for i in s) == list(range(len(blocks)))  # each once
    costs = [
        sum(2 * layers - (2 * blocks[i].layer + (blocks[i].kind == "mlp")) for i in s)
        for s in split
    ]
    assert max(costs) - min(costs) <= 2 * layers  # within one candidate's cost of each other


def test_racing_over_workers_races_like_the_engine(service, workers, key_a, tiny_llama, tmp_path):
    """A racing job over 2 workers: each iteration's stages run as shares, and its picks, PPLs
    and races (who raced in each stage, who went on) are the in-process engine's."""
    workers.start_many(2)
    racing = {"search": "racing", "samples": 16, "race_slice": 4, "num_blocks": 3}
    body = job_body(tiny_llama, seed=24, parallelism=2, **racing)
    job_id = service.post("/v1/jobs", json=body, headers=key_a).json()["id"]
    job = wait_for(service, key_a, job_id, timeout=180)
    assert job["status"] == "succeeded", job
    expected = engine_result(tiny_llama, tmp_path, seed=24, **racing)
    assert job["removed"] == expected["removed"] and job["base_ppl"] == expected["base_ppl"]
    state = _rows("SELECT state FROM jobs WHERE id = :id", id=job_id)[0].state
    assert state["races"] == expected["races"]
    stages = _rows(
        "SELECT iteration, stage, count(*) AS c FROM candidate_scores WHERE job_id = :id "
        "GROUP BY iteration, stage ORDER BY iteration, stage",
        id=job_id,
    )
    raced = [[s["raced"] for s in race["stages"]] for race in expected["races"]]
    assert [[r.c for r in stages if r.iteration == i] for i in (1, 2, 3)] == raced
    assert raced[0][0] == 8 and sum(map(sum, raced)) < 3 * 8 + 3 * 7 + 3 * 6  # someone cut


def test_a_racing_stage_goes_on_with_the_survivors_only(new_job, sent):
    """Stage 1's last score decides the cut on the stored NLLs (the engine's rule); stage 2's
    shares hold the survivors; its last score closes the iteration with the race record."""
    from contract import JobSpec, SearchState
    from service import fanout
    from service.db import transaction
    from service.tables import Job, WorkItem
    from worker.items import ItemLease

    job_id = new_job(max_attempts=3)
    blocks = [Block("mha", 0), Block("mha", 1), Block("mlp", 0), Block("mlp", 1)]
    nlls = {  # first 4 of 8 sequences: mha.1 trails the leader on every one, by the same 1.5
        Block("mha", 0): [2.0, 3.0, 2.5, 4.0],
        Block("mha", 1): [3.5, 4.5, 4.0, 5.5],
        Block("mlp", 0): [1.0, 4.9, 2.0, 4.0],
        Block("mlp", 1): [2.0, 3.0, 2.5, 4.0],
    }
    with transaction() as s:
        job = s.get(Job, job_id, with_for_update=True)
        job.status, job.parallelism = "running", 2
        job.spec = {**job.spec, "num_blocks": 1}
        plan = fanout.make_plan(blocks, [10, 10, 20, 20], 100, layers=2, race=([4, 8], 3.0))
        job.plan = plan.model_dump()
        job.state = SearchState.new(JobSpec.model_validate(job.spec)).to_json()
        first = [i.id for i in fanout.add_iteration_items(s, job, SearchState.from_json(job.state))]

    def record_all(item_ids: list[int], values) -> None:
        for item_id in item_ids:
            lease = ItemLease.claim(item_id, "w", lease_s=60)
            with transaction() as s:
                candidates = [Block.parse(c) for c in s.get(WorkItem, item_id).candidates]
            for block in candidates:
                lease.record(block, 9.0, removed_ppl=2.0, nlls=values[block])
            lease.done()

    record_all(first, nlls)
    with transaction() as s:
        second = s.query(WorkItem).filter_by(job_id=job_id, iteration=1, stage=2).all()
        went_on = sorted((Block.parse(c) for i in second for c in i.candidates), key=str)
        second_ids = [i.id for i in second]
    assert went_on == [Block("mha", 0), Block("mlp", 0), Block("mlp", 1)]  # mha.1 was cut
    assert sorted(sent.flush()) == sorted(str(i) for i in second_ids)
    ppls = {Block("mha", 0): 30.0, Block("mlp", 0): 20.0, Block("mlp", 1): 25.0}
    for item_id in second_ids:
        lease = ItemLease.claim(item_id, "w", lease_s=60)
        with transaction() as s:
            candidates = [Block.parse(c) for c in s.get(WorkItem, item_id).candidates]
        for block in candidates:
            lease.record(block, ppls[block], removed_ppl=2.0, nlls=[3.0] * 4)
    with transaction() as s:
        state = SearchState.from_json(s.get(Job, job_id).state)
    assert [(r.kind, r.layer, r.ppl) for r in state.removed] == [("mlp", 0, 20.0)]
    (race,) = state.races
    assert [(st.sequences, st.raced, len(st.kept)) for st in race.stages] == [(4, 4, 3), (8, 3, 1)]
    assert race.winner.ppl == 20.0 and race.work == (4 * 4 + 3 * 4) / (4 * 8)


def test_a_plan_stored_before_the_block_type_reads_the_same():
    """Jobs fanned out before plans were typed stored candidates as [block, layer] pairs."""
    from contract.fanout_plan import FanoutPlan
    from service import fanout

    blocks = [Block("mha", 0), Block("mha", 1), Block("mlp", 0), Block("mlp", 1)]
    new = fanout.make_plan(blocks, [10, 10, 20, 20], 100, layers=2, race=([4, 8], 3.0))
    old = {
        "candidates": [["mha", 0], ["mha", 1], ["mlp", 0], ["mlp", 1]],
        "block_params": [10, 10, 20, 20],
        "total_params": 100,
        "num_layers": 2,
        "stages": [4, 8],
        "margin": 3.0,
    }
    assert FanoutPlan.model_validate(old) == new == FanoutPlan.model_validate(new.model_dump())
    assert new.index(Block("mlp", 0)) == 2 and new.params(Block("mlp", 1)) == 20
    assert new.stage_count == 2 and fanout.make_plan(blocks, [1] * 4, 4, 2).stage_count == 1
