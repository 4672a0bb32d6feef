"""SMC on state-space programs against exact answers: Kalman filter, HMM forward algorithm,
enumeration of a tiny token model; plus done-freezing, determinism, compile count, errors."""

import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from models_for_tests import (
    EMIT,
    LENGTH,
    LOG_LM,
    OBS,
    PI,
    TRANS,
    VOCAB,
    YS,
    assert_close_in_mc_error,
    exact_token_posterior,
    hmm_init,
    hmm_step,
    kalman,
    lg_init,
    lg_step,
    log_reward,
    token_init,
    token_step,
    total_variation,
)
from scipy.stats import norm

from inference import SMC, Entropic, WeightError, WeightStatus, smc
from ppl import StateSpaceProgram

NUM_SEEDS = 200
KEYS = jax.random.split(jax.random.PRNGKey(42), NUM_SEEDS)


def run_many(smc: SMC, *args):
    """SMCResult batched over NUM_SEEDS keys: one jitted ``lax.map`` of the pure run."""
    return jax.jit(lambda keys: jax.lax.map(lambda k: smc.run_unchecked(k, *args), keys))(KEYS)


# (a) Linear-Gaussian state-space model vs the Kalman filter.
@pytest.mark.parametrize(
    "scheme, threshold",
    [("systematic", 0.5), ("stratified", 0.5), ("residual", 0.5), ("multinomial", 1.0), ("systematic", 0.0)],
)
def test_linear_gaussian_matches_kalman(scheme, threshold):
    program = StateSpaceProgram(lg_init, lg_step, num_steps=len(YS))
    results = run_many(SMC(program, 64, resampling=scheme, ess_threshold=threshold), YS)
    log_lik, mean = kalman(YS)
    # E[Z_hat] = Z: the ratio Z_hat / Z has mean 1.
    ratio = np.exp(np.asarray(results.log_evidence) - log_lik)
    assert ratio.std() < 0.5
    assert_close_in_mc_error(ratio, 1.0)
    np.testing.assert_allclose(
        np.asarray(results.log_evidence_increments).sum(1), np.asarray(results.log_evidence), rtol=1e-5
    )
    filtered = jnp.sum(results.normalized_weights * results.particles["x"], axis=1)
    assert_close_in_mc_error(filtered, mean, slack=0.02)
    resampled = np.asarray(results.resampled)
    if threshold == 1.0:
        assert resampled.all()
    elif threshold == 0.0:
        assert not resampled.any()
    else:
        assert resampled.any() and not resampled.all()
        assert np.all(np.asarray(results.ancestors)[~resampled] == np.arange(64))


# (b) Discrete HMM vs the forward algorithm.
def test_hmm_filtering_matches_forward_algorithm():
    alpha, log_lik = np.asarray(PI), 0.0
    for y in np.asarray(OBS):
        alpha = (alpha @ np.asarray(TRANS)) * np.asarray(EMIT)[:, y]
        log_lik += np.log(alpha.sum())
        alpha = alpha / alpha.sum()
    program = StateSpaceProgram(hmm_init, hmm_step, num_steps=len(OBS))
    results = run_many(SMC(program, 64), OBS)
    marginals = jax.vmap(lambda w, z: jnp.zeros(3).at[z].add(w))(
        results.normalized_weights, results.particles["z"]
    )
    assert_close_in_mc_error(marginals, alpha, slack=0.01)
    assert_close_in_mc_error(np.exp(np.asarray(results.log_evidence) - log_lik), 1.0)


# (c) A tiny token model with a per-step reward, vs exact enumeration of all sequences.
def reversed_lm_proposal_step(state, t):
    numpyro.sample("tok", dist.Categorical(logits=LOG_LM[state["prev"], ::-1]))


def tempered_sampler_step(state, t):
    """Samples from a flattened LM itself and declares that sampler's log-density on the site."""
    log_q = jax.nn.log_softmax(0.5 * LOG_LM[state["prev"]])
    token = jax.random.categorical(numpyro.prng_key(), log_q)
    token = numpyro.sample(
        "tok",
        dist.Delta(token, log_density=LOG_LM[state["prev"], token]),
        infer={"proposal_log_prob": log_q[token]},
    )
    numpyro.factor("reward", log_reward(t, token, state["prev"]))
    return {"tokens": state["tokens"].at[t].set(token), "prev": token}


