"""Particles spread over a device mesh, with global or island resampling.

Placement is JAX's own sharding: the leading (particle) axis of every leaf of the particle state
is sharded over one axis of a ``jax.sharding.Mesh``, its other axes left to XLA's sharding
propagation (over a ``model`` axis that splits the weights, KV caches end up split by head like the
projections that write them); ancestors and the program's arguments are placed as given (weights
replicated or split over ``model``), and a paged run's pool is whole on every particle device. The
program is the same SPMD program on one device or many, so the same key gives the same particles
either way.

* Global resampling (default): every particle competes with every other. Only the N log-weights
  are gathered to decide; the particles a device needs from others move in the resampling gather,
  which XLA's SPMD partitioner lowers to an all-gather of the particle state. ``routed_gather``
  moves instead only the distinct particles each device lacks, in one all-to-all with room for
  ``capacity`` particles per pair of devices, and falls back to the all-gather on a step that
  needs more (the plan is computed from the replicated ancestors, so every device agrees on it
  without communicating). The result is the same gather either way, bit for bit.
* Islands (Vergé et al. 2015): the N particles form ``islands`` groups of N/I. A step resamples
  within each island only (on the island's own ESS), and every particle of island j then carries
  weight Z_j / (N/I), Z_j the island's total weight, so the weighted system is unchanged in
  expectation and the log-evidence stays unbiased. With islands aligned to devices no particle
  crosses a device on those steps. Every ``exchange_every`` steps the step resamples globally
  instead, which moves particles between islands and evens out their total weights.
"""

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from inference import resampling
from inference.resampling import Gather, Resampler, Scheme, StepContext, adaptive_resampler, resampling_scheme
from ppl.program import Swarm

Array = jax.Array

__all__ = [
    "Islands",
    "ParticlePlacement",
    "Routed",
    "collective_bytes",
    "island_gather",
    "island_resampler",
    "route_plan",
    "routed_gather",
]


class ParticlePlacement:
    """The sharding of particle leaves (leading axis over the mesh's ``"particles"`` axis, or its
    first axis when it has none) and its constraint."""

    def __init__(self, mesh: Mesh, num_particles: int):
        axis = "particles" if "particles" in mesh.axis_names else mesh.axis_names[0]
        self.num_devices = int(mesh.shape[axis])
        if num_particles % self.num_devices:
            raise ValueError(
                f"num_particles={num_particles} must be a multiple of the {self.num_devices} devices "
                f"on mesh axis {axis!r}"
            )
        self.mesh, self.axis = mesh, axis
        self.num_particles = num_particles
        self.sharded = NamedSharding(mesh, PartitionSpec(axis))

    def constrain(self, particles: Any) -> Any:
        """Pin every leaf with a leading particle axis to the particle axis (inside jit), leaving its other axes
        to XLA (which splits KV caches by head over a ``model`` axis, like the projections that write them). A
        ``Swarm``'s pool is whole on every particle device, so resampling moves page tables only."""
        if isinstance(particles, Swarm):
            pool = jax.tree.map(lambda leaf: self._pin(leaf, None), particles.pool)
            return Swarm(self.constrain(particles.particles), pool)
        return jax.tree.map(
            lambda leaf: self._pin(leaf, self.axis) if jnp.ndim(leaf) and leaf.shape[0] == self.num_particles
            else leaf,
            particles,
        )

    def _pin(self, leaf: Array, first: str | None) -> Array:
        """``leaf`` with its leading axis over mesh axis ``first`` (None: on every device), the rest unconstrained."""
        if not jnp.ndim(leaf):
            return jax.lax.with_sharding_constraint(leaf, NamedSharding(self.mesh, PartitionSpec()))
        spec = PartitionSpec(first, *(PartitionSpec.UNCONSTRAINED,) * (jnp.ndim(leaf) - 1))
        return jax.lax.with_sharding_constraint(leaf, NamedSharding(self.mesh, spec))


