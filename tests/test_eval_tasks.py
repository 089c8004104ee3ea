"""Zero-shot tasks through lm-evaluation-harness (core.evaluation.tasks): its accuracy on a tiny
local multiple-choice task equals the same measure computed here by hand, and its errors."""

import json
import shutil
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
from conftest import tiny_model, word_tokenizer

from contract import ErrorCode, UserError
from core.evaluation.tasks import is_local_task, zero_shot

TINY_MC = Path(__file__).parent / "data" / "tiny_mc"
needs_lm_eval = pytest.mark.skipif(find_spec("lm_eval") is None, reason="lm_eval not installed")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a loaded machine two of them cost
    ~0.7 s per forward pass (each op waits for a descheduled thread) against ~2 ms with one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def eos_tokenizer():
    """The word tokenizer with an EOS token (id 83, inside the tiny models' 97): lm_eval needs a
    BOS or EOS token, and the word tokenizer has neither."""
    tok = word_tokenizer()
    tok.add_special_tokens({"eos_token": "</s>"})
    return tok


@pytest.fixture
def local_task(tmp_path: Path) -> Path:
    """tiny_mc copied to tmp_path, its YAML pointing at the copy by absolute path (datasets reads
    a relative data file from the working directory) and caching datasets' Arrow files there
    too, not under ~/.cache."""
    folder = tmp_path / "tiny_mc"
    shutil.copytree(TINY_MC, folder)
    yaml_path = folder / "tiny_mc.yaml"
    text = yaml_path.read_text()
    relative = "tests/data/tiny_mc/tiny_mc.jsonl"
    assert relative in text
    text = text.replace(relative, str(folder / "tiny_mc.jsonl"))
    text = text.replace("dataset_kwargs:\n", f"dataset_kwargs:\n  cache_dir: {tmp_path / 'ds'}\n")
    yaml_path.write_text(text)
    return yaml_path


def hand_accuracy(model, tok, rows: list[dict], delimiter_in_norm: bool = False):
    """(acc, acc_norm) as lm_eval defines them, with plain torch: a choice's log-likelihood is the
    sum of the log-softmax at its tokens, the continuation being " " + choice split off the whole
    string's tokens; acc_norm divides it by the choice's length in characters (lm_eval's
    `len(choice)`: neither the delimiter nor bytes; `delimiter_in_norm` counts the " " too)."""
    right = right_norm = 0
    for row in rows:
        lls = []
        for choice in row["choices"]:
            context_ids = tok(row["context"])["input_ids"]
            whole = tok(row["context"] + " " + choice)["input_ids"]
            continuation = whole[len(context_ids) :]
            with torch.no_grad():
                logits = model(torch.tensor([whole[:-1]])).logits[0]
            logp = torch.log_softmax(logits.float(), dim=-1)
            start = len(context_ids) - 1  # the logits at position i predict token i + 1
            lls.append(sum(float(logp[start + j, t]) for j, t in enumerate(continuation)))
        lengths = [len(c) + delimiter_in_norm for c in row["choices"]]
        pred = max(range(len(lls)), key=lambda i: lls[i])
        pred_norm = max(range(len(lls)), key=lambda i: lls[i] / lengths[i])
        right += pred == row["label"]
        right_norm += pred_norm == row["label"]
    return right / len(rows), right_norm / len(rows)


@needs_lm_eval
def test_accuracy_equals_a_hand_computation(local_task: Path):
    model, tok = tiny_model("llama"), eos_tokenizer()
    rows = [json.loads(line) for line in (local_task.parent / "tiny_mc.jsonl").open()]
    words = {w for row in rows for s in [row["context"], *row["choices"]] for w in s.split()}
    assert words <= set(tok.get_vocab()), "the rows use only the word tokenizer's words"

    results = zero_shot(model, tok, [str(local_task)], batch_size=4)

    got = results["tiny_mc"]
    acc, acc_norm = hand_accuracy(model, tok, rows)
    assert 0 < acc < 1 and 0 < acc_norm < 1  # some right, some wrong: the test can fail
    # The normalisation changes some predictions on this data, and counting the delimiter in the
    # length would change others: the data tells lm_eval's exact definition apart.
    assert acc != acc_norm != hand_accuracy(model, tok, rows, delimiter_in_norm=True)[1]
    assert got["acc"] == acc and got["acc_norm"] == acc_norm
    assert got["samples"] == len(rows)
    assert set(got) == {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "samples"}
    json.dumps(results)  # plain numbers only

    limited = zero_shot(model, tok, [str(local_task)], limit=3, device="cpu")
    assert limited["tiny_mc"]["samples"] == 3
    assert limited["tiny_mc"]["acc"] == hand_accuracy(model, tok, rows[:3])[0]