@jax.jit
def sequence_posteriors(results):
    """Per-seed weighted histograms over the VOCAB**LENGTH sequences."""
    codes = results.particles["tokens"] @ (VOCAB ** jnp.arange(LENGTH - 1, -1, -1))
    return jax.vmap(lambda w, c: jnp.zeros(VOCAB**LENGTH).at[c].add(w))(results.normalized_weights, codes)


def test_token_posterior_converges_to_enumeration():
    exact = exact_token_posterior()
    program = StateSpaceProgram(token_init, token_step, num_steps=LENGTH)
    small = np.asarray(sequence_posteriors(run_many(SMC(program, 8))))
    large = np.asarray(sequence_posteriors(run_many(SMC(program, 256))))
    assert total_variation(large, exact).mean() < 0.5 * total_variation(small, exact).mean()
    assert total_variation(large.mean(0), exact) < 0.02


@pytest.mark.parametrize("variant", ["proposal program", "declared sampler"])
def test_token_posterior_with_other_proposals(variant):
    if variant == "proposal program":
        program = StateSpaceProgram(
            token_init, token_step, num_steps=LENGTH, proposal=(None, reversed_lm_proposal_step)
        )
    else:
        program = StateSpaceProgram(token_init, tempered_sampler_step, num_steps=LENGTH)
    posterior = np.asarray(sequence_posteriors(run_many(SMC(program, 256)))).mean(0)
    assert total_variation(posterior, exact_token_posterior()) < 0.02


def test_increment_is_log_p_minus_log_q_plus_observation():
    def model(state, t):
        x = numpyro.sample("x", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(x, 1.0), obs=0.5)
        numpyro.deterministic("twice", 2 * x)
        return x

    def guide(state, t):
        numpyro.sample("x", dist.Normal(1.0, 2.0))

    program = StateSpaceProgram(lambda: 0.0, model, num_steps=1, proposal=(None, guide))
    out = program.propagate_traced(jax.random.PRNGKey(3), 0.0, 0)
    x = float(out.state)
    expected = norm.logpdf(x, 0, 1) - norm.logpdf(x, 1, 2) + norm.logpdf(0.5, x, 1)
    np.testing.assert_allclose(float(out.log_weight), expected, rtol=1e-5)
    np.testing.assert_allclose(float(out.deterministic["twice"]), 2 * x)
    # Without a proposal the model samples x itself: only the observation counts.
    _, own = StateSpaceProgram(lambda: 0.0, model, 1).propagate(jax.random.PRNGKey(3), 0.0, 0)
    assert np.isfinite(float(own)) and float(own) <= norm.logpdf(0.0, 0, 1) + 1e-6


# (d) Finished particles are frozen and their increments are 0.
class Walker(NamedTuple):
    x: jax.Array
    done: jax.Array


def walk_init():
    x0 = numpyro.sample("x0", dist.Normal(0.0, 1.0))
    done = numpyro.sample("u", dist.Bernoulli(0.5)).astype(bool)
    return {"x": x0, "x0": x0, "done": done}


def walk_step(state, t):
    x = numpyro.sample("x", dist.Normal(state["x"], 1.0))
    numpyro.factor("f", 1.0)
    return {"x": x, "x0": state["x0"], "done": state["done"]}


def test_done_particles_are_frozen_with_zero_increment():
    steps = 4
    program = StateSpaceProgram(walk_init, walk_step, num_steps=steps)
    result = SMC(program, 32, ess_threshold=0.0).run(jax.random.PRNGKey(0))
    done = np.asarray(result.particles["done"])
    assert done.any() and not done.all()
    x, x0 = np.asarray(result.particles["x"]), np.asarray(result.particles["x0"])
    np.testing.assert_array_equal(x[done], x0[done])
    assert np.all(x[~done] != x0[~done])
    log_w = np.asarray(result.log_weights)
    np.testing.assert_allclose(log_w[~done] - log_w[done][0], steps, rtol=1e-5)

    def nan_step(state, t):
        numpyro.factor("f", jnp.nan)
        return Walker(numpyro.sample("x", dist.Normal(state.x, 1.0)), state.done)

    frozen = StateSpaceProgram(lambda: None, nan_step, 1)
    state, increment = frozen.propagate(jax.random.PRNGKey(1), Walker(jnp.float32(2.0), jnp.bool_(True)), 0)
    assert float(increment) == 0.0 and float(state.x) == 2.0 and bool(state.done)


