"""Particle MCMC kernels inside numpyro's MCMC against the enumerated posterior of a tiny token
model: particle Gibbs (with and without ancestor sampling), PIMH, parallel-tempering PG,
interacting particle Gibbs (several references)."""

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from models_for_tests import (
    LENGTH,
    LOG_LM,
    VOCAB,
    exact_token_posterior,
    log_reward,
    token_init,
    token_step,
    total_variation,
)
from numpyro.infer import MCMC

from inference.pmcmc import PIMH, InteractingParticleGibbs, ParallelTemperingPG, ParticleGibbs, Reference, Slot
from ppl import StateSpaceProgram

PROGRAM = StateSpaceProgram(token_init, token_step, num_steps=LENGTH)
CHAINS, WARMUP, SAMPLES = 4, 50, 400


def run(kernel, seed=0):
    """Samples of the tokens [CHAINS, SAMPLES, LENGTH] from vectorized chains."""
    mcmc = MCMC(kernel, num_warmup=WARMUP, num_samples=SAMPLES, num_chains=CHAINS,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.PRNGKey(seed))
    return np.asarray(mcmc.get_samples(group_by_chain=True)["tok"])


def histogram(tokens):
    codes = tokens.reshape(-1, LENGTH) @ (VOCAB ** np.arange(LENGTH - 1, -1, -1))
    return np.bincount(codes, minlength=VOCAB**LENGTH) / codes.size


def first_token_update_rate(tokens):
    first = tokens[..., 0]
    return (first[:, 1:] != first[:, :-1]).mean()


def test_particle_gibbs_converges_and_ancestor_sampling_mixes_faster():
    exact = exact_token_posterior()
    plain = run(ParticleGibbs(PROGRAM, 4))
    ancestral = run(ParticleGibbs(PROGRAM, 4, ancestor_sampling=True))
    assert total_variation(histogram(plain), exact) < 0.1
    assert total_variation(histogram(ancestral), exact) < 0.1
    # With few particles the plain chain's early steps rarely change (path degeneracy).
    assert first_token_update_rate(ancestral) > 1.5 * first_token_update_rate(plain)


def test_pimh_converges():
    assert total_variation(histogram(run(PIMH(PROGRAM, 4))), exact_token_posterior()) < 0.1


def test_interacting_particle_gibbs_with_several_references_converges():
    kernel = InteractingParticleGibbs(PROGRAM, 4, num_references=2, num_sweeps=4)
    mcmc = MCMC(kernel, num_warmup=WARMUP, num_samples=SAMPLES, num_chains=CHAINS,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0), extra_fields=("switches",))
    tokens = np.asarray(mcmc.get_samples(group_by_chain=True)["tok"])
    switches = np.asarray(mcmc.get_extra_fields()["switches"])
    assert tokens.shape == (CHAINS, SAMPLES, 2, LENGTH)  # one trajectory per reference
    assert total_variation(histogram(tokens), exact_token_posterior()) < 0.1
    assert 0 < switches.mean() < 2  # references do move to the unconditional sweeps, not always
    # Trading references with fresh sweeps fights path degeneracy like ancestor sampling does.
    plain = run(ParticleGibbs(PROGRAM, 4))
    assert first_token_update_rate(tokens[:, :, 0]) > 1.5 * first_token_update_rate(plain)
    with pytest.raises(ValueError, match="num_references <= num_sweeps"):
        InteractingParticleGibbs(PROGRAM, 4, num_references=3, num_sweeps=2)


def tempered(beta):
    def step(state, t):
        token = numpyro.sample("tok", dist.Categorical(logits=LOG_LM[state["prev"]]))
        numpyro.factor("reward", beta * log_reward(t, token, state["prev"]))
        return {"tokens": state["tokens"].at[t].set(token), "prev": token}

    return StateSpaceProgram(token_init, step, num_steps=LENGTH)


def test_parallel_tempering_cold_chain_matches_posterior():
    kernel = ParallelTemperingPG(tempered, [1.0, 0.3], num_particles=4)
    assert total_variation(histogram(run(kernel)), exact_token_posterior()) < 0.1
    with pytest.raises(ValueError, match="temperatures"):
        ParallelTemperingPG(tempered, [0.5, 1.0], 4)


def test_ancestor_sampling_refuses_programs_replay_cannot_rebuild():
    def sampler_step(state, t):
        """Draws its token outside a sample site (like an LM step): replay cannot rebuild it."""
        token = jax.random.categorical(numpyro.prng_key(), LOG_LM[state["prev"]])
        token = numpyro.sample("tok", dist.Delta(token, log_density=LOG_LM[state["prev"], token]),
                               infer={"proposal_log_prob": LOG_LM[state["prev"], token]})
        return {"tokens": state["tokens"].at[t].set(token), "prev": token}

    kernel = ParticleGibbs(StateSpaceProgram(token_init, sampler_step, LENGTH), 4, ancestor_sampling=True)
    with pytest.raises(ValueError, match="teacher forcing"):
        MCMC(kernel, num_warmup=1, num_samples=1, progress_bar=False).run(jax.random.PRNGKey(0))


@pytest.mark.parametrize("ratio", [0.5, 2.0])
def test_retempering_keeps_an_impossible_step_impossible(ratio):
    """A zero-likelihood step (a verifier's 0) stays at weight -inf when a swap retempers it, not NaN."""
    inf = np.inf
    steps = Slot(state=np.zeros(3), log_weight=np.array([-0.5, -inf, -0.2]),
                 log_likelihood=np.array([-1.0, -inf, -0.3]), sites={})
    init = Slot(state=np.zeros(()), log_weight=np.zeros(()), log_likelihood=np.zeros(()), sites={})
    moved = jax.tree.map(np.asarray, Reference(init, steps).retemper(ratio).steps)
    np.testing.assert_allclose(moved.log_weight[[0, 2]], [-0.5 + (ratio - 1) * -1.0, -0.2 + (ratio - 1) * -0.3])
    assert moved.log_weight[1] == -inf and moved.log_likelihood[1] == -inf
