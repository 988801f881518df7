import numpy as np
import pytest

from methods.es import algorithm as A


def test_members_are_a_pure_function_of_seed_and_iteration():
    assert A.iteration_members(0, 3, 6, False) == A.iteration_members(0, 3, 6, False)
    assert A.iteration_members(0, 3, 6, False) != A.iteration_members(0, 4, 6, False)
    mirrored = A.iteration_members(1, 0, 6, True)
    assert [s for s, _ in mirrored[::2]] == [s for s, _ in mirrored[1::2]]
    assert [sign for _, sign in mirrored] == [1, -1] * 3
    with pytest.raises(ValueError):
        A.iteration_members(0, 0, 5, True)


def test_fitness_and_options_against_direct_computation():
    r = [[1.0, 3.0], [0.0, 2.0], [2.0, -2.0]]
    c = [[1.0, -1.0], [2.0, 2.0], [-1.0, 0.5]]
    lam = 0.5
    want = [np.mean(r[i]) - lam * np.mean(c[i]) for i in range(3)]
    assert A.fitness(r, c, lam) == pytest.approx(want)
    gated = A.fitness(r, c, lam, safe_first_factor=0.0)  # rewards of unsafe (C > 0) completions zeroed
    assert gated == pytest.approx([np.mean([0, 3]) - lam * 0.0, 0 - lam * 2.0, np.mean([2, 0]) - lam * -0.25])
    std = A.fitness(r, c, lam, standardize_rc=True)
    rz = (np.array(r) - np.mean(r)) / np.std(r)
    cz = (np.array(c) - np.mean(c)) / np.std(c)
    assert std == pytest.approx(rz.mean(axis=1) - lam * cz.mean(axis=1))


def test_normalization():
    f = np.array([3.0, 1.0, 2.0, 2.0])
    z = A.normalize(f)
    assert z.mean() == pytest.approx(0) and z.std() == pytest.approx(1)
    ranks = A.normalize(f, "centered_rank")
    assert ranks.tolist() == pytest.approx([0.5, -0.5, -1 / 6, 1 / 6])
    assert A.normalize(np.ones(4)).tolist() == [0, 0, 0, 0]  # no signal: no update


def test_update_coefficients_merge_mirrored_pairs():
    members = [(7, 1), (7, -1), (9, 1), (9, -1)]
    f_hat = np.array([1.0, -1.0, 0.5, 0.5])
    coeffs = dict(A.update_coefficients(members, f_hat, alpha=0.4))
    assert coeffs[7] == pytest.approx(0.4 / 4 * 2.0)
    assert coeffs[9] == pytest.approx(0.0)


# transcriptions of the published ES (alignment/es-fine-tuning_alignment_accl_api.py, HEAD 84c16db)
def published_normalize(means):
    mean_combined, std_combined = float(np.mean(means)), float(np.std(means))
    return [(m - mean_combined) / (std_combined + 1e-8) for m in means]


def published_subset(global_seed, i, n_train, bs):
    import random

    rng = random.Random((global_seed or 42) * 100000 + i)
    return rng.sample(range(n_train), bs) if bs < n_train else list(range(n_train))


def test_fitness_eps_normalizes_as_the_published_es():
    f = np.array([0.31, -1.2, 0.31, 2.5, 0.0])
    assert A.normalize(f, "zscore", 1e-8).tolist() == pytest.approx(published_normalize(f), abs=1e-12)
    same = np.full(4, 0.7)
    assert A.normalize(same, "zscore", 1e-8).tolist() == published_normalize(same) == [0.0] * 4
    assert A.normalize(same).tolist() == [0.0] * 4  # eps 0: all-equal fitness is no signal


@pytest.mark.parametrize("seed, n_train, k", [(0, 250, 64), (3, 250, 64), (0, 50, 64)])
def test_the_published_prompt_sampler_draws_the_published_subsets(seed, n_train, k):
    for i in (0, 1, 499):
        assert A.published_prompt_indices(seed, i, n_train, k) == published_subset(seed, i, n_train, k)


class TinyEngine:
    """The shared in-place ES over two small tensors (what every engine builds on), for the optimizer's arithmetic."""

    def __new__(cls, dtype=None):
        import torch

        from methods.es.in_place import InPlaceES
        from methods.es.noise import IndependentNoise

        class Engine(InPlaceES):
            def __init__(self):
                g = torch.Generator().manual_seed(0)
                self.views = [("a.weight", torch.randn(4, 3, generator=g, dtype=dtype or torch.float32)),
                              ("b.bias", torch.randn(5, generator=g, dtype=dtype or torch.float32))]
                self.noise = IndependentNoise()

            def named_views(self):
                return self.views

        return Engine()


def test_adam_steps_along_the_seeded_direction_as_torch_adam_does():
    """g = Σ c·ε(seed) is rebuilt from the seeds; Adam's step ascends it: torch.optim.Adam given −g as the gradient."""
    import torch

    from methods.es.noise import add_combination_
    from methods.es.optimizer import AdamStep

    engine, ref = TinyEngine(), TinyEngine()
    params = [torch.nn.Parameter(v.clone()) for _, v in ref.views]
    adam = torch.optim.Adam(params, lr=0.01, betas=(0.9, 0.999), eps=1e-8)
    for t, terms in enumerate([[(11, 0.5), (12, -0.25)], [(13, 1.0)], [(11, 0.1), (14, 0.3)]], start=1):
        engine.apply_update(terms, AdamStep(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, t=t))
        for (name, _), p in zip(ref.views, params):
            g = torch.zeros_like(p)
            add_combination_(g, name, terms)
            p.grad = -g
        adam.step()
        for (_, w), p in zip(engine.views, params):
            torch.testing.assert_close(w, p.detach(), rtol=1e-6, atol=1e-7)
    assert not any(g.abs().sum() for g in engine._moments().g)  # the direction buffers are cleared after a step


def test_adam_moments_saved_and_loaded_continue_bit_exactly(tmp_path):
    """Two engines given the same terms stay identical; an engine restarted from weights and moments continues
    as the one that never stopped (what a resume does)."""
    from methods.es.optimizer import AdamStep

    steps = [[(1, 0.3), (2, -0.7)], [(3, 0.2)], [(4, -0.1), (1, 0.4)]]
    a, b = TinyEngine(), TinyEngine()
    for t, terms in enumerate(steps, start=1):
        assert a.apply_update(terms, AdamStep(0.05, 0.9, 0.999, 1e-8, t)) == b.apply_update(terms, AdamStep(0.05, 0.9, 0.999, 1e-8, t))
    c = TinyEngine()
    c.apply_update(steps[0], AdamStep(0.05, 0.9, 0.999, 1e-8, 1))
    c.save_optimizer(str(tmp_path / "optimizer.safetensors"))
    d = TinyEngine()
    for (_, w), (_, src) in zip(d.views, c.views):
        w.copy_(src)
    d.load_optimizer(str(tmp_path / "optimizer.safetensors"))
    for t, terms in enumerate(steps[1:], start=2):
        d.apply_update(terms, AdamStep(0.05, 0.9, 0.999, 1e-8, t))
    assert d.checksum() == a.checksum()
    assert all((x == y).all() for (_, x), (_, y) in zip(d.views, a.views))
    e = TinyEngine()  # without its moments, the continuation differs: the check above can fail
    for (_, w), (_, src) in zip(e.views, c.views):
        w.copy_(src)
    for t, terms in enumerate(steps[1:], start=2):
        e.apply_update(terms, AdamStep(0.05, 0.9, 0.999, 1e-8, t))
    assert e.checksum() != a.checksum()
