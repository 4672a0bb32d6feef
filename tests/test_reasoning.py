"""Reasoning programs (LM proposal, PRM likelihood) under SMC against exact enumeration."""

import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import pytest

import ppl
from inference import SMC
from models.llama import Config, random_init
from models.sampling import SamplingParams, prefill, score, stop_table_from_bytes
from ppl import reasoning

VOCAB, STEPS = 4, 3
PROMPT = jnp.array([[0, 1]])
PARAMS = SamplingParams(temperature=1.4, max_tokens=1)  # one token per step; q != p on purpose
STOPS = stop_table_from_bytes([bytes([65 + i]) for i in range(VOCAB)])


class TablePRM(NamedTuple):
    """A synthetic PRM: reward of a step = table[previous token, token]."""

    table: jax.Array

    def score_step(self, previous, tokens, mask):
        return self.table[previous, tokens[:, 0]], tokens[:, 0]


def make_program():
    def init(lm_state, prm, lm):
        return reasoning.start(lm_state, PROMPT[:, -1], STEPS, PARAMS.max_tokens)

    def make_step(form):
        def step(trace, t, lm_state, prm, lm):
            trace = reasoning.write_step("step", lm, trace, PARAMS, STOPS)
            return reasoning.observe_prm("prm", prm, trace, form=form)

        return step

    return init, make_step


def exact_posterior(lm, table, form):
    seqs = np.array(list(itertools.product(range(VOCAB), repeat=STEPS)))
    context = jnp.repeat(PROMPT, len(seqs), axis=0)
    logp = np.asarray(score(lm, context, jnp.ones_like(context, bool), jnp.asarray(seqs), jnp.ones(seqs.shape, bool)))
    prev = np.concatenate([np.full((len(seqs), 1), int(PROMPT[0, -1])), seqs[:, :-1]], axis=1)
    log_r = np.log(np.asarray(table)[prev, seqs])
    log_target = logp + (log_r.sum(1) if form == "bernoulli" else log_r[:, -1])
    return seqs, np.exp(log_target - np.logaddexp.reduce(log_target)), np.logaddexp.reduce(log_target)


@pytest.mark.parametrize("form", ["bernoulli", "twist"])
def test_smc_posterior_over_sequences_converges_to_enumeration(form):
    config = Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_layers=1,
                    num_heads=2, num_kv_heads=1, head_dim=8)
    lm = random_init(config, seed=1, scale=0.6)
    table = jnp.asarray(np.random.default_rng(0).uniform(0.05, 1.0, (VOCAB, VOCAB)), jnp.float32)
    prm = TablePRM(table)
    seqs, exact, log_z = exact_posterior(lm, table, form)
    lm_state, _ = reasoning.prefill_prompt(lm, prm, PROMPT, PROMPT.shape[1] + STEPS + 1)
    init, make_step = make_program()
    program = ppl.StateSpaceProgram(init, make_step(form), num_steps=STEPS)
    index_of = {tuple(s): i for i, s in enumerate(seqs)}

    def estimate(num_particles, runs):
        smc = SMC(program, num_particles, resampling="systematic", ess_threshold=0.5)
        keys = jax.random.split(jax.random.key(num_particles), runs)
        result = jax.jit(jax.vmap(lambda k: smc.run_unchecked(k, lm_state, prm, lm)))(keys)
        weights = np.asarray(jax.nn.softmax(result.log_weights, axis=-1))
        tokens = np.asarray(result.particles.steps[:, :, 0, :, 0])  # [runs, N, steps]
        mass = np.zeros(len(seqs))
        for r in range(runs):
            for i in range(num_particles):
                mass[index_of[tuple(tokens[r, i])]] += weights[r, i] / runs
        return mass, np.asarray(result.log_evidence)

    small, _ = estimate(4, 200)
    large, log_z_hat = estimate(64, 200)
    tv_small, tv_large = 0.5 * np.abs(small - exact).sum(), 0.5 * np.abs(large - exact).sum()
    assert tv_large < 0.05 and tv_large < tv_small
    # Unbiased evidence: mean of Z_hat matches Z within Monte Carlo error.
    z_hat = np.exp(log_z_hat - log_z)
    assert abs(z_hat.mean() - 1.0) < 4 * z_hat.std() / np.sqrt(len(z_hat)) + 1e-3