def island_resampler(
    global_resampler: Resampler, scheme: Scheme, ess_threshold: float, num_islands: int, exchange: Array
) -> Resampler:
    """Resample within islands, or with ``global_resampler`` when ``exchange`` is True.

    Within an island the decision is that island's ESS / (N/I) < ``ess_threshold`` (>= 1:
    always, <= 0: never); each resampled island keeps its total weight.
    """

    def local(key: Array, log_weights: Array) -> tuple[Array, Array, Array]:
        n = log_weights.shape[0]
        size = n // num_islands
        grouped = log_weights.reshape(num_islands, size)
        mass = logsumexp(grouped, axis=1, keepdims=True)
        within = grouped - mass
        drawn = jax.vmap(lambda k, w: scheme(k, w, size))(jax.random.split(key, num_islands), within)
        identity = jnp.broadcast_to(jnp.arange(size, dtype=jnp.int32), drawn.shape)
        do = (jax.vmap(resampling.ess)(within) < ess_threshold * size) | (ess_threshold >= 1)
        local_ancestors = jnp.where(do[:, None], drawn, identity)
        ancestors = local_ancestors + size * jnp.arange(num_islands, dtype=jnp.int32)[:, None]
        after = jnp.where(do[:, None], jnp.broadcast_to(mass - jnp.log(size), grouped.shape), grouped)
        return ancestors.reshape(n), after.reshape(n), jnp.any(do)

    def resample(key: Array, log_weights: Array) -> tuple[Array, Array, Array]:
        return jax.lax.cond(exchange, global_resampler, local, key, log_weights)

    return resample


