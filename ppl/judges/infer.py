"""One driver for every judge model: NUTS (several chains) by default, SVI (optax Adam) for large data.

Models are ordinary NumPyro functions with their data bound by
`functools.partial`, so sizes stay static under jit. Each model states its
likelihood one observation at a time (a vector `factor` per task or unit, an
observed site per comparison), so the driver can record pointwise
log-likelihoods for `az.loo` / `az.compare`. It returns posterior draws as
NumPy arrays (chains concatenated) plus the sampler's diagnostics, which is all
the result objects need (summaries, ranks, R-hat, ArviZ export).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import numpy as np
import optax
from numpyro.diagnostics import effective_sample_size, split_gelman_rubin
from numpyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO, init_to_median, init_to_value, log_likelihood
from numpyro.infer.autoguide import AutoNormal
from numpyro.optim import optax_to_numpyro

RHAT_WARNING = 1.01  # Vehtari et al. (2021): above this, the chains have not mixed


class ConvergenceWarning(UserWarning):
    """NUTS chains disagree (R-hat above `RHAT_WARNING`): the posterior summaries are not yet reliable."""


@dataclass
class Fit:
    """Posterior draws (leading axis = draw, `num_chains` chains of equal length one after another),
    pointwise log-likelihoods per observed site, and how they were obtained."""

    samples: dict[str, np.ndarray]
    method: str
    num_chains: int = 1
    diverging: np.ndarray | None = None
    losses: np.ndarray | None = None
    log_likelihood: dict[str, np.ndarray] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def by_chain(self, draws: np.ndarray) -> np.ndarray:
        """`draws` [chains * draws, ...] -> [chains, draws, ...]."""
        draws = np.asarray(draws)
        return draws.reshape(self.num_chains, -1, *draws.shape[1:])

    def diagnostics(self, draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Split R-hat and effective sample size of every component of `draws` (NaN unless NUTS)."""
        if self.method != "nuts":
            nan = np.full(np.shape(draws)[1:], np.nan)
            return nan, nan
        chains = self.by_chain(draws)
        return np.asarray(split_gelman_rubin(chains)), np.asarray(effective_sample_size(chains))


def fit(model: Callable, *, seed: int = 0, num_samples: int = 500, num_warmup: int = 500, num_chains: int = 4,
        svi: bool = False, svi_steps: int = 3000, learning_rate: float = 0.02,
        init_values: dict | None = None, target_accept: float = 0.8, max_tree_depth: int = 8,
        progress_bar: bool = False) -> Fit:
    """Draw from the posterior of `model()` with NUTS (`num_chains` vectorized chains of `num_samples`
    each; a `ConvergenceWarning` when some R-hat exceeds 1.01) or, when `svi`, `num_samples` draws
    from a mean-field guide. `progress_bar`: NumPyro's bar on stderr."""
    key_run, key_draw = jax.random.split(jax.random.PRNGKey(seed))
    init = init_to_value(values=init_values) if init_values else init_to_median
    if svi:
        guide = AutoNormal(model, init_loc_fn=init, init_scale=0.05)
        optim = optax_to_numpyro(optax.adam(learning_rate))
        result = SVI(model, guide, optim, Trace_ELBO()).run(key_run, svi_steps, progress_bar=progress_bar)
        draws = guide.sample_posterior(key_draw, result.params, sample_shape=(num_samples,))
        latent, derived = _sites(model, key_draw)
        draws = {k: v for k, v in draws.items() if k in latent}
        if derived:  # deterministic sites (e.g. a confusion built from random effects), per draw
            draws |= Predictive(model, posterior_samples=draws, return_sites=sorted(derived))(key_draw)
        draws = {k: np.asarray(v) for k, v in draws.items()}
        return Fit(draws, "svi", losses=np.asarray(result.losses),
                   log_likelihood=_pointwise_log_likelihood(model, draws))
    kernel = NUTS(model, init_strategy=init, target_accept_prob=target_accept, max_tree_depth=max_tree_depth)
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                chain_method="vectorized", progress_bar=progress_bar)
    mcmc.run(key_run, extra_fields=("diverging",))
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples().items()}
    result = Fit(samples, "nuts", num_chains, diverging=np.asarray(mcmc.get_extra_fields()["diverging"]),
                 log_likelihood=_pointwise_log_likelihood(model, samples))
    _warn_unless_mixed(result)
    return result


def _pointwise_log_likelihood(model: Callable, draws: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """log p(observation | draw) per observed or factor site, shape (draws, observations)."""
    return {k: np.asarray(v) for k, v in log_likelihood(model, draws).items()}


def _warn_unless_mixed(fit_: Fit) -> None:
    worst, site = 1.0, ""
    for name, draws in fit_.samples.items():
        rhat = np.nanmax(fit_.diagnostics(draws)[0], initial=1.0)
        if rhat > worst:
            worst, site = float(rhat), name
    if worst > RHAT_WARNING:
        warnings.warn(f"R-hat reaches {worst:.3f} at {site!r} (> {RHAT_WARNING}): the {fit_.num_chains} chains "
                      "have not mixed; raise num_warmup / num_samples", ConvergenceWarning, stacklevel=3)


def _sites(model: Callable, key: jax.Array) -> tuple[set[str], set[str]]:
    """Names of the model's latent sample sites and of its deterministic sites."""
    from numpyro import handlers

    tr = handlers.trace(handlers.seed(model, key)).get_trace()
    latent = {n for n, s in tr.items() if s["type"] == "sample" and not s.get("is_observed", False)}
    return latent, {n for n, s in tr.items() if s["type"] == "deterministic"}


def to_inference_data(fit_: Fit, posterior: dict[str, np.ndarray], coords: dict, dims: dict):
    """ArviZ InferenceData with the fit's chains: the given posterior arrays, divergences where
    sampled, and the pointwise `log_likelihood` group (so `az.loo` and `az.compare` work)."""
    import arviz as az

    stats = {"diverging": fit_.by_chain(fit_.diverging)} if fit_.diverging is not None else None
    return az.from_dict(posterior={k: fit_.by_chain(v) for k, v in posterior.items()},
                        log_likelihood={k: fit_.by_chain(v) for k, v in fit_.log_likelihood.items()} or None,
                        sample_stats=stats, coords=coords, dims=dims,
                        attrs={"inference": fit_.method})


def interval(draws: np.ndarray, mass: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Equal-tailed credible interval over the leading (draw) axis."""
    lo = (1.0 - mass) / 2.0
    return np.quantile(draws, lo, axis=0), np.quantile(draws, 1.0 - lo, axis=0)
