"""Resampling schemes: ``(key, log_weights[N], num_samples) -> ancestors[num_samples]`` (int32).

Each scheme is unbiased (expected offspring count of particle i is ``num_samples * W_i``), pure,
jittable with static shapes, and never picks a particle whose log-weight is -inf (or NaN).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

Array = jax.Array
Scheme = Callable[[Array, Array, int], Array]

__all__ = [
    "SCHEMES",
    "ess",
    "gather",
    "multinomial",
    "normalize",
    "residual",
    "stratified",
    "systematic",
]


def normalize(log_weights: Array) -> Array:
    """Normalised weights; NaN counts as -inf, and all -inf gives uniform (no particle preferred)."""
    log_weights = jnp.where(jnp.isnan(log_weights), -jnp.inf, log_weights)
    all_dead = jnp.all(log_weights == -jnp.inf)
    return jnp.where(all_dead, 1.0 / log_weights.shape[0], jax.nn.softmax(log_weights))


def ess(log_weights: Array) -> Array:
    """Effective sample size ``1 / sum W_i^2`` of (unnormalised) log-weights; 0 if all are -inf."""
    log_weights = jnp.where(jnp.isnan(log_weights), -jnp.inf, log_weights)
    value = jnp.exp(2 * logsumexp(log_weights) - logsumexp(2 * log_weights))
    return jnp.where(jnp.all(log_weights == -jnp.inf), 0.0, value)


def _inverse_cdf(weights: Array, uniforms: Array) -> Array:
    """Indices i with cdf[i-1] <= u < cdf[i] for uniforms u in [0, 1); zero weights never hit."""
    cdf = jnp.cumsum(weights)
    cdf = cdf / cdf[-1]
    idx = jnp.searchsorted(cdf, uniforms, side="right")
    # Rounding can put u at 1.0; the last positive-weight particle owns the top of the cdf.
    last = weights.shape[0] - 1 - jnp.argmax(weights[::-1] > 0)
    return jnp.minimum(idx, last).astype(jnp.int32)


def multinomial(key: Array, log_weights: Array, num_samples: int) -> Array:
    """i.i.d. draws from the categorical of the normalised weights."""
    weights = normalize(log_weights)
    return _inverse_cdf(weights, jax.random.uniform(key, (num_samples,)))


def stratified(key: Array, log_weights: Array, num_samples: int) -> Array:
    """One uniform in each stratum [k/M, (k+1)/M)."""
    u = (jnp.arange(num_samples) + jax.random.uniform(key, (num_samples,))) / num_samples
    return _inverse_cdf(normalize(log_weights), u)


def systematic(key: Array, log_weights: Array, num_samples: int) -> Array:
    """One shared uniform offset, evenly spaced points (k + u)/M."""
    u = (jnp.arange(num_samples) + jax.random.uniform(key)) / num_samples
    return _inverse_cdf(normalize(log_weights), u)


def residual(key: Array, log_weights: Array, num_samples: int) -> Array:
    """floor(M W_i) copies of particle i, the remaining slots multinomial on the residuals."""
    weights = normalize(log_weights)
    scaled = num_samples * weights
    # A hair above 1 so that M W_i a rounding error below an integer k still gets its k copies.
    copies = jnp.floor(scaled * (1 + 4 * jnp.finfo(scaled.dtype).eps)).astype(jnp.int32)
    rest = jnp.maximum(scaled - copies, 0.0)
    # All residuals zero (every M W_i integral) leaves no slot to fill; draw from W to stay safe.
    rest = jnp.where(jnp.any(rest > 0), rest, weights)
    extra = _inverse_cdf(rest, jax.random.uniform(key, (num_samples,)))
    slots = jnp.arange(num_samples)
    owner = jnp.searchsorted(jnp.cumsum(copies), slots, side="right").astype(jnp.int32)
    return jnp.where(slots < jnp.sum(copies), owner, extra)


SCHEMES: dict[str, Scheme] = {
    "multinomial": multinomial,
    "systematic": systematic,
    "stratified": stratified,
    "residual": residual,
}


def gather(particles, ancestors: Array):
    """Resampling as a gather of every leaf of the particle pytree along axis 0."""
    return jax.tree.map(lambda leaf: jnp.take(leaf, ancestors, axis=0), particles)