# (e) Determinism and key sensitivity; (f) one compilation per shapes.
def test_same_key_same_bits_and_keys_matter():
    smc = SMC(StateSpaceProgram(lg_init, lg_step, num_steps=len(YS)), 16, ess_threshold=1.0)
    first = smc.run(jax.random.PRNGKey(7), YS)
    again = smc.run(jax.random.PRNGKey(7), YS)
    other = smc.run(jax.random.PRNGKey(8), YS)
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(first.log_evidence) != float(other.log_evidence)
    assert not np.array_equal(np.asarray(first.particles["x"]), np.asarray(other.particles["x"]))
    assert not np.array_equal(np.asarray(first.ancestors), np.asarray(other.ancestors))
    draws = first.sample(jax.random.PRNGKey(0), 5)
    assert draws["x"].shape == (5,) and np.all(np.isin(np.asarray(draws["x"]), np.asarray(first.particles["x"])))


@pytest.mark.parametrize("resampling", ["systematic", Entropic("base", tau0=3.0, early_phase=1.0)])
def test_functional_init_and_step_are_the_run_one_step_at_a_time(resampling):
    """A hand-written loop over ``smc.init``/``smc.step`` gives the class's run: the same ancestors,
    the same floats up to the operation order of an eager loop against one compiled scan."""
    program = StateSpaceProgram(lg_init, lg_step, num_steps=len(YS))
    expected = SMC(program, 16, resampling, ess_threshold=0.7).run(jax.random.PRNGKey(7), YS)
    init_key, scan_key = jax.random.split(jax.random.PRNGKey(7))
    state, status = smc.init(program, init_key, 16, YS)
    ancestors = []
    for t, key in enumerate(jax.random.split(scan_key, program.num_steps)):
        state, info = smc.step(program, state, key, t, YS, resampling=resampling, ess_threshold=0.7)
        ancestors.append(info.ancestors)
    assert int(status) == WeightStatus.OK
    np.testing.assert_array_equal(np.stack(ancestors), expected.ancestors)
    np.testing.assert_allclose(state.particles["x"], expected.particles["x"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.log_weights, expected.log_weights, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state.log_evidence, expected.log_evidence, rtol=1e-5)


def test_compiles_once_per_shapes():
    traces = []

    def counted_step(state, t, ys):
        traces.append(None)
        return lg_step(state, t, ys)

    smc = SMC(StateSpaceProgram(lg_init, counted_step, num_steps=len(YS)), 16)
    smc.run(jax.random.PRNGKey(0), YS)
    count = len(traces)
    assert count > 0
    smc.run(jax.random.PRNGKey(1), YS + 1.0)
    smc.run(jax.random.PRNGKey(2), -YS)
    assert len(traces) == count
    assert smc._run_jit._cache_size() == 1


# (g) Unusable weights raise WeightError naming the first bad step.
def bad_init(at, value):
    numpyro.factor("f", jnp.where(at < 0, value, 0.0))
    return {"x": 0.0}


def bad_step(state, t, at, value):
    numpyro.factor("f", jnp.where(t == at, value, 0.0))
    return {"x": numpyro.sample("x", dist.Normal(state["x"], 1.0))}


def test_weight_error_names_first_bad_step():
    smc = SMC(StateSpaceProgram(bad_init, bad_step, num_steps=4), 8)
    cases = [
        (2, jnp.nan, "first at step 2: a log-weight is NaN"),
        (1, -jnp.inf, "first at step 1: every particle has log-weight -inf"),
        (0, jnp.inf, "first at step 0: a log-weight is +inf"),
        (-1, jnp.nan, "at initialisation: a log-weight is NaN"),
    ]
    for at, value, message in cases:
        with pytest.raises(WeightError, match=re.escape(message)):
            smc.run(jax.random.PRNGKey(0), at, value)
    result = smc.run(jax.random.PRNGKey(0), 9, jnp.nan)  # never bad: no error
    assert np.isfinite(float(result.log_evidence))
