"""ArviZ export: SMC runs (`SMCResult.to_inference_data`) and every particle-MCMC kernel (`az.from_numpyro`)."""

import arviz as az
import jax
import numpy as np
import pytest
from models_for_tests import LENGTH, YS, kalman, lg_init, lg_step, token_init, token_step
from numpyro.infer import MCMC
from test_pmcmc import tempered

from inference import SMC
from inference.pmcmc import PIMH, InteractingParticleGibbs, ParallelTemperingPG, ParticleGibbs
from ppl import StateSpaceProgram


def test_smc_inference_data_carries_weighted_particles_and_the_run():
    program = StateSpaceProgram(lg_init, lg_step, num_steps=len(YS))
    result = SMC(program, 4096).run(jax.random.PRNGKey(0), YS)
    idata = result.to_inference_data()
    x = idata.posterior["x"].values
    assert x.shape == (1, 4096)
    w = np.exp(idata.sample_stats["log_weight"].values)
    assert w.sum() == pytest.approx(1.0, rel=1e-5)
    mean = float((w * x).sum())
    sd = float(np.sqrt((w * (x - mean) ** 2).sum() / (1 / (w**2).sum())))  # MC error with the weights' ESS
    assert abs(mean - kalman(YS)[1]) < 4 * sd + 0.01
    np.testing.assert_array_equal(idata.smc["ess"].values, np.asarray(result.ess))
    np.testing.assert_array_equal(idata.smc["ancestors"].values, np.asarray(result.ancestors))
    assert idata.smc["ancestors"].dims == ("step", "particle")
    assert idata.attrs["log_evidence"] == pytest.approx(float(result.log_evidence))
    assert "x" in az.summary(idata, kind="stats").index

    batch = jax.vmap(lambda k: SMC(program, 8).run_unchecked(k, YS))(jax.random.split(jax.random.PRNGKey(1), 2))
    with pytest.raises(ValueError, match="one run"):
        batch.to_inference_data()


def test_smc_inference_data_names_nested_leaves_and_deterministic_sites():
    import numpyro

    def step(state, t):
        new = token_step(state, t)
        numpyro.deterministic("prev_token", new["prev"])
        return new

    result = SMC(StateSpaceProgram(token_init, step, LENGTH), 16, record_deterministic=True).run(
        jax.random.PRNGKey(0))
    idata = result.to_inference_data()
    assert {"tokens", "prev"} <= set(idata.posterior.data_vars)
    assert idata.posterior["tokens"].shape == (1, 16, LENGTH)
    assert idata.smc["prev_token"].shape == (LENGTH, 16)


KERNELS = {
    "pg": lambda p: ParticleGibbs(p, 4),
    "pimh": lambda p: PIMH(p, 4),
    "ipg": lambda p: InteractingParticleGibbs(p, 4, num_references=2, num_sweeps=3),
    "pt": lambda p: ParallelTemperingPG(tempered, [1.0, 0.5], 4),
}


@pytest.mark.parametrize("name", KERNELS)
def test_from_numpyro_works_for_every_particle_kernel(name):
    kernel = KERNELS[name](StateSpaceProgram(token_init, token_step, LENGTH))
    mcmc = MCMC(kernel, num_warmup=10, num_samples=40, num_chains=2, chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0))
    idata = az.from_numpyro(mcmc)
    tokens = idata.posterior["tok"].values
    expected = (2, 40, 2, LENGTH) if name == "ipg" else (2, 40, LENGTH)
    assert tokens.shape == expected
    np.testing.assert_array_equal(tokens, np.asarray(mcmc.get_samples(group_by_chain=True)["tok"]))
    assert "r_hat" in az.summary(idata, var_names=["tok"]).columns