def test_shared_prompt_gives_the_same_particles_with_smaller_state():
    """Particles reading one shared prompt cache write the same steps, get the same weights,
    and carry caches sized for their steps alone."""
    config = Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_layers=1,
                    num_heads=2, num_kv_heads=1, head_dim=8)
    lm = random_init(config, seed=1, scale=0.6)
    prm = TablePRM(jnp.asarray(np.random.default_rng(0).uniform(0.05, 1.0, (VOCAB, VOCAB)), jnp.float32))
    prompt = jnp.array([[0, 1, 2, 3, 0, 1, 2, 3, 0, 1]])
    last = prompt[:, -1]

    def program(share):
        def init(lm_state, prm, lm):
            return reasoning.start(lm_state, last, STEPS, PARAMS.max_tokens, share_prompt=share)

        def step(trace, t, lm_state, prm, lm):
            trace = reasoning.write_step("step", lm, trace, PARAMS, STOPS, prompt=lm_state if share else None)
            return reasoning.observe_prm("prm", prm, trace)

        return ppl.StateSpaceProgram(init, step, STEPS)

    runs = {}
    for share, capacity in ((False, prompt.shape[1] + STEPS * 2), (True, prompt.shape[1])):
        lm_state, _ = reasoning.prefill_prompt(lm, prm, prompt, capacity)
        runs[share] = SMC(program(share), 32, ess_threshold=1.0).run(jax.random.key(5), lm_state, prm, lm)
    copied, shared = runs[False], runs[True]
    np.testing.assert_array_equal(copied.particles.steps, shared.particles.steps)
    np.testing.assert_array_equal(copied.ancestors, shared.ancestors)
    np.testing.assert_allclose(copied.log_weights, shared.log_weights, atol=1e-5)
    np.testing.assert_allclose(copied.log_evidence, shared.log_evidence, rtol=1e-5)
    assert shared.particles.lm.cache.positions.shape[-1] == STEPS * (PARAMS.max_tokens + 1)
    assert copied.particles.lm.cache.positions.shape[-1] == prompt.shape[1] + STEPS * 2


def test_shared_prompt_and_prompt_argument_must_pair():
    config = Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_layers=1,
                    num_heads=2, num_kv_heads=1, head_dim=8)
    lm = random_init(config, seed=1, scale=0.6)
    lm_state = prefill(lm, PROMPT, None, PROMPT.shape[1])
    shared = reasoning.start(lm_state, None, STEPS, PARAMS.max_tokens, share_prompt=True)
    copied = reasoning.start(lm_state, None, STEPS, PARAMS.max_tokens)
    with numpyro.handlers.seed(rng_seed=0):
        with pytest.raises(ValueError, match="started with share_prompt=True, so pass prompt="):
            reasoning.write_step("step", lm, shared, PARAMS, STOPS)
        with pytest.raises(ValueError, match="started without share_prompt=True"):
            reasoning.write_step("step", lm, copied, PARAMS, STOPS, prompt=lm_state)
        written = reasoning.write_step("step", lm, shared, PARAMS, STOPS, prompt=lm_state)
    assert int(written.num_steps[0]) == 1 and written.shared_prompt == ()


@pytest.mark.parametrize("form", ["bernoulli", "twist"])
def test_a_zero_reward_makes_a_trace_impossible(form):
    """A verifier's 0 is a hard zero of the likelihood: weight -inf (not a clamped float eps, not NaN)."""
    config = Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_layers=1,
                    num_heads=2, num_kv_heads=1, head_dim=8)
    lm = random_init(config, seed=1, scale=0.6)
    table = np.random.default_rng(0).uniform(0.05, 1.0, (VOCAB, VOCAB))
    table[:, 3] = 0.0  # writing token 3 is never a good step
    prm = TablePRM(jnp.asarray(table, jnp.float32))
    lm_state, _ = reasoning.prefill_prompt(lm, prm, PROMPT, PROMPT.shape[1] + STEPS + 1)
    init, make_step = make_program()
    program = ppl.StateSpaceProgram(init, make_step(form), num_steps=STEPS)
    result = SMC(program, 64, ess_threshold=0.0).run(jax.random.key(0), lm_state, prm, lm)
    wrote_3 = np.any(np.asarray(result.particles.steps[:, 0, :, 0]) == 3, axis=1)
    assert 0 < wrote_3.sum() < 64
    log_w = np.asarray(result.log_weights)
    assert np.all(log_w[wrote_3] == -np.inf) and np.all(np.isfinite(log_w[~wrote_3]))