def island_gather(num_islands: int, exchange: Array) -> Gather:
    """The resampling gather for islands: a batched gather within each island (which XLA keeps on
    the island's device), or the global gather on exchange steps."""

    def within(particles: Any, ancestors: Array) -> Any:
        size = ancestors.shape[0] // num_islands
        local = (ancestors - size * (jnp.arange(ancestors.shape[0]) // size)).reshape(num_islands, size)

        def take(leaf):
            grouped = leaf.reshape(num_islands, size, *leaf.shape[1:])
            picked = jax.vmap(lambda block, idx: jnp.take(block, idx, axis=0))(grouped, local)
            return picked.reshape(leaf.shape)

        return jax.tree.map(take, particles)

    def gather(particles: Any, ancestors: Array) -> Any:
        return jax.lax.cond(exchange, resampling.gather, within, particles, ancestors)

    return gather


def route_plan(ancestors: Array, num_devices: int, capacity: int) -> tuple[Array, Array]:
    """Which particles each device must receive: ``lists[r, s]`` the sorted distinct local indices
    on device s that device r's slots descend from (padded with N/D, at most ``capacity`` kept),
    and whether every off-device list fits in ``capacity``."""
    size = ancestors.shape[0] // num_devices
    source_device = (ancestors // size).reshape(num_devices, size)
    source_index = (ancestors % size).reshape(num_devices, size)

    def needed(receiver: Array, sender: Array) -> tuple[Array, Array]:
        wanted = jnp.where(source_device[receiver] == sender, source_index[receiver], size)
        distinct = jnp.unique(wanted, size=size + 1, fill_value=size)
        return distinct[:capacity], jnp.sum(distinct < size)

    devices = jnp.arange(num_devices)
    lists, counts = jax.vmap(lambda r: jax.vmap(lambda s: needed(r, s))(devices))(devices)
    off_device = ~jnp.eye(num_devices, dtype=bool)
    return lists, jnp.all(~off_device | (counts <= capacity))


def routed_gather(placement: ParticlePlacement, capacity: int) -> Gather:
    """The global resampling gather, moving only the particles each device lacks (module docstring).

    Under ``vmap`` the fallback's ``cond`` becomes a ``select`` and both paths run: use it where
    the SMC run itself is not vmapped.
    """
    num_devices, axis = placement.num_devices, placement.axis
    size = placement.num_particles // num_devices

    def routed(particles: Any, ancestors: Array, lists: Array) -> Any:
        def on_device(local: Any, ancestors: Array, lists: Array) -> Any:
            me = jax.lax.axis_index(axis)
            outgoing = jnp.clip(lists[:, me], 0, size - 1)  # [receiver, capacity] my particles they need
            slots = jax.lax.dynamic_slice_in_dim(ancestors, me * size, size)
            source_device, source_index = slots // size, slots % size
            position = jax.vmap(lambda s, i: jnp.searchsorted(lists[me, s], i))(source_device, source_index)
            position = jnp.minimum(position, capacity - 1)

            def move(leaf: Array) -> Array:
                incoming = jax.lax.all_to_all(leaf[outgoing], axis, 0, 0)  # [sender, capacity, ...]
                here = (source_device == me).reshape(-1, *([1] * (leaf.ndim - 1)))
                return jnp.where(here, leaf[source_index], incoming[source_device, position])

            return jax.tree.map(move, local)

        spec = PartitionSpec(axis)
        return jax.shard_map(
            on_device, mesh=placement.mesh, in_specs=(spec, PartitionSpec(), PartitionSpec()), out_specs=spec
        )(particles, ancestors, lists)

    def gather(particles: Any, ancestors: Array) -> Any:
        lists, fits = route_plan(ancestors, num_devices, capacity)
        return jax.lax.cond(fits, lambda p, a: routed(p, a, lists), resampling.gather, particles, ancestors)

    return gather


@dataclasses.dataclass(frozen=True)
class Islands:
    """Island resampling (module docstring): within ``num_islands`` equal groups of particles,
    globally every ``exchange_every`` steps; ``scheme`` draws the ancestors."""

    num_islands: int
    exchange_every: int = 4
    scheme: str | Scheme = "systematic"

    def __post_init__(self):
        if self.num_islands < 1:
            raise ValueError(f"num_islands must be >= 1, got {self.num_islands}")
        if self.exchange_every < 1:
            raise ValueError(f"exchange_every must be >= 1, got {self.exchange_every}")
        resampling_scheme(self.scheme)

    def check(self, num_particles: int, placement: ParticlePlacement | None) -> None:
        if num_particles % self.num_islands:
            raise ValueError(f"islands={self.num_islands} must divide num_particles={num_particles}")
        if placement is not None and self.num_islands % placement.num_devices:
            raise ValueError(f"islands={self.num_islands} must be a multiple of the {placement.num_devices} devices")

    def bind(self, context: StepContext) -> tuple[Resampler, Gather]:
        exchange = context.t % self.exchange_every == self.exchange_every - 1
        threshold, scheme = context.ess_threshold, resampling_scheme(self.scheme)
        everywhere = adaptive_resampler(scheme, threshold)
        resampler = island_resampler(everywhere, scheme, threshold, self.num_islands, exchange)
        return resampler, island_gather(self.num_islands, exchange)


@dataclasses.dataclass(frozen=True)
class Routed:
    """Global adaptive resampling over a mesh whose gather moves only the particles each device
    lacks, up to ``capacity`` per pair of devices (``routed_gather``; not for a vmapped run)."""

    capacity: int
    scheme: str | Scheme = "systematic"

    def __post_init__(self):
        if self.capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {self.capacity}")
        resampling_scheme(self.scheme)

    def check(self, num_particles: int, placement: ParticlePlacement | None) -> None:
        if placement is None:
            raise ValueError("Routed resampling moves particles between devices: give the engine a mesh=")

    def bind(self, context: StepContext) -> tuple[Resampler, Gather]:
        return adaptive_resampler(self.scheme, context.ess_threshold), routed_gather(context.placement, self.capacity)


_COLLECTIVE = re.compile(
    r"= (\(.*?\)|\S+) (all-gather|all-reduce|collective-permute|all-to-all|reduce-scatter)(-start)?\("
)
_ARRAY = re.compile(r"(pred|[a-z]+)(\d*)\[([\d,]*)\]")


def collective_bytes(hlo_text: str) -> dict[str, int]:
    """Bytes each device receives per collective kind, summed over a compiled HLO module's text
    (``jax.jit(f).lower(...).compile().as_text()``): the size of each collective's result (for
    an async ``-start`` op, the last element of its result tuple). Branches count as if all ran."""
    totals: dict[str, int] = {}
    for shape, kind, start in _COLLECTIVE.findall(hlo_text):
        arrays = _ARRAY.findall(shape)
        if start:
            arrays = arrays[-1:]
        size = 0
        for dtype, bits, dims in arrays:
            count = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
            size += count * (1 if dtype == "pred" else int(bits) // 8)
        totals[kind] = totals.get(kind, 0) + size
    return totals
