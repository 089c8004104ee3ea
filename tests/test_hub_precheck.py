"""hf: models are checked on the hub's listing and their config.json before any weight is
downloaded: the size cap, pickle-only weights, the architecture and the memory plan.

huggingface_hub's functions are replaced by a fake hub that serves a tiny model from a local
folder into a Hugging Face cache layout under tmp_path and records each call; nothing here
reaches a hub (huggingface_hub itself stays offline: FakeHub.install)."""

import fnmatch
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from conftest import random_text, tiny_ids, tiny_model, word_tokenizer

from contract import ErrorCode, JobSpec, UserError
from core.models import load_model, locate_model
from core.pipeline import prepare_job

REAL_SNAPSHOT_DOWNLOAD = huggingface_hub.snapshot_download  # reads the cache alone, offline
COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "org/tiny"
WEIGHT_SUFFIXES = (".safetensors", ".bin")


class FakeHub:
    """One repository, REPO at COMMIT: the files of `source` plus `extra` (name: size), listed
    but never served. Downloads land in `cache` as huggingface_hub lays it out."""

    def __init__(self, source: Path, cache: Path, extra: dict[str, int] | None = None):
        self.source, self.extra = source, extra or {}
        self.storage = cache / ("models--" + REPO.replace("/", "--"))
        self.snapshot = self.storage / "snapshots" / COMMIT
        self.calls: list[tuple] = []

    def install(self, monkeypatch) -> "FakeHub":
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # so core.hub takes the online path
        # ...while huggingface_hub itself stays offline, and points at a closed local port: a
        # call the fake misses fails here instead of reaching a hub.
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
        monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: self)
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", self.hf_hub_download)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", self.snapshot_download)
        return self

    def files(self) -> dict[str, int]:
        real = {
            str(p.relative_to(self.source)): p.stat().st_size
            for p in self.source.rglob("*")
            if p.is_file()
        }
        return {**real, **self.extra}

    def model_info(self, repo_id, revision=None, files_metadata=False):
        assert repo_id == REPO and files_metadata
        self.calls.append(("model_info", revision))
        siblings = [SimpleNamespace(rfilename=n, size=s) for n, s in self.files().items()]
        return SimpleNamespace(sha=COMMIT, siblings=siblings)

    def hf_hub_download(self, repo_id, filename, revision=None, **kw):
        assert repo_id == REPO
        self.calls.append(("hf_hub_download", filename))
        (self.storage / "refs").mkdir(parents=True, exist_ok=True)
        (self.storage / "refs" / (revision or "main")).write_text(COMMIT)
        return str(self._copy(filename))

    def snapshot_download(self, repo_id, revision=None, allow_patterns=None, **kw):
        assert repo_id == REPO
        if kw.get("local_files_only"):  # the cache: no hub involved
            return REAL_SNAPSHOT_DOWNLOAD(
                repo_id, revision=revision, allow_patterns=allow_patterns, **kw
            )
        self.calls.append(("snapshot_download", tuple(allow_patterns or ())))
        for name in self.files():
            if any(fnmatch.fnmatch(name, p) for p in allow_patterns or ["*"]):
                self._copy(name)
        return str(self.snapshot)

    def _copy(self, name: str) -> Path:
        target = self.snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.source / name, target)
        return target

    def weights_downloaded(self) -> list[str]:
        return [p.name for p in self.snapshot.rglob("*") if p.name.endswith(WEIGHT_SUFFIXES)]


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "repo"
    model = tiny_model("llama")
    model.config.max_position_embeddings = 8192  # the plan, not the shape, refuses 8192 tokens
    model.save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def job(tmp_path, **kw) -> JobSpec:
    text = tmp_path / "calib.txt"
    text.write_text(random_text(400))
    fields = {"samples": 2, "seq_len": 16, **kw}
    return JobSpec(model=f"hf:{REPO}", calibration=str(text), num_blocks=2, **fields)


def weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def test_a_model_over_the_cap_is_refused_from_the_listing(
    tmp_path, model_dir, hf_cache, monkeypatch
):
    hub = FakeHub(model_dir, hf_cache).install(monkeypatch)
    size = weight_bytes(model_dir)
    with pytest.raises(UserError) as e:
        prepare_job(job(tmp_path), max_weight_bytes=size - 1)
    assert e.value.field == "model"
    message = str(e.value)
    assert f"{size:,} bytes" in message and f"{size - 1:,} bytes" in message
    assert "BLOCKPRUNE_MAX_MODEL_GB" in message
    assert hub.calls == [("model_info", None)]  # not even config.json was downloaded
    assert hub.weights_downloaded() == []
    # At the cap exactly, the same model passes.
    prepared = prepare_job(job(tmp_path), max_weight_bytes=size)
    assert prepared.loaded.name == REPO and hub.weights_downloaded() == ["model.safetensors"]


