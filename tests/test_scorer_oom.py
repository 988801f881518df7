"""A scorer that bounds its own memory: token-budget batches, halved on out-of-memory, and one pair too large
for the device as a permanent, named error that stops the client at once (never a deadline of retries)."""

import threading
import time

import pytest
import torch
import uvicorn

from conftest import free_port

from harness.errors import ScorerError, ScorerOutOfMemory, is_out_of_memory
from harness.scoring import ScorerSpec
from harness.scoring.client import HttpScorer
from scorer.backends import ModelBackend, PairTooLarge, ServiceScorer, token_batches
from scorer.server import create_app
from scorer.service_config import BackendSpec, ScorerServiceConfig

PROMPTS = [f"Question {i}: how do I {'cook rice ' * (1 + i % 7)}?" for i in range(24)]
RESPONSES = [" Rinse it." + " Then simmer it slowly." * (i % 5) for i in range(24)]


class SmallDevice(ModelBackend):
    """A real Beaver backend on a pretend device that runs out of memory above ``limit`` padded tokens, as a
    GPU does: torch's own OutOfMemoryError, raised by the forward pass."""

    limit = 10**9

    def forward(self, batch):
        if batch["input_ids"].numel() > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {batch['input_ids'].numel()} tokens")
        return super().forward(batch)


def backend(beaver_dir, limit: int, budget: int = 4096) -> SmallDevice:
    b = SmallDevice(BackendSpec(kind="beaver", path=str(beaver_dir), device="cpu", max_batch_tokens=budget))
    b.limit = limit
    return b


def test_token_batches_bound_the_padded_size():
    lengths = [3, 4, 4, 9, 10, 30, 31]
    batches = token_batches(lengths, 20)
    assert [i for b in batches for i in b] == list(range(7))  # every row once, in order
    assert all(len(b) * max(lengths[i] for i in b) <= 20 or len(b) == 1 for b in batches)
    assert batches[-2:] == [[5], [6]]  # a row over the budget goes alone


def test_out_of_memory_halves_the_batch_and_the_scores_do_not_change(beaver_dir):
    texts = [f"BEGINNING OF CONVERSATION: USER: {p} ASSISTANT:{r}" for p, r in zip(PROMPTS, RESPONSES)]
    whole = backend(beaver_dir, limit=10**9)
    want = whole.score_texts(texts)
    assert whole.budget.halvings == 0
    small = backend(beaver_dir, limit=120)
    got = small.score_texts(texts)
    assert got == pytest.approx(want, abs=1e-5)
    info = small.info()
    assert info["oom_halvings"] > 0 and info["batch_tokens_now"] <= 120 and info["max_batch_tokens"] == 4096
    halvings = small.budget.halvings
    assert small.score_texts(texts) == pytest.approx(want, abs=1e-5)
    assert small.budget.halvings == halvings  # the budget stayed small: no new out-of-memory errors


def test_one_pair_too_large_is_a_permanent_error_naming_length_and_memory(beaver_dir):
    with pytest.raises(PairTooLarge, match=r"one pair of \d+ tokens does not fit on cpu .*GiB"):
        backend(beaver_dir, limit=5).score_texts(["BEGINNING OF CONVERSATION: USER: hi ASSISTANT: a long answer"])


class Broken(SmallDevice):
    """A forward pass that fails the same way every time (a bad kernel, a device-side assert)."""

    def forward(self, batch):
        raise RuntimeError("CUDA error: device-side assert triggered\nCompile with TORCH_USE_CUDA_DSA")


def serve(b: ModelBackend):
    cfg = ScorerServiceConfig(port=free_port(), max_batch=64)
    server = uvicorn.Server(uvicorn.Config(create_app(cfg, build=lambda _: ServiceScorer(b, b)), host="127.0.0.1",
                                           port=cfg.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    return f"http://127.0.0.1:{cfg.port}", server, thread


@pytest.fixture
def small_device_service(beaver_dir):
    """The real app on loopback (uvicorn in a thread), serving a Beaver backend on the small pretend device."""
    b = backend(beaver_dir, limit=60)
    url, server, thread = serve(b)
    yield url, b
    server.should_exit = True
    thread.join(10)


def test_a_scoring_failure_is_one_line_and_stops_the_client_at_once(beaver_dir):
    b = Broken(BackendSpec(kind="beaver", path=str(beaver_dir), device="cpu"))
    url, server, thread = serve(b)
    try:
        client = HttpScorer(ScorerSpec(kind="http", url=url, deadline_s=600))
        t = time.monotonic()
        with pytest.raises(ScorerError, match=r"scoring failed: RuntimeError: CUDA error: device-side assert") as e:
            client.score(["hi"], [" ok"])
        assert time.monotonic() - t < 5 and "Traceback" not in str(e.value) and not client.outages
        client.close()
    finally:
        server.should_exit = True
        thread.join(10)


def test_the_client_stops_at_once_with_the_scorers_message(small_device_service):
    url, b = small_device_service
    client = HttpScorer(ScorerSpec(kind="http", url=url, deadline_s=600))
    client.wait_ready()
    short = client.score(["hi"] * 8, [" ok"] * 8)  # fits after halving: scored, the halvings on /info
    assert len(short.rewards) == 8
    client._info = None
    info = client.info()
    assert info["reward"]["oom_halvings"] > 0 and info["load_seconds"] is not None
    assert info["peak_host_rss_gib"] > 0 and info["reward"]["load_seconds"] >= 0
    t = time.monotonic()
    with pytest.raises(ScorerOutOfMemory, match=r"out of memory: scorer out of memory: one pair of \d+ tokens") as e:
        client.score(["Tell me everything about " + "rice " * 40], [" Sure."])
    assert time.monotonic() - t < 5  # not a deadline's worth of retries
    assert is_out_of_memory(e.value)  # the run records it as oom and stops
    assert not client.outages
    client.close()


def test_a_pair_count_batch_size_is_deprecated_for_the_token_budget():
    with pytest.warns(FutureWarning, match="set max_batch_tokens"):
        spec = BackendSpec(kind="beaver", batch_size=32)
    assert spec.max_batch_tokens == BackendSpec().max_batch_tokens
