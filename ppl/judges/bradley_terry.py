"""Bradley-Terry with ties (Davidson 1970) for pairwise judgements.

Candidate i has strength s_i = exp(beta_i); with tie parameter nu,
P(i beats j) = s_i / (s_i + s_j + nu sqrt(s_i s_j)) and
P(tie) = nu sqrt(s_i s_j) / (same). Bayesian: beta ~ Normal(0, scale),
log nu ~ Normal(-1, 1); quality = beta centred per draw (log-strength
relative to the average candidate). `plain_bradley_terry` is the classic
maximum-likelihood fit without ties, kept as a baseline.
"""

from __future__ import annotations

from functools import partial

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from ppl.judges.data import Pairs
from ppl.judges.infer import fit
from ppl.judges.ranking import RankResult


def davidson_logits(beta: jnp.ndarray, log_nu: jnp.ndarray, left: jnp.ndarray, right: jnp.ndarray) -> jnp.ndarray:
    """Unnormalised log-probabilities of (left wins, right wins, tie) per comparison, shape (N, 3)."""
    bl, br = beta[left], beta[right]
    return jnp.stack([bl, br, log_nu + 0.5 * (bl + br)], axis=-1)


def davidson_model(left, right, outcome, n_candidates: int, prior_scale: float = 1.5) -> None:
    """NumPyro model: outcome 0 = left wins, 1 = right wins, 2 = tie."""
    beta = numpyro.sample("beta", dist.Normal(0.0, prior_scale).expand([n_candidates]).to_event(1))
    log_nu = numpyro.sample("log_nu", dist.Normal(-1.0, 1.0))
    with numpyro.plate("comparisons", left.shape[0]):
        numpyro.sample("outcome", dist.Categorical(logits=davidson_logits(beta, log_nu, left, right)), obs=outcome)


def fit_bradley_terry(pairs: Pairs, *, prior_scale: float = 1.5, seed: int = 0, num_samples: int = 500,
                      num_warmup: int = 500, num_chains: int = 4, svi: bool = False, svi_steps: int = 3000,
                      progress_bar: bool = False) -> RankResult:
    """Posterior of the Davidson model; quality = centred log-strength."""
    C = len(pairs.candidates)
    model = partial(davidson_model, jnp.asarray(pairs.left), jnp.asarray(pairs.right), jnp.asarray(pairs.outcome),
                    C, prior_scale)
    f = fit(model, seed=seed, num_samples=num_samples, num_warmup=num_warmup, num_chains=num_chains, svi=svi,
            svi_steps=svi_steps, progress_bar=progress_bar,
            init_values={"beta": jnp.zeros(C), "log_nu": jnp.asarray(-1.0)})
    beta = f.samples["beta"]
    quality = beta - beta.mean(1, keepdims=True)
    return RankResult("bradley-terry", pairs.candidates, quality, f, "centred log-strength",
                      {"dims": {"beta": ["candidate"], "outcome": ["comparison"]}})


def plain_bradley_terry(pairs: Pairs, ridge: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Classic Bradley-Terry maximum likelihood, ties dropped: (centred beta, covariance by Laplace).

    A tiny ridge keeps the estimate finite when a candidate wins or loses every comparison.
    """
    from scipy.optimize import minimize

    keep = pairs.outcome < 2
    win = np.where(pairs.outcome[keep] == 0, pairs.left[keep], pairs.right[keep])
    lose = np.where(pairs.outcome[keep] == 0, pairs.right[keep], pairs.left[keep])
    C = len(pairs.candidates)

    def nll(b):
        d = b[win] - b[lose]
        p = 1.0 / (1.0 + np.exp(-d))
        g = np.zeros(C)
        np.add.at(g, win, -(1 - p))
        np.add.at(g, lose, 1 - p)
        return np.logaddexp(0.0, -d).sum() + 0.5 * ridge * b @ b, g + ridge * b

    b = minimize(nll, np.zeros(C), jac=True, method="L-BFGS-B").x
    d = b[win] - b[lose]
    w = np.exp(-np.logaddexp(0.0, -d) - np.logaddexp(0.0, d))  # p (1 - p)
    H = ridge * np.eye(C)
    np.add.at(H, (win, win), w)
    np.add.at(H, (lose, lose), w)
    np.add.at(H, (win, lose), -w)
    np.add.at(H, (lose, win), -w)
    center = np.eye(C) - 1.0 / C
    return b - b.mean(), center @ np.linalg.inv(H) @ center.T
