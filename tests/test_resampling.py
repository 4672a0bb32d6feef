"""Resampling schemes: unbiased offspring counts, residual's exact part, -inf never chosen."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inference import resampling

NUM_KEYS = 4000
NUM_SAMPLES = 13  # differs from N, so M * W is no integer and counts are random
LOG_WEIGHTS = jnp.log(jnp.array([0.05, 0.0, 0.3, 0.12, 0.0, 0.28, 0.2, 0.05]))  # two -inf
KEYS = jax.random.split(jax.random.PRNGKey(0), NUM_KEYS)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _counts(name, log_weights, num_samples):
    """Offspring counts [NUM_KEYS, N] of one scheme over many keys (one compile per scheme)."""
    ancestors = jax.vmap(lambda k: resampling.SCHEMES[name](k, log_weights, num_samples))(KEYS)
    assert ancestors.dtype == jnp.int32 and ancestors.shape == (NUM_KEYS, num_samples)
    return jax.vmap(lambda a: jnp.bincount(a, length=log_weights.shape[0]))(ancestors)


def counts(name, log_weights=LOG_WEIGHTS):
    return np.asarray(_counts(name, log_weights, NUM_SAMPLES))


@pytest.mark.parametrize("name", sorted(resampling.SCHEMES))
def test_expected_offspring_counts(name):
    draws = counts(name)
    weights = np.exp(np.asarray(LOG_WEIGHTS))
    assert np.all(draws.sum(axis=1) == NUM_SAMPLES)
    # Multinomial variance bounds every scheme's per-particle variance up to the 1/4 of rounding.
    sd = np.sqrt(np.maximum(NUM_SAMPLES * weights * (1 - weights), 0.25))
    error = np.abs(draws.mean(axis=0) - NUM_SAMPLES * weights)
    np.testing.assert_array_less(error, 5 * sd / np.sqrt(NUM_KEYS))
    assert np.all(draws[:, weights == 0] == 0), "a -inf particle was chosen"


@pytest.mark.parametrize("name", sorted(resampling.SCHEMES))
def test_degenerate_and_nan_weights(name):
    log_weights = jnp.full(8, -jnp.inf).at[1].set(jnp.nan).at[6].set(3.0)
    assert np.all(counts(name, log_weights)[:, 6] == NUM_SAMPLES)


def test_low_variance_schemes_stay_within_one_of_expectation():
    expected = NUM_SAMPLES * np.exp(np.asarray(LOG_WEIGHTS))
    assert np.abs(counts("systematic") - expected).max() < 1
    assert np.abs(counts("multinomial") - expected).max() >= 1  # the bound is not vacuous


def test_residual_deterministic_part_is_exact():
    floors = np.floor(NUM_SAMPLES * np.exp(np.asarray(LOG_WEIGHTS)))
    assert np.all(counts("residual") >= floors)
    # Integral M W_i: the whole draw is deterministic.
    integral = jnp.array([4.0, 0, 3, 0, 0, 6, 0, 0]) / NUM_SAMPLES
    assert np.all(counts("residual", jnp.log(integral)) == np.array([4, 0, 3, 0, 0, 6, 0, 0]))


def test_ess():
    ess = jax.jit(resampling.ess)
    assert np.isclose(ess(jnp.zeros(8)), 8.0)
    assert np.isclose(ess(jnp.full(8, -jnp.inf).at[3].set(0.0)), 1.0)
    assert np.isclose(ess(jnp.log(jnp.array([3.0, 1, 0, 0, 0, 0, 0, 0]))), 1 / (0.75**2 + 0.25**2))
    assert ess(jnp.full(8, -jnp.inf)) == 0.0


def test_gather_takes_every_leaf_along_axis_0():
    tree = {"a": jnp.arange(3), "b": (jnp.arange(6).reshape(3, 2),)}
    out = resampling.gather(tree, jnp.array([2, 2, 0]))
    np.testing.assert_array_equal(out["a"], [2, 2, 0])
    np.testing.assert_array_equal(out["b"][0], [[4, 5], [4, 5], [0, 1]])


def test_big_leaves_are_gathered_one_layer_at_a_time(monkeypatch):
    """A KV-cache-sized leaf [N, rows = 1, layers, ...] is gathered slice by slice of its layers (in place: one
    layer's copy at a time); the result is the plain gather, under jit and vmap too."""
    monkeypatch.setattr(resampling, "CHUNKED_GATHER_BYTES", 64)
    tree = {"cache": jnp.arange(4 * 3 * 2 * 5, dtype=jnp.float32).reshape(4, 1, 3, 2, 5), "flag": jnp.arange(4),
            "row": jnp.arange(4 * 1 * 3).reshape(4, 1, 3)}  # under the threshold
    ancestors = jnp.array([3, 3, 0, 1])
    want = jax.tree.map(lambda leaf: np.asarray(leaf)[np.asarray(ancestors)], tree)
    for got in (resampling.gather(tree, ancestors), jax.jit(resampling.gather)(tree, ancestors)):
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(a, b)
    jaxpr = str(jax.make_jaxpr(resampling.gather)(tree, ancestors))
    assert jaxpr.count("scan[") + jaxpr.count("while[") == 1  # the cache only: the others are one gather each
    batched = jax.vmap(resampling.gather, in_axes=(0, 0))(jax.tree.map(lambda x: jnp.stack([x, x]), tree),
                                                         jnp.stack([ancestors, ancestors[::-1]]))
    np.testing.assert_array_equal(batched["cache"][1], np.asarray(tree["cache"])[np.asarray(ancestors[::-1])])
