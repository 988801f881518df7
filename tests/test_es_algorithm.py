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
