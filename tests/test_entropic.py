"""Entropic particle filter: plain SMC when annealing is off, unbiased evidence when the target is
preserved (tempered resampling, look-ahead APF), and the temperature really acting."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models_for_tests import YS, assert_close_in_mc_error, kalman, lg_init, lg_step

from inference import SMC
from inference.entropic import Entropic, EntropicPF, temperature
from ppl import StateSpaceProgram

KEYS = jax.random.split(jax.random.PRNGKey(42), 100)
PROGRAM = StateSpaceProgram(lg_init, lg_step, num_steps=len(YS))


def run_many(engine):
    return jax.jit(lambda keys: jax.lax.map(lambda k: engine.run_unchecked(k, YS), keys))(KEYS)


def test_schedules_follow_their_formulas():
    log_w = jnp.log(jnp.array([0.5, 0.5, 0.0, 0.0]))
    # ESS = 2 of N = 4; H / log N = log 2 / log 4 = 1/2.
    np.testing.assert_allclose(temperature("ess", log_w, 0.0), 2.0, rtol=1e-6)
    np.testing.assert_allclose(temperature("ess", log_w, 0.75), 1.0, rtol=1e-6)  # max(1, 0.5)
    np.testing.assert_allclose(temperature("entropy", log_w, 0.0), 2.0, rtol=1e-6)
    np.testing.assert_allclose(temperature("base", log_w, 0.5, tau0=3.0), 2.0, rtol=1e-6)
    with pytest.raises(ValueError, match="schedule"):
        Entropic(schedule="linear")


@pytest.mark.parametrize(
    "epf, smc",
    [
        (dict(schedule=None, threshold=0.5), dict(ess_threshold=0.5)),
        (dict(schedule=None, threshold=1.0), dict(ess_threshold=1.0)),
        (dict(schedule="ess", threshold=0.0), dict(ess_threshold=0.0)),
    ],
)
def test_annealing_off_is_smc_bit_for_bit(epf, smc):
    key = jax.random.PRNGKey(3)
    ours = EntropicPF(PROGRAM, 16, **epf).run(key, YS)
    theirs = SMC(PROGRAM, 16, **smc).run(key, YS)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
    "options",
    [
        dict(schedule="base", tau0=4.0, preserve_target=True),
        dict(schedule=None, lookahead=True),
        dict(schedule="entropy", preserve_target=True, lookahead=True),
    ],
    ids=["base-preserve", "apf", "entropy-preserve-apf"],
)
def test_target_preserving_variants_match_kalman(options):
    engine = EntropicPF(PROGRAM, 64, threshold=1.0, early_phase=1.0, **options)
    results = run_many(engine)
    log_lik, mean = kalman(YS)
    ratio = np.exp(np.asarray(results.log_evidence) - log_lik)  # E[Z_hat / Z] = 1
    assert ratio.std() < 0.5
    assert_close_in_mc_error(ratio, 1.0)
    filtered = jnp.sum(results.normalized_weights * results.particles["x"], axis=1)
    assert_close_in_mc_error(filtered, mean, slack=0.02)


def test_tempered_resampling_keeps_more_distinct_ancestors():
    def distinct(results):  # distinct ancestors per resampling, averaged over seeds and steps 1..T-1
        anc = np.asarray(results.ancestors)[:, 1:]
        return np.mean([len(np.unique(row)) for row in anc.reshape(-1, anc.shape[-1])])

    plain = distinct(run_many(SMC(PROGRAM, 16, ess_threshold=1.0)))
    annealed_engine = EntropicPF(PROGRAM, 16, schedule="base", tau0=50.0, threshold=1.0, early_phase=1.0)
    annealed = run_many(annealed_engine)
    assert distinct(annealed) > plain + 2
    # The heuristic restarts from uniform weights: the next step sees no trace of the old weights.
    assert np.all(np.asarray(annealed.resampled))
