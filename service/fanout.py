"""One search over many workers: a fanned-out job's plan, its work items, the scores as they
come, and the write that closes an iteration.

Each iteration's remaining candidates are split into `job.parallelism` shares, balanced by cost
(with prefix reuse, a candidate at an early layer costs more than one at a late layer). Every
score is committed as it is done. The write that records an iteration's last score also closes
it, in one transaction that holds the job row's lock: it picks the winner by the engine's rule
(the lowest PPL, ties to the first in paper order), checkpoints the state, records the
iteration's event and creates the next iteration's shares, or the export item after the last.
Every score write takes the job row's lock first, so two shares finishing at the same instant
are serialised and exactly one of them sees the iteration complete.
"""

from __future__ import annotations

import heapq
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from contract import JobSpec, JobStatus, Progress, RemovedBlock, SearchState
from service import transitions
from service.jobstore import add_event
from service.tables import CandidateScore, Job, WorkItem


def make_plan(
    candidates: list[tuple[str, int]], block_params: list[int], total_params: int, layers: int
) -> dict[str, Any]:
    """The plan stored on the job: every candidate in paper order, with its parameters."""
    return {
        "candidates": [list(c) for c in candidates],
        "block_params": block_params,
        "total_params": total_params,
        "num_layers": layers,
    }


def remaining(plan: dict, state: SearchState) -> list[int]:
    """Indexes (paper order) of the candidates not removed yet."""
    removed = {(r.block, r.layer) for r in state.removed}
    return [i for i, c in enumerate(plan["candidates"]) if tuple(c) not in removed]


def split_shares(plan: dict, indexes: list[int], shares: int) -> list[list[int]]:
    """Balance the candidates over `shares` by cost: a candidate at block position p runs the
    2L - p blocks after it. Largest first onto the lightest share; each share in paper order."""
    positions = 2 * plan["num_layers"]

    def cost(i: int) -> int:
        block, layer = plan["candidates"][i]
        return positions - (2 * layer + (block == "mlp"))

    heap: list[tuple[int, int, list[int]]] = [(0, n, []) for n in range(min(shares, len(indexes)))]
    for i in sorted(indexes, key=lambda i: (-cost(i), i)):
        load, n, members = heapq.heappop(heap)
        members.append(i)
        heapq.heappush(heap, (load + cost(i), n, members))
    return [sorted(members) for _, _, members in sorted(heap, key=lambda h: h[1]) if members]


def add_iteration_items(session: Session, job: Job, state: SearchState) -> list[WorkItem]:
    """The shares of the iteration after `state` (none if they exist already)."""
    assert job.plan is not None
    iteration = state.iteration + 1
    exists = session.scalar(
        select(func.count()).where(WorkItem.job_id == job.id, WorkItem.iteration == iteration)
    )
    if exists:
        return []
    items = [
        WorkItem(
            job_id=job.id,
            kind="score",
            iteration=iteration,
            share=n,
            candidates=[job.plan["candidates"][i] for i in share],
            status="queued",
            enqueued_at=func.now(),
        )
        for n, share in enumerate(
            split_shares(job.plan, remaining(job.plan, state), job.parallelism)
        )
    ]
    session.add_all(items)
    session.flush()
    return items


def scored(session: Session, job_id: str, iteration: int) -> set[tuple[str, int]]:
    rows = session.execute(
        select(CandidateScore.block, CandidateScore.layer).where(
            CandidateScore.job_id == job_id, CandidateScore.iteration == iteration
        )
    )
    return {(r.block, r.layer) for r in rows}