def test_is_local_task():
    assert is_local_task("tests/data/tiny_mc/tiny_mc.yaml") and is_local_task("a/b.YML")
    assert not is_local_task("arc_easy")


def test_missing_lm_eval_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now raises ImportError
    with pytest.raises(UserError) as e:
        zero_shot(tiny_model("llama"), eos_tokenizer(), ["piqa"])
    assert e.value.code == ErrorCode.MISSING_DEPENDENCY and e.value.field == "tasks"
    assert "pip install -e '.[eval]'" in e.value.message


@needs_lm_eval
def test_missing_local_yaml(tmp_path: Path):
    with pytest.raises(UserError) as e:
        zero_shot(tiny_model("llama"), eos_tokenizer(), [str(tmp_path / "nope.yaml")])
    assert e.value.code == ErrorCode.NOT_FOUND and e.value.field == "tasks"
    assert "nope.yaml" in e.value.message


@needs_lm_eval
def test_missing_data_file(local_task: Path):
    (local_task.parent / "tiny_mc.jsonl").unlink()
    with pytest.raises(UserError) as e:
        zero_shot(tiny_model("llama"), eos_tokenizer(), [str(local_task)])
    assert e.value.code == ErrorCode.NOT_FOUND and "tiny_mc.jsonl" in e.value.message


@needs_lm_eval
def test_tokenizer_without_bos_or_eos(local_task: Path):
    with pytest.raises(UserError) as e:
        zero_shot(tiny_model("llama"), word_tokenizer(), [str(local_task)])
    assert e.value.code == ErrorCode.BAD_TOKENIZER


def test_local_yaml_with_a_function_tag(local_task: Path):
    """safe_load refuses lm_eval's `!function` tag: the task name is read off its line."""
    from core.evaluation.tasks import _task_name

    text = local_task.read_text().replace(
        'doc_to_text: "{{context}}"', "doc_to_text: !function utils.doc_to_text"
    )
    local_task.write_text(text.replace("task: tiny_mc", "task: 'tiny_fn'  # renamed"))
    assert _task_name(local_task) == "tiny_fn"


# The two tests below index lm_eval's ~15k bundled tasks (about 8 s, once per process).
@pytest.mark.slow
@needs_lm_eval
def test_unknown_task_name_suggests_close_ones():
    with pytest.raises(UserError) as e:
        zero_shot(tiny_model("llama"), eos_tokenizer(), ["arc_eazy"])
    assert e.value.field == "tasks" and e.value.code == ErrorCode.INVALID_INPUT
    assert "arc_eazy" in e.value.message and "arc_easy" in e.value.message


@pytest.mark.slow
@needs_lm_eval
def test_hub_task_offline_is_hub_unreachable(monkeypatch, tmp_path: Path):
    """arc_easy's dataset is on the hub; offline and not cached, it fails at once."""
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # conftest sets it; this test relies on it
    # datasets read HF_HUB_OFFLINE when imported; an empty cache: nothing cached can serve
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)
    with pytest.raises(UserError) as e:
        zero_shot(tiny_model("llama"), eos_tokenizer(), ["arc_easy"], limit=2)
    assert e.value.code == ErrorCode.HUB_UNREACHABLE and e.value.field == "tasks"
    assert "HF_HUB_OFFLINE is set" in e.value.message


def test_a_job_with_an_unknown_task_fails_before_its_model_is_loaded(tmp_path, monkeypatch):
    import core.pipeline
    from contract import JobSpec

    def no_load(*args, **kwargs):
        raise AssertionError("the model was located before the tasks were checked")

    monkeypatch.setattr("core.models.locate_model", no_load)
    spec = JobSpec(
        model="builtin:smollm2-135m",
        calibration="builtin:stdlib-docs",
        num_blocks=2,
        evaluation={"tasks": [str(tmp_path / "missing.yaml")]},
    )
    with pytest.raises(UserError) as e:
        core.pipeline.prepare_job(spec)
    assert e.value.field == "tasks" and e.value.code == ErrorCode.NOT_FOUND
