"""CUDA-only checks (``make test-gpu``): they skip where no CUDA device is (CI never has one). Each test also
files the figures it measured; the session writes them to ``ESGRPO_GPU_FIGURES`` (default
.cache/gpu-figures.json) beside the device's name and the library versions, to be committed with the results."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[2]
FIGURES: dict = {}


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (make test-gpu on a GPU host)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def figures(request):
    """This test's figures: a dict filed under the test's name."""
    return FIGURES.setdefault(request.node.name, {})


def pytest_sessionfinish(session, exitstatus):
    if not FIGURES or not torch.cuda.is_available():
        return
    import importlib.metadata as md

    versions = {}
    for dist in ("torch", "vllm", "transformers", "triton"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    out = Path(os.environ.get("ESGRPO_GPU_FIGURES", ROOT / ".cache" / "gpu-figures.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": torch.cuda.get_device_name(0), "versions": versions,
                               "exit_status": int(exitstatus), "tests": FIGURES}, indent=1, default=str))


@pytest.fixture(scope="session")
def policy_05b() -> Path:
    """A random Qwen2-0.5B-shaped policy (bf16 weights, the built-in tokenizer padded to its vocabulary)."""
    from harness.fixtures.random_models import random_policy

    return random_policy("qwen2-0.5b")
