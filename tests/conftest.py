"""Shared fixtures: a cached tiny policy, a real scorer service on loopback, quiet third-party logs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Built models are cached across test runs in the repository's ignored .cache/ folder.
os.environ.setdefault("ESGRPO_HOME", str(ROOT / ".cache" / "esgrpo-test"))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
SHARED = ROOT.parent / "shared"


class BackgroundImageBuild:
    """The CPU images for tests/test_docker.py, built by `make containers-local` while the other tests run
    (mostly downloads, unpacking and layer copies: it would add minutes to the suite if done in line). It
    starts once the tiny policy exists: building both at once on 2 cores made the policy take 4× longer."""

    wanted = False
    proc: subprocess.Popen | None = None
    log = ROOT / ".cache" / "docker-build.log"

    @classmethod
    def start(cls) -> None:
        if cls.proc is not None:
            return
        cls.log.parent.mkdir(parents=True, exist_ok=True)
        cls.proc = subprocess.Popen(["make", "-C", str(ROOT), "containers-local", "IMAGES=scorer es"],
                                    stdout=open(cls.log, "w"), stderr=subprocess.STDOUT)

    @classmethod
    def wait(cls) -> None:
        cls.start()
        assert cls.proc.wait() == 0, cls.log.read_text()[-3000:]


class BackgroundTypeCheck:
    """`mypy methods/es` (tests/test_layers.py), started when the session starts: ~1.5 min of a cold cache that would
    otherwise add to the suite's time, run while other tests wait on servers and subprocesses."""

    proc: subprocess.Popen | None = None

    @classmethod
    def start(cls) -> None:
        cls.proc = subprocess.Popen([sys.executable, "-m", "mypy", "methods/es", "--cache-dir",
                                     str(ROOT / ".cache" / "mypy")], cwd=ROOT, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)

    @classmethod
    def result(cls) -> tuple[int, str]:
        if cls.proc is None:
            cls.start()
        out, _ = cls.proc.communicate(timeout=900)
        return cls.proc.returncode, out


def pytest_collection_modifyitems(session, config, items):
    """Docker tests last; their images build in the background once the policy exists (policy_path). CUDA tests
    skip without a CUDA device. The type check starts now if it is to run."""
    skip_gpu_tests_without_cuda(items)
    if any(i.name == "test_the_es_engine_contract_type_checks" for i in items):
        BackgroundTypeCheck.start()
    docker = [i for i in items if i.module.__name__.endswith("test_docker")]
    BackgroundImageBuild.wanted = os.geteuid() == 0 and any("cpu_images" in getattr(i, "fixturenames", ())
                                                             for i in docker)
    items[:] = [i for i in items if i not in docker] + docker


@pytest.fixture(scope="session")
def policy_path() -> Path:
    from harness.fixtures.policy import builtin_policy_path

    path = builtin_policy_path(progress=False)
    if BackgroundImageBuild.wanted:
        BackgroundImageBuild.start()
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ScorerProcess:
    """``esgrpo serve-scorer`` as a real subprocess; stop() and start() again on the same port."""

    def __init__(self, tmp: Path, config: dict | None = None, env: dict | None = None):
        self.tmp, self.port = tmp, free_port()
        self.rendezvous = tmp / "scorer.json"
        self.config = tmp / "scorer.yaml"
        import yaml

        self.config.write_text(yaml.safe_dump({"reward": {"kind": "builtin"}, "cost": {"kind": "builtin"},
                                               **(config or {})}))
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> "ScorerProcess":
        self.log = open(self.tmp / "scorer.log", "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "harness.launch.cli", "serve-scorer", "--config", str(self.config),
                                      "--port", str(self.port), "--rendezvous", str(self.rendezvous)],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        if wait:
            deadline = time.time() + 60
            while time.time() < deadline:
                if self.rendezvous.is_file() and json.loads(self.rendezvous.read_text())["pid"] == self.proc.pid:
                    return self
                if self.proc.poll() is not None:
                    raise RuntimeError((self.tmp / "scorer.log").read_text())
                time.sleep(0.1)
            raise RuntimeError("scorer did not start in 60 s")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def scorer_service(tmp_path):
    srv = ScorerProcess(tmp_path).start()
    yield srv
    srv.stop()


@pytest.fixture
def make_scorer_service(tmp_path):
    made = []

    def make(**kw) -> ScorerProcess:
        folder = tmp_path / f"s{len(made)}"
        folder.mkdir()
        made.append(ScorerProcess(folder, **kw))
        return made[-1]

    yield make
    for s in made:
        s.stop()


@pytest.fixture(scope="session")
def llama_format_policy(tmp_path_factory) -> Path:
    """A tiny random Llama policy whose tokenizer is in LLaMA's own files: a SentencePiece BPE ``tokenizer.model``
    (unk 0, BOS 1, EOS 2, byte fallback) and a ``tokenizer_config.json`` with ``add_bos_token: true``, as the
    Alpaca-7B and LLaMA checkpoints ship them."""
    import io

    import sentencepiece as spm
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("llama-format-policy")
    texts = [json.loads(line)["prompt"] for line in (ROOT / "harness" / "data" / "builtin_prompts.jsonl").open()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts * 5), model_writer=model, vocab_size=300,
                                   model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True,
                                   character_coverage=1.0, minloglevel=2)
    (out / "tokenizer.model").write_bytes(model.getvalue())
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
        "eos_token": "</s>", "unk_token": "<unk>", "model_max_length": 2048, "legacy": False}))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def tiny_llama_config():
    from transformers import LlamaConfig

    from harness.fixtures.random_models import MAX_POSITIONS, SCORER_SHAPES

    return LlamaConfig(**SCORER_SHAPES["tiny"], max_position_embeddings=MAX_POSITIONS)


@pytest.fixture
def beaver_dir(tmp_path, policy_path):
    """A Beaver score checkpoint: LlamaForScore config, backbone under model.*, score_head with bias,
    normalizer buffers; tokenizer from the built-in policy."""
    from harness.fixtures.random_models import build_random_beaver

    return build_random_beaver("tiny", tmp_path / "beaver-tiny-cost", "cost", seed=0, bias=0.5)


# -- tests/gpu: CUDA-only checks (`make test-gpu`). They skip where no CUDA device is (CI never has one). Each test
# also files the figures it measured; the session writes them to ESGRPO_GPU_FIGURES (default
# .cache/gpu-figures.json) beside the device's name and the library versions, to be committed with the results.
GPU_FIGURES: dict = {}


def skip_gpu_tests_without_cuda(items) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (make test-gpu on a GPU host)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def figures(request):
    """This test's figures: a dict filed under the test's name."""
    return GPU_FIGURES.setdefault(request.node.name, {})


def pytest_sessionfinish(session, exitstatus):
    if not GPU_FIGURES:
        return
    import importlib.metadata as md

    import torch

    versions = {}
    for dist in ("torch", "vllm", "transformers", "triton"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    out = Path(os.environ.get("ESGRPO_GPU_FIGURES", ROOT / ".cache" / "gpu-figures.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": torch.cuda.get_device_name(0), "versions": versions,
                               "exit_status": int(exitstatus), "tests": GPU_FIGURES}, indent=1, default=str))


@pytest.fixture(scope="session")
def policy_05b() -> Path:
    """A random Qwen2-0.5B-shaped policy (bf16 weights, the built-in tokenizer padded to its vocabulary)."""
    from harness.fixtures.random_models import random_policy

    return random_policy("qwen2-0.5b")
