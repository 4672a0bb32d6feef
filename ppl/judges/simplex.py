"""The simplex model of LLM-judge scores ("Judging LLMs on a Simplex", 2025).

Candidate c has a distribution pi_c over the K score levels (a point on the
simplex, Dirichlet prior). Each (item, candidate) pair has one true level
z ~ Categorical(pi_c), summed out exactly; judge j reports level l with
probability Theta_j[z, l]. Judge quality lives in the prior of Theta_j
(diagonal-favouring Dirichlet rows, or a monotone ordered-logistic confusion).
Options: a self-preference shift for judges scoring their own candidate and
item random effects on the true level. Quality = expected true score
sum_k value_k pi_c[k], in the input's score units.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
from jax.scipy.special import logsumexp
from numpyro.distributions import transforms

from ppl.judges.data import Scores
from ppl.judges.infer import fit
from ppl.judges.ranking import RankResult


def _monotone_log_theta(slope: jnp.ndarray, cut: jnp.ndarray, K: int) -> jnp.ndarray:
    """Ordered-logistic confusion: report ~ OrderedLogistic(slope_j * true level, cutpoints_j).

    With slope > 0 a higher true level gives a stochastically higher report, for every judge.
    """
    eta = slope[:, None] * (jnp.arange(K) - (K - 1) / 2.0)  # (J, K)
    cdf = jax.nn.sigmoid(cut[:, None, :] - eta[:, :, None])  # (J, K, K-1): P(report <= l)
    cdf = jnp.concatenate([jnp.zeros_like(cdf[..., :1]), cdf, jnp.ones_like(cdf[..., :1])], axis=-1)
    return jnp.log(jnp.clip(jnp.diff(cdf, axis=-1), 1e-12))


def simplex_model(unit, judge, level, is_self, unit_candidate, unit_item, *, n_candidates: int, n_judges: int,
                  n_items: int, n_levels: int, judge_diag: jnp.ndarray, prior_off: float = 1.0,
                  monotone: bool = False, self_preference: bool = False, item_effects: bool = False) -> None:
    """NumPyro model of judge scores with each (item, candidate) true level marginalised."""
    K, J = n_levels, n_judges
    pi = numpyro.sample("pi", dist.Dirichlet(jnp.ones(K)).expand([n_candidates]).to_event(1))
    if monotone:
        slope = numpyro.sample("slope", dist.LogNormal(jnp.log(2.0), 0.5).expand([J]).to_event(1))
        base = 2.0 * (jnp.arange(K - 1) + 0.5 - (K - 1) / 2.0)
        cut = numpyro.sample("cutpoints", dist.TransformedDistribution(
            dist.Normal(base, 1.0).expand([J, K - 1]).to_event(1), transforms.OrderedTransform()))
        log_theta = _monotone_log_theta(slope, cut, K)
    else:
        conc = prior_off + (judge_diag[:, None, None] - prior_off) * jnp.eye(K)  # (J, K, K)
        theta = numpyro.sample("theta", dist.Dirichlet(conc).to_event(2))
        log_theta = jnp.log(theta)
    rows = log_theta[judge, :, level]  # (N, K)
    if self_preference:
        delta = numpyro.sample("self_bias", dist.Normal(0.0, 1.0).expand([J]).to_event(1))
        shift = delta[:, None, None] * jnp.linspace(0.0, 1.0, K)
        log_theta_self = jax.nn.log_softmax(log_theta + shift, axis=-1)
        rows = jnp.where(is_self[:, None], log_theta_self[judge, :, level], rows)
    log_prior = jnp.log(pi)[unit_candidate]  # (U, K)
    if item_effects:
        sigma = numpyro.sample("item_sd", dist.HalfNormal(1.0))
        z = numpyro.sample("item_z", dist.Normal(0.0, 1.0).expand([n_items]).to_event(1))
        shift = (sigma * z)[unit_item][:, None] * jnp.linspace(-1.0, 1.0, K)
        log_prior = jax.nn.log_softmax(log_prior + shift, axis=-1)
    joint = log_prior + jax.ops.segment_sum(rows, unit, num_segments=unit_candidate.shape[0])
    numpyro.factor("scores", logsumexp(joint, axis=-1))  # one term per unit: pointwise log-likelihood


def fit_simplex(scores: Scores, *, prior_diag: float = 3.0, prior_off: float = 1.0,
                judge_quality: dict | None = None, monotone: bool = False, self_preference: bool | None = None,
                item_effects: bool = False, seed: int = 0, num_samples: int = 500, num_warmup: int = 500,
                num_chains: int = 4, svi: bool = False, svi_steps: int = 3000,
                progress_bar: bool = False) -> RankResult:
    """Posterior of the simplex model; quality = expected true score per candidate.

    `judge_quality` maps a judge to its own diagonal concentration (higher = trusted more a priori).
    `self_preference` defaults to on when any row is a self-judgement.
    """
    J, K = len(scores.judges), scores.n_levels
    diag = np.full(J, prior_diag, dtype=float)
    for name, q in (judge_quality or {}).items():
        if name in scores.judges:
            diag[scores.judges.get_loc(name)] = float(q)
    if self_preference is None:
        self_preference = bool(scores.is_self.any())
    data = [jnp.asarray(a) for a in (scores.unit, scores.judge, scores.level, scores.is_self,
                                     scores.unit_candidate, scores.unit_item)]
    model = partial(simplex_model, *data, n_candidates=len(scores.candidates), n_judges=J,
                    n_items=len(scores.items), n_levels=K, judge_diag=jnp.asarray(diag), prior_off=prior_off,
                    monotone=monotone, self_preference=self_preference, item_effects=item_effects)
    init = {"pi": _empirical_pi(scores)}
    if not monotone:
        conc = prior_off + (diag[:, None, None] - prior_off) * np.eye(K)
        init["theta"] = conc / conc.sum(-1, keepdims=True)
    f = fit(model, seed=seed, num_samples=num_samples, num_warmup=num_warmup, num_chains=num_chains, svi=svi,
            svi_steps=svi_steps, progress_bar=progress_bar, init_values=init)
    quality = f.samples["pi"] @ scores.levels
    coords = {"judge": np.asarray(scores.judges.astype(str)), "level": scores.levels,
              "reported": scores.levels, "item": np.asarray(scores.items.astype(str))}
    dims = {"pi": ["candidate", "level"], "theta": ["judge", "level", "reported"], "self_bias": ["judge"],
            "slope": ["judge"], "item_z": ["item"], "scores": ["unit"]}
    if monotone:
        theta = np.exp(np.asarray(jax.vmap(lambda s, c: _monotone_log_theta(s, c, K))(
            f.samples["slope"], f.samples["cutpoints"])))
    else:
        theta = f.samples["theta"]
    extra = {"coords": coords, "dims": dims, "confusion": theta.mean(0), "judges": scores.judges,
             "levels": scores.levels}
    return RankResult("simplex", scores.candidates, quality, f, "expected true score", extra)


def _empirical_pi(scores: Scores) -> np.ndarray:
    """Smoothed share of each reported level per candidate: a starting point for the sampler."""
    C, K = len(scores.candidates), scores.n_levels
    counts = np.ones((C, K))
    np.add.at(counts, (scores.unit_candidate[scores.unit], scores.level), 1.0)
    return counts / counts.sum(1, keepdims=True)


def simulate(seed: int, n_candidates: int = 6, n_judges: int = 4, n_items: int = 40, n_levels: int = 5,
             prior_diag: float = 3.0, prior_off: float = 1.0, self_judge: bool = True):
    """Judge scores drawn from the simplex model's prior, with the truth.

    Weak judges (confusion rows from the diagonal-favouring prior), and when
    `self_judge`, judge "j0" is candidate "c0"'s own model and prefers it
    (self-bias |N(0, 1)| + 0.5). Returns (frame, true quality per candidate,
    truth dict); scores are levels 1..K.
    """
    rng = np.random.default_rng(seed)
    C, J, K = n_candidates, n_judges, n_levels
    pi = rng.dirichlet(np.ones(K), size=C)
    conc = prior_off + (prior_diag - prior_off) * np.eye(K)
    theta = np.stack([[rng.dirichlet(conc[k]) for k in range(K)] for _ in range(J)])
    bias = np.zeros(J)
    if self_judge:
        bias[0] = abs(rng.normal()) + 0.5
    z = np.stack([rng.choice(K, size=n_items, p=pi[c]) for c in range(C)], axis=1)  # (I, C)
    rows = []
    for i in range(n_items):
        for c in range(C):
            for j in range(J):
                p = theta[j, z[i, c]]
                own = self_judge and j == 0 and c == 0
                if own:
                    p = p * np.exp(bias[j] * np.linspace(0.0, 1.0, K))
                    p = p / p.sum()
                rows.append((f"i{i}", f"c{c}", f"j{j}", int(rng.choice(K, p=p)) + 1, int(own)))
    frame = pd.DataFrame(rows, columns=["item", "candidate", "judge", "score", "self"])
    quality = pi @ np.arange(1, K + 1)
    return frame, pd.Series(quality, index=[f"c{c}" for c in range(C)]), {"pi": pi, "theta": theta, "bias": bias}
