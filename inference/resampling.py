"""Resampling: schemes, and the strategies that decide when and how SMC resamples.

A scheme is ``(key, log_weights[N], num_samples) -> ancestors[num_samples]`` (int32). Each is
unbiased (expected offspring count of particle i is ``num_samples * W_i``), pure, jittable with
static shapes, and never picks a particle whose log-weight is -inf (or NaN).

A strategy (``Strategy``) is what ``inference.SMC`` takes as ``resampling=``: before each step it
is bound to that step's ``StepContext`` and returns the step's ``Resampler`` (which ancestors,
with which weights afterwards) and ``Gather`` (how the particle state moves). ``Adaptive`` is the
default (a scheme, when ESS/N falls below the threshold); the entropic PF's tempered resampling
(``inference.entropic.Entropic``) and the sharded ones (``inference.sharding.Islands``,
``Routed``) are strategies too, so a kernel is composed rather than subclassed.
"""

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from ppl.program import Swarm

Array = jax.Array
Scheme = Callable[[Array, Array, int], Array]
# (key, normalised log_weights[N]) -> (ancestors[N], log_weights after resampling, resampled?)
Resampler = Callable[[Array, Array], tuple[Array, Array, Array]]
# (particles, ancestors[N]) -> particles
Gather = Callable[[Any, Array], Any]
# (keys[N], particles, t) -> (particles, log_weight_increments[N], per-step record pytree)
Propagate = Callable[[Array, Any, Array], tuple[Any, Array, Any]]

__all__ = [
    "SCHEMES",
    "Adaptive",
    "StepContext",
    "Strategy",
    "adaptive_resampler",
    "ess",
    "gather",
    "multinomial",
    "normalize",
    "residual",
    "resampling_scheme",
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


CHUNKED_GATHER_BYTES = 1 << 24  # a leaf this big is gathered one slice at a time


def gather(particles, ancestors: Array):
    """Resampling as a gather of every leaf of the particle pytree along axis 0.

    A big leaf (a layer's KV cache: [N, rows, kv_heads, ...]) is gathered one index of its first axis longer
    than 1 after the particles' at a time (the rows, or the heads of a single row), each slice written back in
    place, so the gather holds a copy of one slice rather than of the whole leaf. A ``ppl.program.Swarm``'s
    pool is shared by the particles and stays as it is.
    """
    if isinstance(particles, Swarm):
        return particles._replace(particles=gather(particles.particles, ancestors))

    def take(leaf: Array) -> Array:
        axis = next((a for a in range(1, leaf.ndim) if leaf.shape[a] > 1), None)
        if axis is None or leaf.size * leaf.dtype.itemsize < CHUNKED_GATHER_BYTES:
            return jnp.take(leaf, ancestors, axis=0)

        def one(i, leaf):
            part = jax.lax.dynamic_index_in_dim(leaf, i, axis=axis)
            return jax.lax.dynamic_update_index_in_dim(leaf, jnp.take(part, ancestors, axis=0), i, axis=axis)

        return jax.lax.fori_loop(0, leaf.shape[axis], one, leaf)

    return jax.tree.map(take, particles)


def resampling_scheme(scheme: str | Scheme) -> Scheme:
    """A scheme by name (``SCHEMES``) or the callable itself."""
    if callable(scheme):
        return scheme
    if scheme not in SCHEMES:
        raise ValueError(f"resampling must be one of {sorted(SCHEMES)} or a callable, got {scheme!r}")
    return SCHEMES[scheme]


def adaptive_resampler(scheme: str | Scheme, ess_threshold: float) -> Resampler:
    """Resample with ``scheme`` when ESS/N < ess_threshold (>= 1: every step, <= 0: never)."""
    scheme = resampling_scheme(scheme)

    def resample(key: Array, log_weights: Array) -> tuple[Array, Array, Array]:
        n = log_weights.shape[0]
        identity = jnp.arange(n, dtype=jnp.int32)
        if ess_threshold <= 0:
            return identity, log_weights, jnp.array(False)
        uniform = jnp.full_like(log_weights, -jnp.log(n))
        ancestors = scheme(key, log_weights, n)
        if ess_threshold >= 1:
            return ancestors, uniform, jnp.array(True)
        do = ess(log_weights) < ess_threshold * n
        return jnp.where(do, ancestors, identity), jnp.where(do, uniform, log_weights), do

    return resample


class StepContext(NamedTuple):
    """What a strategy may look at before step ``t`` runs."""

    t: Array  # the step about to run
    num_steps: int
    ess_threshold: float  # the engine's: resample when ESS/N falls below it
    particles: Any  # the particles about to be resampled
    propagate: Propagate  # the engine's step, for strategies that draft one (look-ahead)
    placement: Any  # the engine's ``inference.sharding.ParticlePlacement``, or None


class Strategy(Protocol):
    """How SMC resamples: ``check`` the engine's sizes once, ``bind`` to each step."""

    def check(self, num_particles: int, placement: Any) -> None: ...

    def bind(self, context: StepContext) -> tuple[Resampler, Gather]: ...


@dataclasses.dataclass(frozen=True)
class Adaptive:
    """Resample with ``scheme`` (a name or a callable) when ESS/N < the engine's threshold."""

    scheme: str | Scheme = "systematic"

    def __post_init__(self):
        resampling_scheme(self.scheme)

    def check(self, num_particles: int, placement: Any) -> None:
        pass

    def bind(self, context: StepContext) -> tuple[Resampler, Gather]:
        return adaptive_resampler(self.scheme, context.ess_threshold), gather
