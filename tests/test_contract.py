"""The job contract: the status machine's table, the spec's rules, progress and error codes."""

from __future__ import annotations

import itertools

import pytest

from contract import (
    ErrorCode,
    IllegalTransition,
    ItemStatus,
    JobSpec,
    JobStatus,
    Progress,
    RemovedBlock,
    SearchState,
    UserError,
    check_transition,
)
from contract.status import TRANSITIONS

LEGAL = {
    ("queued", "running"),
    ("queued", "cancelled"),
    ("queued", "failed"),
    ("running", "queued"),
    ("running", "cancelling"),
    ("running", "succeeded"),
    ("running", "failed"),
    ("running", "cancelled"),
    ("cancelling", "cancelled"),
    ("cancelling", "failed"),
}


@pytest.mark.parametrize(("current", "new"), list(itertools.product(JobStatus, JobStatus)))
def test_every_status_change_is_decided_by_the_table(current, new):
    if (current.value, new.value) in LEGAL:
        assert check_transition(current.value, new.value) is new
    else:
        with pytest.raises(IllegalTransition, match=f"{current.value} -> {new.value}"):
            check_transition(current, new)


ITEM_LEGAL = {
    ("queued", "running"),
    ("queued", "cancelled"),
    ("running", "queued"),
    ("running", "running"),
    ("running", "done"),
    ("running", "cancelled"),
}


@pytest.mark.parametrize(("current", "new"), list(itertools.product(ItemStatus, ItemStatus)))
def test_every_work_item_status_change_is_decided_by_its_table(current, new):
    if (current.value, new.value) in ITEM_LEGAL:
        assert check_transition(current.value, new.value, ItemStatus) is new
    else:
        with pytest.raises(IllegalTransition, match=f"{current.value} -> {new.value}"):
            check_transition(current, new, ItemStatus)
    assert {s for s in ItemStatus if s.terminal} == {ItemStatus.DONE, ItemStatus.CANCELLED}


def test_final_statuses_lead_nowhere_and_leases_belong_to_running_ones():
    assert {s for s in JobStatus if s.terminal} == {
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.CANCELLED,
    }
    assert {s for s in JobStatus if s.leased} == {JobStatus.RUNNING, JobStatus.CANCELLING}
    assert set(TRANSITIONS) == set(JobStatus)


BASE = {"model": "builtin:smollm2-135m", "calibration": "builtin:stdlib-docs", "num_blocks": 2}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_blocks": None}, "num_blocks: give exactly one of num_blocks or param_ratio"),
        ({"param_ratio": 0.2}, "num_blocks: give exactly one of num_blocks or param_ratio"),
        ({"num_blocks": 0}, "num_blocks: must be at least 1, got 0"),
        ({"num_blocks": None, "param_ratio": 1.0}, "param_ratio: must be between 0 and 1, got 1.0"),
        ({"samples": 70000}, "samples: must be at most 65536, got 70000"),
        ({"dtype": "int8"}, "dtype: must be one of 'float32', 'bfloat16', 'float16', got 'int8'"),
        ({"model": "builtin:gpt-9"}, "model: unknown builtin model 'builtin:gpt-9'"),
        ({"calibration": "hf:c4"}, "calibration: unknown hub dataset 'hf:c4'"),
        ({"device": "cuda"}, "device: Extra inputs are not permitted"),
        ({"model": None}, "model: Input should be a valid string"),
    ],
)
def test_bad_specs_name_the_field_in_plain_words(change, message):
    with pytest.raises(UserError) as e:
        JobSpec.parse({**BASE, **change})
    assert str(e.value).startswith(message)


def test_the_hash_covers_what_changes_the_picks_only():
    spec = JobSpec(**BASE)
    same = [{"num_blocks": 7}, {"batch_size": 3}, {"num_blocks": None, "param_ratio": 0.3}]
    for change in same:
        assert JobSpec(**{**BASE, **change}).config_hash() == spec.config_hash()
    for change in [{"seq_len": 32}, {"seed": 1}, {"dtype": "bfloat16"}, {"block_types": "mlp"}]:
        other = JobSpec(**{**BASE, **change})
        assert other.config_hash() != spec.config_hash()
        assert spec.differences(other.result_fields()) == [
            f"{name}: {value!r} in the state, {getattr(spec, name)!r} now"
            for name, value in change.items()
        ]
    # The hash states were saved with before the contract existed (their key set and values).
    assert spec.config_hash() == "e36c88b94a734673"


def test_check_fields_uses_the_specs_bounds():
    JobSpec.check_fields(num_blocks=3, param_ratio=None, block_types="mlp", batch_size=None)
    with pytest.raises(UserError, match="batch_size: must be at least 1, got 0"):
        JobSpec.check_fields(batch_size=0)
    with pytest.raises(UserError, match="exactly one"):
        JobSpec.check_fields(num_blocks=3, param_ratio=0.1)


@pytest.mark.parametrize(
    ("progress", "fraction"),
    [
        (Progress(iteration=0, total_iterations=4), 0.0),
        (Progress(iteration=1, total_iterations=4, scored=5, total_candidates=10), 0.375),
        (Progress(iteration=4, total_iterations=4), 1.0),
        (Progress(iteration=2, total_iterations=None, scored=3, total_candidates=9), None),
    ],
)
def test_progress_fraction(progress, fraction):
    assert progress.fraction == fraction
    assert progress.model_dump(mode="json")["fraction"] == fraction


def test_every_error_code_is_described():
    assert all(code.describe() for code in ErrorCode)
    assert UserError("x", "y", ErrorCode.UNSAFE_WEIGHTS).to_json() == {
        "code": "unsafe_weights",
        "message": "x: y",
        "field": "x",
    }


# --- The iteration rule (contract.iteration), shared by the engine and the fan-out -------------


def test_the_winner_is_the_lowest_ppl_and_ties_go_to_the_first():
    from contract.iteration import beats, winner

    assert winner([3.0, 1.5, 2.0, 1.5]) == 1
    assert winner([2.0]) == 0
    assert beats(1.0, None) and beats(1.0, 1.5) and not beats(1.5, 1.5)
    with pytest.raises(ValueError):
        winner([])


def test_the_ratio_admits_a_step_that_lands_on_it_and_not_one_past_it():
    from contract.iteration import target_reached, within_ratio

    assert within_ratio(10, 10, 100, 0.2)  # exactly 20%
    assert not within_ratio(10, 11, 100, 0.2)
    assert within_ratio(10**9, 1, 1, None)  # no ratio: a block count decides
    assert target_reached(3, 3) and not target_reached(2, 3) and not target_reached(99, None)


def test_finish_takes_the_last_removals_ppl_or_the_base_one():
    from contract.iteration import finish

    state = SearchState(base_ppl=10.0)
    finish(state)
    assert state.done and state.final_ppl == 10.0
    state = SearchState(base_ppl=10.0, removed=[RemovedBlock(block="mha", layer=2, ppl=12.5)])
    finish(state)
    assert state.final_ppl == 12.5


def test_block_positions_and_race_work():
    from contract import Block
    from contract.racing import race_work

    blocks = [Block(b, i) for i in (0, 1) for b in ("mha", "mlp")]
    assert [b.position for b in blocks] == [0, 1, 2, 3]
    assert [Block.at(p) for p in range(4)] == blocks
    # 60 candidates on 4 sequences, 7 on the next 4, 3 on the last 8: of 60 x 16 passes
    assert race_work([60, 7, 3], [4, 8, 16]) == (60 * 4 + 7 * 4 + 3 * 8) / (60 * 16)
    assert race_work([5], [16]) == 1.0  # one stage: the exact search's work
