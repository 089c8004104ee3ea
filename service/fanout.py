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

A racing search (contract.racing) runs each iteration in stages of shares over the same workers:
stage 1's shares score every candidate on the first slice of the sequences, keeping each
sequence's NLL; the write that completes a stage decides who races on (contract.racing.survivors,
the engine's rule on the same numbers) and creates the next stage's shares over them. The last
stage's scores are full-set PPLs, and its completing write closes the iteration as above.
"""

from __future__ import annotations

import heapq
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from contract import Block, ItemStatus, JobSpec, JobStatus, Progress, RemovedBlock, SearchState
from contract.fanout_plan import FanoutPlan
from contract.iteration import finish, target_reached, winner, within_ratio
from contract.racing import race_work, survivors
from contract.state import RaceRecord, RaceStage
from service import transitions
from service.jobstore import add_event
from service.tables import CandidateScore, Job, WorkItem


def make_plan(
    candidates: list[Block],
    block_params: list[int],
    total_params: int,
    layers: int,
    race: tuple[list[int], float] | None = None,
) -> FanoutPlan:
    """The plan stored on the job: every candidate in paper order, with its parameters; for a
    racing search, where its stages end (in sequences) and its margin."""
    stages, margin = race if race is not None else (None, None)
    return FanoutPlan(
        candidates=candidates,
        block_params=block_params,
        total_params=total_params,
        num_layers=layers,
        stages=stages,
        margin=margin,
    )


def plan_of(job: Job) -> FanoutPlan:
    """The plan stored on a fanned-out job."""
    if job.plan is None:
        raise ValueError(f"job {job.id} has no fan-out plan")
    return FanoutPlan.model_validate(job.plan)


def split_shares(plan: FanoutPlan, indexes: list[int], shares: int) -> list[list[int]]:
    """Balance the candidates over `shares` by cost: a candidate at block position p runs the
    2L - p blocks after it. Largest first onto the lightest share; each share in paper order."""
    positions = 2 * plan.num_layers

    def cost(i: int) -> int:
        return positions - plan.candidates[i].position

    heap: list[tuple[int, int, list[int]]] = [(0, n, []) for n in range(min(shares, len(indexes)))]
    for i in sorted(indexes, key=lambda i: (-cost(i), i)):
        load, n, members = heapq.heappop(heap)
        members.append(i)
        heapq.heappush(heap, (load + cost(i), n, members))
    return [sorted(members) for _, _, members in sorted(heap, key=lambda h: h[1]) if members]


def add_iteration_items(
    session: Session, job: Job, state: SearchState, stage: int = 1, indexes: list[int] | None = None
) -> list[WorkItem]:
    """The shares of the iteration after `state`, at `stage` over the candidates `indexes`
    (default: all remaining); none if they exist already."""
    plan = plan_of(job)
    iteration = state.blocks_removed + 1  # a fanned-out method removes one block an iteration
    exists = session.scalar(
        select(func.count()).where(
            WorkItem.job_id == job.id, WorkItem.iteration == iteration, WorkItem.stage == stage
        )
    )
    if exists:
        return []
    indexes = plan.remaining(state) if indexes is None else indexes
    items = [
        WorkItem(
            job_id=job.id,
            kind="score",
            iteration=iteration,
            stage=stage,
            share=n,
            candidates=[plan.candidates[i].model_dump() for i in share],
            status=ItemStatus.QUEUED.value,
            enqueued_at=func.now(),
        )
        for n, share in enumerate(split_shares(plan, indexes, job.parallelism))
    ]
    session.add_all(items)
    session.flush()
    return items


def scored(session: Session, job_id: str, iteration: int, stage: int = 1) -> set[Block]:
    rows = session.execute(
        select(CandidateScore.block, CandidateScore.layer).where(
            CandidateScore.job_id == job_id,
            CandidateScore.iteration == iteration,
            CandidateScore.stage == stage,
        )
    )
    return {Block(kind=r.block, layer=r.layer) for r in rows}


def earlier_nlls(
    session: Session, job_id: str, iteration: int, stage: int
) -> dict[Block, list[float]]:
    """Each candidate's per-sequence NLLs from the stages before `stage`, in sequence order."""
    rows = session.execute(
        select(CandidateScore.block, CandidateScore.layer, CandidateScore.nlls)
        .where(
            CandidateScore.job_id == job_id,
            CandidateScore.iteration == iteration,
            CandidateScore.stage < stage,
        )
        .order_by(CandidateScore.stage)
    )
    out: dict[Block, list[float]] = {}
    for r in rows:
        out.setdefault(Block(kind=r.block, layer=r.layer), []).extend(r.nlls or [])
    return out