def record_score(
    session: Session,
    job: Job,
    item: WorkItem,
    block: tuple[str, int],
    ppl: float,
    removed_ppl: float,
    worker: str,
) -> list[WorkItem]:
    """Commit one candidate's PPL (the caller holds the job row's lock). Returns the items the
    caller enqueues once this transaction commits: the next iteration's shares or the export,
    when this score completed its iteration."""
    assert job.plan is not None
    position = job.plan["candidates"].index(list(block))
    session.execute(
        insert(CandidateScore)
        .values(
            job_id=job.id,
            iteration=item.iteration,
            block=block[0],
            layer=block[1],
            position=position,
            ppl=ppl,
            worker=worker,
        )
        .on_conflict_do_update(  # scored again (a share taken over): the same PPL, counted
            index_elements=["job_id", "iteration", "block", "layer"],
            set_={"times_scored": CandidateScore.times_scored + 1},
        )
    )
    state = SearchState.from_json(job.state)
    if state.base_ppl is None and item.iteration == 1:
        state.base_ppl = removed_ppl  # the PPL of nothing removed: every share of it computes it
        job.state = state.to_json()
    rows = session.execute(
        select(
            CandidateScore.block, CandidateScore.layer, CandidateScore.ppl, CandidateScore.position
        ).where(CandidateScore.job_id == job.id, CandidateScore.iteration == item.iteration)
    ).all()
    total = len(job.plan["candidates"]) - (item.iteration - 1)
    best = min(rows, key=lambda r: (r.ppl, r.position))
    job.progress = Progress(
        iteration=state.iteration,
        total_iterations=JobSpec.model_validate(job.spec).num_blocks,
        scored=len(rows),
        total_candidates=total,
        best_ppl=best.ppl,
        best_block={"block": best.block, "layer": best.layer},
    ).model_dump(mode="json")
    if len(rows) < total or state.iteration != item.iteration - 1:
        return []  # not complete yet, or closed already
    return _close(session, job, state, best)


def _close(session: Session, job: Job, state: SearchState, best: Any) -> list[WorkItem]:
    """The iteration is complete: adopt its winner (the engine's rule, `best`), checkpoint,
    and create what comes next."""
    spec = JobSpec.model_validate(job.spec)
    plan = job.plan
    assert plan is not None
    removed_params = sum(
        plan["block_params"][plan["candidates"].index([r.block, r.layer])] for r in state.removed
    )
    over_ratio = (
        spec.param_ratio is not None
        and (removed_params + plan["block_params"][best.position]) / plan["total_params"]
        > spec.param_ratio
    )
    if not over_ratio:
        state.removed.append(RemovedBlock(block=best.block, layer=best.layer, ppl=best.ppl))
        add_event(
            session,
            job.id,
            "iteration",
            iteration=state.iteration,
            **state.removed[-1].model_dump(),
        )
    state.total_iterations = spec.num_blocks
    left = len(plan["candidates"]) - state.iteration
    if (
        over_ratio
        or left == 0
        or (spec.num_blocks is not None and state.iteration >= spec.num_blocks)
    ):
        state.done = True
        state.final_ppl = state.removed[-1].ppl if state.removed else state.base_ppl
    job.state = state.to_json()
    job.progress = Progress(iteration=state.iteration, total_iterations=spec.num_blocks).model_dump(
        mode="json"
    )
    if state.done:
        export = WorkItem(
            job_id=job.id,
            kind="export",
            iteration=state.iteration,
            share=0,
            candidates=[],
            status="queued",
            enqueued_at=func.now(),
        )
        session.add(export)
        session.flush()
        return [export]
    return add_iteration_items(session, job, state)


def cancel(session: Session, job: Job, reason: str) -> None:
    """Stop every share: the job ends cancelled, its open items with it."""
    if not JobStatus(job.status).terminal:
        transitions.finish(session, job, JobStatus.CANCELLED, reason=reason)
    close_items(session, job.id)


def close_items(session: Session, job_id: str) -> None:
    """The job ended (cancelled, failed): no item of it runs on."""
    for item in session.scalars(
        select(WorkItem).where(
            WorkItem.job_id == job_id, WorkItem.status.in_(["queued", "running"])
        )
    ):
        item.status, item.lease_token, item.finished_at = "cancelled", None, func.now()
