"""Calibration sources: exact chunking, seeded sampling, offline builtin text, clear errors."""

import hashlib
import json
import sys

import pytest
import torch
from conftest import random_text, word_tokenizer

from contract import UserError
from core.calibration import ROW_SEPARATOR, load_calibration


def write_jsonl(path, rows, field="text"):
    path.write_text("".join(json.dumps({field: r, "id": i}) + "\n" for i, r in enumerate(rows)))
    return str(path)


def test_txt_is_chunked_consecutively_and_tail_dropped(tmp_path):
    tok = word_tokenizer()
    text = random_text(1000)
    (tmp_path / "c.txt").write_text(text)
    cal = load_calibration(str(tmp_path / "c.txt"), tok, samples=7, seq_len=33)
    ids = tok(text)["input_ids"]
    assert len(ids) == 1000 and len(set(ids)) > 50  # no UNKs, a real stream
    assert cal.input_ids.dtype == torch.long and cal.input_ids.shape == (7, 33)
    for k in range(7):
        assert cal.input_ids[k].tolist() == ids[k * 33 : (k + 1) * 33]
    d = cal.description
    assert json.loads(json.dumps(d)) == d
    assert d["tokens_available"] == 1000 and d["chunks_available"] == 1000 // 33
    assert d["tokens_used"] == 7 * 33 and d["samples"] == 7 and d["seq_len"] == 33
    assert d["text_sha256"] == hashlib.sha256(text.encode()).hexdigest()


def test_txt_uses_every_full_chunk_exactly(tmp_path):
    (tmp_path / "c.txt").write_text(random_text(100))
    cal = load_calibration(str(tmp_path / "c.txt"), word_tokenizer(), samples=10, seq_len=10)
    assert cal.input_ids.shape == (10, 10)
    with pytest.raises(UserError) as e:
        load_calibration(str(tmp_path / "c.txt"), word_tokenizer(), samples=10, seq_len=11)
    assert e.value.field == "calibration" and e.value.code == "not_enough_text"
    msg = str(e.value)
    assert "100 tokens" in msg and "9 chunks" in msg and "10 requested" in msg and "110" in msg


def test_jsonl_rows_are_shuffled_by_seed(tmp_path):
    rows = [random_text(12, seed=s) for s in range(40)]
    src = write_jsonl(tmp_path / "c.jsonl", rows)
    tok = word_tokenizer()
    a = load_calibration(src, tok, samples=4, seq_len=20, seed=1)
    b = load_calibration(src, tok, samples=4, seq_len=20, seed=1)
    c = load_calibration(src, tok, samples=4, seq_len=20, seed=2)
    assert torch.equal(a.input_ids, b.input_ids)
    assert not torch.equal(a.input_ids, c.input_ids)
    assert a.description["rows"] == 40 and a.description["seed"] == 1
    assert a.description["text_sha256"] != c.description["text_sha256"]
    # The stream is whole rows (12 words each) joined by a blank line, in a shuffled order.
    assert a.description["tokens_available"] == 40 * 12
    row_ids = [tok(r)["input_ids"] for r in rows]
    ids = a.input_ids.flatten().tolist()
    picked = [row_ids.index(ids[i : i + 12]) for i in range(0, len(ids) - 11, 12)]
    assert len(set(picked)) == len(picked) and picked != sorted(picked)


def test_jsonl_custom_text_field(tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", [random_text(30, s) for s in range(5)], "body")
    cal = load_calibration(src, word_tokenizer(), samples=2, seq_len=50, text_field="body")
    assert cal.input_ids.shape == (2, 50) and cal.description["text_field"] == "body"
    with pytest.raises(UserError, match="line 1: no string field 'text'"):
        load_calibration(src, word_tokenizer(), samples=2, seq_len=50)


def test_jsonl_bad_line_is_named(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "w1 w2"}\n\n{"text": "w3"\n')
    with pytest.raises(UserError, match="line 3: invalid JSON") as e:
        load_calibration(str(path), word_tokenizer(), samples=1, seq_len=2)
    assert e.value.field == "calibration"
    path.write_text('{"text": "w1 w2"}\n["w3"]\n')
    with pytest.raises(UserError, match="line 2: no string field"):
        load_calibration(str(path), word_tokenizer(), samples=1, seq_len=2)


def test_builtin_stdlib_docs_works_offline():
    from pydoc_data.topics import topics

    cal = load_calibration("builtin:stdlib-docs", word_tokenizer(), samples=3, seq_len=64)
    assert cal.input_ids.shape == (3, 64)
    text = ROW_SEPARATOR.join(topics[k] for k in sorted(topics))
    assert cal.description["text_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert cal.description["tokens_available"] > 10_000


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"samples": 0}, "samples"),
        ({"samples": 2.5}, "samples"),
        ({"seq_len": 1}, "seq_len"),
        ({"source": "builtin:nope"}, "calibration"),
        ({"source": "s3:bucket/c.txt"}, "calibration"),
        ({"source": "data.csv"}, "calibration"),
        ({"source": "hf:c4"}, "calibration"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, field):
    args = {"source": "builtin:stdlib-docs", "samples": 2, "seq_len": 8, **kwargs}
    with pytest.raises(UserError) as e:
        load_calibration(tokenizer=word_tokenizer(), **args)
    assert e.value.field == field


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="file not found") as e:
        load_calibration(str(tmp_path / "nope.txt"), word_tokenizer(), samples=1, seq_len=8)
    assert e.value.code == "not_found"


def test_hub_sources_fail_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="HF_HUB_OFFLINE") as e:
        load_calibration("hf:wikitext2", word_tokenizer(), samples=1, seq_len=8)
    assert e.value.code == "hub_unreachable" and "builtin:stdlib-docs" in str(e.value)


def test_hub_sources_need_datasets(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(UserError, match="pip install datasets") as e:
        load_calibration("hf:alpaca", word_tokenizer(), samples=1, seq_len=8)
    assert e.value.code == "missing_dependency"
