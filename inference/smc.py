"""Sequential Monte Carlo over a ``StateSpaceProgram``, compiled to one XLA program.

``init`` is vmapped over the N particles, then a ``lax.scan`` runs ``smc_step`` once per step:
resample (adaptively, on the weights accumulated so far) as a gather of the particle pytree,
propagate every particle one step, reweight. The log-evidence estimate

    log Z = log mean_i exp(w_init^i) + sum_t log sum_i W_{t-1}^i exp(increment_t^i)

uses the normalised weights W before step t (uniform right after a resample), so it stays
unbiased whether or not a step resampled (also when a resampler leaves unequal weights, as the
tempered and island resamplers do). ``smc_step`` takes the propagation, resampling and gather
functions as arguments so other kernels (tempered resampling, conditional SMC, islands) reuse the
loop. With ``mesh=`` the particles are sharded over devices (``inference.sharding``).
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp
from jax.sharding import Mesh

from inference import resampling
from inference.sharding import (
    Gather,
    ParticlePlacement,
    Resampler,
    island_gather,
    island_resampler,
    routed_gather,
)
from ppl.errors import PPLError
from ppl.program import StateSpaceProgram

Array = jax.Array
# (keys[N], particles, t) -> (particles, log_weight_increments[N], per-step record pytree)
Propagate = Callable[[Array, Any, Array], tuple[Any, Array, Any]]

__all__ = [
    "SMC",
    "SMCCarry",
    "SMCResult",
    "SMCStepInfo",
    "WeightError",
    "adaptive_resampler",
    "check_weights",
    "init_carry",
    "smc_step",
    "weight_status",
]

# Codes of ``weight_status``; 0 means the weights are usable.
_PROBLEMS = {1: "a log-weight is NaN", 2: "a log-weight is +inf", 3: "every particle has log-weight -inf"}


class WeightError(PPLError):
    """SMC weights became NaN or +inf, or every particle reached -inf."""


def weight_status(log_weights: Array) -> Array:
    """0 if usable; 1 any NaN, 2 any +inf, 3 all -inf (the first that applies)."""
    return jnp.select(
        [
            jnp.any(jnp.isnan(log_weights)),
            jnp.any(log_weights == jnp.inf),
            jnp.all(log_weights == -jnp.inf),
        ],
        [1, 2, 3],
        0,
    ).astype(jnp.int32)


class SMCCarry(NamedTuple):
    """The scan carry: particles (leading axis N), normalised log-weights, running log Z."""

    particles: Any
    log_weights: Array
    log_evidence: Array


class SMCStepInfo(NamedTuple):
    """What one step records: ancestors used, whether it resampled, ESS after reweighting,
    its log-evidence increment, ``weight_status`` of its unnormalised weights, and ``record``
    (whatever the propagation function returned as its third output)."""

    ancestors: Array
    resampled: Array
    ess: Array
    log_evidence_increment: Array
    weight_status: Array
    record: Any


def resampling_scheme(scheme: str | resampling.Scheme) -> resampling.Scheme:
    """A scheme by name (``resampling.SCHEMES``) or the callable itself."""
    if callable(scheme):
        return scheme
    if scheme not in resampling.SCHEMES:
        raise ValueError(f"resampling must be one of {sorted(resampling.SCHEMES)} or a callable, got {scheme!r}")
    return resampling.SCHEMES[scheme]


def adaptive_resampler(scheme: str | resampling.Scheme, ess_threshold: float) -> Resampler:
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
        do = resampling.ess(log_weights) < ess_threshold * n
        return jnp.where(do, ancestors, identity), jnp.where(do, uniform, log_weights), do

    return resample


def init_carry(particles: Any, log_weights: Array) -> tuple[SMCCarry, Array]:
    """Carry from initial particles and their unnormalised log-weights, and their status."""
    total = logsumexp(log_weights)
    log_evidence = total - jnp.log(log_weights.shape[0])
    return SMCCarry(particles, log_weights - total, log_evidence), weight_status(log_weights)


def smc_step(
    carry: SMCCarry,
    xs: tuple[Array, Array],
    *,
    propagate: Propagate,
    resampler: Resampler,
    gather: Gather = resampling.gather,
) -> tuple[SMCCarry, SMCStepInfo]:
    """One SMC step as a ``lax.scan`` body over ``xs = (t, key)``: resample, propagate, reweight."""
    t, key = xs
    resample_key, propagate_key = jax.random.split(key)
    ancestors, log_weights, resampled = resampler(resample_key, carry.log_weights)
    particles = jax.lax.cond(resampled, lambda p: gather(p, ancestors), lambda p: p, carry.particles)
    keys = jax.random.split(propagate_key, log_weights.shape[0])
    particles, increments, record = propagate(keys, particles, t)
    unnormalised = log_weights + increments
    log_z = logsumexp(unnormalised)
    log_weights = unnormalised - log_z
    info = SMCStepInfo(
        ancestors, resampled, resampling.ess(log_weights), log_z, weight_status(unnormalised), record
    )
    return SMCCarry(particles, log_weights, carry.log_evidence + log_z), info


class SMCResult(NamedTuple):
    """Outcome of an SMC run (a pytree: vmappable, jittable).

    ``log_weights`` are the final ones, normalised (logsumexp = 0). Per-step arrays have a
    leading axis T = num_steps: ``ess`` after step t's reweighting (what step t+1's resampling
    decision sees), ``ancestors`` [T, N] used before step t (identity where ``resampled`` is
    False), ``log_evidence_increments``; ``log_evidence`` = log mean exp(initial log-weights) +
    their sum. ``weight_status`` [T] and ``init_weight_status`` are ``smc.weight_status`` codes.
    ``deterministic`` holds the deterministic sites per step [T, N, ...] when recorded, else {}.
    """

    log_evidence: Array
    particles: Any
    log_weights: Array
    ess: Array
    ancestors: Array
    log_evidence_increments: Array
    resampled: Array
    weight_status: Array
    init_weight_status: Array
    deterministic: dict

    @property
    def normalized_weights(self) -> Array:
        """Final normalised weights W [N]."""
        return resampling.normalize(self.log_weights)

    def sample(self, rng_key: Array, num_samples: int) -> Any:
        """Draw ``num_samples`` particles (pytree, leading axis) from the weighted approximation."""
        return resampling.gather(
            self.particles, resampling.multinomial(rng_key, self.log_weights, num_samples)
        )


class SMC:
    """Adaptive-resampling SMC (particle filter) for a ``StateSpaceProgram``.

    ``run(rng_key, *args)`` is one jitted call, compiled once per shapes/dtypes of ``args``;
    it raises ``WeightError`` if the weights ever become unusable. ``run_unchecked`` is the
    same pure function without the host-side check (for vmap over keys, or nesting in jit).

    Scale-out: ``mesh`` shards the particles over ``mesh_axis`` (default: the mesh's first axis);
    resampling is global unless ``islands`` > 0, which resamples within that many equal groups
    of particles and globally every ``exchange_every`` steps. A global step moves the particle
    state with an all-gather, or with ``route_capacity`` > 0 only the particles each device lacks,
    up to that many per pair of devices (see ``inference.sharding``; not for a vmapped run).
    """

    def __init__(
        self,
        program: StateSpaceProgram,
        num_particles: int,
        resampling: str | resampling.Scheme = "systematic",
        ess_threshold: float = 0.5,
        record_deterministic: bool = False,
        *,
        mesh: Mesh | None = None,
        mesh_axis: str | None = None,
        islands: int = 0,
        exchange_every: int = 4,
        route_capacity: int = 0,
    ):
        self.program = program
        self.num_particles = int(num_particles)
        self.scheme = resampling_scheme(resampling)
        self.ess_threshold = ess_threshold
        self.resampler = adaptive_resampler(self.scheme, ess_threshold)
        self.record_deterministic = record_deterministic
        self.placement = None if mesh is None else ParticlePlacement(mesh, self.num_particles, mesh_axis)
        if islands < 0 or (islands and self.num_particles % islands):
            raise ValueError(f"islands={islands} must divide num_particles={self.num_particles}")
        if islands and self.placement is not None and islands % self.placement.num_devices:
            raise ValueError(f"islands={islands} must be a multiple of the {self.placement.num_devices} devices")
        if exchange_every < 1:
            raise ValueError(f"exchange_every must be >= 1, got {exchange_every}")
        self.islands = islands
        self.exchange_every = exchange_every
        if route_capacity and (self.placement is None or islands):
            raise ValueError("route_capacity applies to global resampling over a mesh: give mesh= and no islands")
        self.route_capacity = route_capacity
        self._run_jit = jax.jit(self.run_unchecked)

    def _place(self, particles: Any) -> Any:
        return particles if self.placement is None else self.placement.constrain(particles)

    def _propagate(self, args: tuple) -> Propagate:
        def propagate(keys: Array, particles: Any, t: Array) -> tuple[Any, Array, Any]:
            out = self.program.propagate_batch(keys, particles, t, *args)
            deterministic = out.deterministic if self.record_deterministic else {}
            return self._place(out.state), out.log_weight, deterministic

        return propagate

    def _body(self, args: tuple) -> Callable[[SMCCarry, tuple[Array, Array]], tuple[SMCCarry, SMCStepInfo]]:
        """The scan body: ``smc_step`` with this engine's propagation and resampler (a hook for
        kernels whose resampling also sees the step index or the particles)."""
        propagate = self._propagate(args)
        if not self.islands:
            gather = routed_gather(self.placement, self.route_capacity) if self.route_capacity else resampling.gather
            return functools.partial(smc_step, propagate=propagate, resampler=self.resampler, gather=gather)

        def body(carry: SMCCarry, xs: tuple[Array, Array]) -> tuple[SMCCarry, SMCStepInfo]:
            exchange = xs[0] % self.exchange_every == self.exchange_every - 1
            resampler = island_resampler(self.resampler, self.scheme, self.ess_threshold, self.islands, exchange)
            gather = island_gather(self.islands, exchange)
            return smc_step(carry, xs, propagate=propagate, resampler=resampler, gather=gather)

        return body

    def run_unchecked(self, rng_key: Array, *args) -> SMCResult:
        """The whole run as a pure function of the key and the program's arguments."""
        init_key, scan_key = jax.random.split(rng_key)
        particles, log_weights = self.program.initialize_batch(
            jax.random.split(init_key, self.num_particles), *args
        )
        particles = self._place(particles)
        carry, init_status = init_carry(particles, log_weights)
        num_steps = self.program.num_steps
        body = self._body(args)
        xs = (jnp.arange(num_steps, dtype=jnp.int32), jax.random.split(scan_key, num_steps))
        carry, info = jax.lax.scan(body, carry, xs)
        return SMCResult(
            log_evidence=carry.log_evidence,
            particles=carry.particles,
            log_weights=carry.log_weights,
            ess=info.ess,
            ancestors=info.ancestors,
            log_evidence_increments=info.log_evidence_increment,
            resampled=info.resampled,
            weight_status=info.weight_status,
            init_weight_status=init_status,
            deterministic=info.record,
        )

    def run(self, rng_key: Array, *args) -> SMCResult:
        """Run SMC; raise ``WeightError`` naming the first step whose weights went bad."""
        result = self._run_jit(rng_key, *args)
        check_weights(result)
        return result


def check_weights(result: SMCResult) -> None:
    """Raise ``WeightError`` for the first bad weight status of a run (host-side)."""
    init_status = int(result.init_weight_status)
    if init_status:
        raise WeightError(f"SMC weights invalid at initialisation: {_PROBLEMS[init_status]}")
    status = np.asarray(result.weight_status)
    bad = np.flatnonzero(status)
    if bad.size:
        step = int(bad[0])
        raise WeightError(f"SMC weights invalid first at step {step}: {_PROBLEMS[int(status[step])]}")