def record_score(
    session: Session,
    job: Job,
    item: WorkItem,
    block: Block,
    ppl: float,
    removed_ppl: float,
    worker: str,
    nlls: list[float] | None = None,
) -> list[WorkItem]:
    """Commit one candidate's PPL (the caller holds the job row's lock); racing, with its NLLs
    on the stage's slice. Returns the items the caller enqueues once this transaction commits:
    the next stage's or iteration's shares, or the export, when this score completed a stage."""
    plan = plan_of(job)
    _insert_score(session, job, item, plan.index(block), block, ppl, nlls, worker)
    state = SearchState.from_json(job.state)
    if state.base_ppl is None and item.iteration == 1:
        state.base_ppl = removed_ppl  # the PPL of nothing removed: every share of it computes it
        job.state = state.to_json()
    rows = session.execute(
        select(
            CandidateScore.block, CandidateScore.layer, CandidateScore.ppl, CandidateScore.position
        )
        .where(
            CandidateScore.job_id == job.id,
            CandidateScore.iteration == item.iteration,
            CandidateScore.stage == item.stage,
        )
        .order_by(CandidateScore.position)
    ).all()
    total = sum(
        len(c)
        for c in session.scalars(
            select(WorkItem.candidates).where(
                WorkItem.job_id == job.id,
                WorkItem.kind == "score",
                WorkItem.iteration == item.iteration,
                WorkItem.stage == item.stage,
            )
        )
    )
    stages, last = plan.stage_count, item.stage == plan.stage_count
    best = rows[winner([r.ppl for r in rows])]  # the engine's rule, in the paper's order
    job.progress = Progress(
        iteration=state.blocks_removed,
        total_iterations=JobSpec.model_validate(job.spec).num_blocks,
        scored=len(rows),
        total_candidates=total,
        best_ppl=best.ppl if last else None,  # before the last stage, not a full-set PPL
        best_block=Block(kind=best.block, layer=best.layer) if last else None,
        stage=item.stage if stages > 1 else None,
        stages=stages if stages > 1 else None,
    ).model_dump(mode="json")
    if len(rows) < total or state.blocks_removed != item.iteration - 1:
        return []  # not complete yet, or closed already
    if not last:
        return _next_stage(session, job, plan, state, item.iteration, item.stage)
    return _close(session, job, plan, state, best)


def _insert_score(
    session: Session,
    job: Job,
    item: WorkItem,
    position: int,
    block: Block,
    ppl: float,
    nlls: list[float] | None,
    worker: str,
) -> None:
    """One candidate's score row; `position`: its place in the paper's order (ties: lowest)."""
    session.execute(
        insert(CandidateScore)
        .values(
            job_id=job.id,
            iteration=item.iteration,
            stage=item.stage,
            block=block.kind,
            layer=block.layer,
            position=position,
            ppl=ppl,
            nlls=nlls,
            worker=worker,
        )
        .on_conflict_do_update(  # scored again (a share taken over): the same PPL, counted
            index_elements=["job_id", "iteration", "stage", "block", "layer"],
            set_={"times_scored": CandidateScore.times_scored + 1},
        )
    )


def _next_stage(
    session: Session, job: Job, plan: FanoutPlan, state: SearchState, iteration: int, stage: int
) -> list[WorkItem]:
    """A racing stage is complete: who races on is decided on every sequence seen so far."""
    assert plan.stages is not None and plan.margin is not None
    seen = earlier_nlls(session, job.id, iteration, stage + 1)
    racing = scored(session, job.id, iteration, stage)  # not those dropped before this stage
    order = sorted(racing, key=plan.index)  # the engine's order
    kept = survivors([seen[c] for c in order], plan.stages[-1], plan.margin)
    indexes = [plan.index(order[i]) for i in kept]
    return add_iteration_items(session, job, state, stage + 1, indexes)


def _race_record(
    session: Session, job: Job, plan: FanoutPlan, iteration: int, best: Any
) -> RaceRecord:
    """The closed iteration's race, as the engine records it (contract.state.RaceRecord)."""
    assert plan.stages is not None
    rows = session.execute(
        select(CandidateScore.stage, CandidateScore.block, CandidateScore.layer)
        .where(CandidateScore.job_id == job.id, CandidateScore.iteration == iteration)
        .order_by(CandidateScore.stage, CandidateScore.position)
    ).all()
    ends = plan.stages
    by_stage = [[r for r in rows if r.stage == k] for k in range(1, len(ends) + 1)]
    stages = []
    for k, raced in enumerate(by_stage):
        went_on = by_stage[k + 1] if k + 1 < len(by_stage) else [best]
        kept = [Block(kind=r.block, layer=r.layer) for r in went_on]
        stages.append(RaceStage(sequences=ends[k], raced=len(raced), kept=kept))
    return RaceRecord(
        iteration=iteration,
        stages=stages,
        work=race_work([len(raced) for raced in by_stage], ends),
        winner=RemovedBlock(kind=best.block, layer=best.layer, ppl=best.ppl),
    )


def _close(
    session: Session, job: Job, plan: FanoutPlan, state: SearchState, best: Any
) -> list[WorkItem]:
    """The iteration is complete: adopt its winner (the engine's rule, `best`), checkpoint,
    and create what comes next."""
    spec = JobSpec.model_validate(job.spec)
    over_ratio = not within_ratio(
        plan.removed_params(state),
        plan.block_params[best.position],
        plan.total_params,
        spec.param_ratio,
    )
    if not over_ratio:
        state.removed.append(RemovedBlock(kind=best.block, layer=best.layer, ppl=best.ppl))
        if plan.racing:
            state.races.append(_race_record(session, job, plan, state.blocks_removed, best))
        add_event(
            session,
            job.id,
            "iteration",
            iteration=state.blocks_removed,
            **state.removed[-1].model_dump(),
        )
    state.total_iterations = spec.num_blocks
    left = len(plan.candidates) - state.blocks_removed
    if over_ratio or left == 0 or target_reached(state.blocks_removed, spec.num_blocks):
        finish(state)
    job.state = state.to_json()
    job.progress = Progress(
        iteration=state.blocks_removed, total_iterations=spec.num_blocks
    ).model_dump(mode="json")
    if state.done:
        export = WorkItem(
            job_id=job.id,
            kind="export",
            iteration=state.blocks_removed,
            share=0,
            candidates=[],
            status=ItemStatus.QUEUED.value,
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
    open_statuses = [status.value for status in ItemStatus if not status.terminal]
    for item in session.scalars(
        select(WorkItem).where(WorkItem.job_id == job_id, WorkItem.status.in_(open_statuses))
    ):
        transitions.set_item_status(item, ItemStatus.CANCELLED)
