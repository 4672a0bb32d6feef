"""Tiny models with exact answers, shared by the kernel tests (copied from test_smc.py):
a linear-Gaussian model (Kalman filter), a discrete HMM, and a token model with a per-step
reward whose posterior over the VOCAB**LENGTH sequences is enumerated."""

import itertools

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from scipy.stats import norm


def assert_close_in_mc_error(samples, exact, slack=0.0, num_se=4.0):
    """Mean of per-seed estimates within num_se standard errors (+ slack for O(1/N) bias)."""
    samples = np.asarray(samples)
    se = samples.std(axis=0) / np.sqrt(samples.shape[0])
    np.testing.assert_array_less(np.abs(samples.mean(axis=0) - exact), num_se * se + slack)


def total_variation(p, q):
    return 0.5 * np.abs(p - q).sum(axis=-1)


# Linear-Gaussian state-space model.
A, Q, R, P0 = 0.8, 0.5, 0.4, 1.0
YS = jnp.array([0.3, -0.5, 1.2, 0.8, -0.1])


def lg_init(ys):
    return {"x": numpyro.sample("x0", dist.Normal(0.0, np.sqrt(P0)))}


def lg_step(state, t, ys):
    x = numpyro.sample("x", dist.Normal(A * state["x"], np.sqrt(Q)))
    numpyro.sample("y", dist.Normal(x, np.sqrt(R)), obs=ys[t])
    return {"x": x}


def kalman(ys):
    """(log p(ys), filtering mean of the last state)."""
    mean, var, log_lik = 0.0, P0, 0.0
    for y in np.asarray(ys):
        mean, var = A * mean, A * A * var + Q
        log_lik += norm.logpdf(y, mean, np.sqrt(var + R))
        gain = var / (var + R)
        mean, var = mean + gain * (y - mean), (1 - gain) * var
    return log_lik, mean


# Discrete HMM.
PI = jnp.array([0.5, 0.3, 0.2])
TRANS = jnp.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
EMIT = jnp.array([[0.8, 0.1, 0.1], [0.1, 0.7, 0.2], [0.2, 0.2, 0.6]])
OBS = jnp.array([0, 2, 2, 1, 0, 2])


def hmm_init(obs):
    return {"z": numpyro.sample("z0", dist.Categorical(PI))}


def hmm_step(state, t, obs):
    z = numpyro.sample("z", dist.Categorical(TRANS[state["z"]]))
    numpyro.sample("y", dist.Categorical(EMIT[z]), obs=obs[t])
    return {"z": z}


# A tiny token model with a per-step reward.
VOCAB, LENGTH = 3, 3
LOG_LM = jnp.log(jnp.array([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [0.4, 0.4, 0.2], [0.6, 0.3, 0.1]]))
SCORE = jnp.array([[0.0, -1.0, 0.5], [-0.5, 1.0, 0.0], [0.3, -2.0, 1.0]])  # [t, token]
REPEAT_BONUS = 0.7
BOS = VOCAB


def log_reward(t, token, prev):
    return SCORE[t, token] + REPEAT_BONUS * (token == prev)


def token_init():
    return {"tokens": jnp.zeros(LENGTH, jnp.int32), "prev": jnp.int32(BOS)}


def token_step(state, t):
    token = numpyro.sample("tok", dist.Categorical(logits=LOG_LM[state["prev"]]))
    numpyro.factor("reward", log_reward(t, token, state["prev"]))
    return {"tokens": state["tokens"].at[t].set(token), "prev": token}


def exact_token_posterior(beta=1.0):
    """Posterior over sequences (index = base-VOCAB code, first token most significant),
    with the reward tempered by beta."""
    log_post = np.zeros(VOCAB**LENGTH)
    for index, seq in enumerate(itertools.product(range(VOCAB), repeat=LENGTH)):
        prev = BOS
        for t, token in enumerate(seq):
            log_post[index] += LOG_LM[prev, token] + beta * log_reward(t, token, prev)
            prev = token
    post = np.exp(log_post - log_post.max())
    return post / post.sum()