class _WritesMarker:
    """A pickle that creates a file when unpickled: proof that nothing unpickles it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_only_repo_is_refused_before_any_download(
    tmp_path, model_dir, hf_cache, monkeypatch
):
    (model_dir / "model.safetensors").unlink()
    marker = tmp_path / "unpickled"
    (model_dir / "pytorch_model.bin").write_bytes(pickle.dumps(_WritesMarker(marker)))
    hub = FakeHub(model_dir, hf_cache).install(monkeypatch)
    with pytest.raises(UserError, match="pytorch_model.bin") as e:
        prepare_job(job(tmp_path))
    assert e.value.code == ErrorCode.UNSAFE_WEIGHTS and e.value.field == "model"
    assert hub.calls == [("model_info", None)]
    assert not hub.snapshot.exists() and not marker.exists()


def test_a_plan_that_does_not_fit_is_refused_before_the_weights(
    tmp_path, model_dir, hf_cache, monkeypatch
):
    hub = FakeHub(model_dir, hf_cache).install(monkeypatch)
    plans: list[str] = []
    # 8192 x 8192 tokens in one chunk: terabytes of attention scores, on any machine.
    with pytest.raises(UserError) as e:
        prepare_job(job(tmp_path, samples=8192, seq_len=8192), on_plan=plans.append)
    assert e.value.code == ErrorCode.DOES_NOT_FIT and "cannot fit" in str(e.value)
    assert hub.calls == [("model_info", None), ("hf_hub_download", "config.json")]
    assert [p.name for p in hub.snapshot.iterdir()] == ["config.json"] and plans == []
    # The same model with a job that fits: the plan is made before the download.
    prepare_job(job(tmp_path), on_plan=lambda line: hub.calls.append(("plan", line[:7])))
    assert [c[0] for c in hub.calls[2:]] == [
        "model_info",
        "hf_hub_download",
        "plan",
        "snapshot_download",
    ]


def test_an_unsupported_architecture_is_refused_from_config_json(tmp_path, hf_cache, monkeypatch):
    from transformers import GPT2Config

    folder = tmp_path / "gpt2"
    GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4).save_pretrained(folder)
    hub = FakeHub(folder, hf_cache, extra={"model.safetensors": 1000}).install(monkeypatch)
    with pytest.raises(UserError, match="'gpt2' is not supported") as e:
        locate_model(f"hf:{REPO}")
    assert e.value.code == ErrorCode.UNSUPPORTED_ARCHITECTURE
    assert hub.calls == [("model_info", None), ("hf_hub_download", "config.json")]


def test_the_happy_path_loads_the_same_model_as_the_folder(
    tmp_path, model_dir, hf_cache, monkeypatch
):
    # A second copy of the weights in another format and an ONNX export in a subfolder: listed,
    # neither counted against the cap nor downloaded (transformers reads model.safetensors).
    extra = {"consolidated.safetensors": 10**12, "onnx/model.safetensors": 10**12}
    hub = FakeHub(model_dir, hf_cache, extra=extra).install(monkeypatch)
    size = weight_bytes(model_dir)
    prepared = prepare_job(job(tmp_path), max_weight_bytes=size)
    assert [c[0] for c in hub.calls] == ["model_info", "hf_hub_download", "snapshot_download"]
    patterns = hub.calls[-1][1]
    assert "model.safetensors" in patterns and "config.json" in patterns
    assert "tokenizer.json" in patterns
    assert not any("consolidated" in p or "onnx" in p for p in patterns)
    local = load_model(str(model_dir))
    ids = tiny_ids()
    with torch.no_grad():
        assert torch.equal(prepared.loaded.model(ids).logits, local.model(ids).logits)
    assert prepared.loaded.tokenizer("w1 w2 w3")["input_ids"] == [4, 5, 6]
    assert prepared.loaded.description["spec"] == f"hf:{REPO}"


def test_offline_the_local_cache_serves_what_was_downloaded(
    tmp_path, model_dir, hf_cache, monkeypatch
):
    hub = FakeHub(model_dir, hf_cache).install(monkeypatch)
    online = load_model(f"hf:{REPO}")
    monkeypatch.undo()  # the real huggingface_hub again, offline, on the same cache
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = len(hub.calls)
    offline = load_model(f"hf:{REPO}")
    assert len(hub.calls) == calls  # the fake hub was not asked
    ids = tiny_ids()
    with torch.no_grad():
        assert torch.equal(offline.model(ids).logits, online.model(ids).logits)
    # A smaller cap still applies to a cached model.
    with pytest.raises(UserError, match="BLOCKPRUNE_MAX_MODEL_GB"):
        locate_model(f"hf:{REPO}", max_weight_bytes=weight_bytes(model_dir) - 1)


def test_offline_a_model_refused_after_its_config_is_not_in_the_cache(
    tmp_path, model_dir, hf_cache, monkeypatch
):
    FakeHub(model_dir, hf_cache).install(monkeypatch)
    with pytest.raises(UserError) as e:
        prepare_job(job(tmp_path, samples=8192, seq_len=8192))
    assert e.value.code == ErrorCode.DOES_NOT_FIT
    monkeypatch.undo()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # Only its config.json is cached: a clear error, not "no weights in the repository".
    with pytest.raises(UserError, match="not wholly in the local Hugging Face cache") as e:
        load_model(f"hf:{REPO}")
    assert e.value.code == ErrorCode.HUB_UNREACHABLE and "HF_HUB_OFFLINE is set" in str(e.value)


def test_an_unreachable_hub_falls_back_to_the_cache(tmp_path, model_dir, hf_cache, monkeypatch):
    hub = FakeHub(model_dir, hf_cache).install(monkeypatch)

    def refused(*a, **k):
        raise ConnectionError("connection refused")

    monkeypatch.setattr(hub, "model_info", refused)
    # Nothing cached: the old clear error, with the hub named as the reason.
    with pytest.raises(UserError, match="the hub is unreachable") as e:
        load_model(f"hf:{REPO}")
    assert e.value.code == ErrorCode.HUB_UNREACHABLE
    assert isinstance(e.value.__cause__, ConnectionError)
    # Cached (a real snapshot_download reads the cache): served from there.
    for name in hub.files():
        hub._copy(name)
    (hub.storage / "refs").mkdir(parents=True, exist_ok=True)
    (hub.storage / "refs" / "main").write_text(COMMIT)
    assert locate_model(f"hf:{REPO}").config_dir == hub.snapshot
