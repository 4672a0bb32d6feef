"""One driver for every judge model: NUTS by default, SVI (optax Adam) for large data.

Models are ordinary NumPyro functions with their data bound by
`functools.partial`, so sizes stay static under jit. The driver returns
posterior draws as NumPy arrays plus the sampler's diagnostics, which is all
the result objects need (summaries, ranks, ArviZ export).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import numpy as np
import optax
from numpyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO, init_to_median, init_to_value
from numpyro.infer.autoguide import AutoNormal
from numpyro.optim import optax_to_numpyro


@dataclass
class Fit:
    """Posterior draws (leading axis = draw) and how they were obtained."""

    samples: dict[str, np.ndarray]
    method: str
    diverging: np.ndarray | None = None
    losses: np.ndarray | None = None
    extra: dict = field(default_factory=dict)


def fit(model: Callable, *, seed: int = 0, num_samples: int = 500, num_warmup: int = 500,
        svi: bool = False, svi_steps: int = 3000, learning_rate: float = 0.02,
        init_values: dict | None = None, target_accept: float = 0.8, max_tree_depth: int = 8,
        progress_bar: bool = False) -> Fit:
    """Draw from the posterior of `model()` with NUTS (one chain) or, when `svi`, with a mean-field guide;
    `progress_bar`: NumPyro's bar on stderr."""
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
        return Fit({k: np.asarray(v) for k, v in draws.items()}, "svi", losses=np.asarray(result.losses))
    kernel = NUTS(model, init_strategy=init, target_accept_prob=target_accept, max_tree_depth=max_tree_depth)
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=1, progress_bar=progress_bar)
    mcmc.run(key_run, extra_fields=("diverging",))
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples().items()}
    return Fit(samples, "nuts", diverging=np.asarray(mcmc.get_extra_fields()["diverging"]))


def _sites(model: Callable, key: jax.Array) -> tuple[set[str], set[str]]:
    """Names of the model's latent sample sites and of its deterministic sites."""
    from numpyro import handlers

    tr = handlers.trace(handlers.seed(model, key)).get_trace()
    latent = {n for n, s in tr.items() if s["type"] == "sample" and not s.get("is_observed", False)}
    return latent, {n for n, s in tr.items() if s["type"] == "deterministic"}


def to_inference_data(fit_: Fit, posterior: dict[str, np.ndarray], coords: dict, dims: dict):
    """ArviZ InferenceData with one chain: the given posterior arrays plus divergences where sampled."""
    import arviz as az

    stats = {"diverging": fit_.diverging[None]} if fit_.diverging is not None else None
    return az.from_dict(posterior={k: np.asarray(v)[None] for k, v in posterior.items()},
                        sample_stats=stats, coords=coords, dims=dims,
                        attrs={"inference": fit_.method})


def interval(draws: np.ndarray, mass: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Equal-tailed credible interval over the leading (draw) axis."""
    lo = (1.0 - mass) / 2.0
    return np.quantile(draws, lo, axis=0), np.quantile(draws, 1.0 - lo, axis=0)
