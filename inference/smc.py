"""Sequential Monte Carlo over a ``StateSpaceProgram``, compiled to one XLA program.

``init`` is vmapped over the N particles, then a loop runs ``smc_step`` once per step: resample
(adaptively, on the weights accumulated so far) as a gather of the particle pytree, propagate every
particle one step, reweight. When the particle state has a ``done`` flag (``ppl.program.done_flag``),
the loop is a ``lax.while_loop`` that stops propagating once every particle is done; the steps left
only resample, on indices, so the result is that of running every step. The log-evidence estimate

    log Z = log mean_i exp(w_init^i) + sum_t log sum_i W_{t-1}^i exp(increment_t^i)

uses the normalised weights W before step t (uniform right after a resample), so it stays
unbiased whether or not a step resampled (also when a strategy leaves unequal weights, as the
tempered and island strategies do). How a step resamples is a strategy
(``inference.resampling.Strategy``) handed to ``SMC``; the loop is the same for all of them, and
for the particle-MCMC kernels, which call ``smc_step`` with their own conditional resampler.
With ``mesh=`` the particles are sharded over devices (``inference.sharding``).

For users who write their own loop, ``init`` and ``step`` are the same run one step at a time:

    state, status = smc.init(program, init_key, num_particles, *args)
    for t, key in enumerate(jax.random.split(scan_key, program.num_steps)):
        state, info = smc.step(program, state, key, t, *args)
"""

from collections.abc import Callable
from enum import IntEnum
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp
from jax.sharding import Mesh

from inference import resampling
from inference.resampling import Adaptive, Gather, Propagate, Resampler, StepContext, Strategy
from inference.sharding import ParticlePlacement
from ppl.errors import PPLError
from ppl.program import StateSpaceProgram, Swarm, done_flag, particles_of

Array = jax.Array

__all__ = [
    "SMC",
    "SMCResult",
    "SMCState",
    "SMCStepInfo",
    "WeightError",
    "WeightStatus",
    "check_weights",
    "init",
    "init_state",
    "smc_step",
    "step",
    "weight_status",
]


class WeightStatus(IntEnum):
    """Whether a step's weights are usable (``OK``) and, if not, the first problem that applies."""

    OK = 0
    NAN = 1  # a log-weight is NaN
    POSITIVE_INFINITY = 2  # a log-weight is +inf
    ALL_ZERO = 3  # every particle has log-weight -inf

    @property
    def message(self) -> str:
        return {1: "a log-weight is NaN", 2: "a log-weight is +inf", 3: "every particle has log-weight -inf"}[self]


class WeightError(PPLError):
    """SMC weights became NaN or +inf, or every particle reached -inf."""


def weight_status(log_weights: Array) -> Array:
    """The ``WeightStatus`` code of unnormalised log-weights (an int32 array, for use under jit)."""
    return jnp.select(
        [
            jnp.any(jnp.isnan(log_weights)),
            jnp.any(log_weights == jnp.inf),
            jnp.all(log_weights == -jnp.inf),
        ],
        [WeightStatus.NAN, WeightStatus.POSITIVE_INFINITY, WeightStatus.ALL_ZERO],
        WeightStatus.OK,
    ).astype(jnp.int32)


class SMCState(NamedTuple):
    """Particles (leading axis N), normalised log-weights, running log Z."""

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


def init_state(particles: Any, log_weights: Array) -> tuple[SMCState, Array]:
    """State from initial particles and their unnormalised log-weights, and their status."""
    total = logsumexp(log_weights)
    log_evidence = total - jnp.log(log_weights.shape[0])
    return SMCState(particles, log_weights - total, log_evidence), weight_status(log_weights)


def smc_step(
    state: SMCState,
    xs: tuple[Array, Array],
    *,
    propagate: Propagate,
    resampler: Resampler,
    gather: Gather = resampling.gather,
) -> tuple[SMCState, SMCStepInfo]:
    """One SMC step as a ``lax.scan`` body over ``xs = (t, key)``: resample, propagate, reweight."""
    t, key = xs
    resample_key, propagate_key = jax.random.split(key)
    ancestors, log_weights, resampled = resampler(resample_key, state.log_weights)
    # Gathered every step (``ancestors`` is the identity when not resampling): a ``cond`` would hold a second
    # copy of the particles (its gather branch's, or both branches' under ``vmap``).
    particles = state.particles
    if isinstance(particles, Swarm):  # the pool is shared, not resampled
        particles = particles._replace(particles=gather(particles.particles, ancestors))
    else:
        particles = gather(particles, ancestors)
    keys = jax.random.split(propagate_key, log_weights.shape[0])
    particles, increments, record = propagate(keys, particles, t)
    unnormalised = log_weights + increments
    log_z = logsumexp(unnormalised)
    log_weights = unnormalised - log_z
    info = SMCStepInfo(
        ancestors, resampled, resampling.ess(log_weights), log_z, weight_status(unnormalised), record
    )
    return SMCState(particles, log_weights, state.log_evidence + log_z), info


def strategy_of(resampling: str | resampling.Scheme | Strategy) -> Strategy:
    """A strategy as given, or ``Adaptive`` over a scheme given by name or as a callable."""
    return resampling if hasattr(resampling, "bind") else Adaptive(resampling)


def init(program: StateSpaceProgram, rng_key: Array, num_particles: int, *args) -> tuple[SMCState, Array]:
    """``num_particles`` initial particles and their ``weight_status``: the first half of a run."""
    particles, log_weights = program.initialize_batch(jax.random.split(rng_key, num_particles), *args)
    return init_state(particles, log_weights)


def step(
    program: StateSpaceProgram,
    state: SMCState,
    rng_key: Array,
    t: int | Array,
    *args,
    resampling: str | resampling.Scheme | Strategy = "systematic",
    ess_threshold: float = 0.5,
) -> tuple[SMCState, SMCStepInfo]:
    """Step ``t`` of a run: resample as ``resampling`` decides, propagate, reweight."""

    def propagate(keys: Array, particles: Any, t: Array) -> tuple[Any, Array, Any]:
        out = program.propagate_batch(keys, particles, t, *args)
        return out.state, out.log_weight, out.deterministic

    t = jnp.asarray(t, jnp.int32)
    context = StepContext(t, program.num_steps, ess_threshold, state.particles, propagate, None)
    resampler, gather = strategy_of(resampling).bind(context)
    return smc_step(state, (t, rng_key), propagate=propagate, resampler=resampler, gather=gather)


class SMCResult(NamedTuple):
    """Outcome of an SMC run (a pytree: vmappable, jittable).

    ``log_weights`` are the final ones, normalised (logsumexp = 0). Per-step arrays have a
    leading axis T = num_steps: ``ess`` after step t's reweighting (what step t+1's resampling
    decision sees), ``ancestors`` [T, N] used before step t (identity where ``resampled`` is
    False), ``log_evidence_increments``; ``log_evidence`` = log mean exp(initial log-weights) +
    their sum. ``weight_status`` [T] and ``init_weight_status`` are ``WeightStatus`` codes.
    ``deterministic`` holds the deterministic sites per step [T, N, ...] when recorded, else {}.
    ``pool`` is the final state of the program's ``ppl.program.Pool`` (None without one).
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
    pool: Any = None

    @property
    def normalized_weights(self) -> Array:
        """Final normalised weights W [N]."""
        return resampling.normalize(self.log_weights)

    def sample(self, rng_key: Array, num_samples: int) -> Any:
        """Draw ``num_samples`` particles (pytree, leading axis) from the weighted approximation."""
        return resampling.gather(
            self.particles, resampling.multinomial(rng_key, self.log_weights, num_samples)
        )

    def to_inference_data(self):
        """ArviZ ``InferenceData`` of one run (not a vmapped batch of runs).

        ``posterior``: the final particles as the N draws of one chain, one variable per leaf of
        the particle pytree (named by its path, e.g. ``x`` or ``cache/k``); ``sample_stats``:
        their normalised ``log_weight`` (ArviZ weighs draws equally, so weighted summaries need
        these, or ``sample`` first); an ``smc`` group over ``step``: ``ess``, ``ancestors``
        [step, particle], ``resampled``, ``log_evidence_increment`` and the recorded
        deterministic sites; ``attrs["log_evidence"]``.
        """
        import arviz as az
        import xarray as xr

        log_weights = np.asarray(self.log_weights)
        if log_weights.ndim != 1:
            raise ValueError(f"to_inference_data takes one run; these weights have shape {log_weights.shape} "
                             "(index a vmapped result first)")
        leaves = jax.tree_util.tree_flatten_with_path(self.particles)[0]
        posterior = {_leaf_name(path): np.asarray(leaf)[None] for path, leaf in leaves}
        idata = az.from_dict(posterior=posterior, sample_stats={"log_weight": log_weights[None]},
                             attrs={"log_evidence": float(self.log_evidence), "inference": "smc"})
        per_step = {
            "ess": (("step",), np.asarray(self.ess)),
            "ancestors": (("step", "particle"), np.asarray(self.ancestors)),
            "resampled": (("step",), np.asarray(self.resampled)),
            "log_evidence_increment": (("step",), np.asarray(self.log_evidence_increments)),
        }
        for name, value in self.deterministic.items():
            value = np.asarray(value)
            per_step[name] = (("step", "particle", *(f"{name}_dim_{i}" for i in range(value.ndim - 2))), value)
        steps = np.arange(len(per_step["ess"][1]))
        idata.add_groups({"smc": xr.Dataset(per_step, coords={"step": steps})}, warn_on_custom_groups=False)
        return idata


def _leaf_name(path: tuple) -> str:
    """'x', 'cache/k', '0' ...: a particle leaf's path in the pytree ('particles' for a bare array)."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path) or "particles"


class SMC:
    """Adaptive-resampling SMC (particle filter) for a ``StateSpaceProgram``.

    ``resampling`` is a scheme (a name in ``resampling.SCHEMES`` or a callable), used when ESS/N
    < ``ess_threshold``, or a ``resampling.Strategy``: ``inference.entropic.Entropic`` (tempered),
    ``inference.sharding.Islands`` or ``Routed`` (over a mesh). ``record_deterministic`` keeps the
    program's deterministic sites per step in the result. ``mesh`` shards the particles over its
    ``"particles"`` axis (or its first axis when it has none; see ``inference.sharding``).

    ``run(rng_key, *args)`` is one jitted call, compiled once per shapes/dtypes of ``args``;
    it raises ``WeightError`` if the weights ever become unusable. ``run_unchecked`` is the
    same pure function without the host-side check (for vmap over keys, or nesting in jit).
    """

    def __init__(
        self,
        program: StateSpaceProgram,
        num_particles: int,
        resampling: str | resampling.Scheme | Strategy = "systematic",
        ess_threshold: float = 0.5,
        record_deterministic: bool = False,
        mesh: Mesh | None = None,
    ):
        self.program = program
        self.num_particles = int(num_particles)
        self.strategy = strategy_of(resampling)
        self.ess_threshold = ess_threshold
        self.record_deterministic = record_deterministic
        self.placement = None if mesh is None else ParticlePlacement(mesh, self.num_particles)
        self.strategy.check(self.num_particles, self.placement)
        self._run_jit = jax.jit(self.run_unchecked)

    def _place(self, particles: Any) -> Any:
        return particles if self.placement is None else self.placement.constrain(particles)

    def _propagate(self, args: tuple) -> Propagate:
        def propagate(keys: Array, particles: Any, t: Array) -> tuple[Any, Array, Any]:
            out = self.program.propagate_batch(keys, particles, t, *args)
            deterministic = out.deterministic if self.record_deterministic else {}
            return self._place(out.state), out.log_weight, deterministic

        return propagate

    def run_unchecked(self, rng_key: Array, *args) -> SMCResult:
        """The whole run as a pure function of the key and the program's arguments."""
        init_key, scan_key = jax.random.split(rng_key)
        state, init_status = init(self.program, init_key, self.num_particles, *args)
        state = state._replace(particles=self._place(state.particles))
        num_steps = self.program.num_steps
        propagate = jax.jit(self._propagate(args))  # one trace however often a step calls it (look-ahead drafts)

        def body(state: SMCState, xs: tuple[Array, Array]) -> tuple[SMCState, SMCStepInfo]:
            context = StepContext(xs[0], num_steps, self.ess_threshold, state.particles, propagate, self.placement)
            resampler, gather = self.strategy.bind(context)
            return smc_step(state, xs, propagate=propagate, resampler=resampler, gather=gather)

        xs = (jnp.arange(num_steps, dtype=jnp.int32), jax.random.split(scan_key, num_steps))
        if _done_flags(state.particles) is None:
            state, info = jax.lax.scan(body, state, xs)
        else:
            state, info, _ = _steps_until_done(body, self._settler(num_steps), state, xs)
            state = state._replace(particles=self._place(state.particles))
        return SMCResult(
            log_evidence=state.log_evidence,
            particles=particles_of(state.particles),
            log_weights=state.log_weights,
            ess=info.ess,
            ancestors=info.ancestors,
            log_evidence_increments=info.log_evidence_increment,
            resampled=info.resampled,
            weight_status=info.weight_status,
            init_weight_status=init_status,
            deterministic=info.record,
            pool=state.particles.pool if self.program.pool is not None else None,
        )

    def _settler(self, num_steps: int) -> Callable[[SMCState, tuple[Array, Array], Any], tuple[SMCState, SMCStepInfo]]:
        """The step once every particle is done: its increments are 0, so it only resamples. The
        particles are then an index array into the final ones, which each resampling gathers."""

        def settle(state: SMCState, xs: tuple[Array, Array], record: Any) -> tuple[SMCState, SMCStepInfo]:
            def frozen(keys: Array, origin: Array, t: Array) -> tuple[Array, Array, Any]:
                return origin, jnp.zeros(origin.shape, state.log_weights.dtype), record

            context = StepContext(xs[0], num_steps, self.ess_threshold, state.particles, frozen, self.placement)
            resampler, _ = self.strategy.bind(context)
            return smc_step(state, xs, propagate=frozen, resampler=resampler)

        return settle

    def run(self, rng_key: Array, *args) -> SMCResult:
        """Run SMC; raise ``WeightError`` naming the first step whose weights went bad (and whatever the
        program's pool raises when it cannot vouch for the run)."""
        result = self._run_jit(rng_key, *args)
        check_weights(result)
        if self.program.pool is not None:
            self.program.pool.check(result.pool)
        return result


def _done_flags(particles: Any) -> Array | None:
    """Each particle's ``done`` flag [N] (``ppl.program.done_flag``), or None if the state has none."""
    particles = particles_of(particles)
    if done_flag(jax.tree.map(lambda leaf: leaf[0], particles)) is None:
        return None
    return jax.vmap(done_flag)(particles)


def _steps_until_done(
    body: Callable[[SMCState, tuple[Array, Array]], tuple[SMCState, SMCStepInfo]],
    settle: Callable[[SMCState, tuple[Array, Array], Any], tuple[SMCState, SMCStepInfo]],
    state: SMCState,
    xs: tuple[Array, Array],
) -> tuple[SMCState, SMCStepInfo, Array]:
    """``lax.scan(body, state, xs)`` that stops propagating once every particle is done; also returns
    the first step at which every particle was done (``num_steps`` if none was).

    The remaining steps would propagate nothing (a done particle's increment is exactly 0) and
    only resample; ``settle`` runs them on an index array (the same resampling decisions on the
    same weights), so they cost [N]-sized work and one gather at the end, and the run is the
    scan's. Only the deterministic records of those steps differ: zeros instead of what the
    frozen particles' discarded steps computed.
    """
    steps, keys = xs
    num_steps = steps.shape[0]
    info = jax.eval_shape(body, state, (steps[0], keys[0]))[1]
    records = jax.tree.map(lambda leaf: jnp.zeros((num_steps, *leaf.shape), leaf.dtype), info)

    def step_with(fn: Callable) -> Callable:
        def run(carry: tuple) -> tuple:
            t, state, records = carry
            state, info = fn(state, (steps[t], keys[t]))
            return t + 1, state, jax.tree.map(lambda r, x: r.at[t].set(x), records, info)

        return run

    def live(carry: tuple) -> Array:
        t, state, _ = carry
        return (t < num_steps) & ~jnp.all(_done_flags(state.particles))

    t, state, records = jax.lax.while_loop(live, step_with(body), (jnp.int32(0), state, records))
    exit_step = t
    empty_record = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), info.record)
    origin = state._replace(particles=jnp.arange(state.log_weights.shape[0], dtype=jnp.int32))
    t, origin, records = jax.lax.while_loop(
        lambda carry: carry[0] < num_steps,
        step_with(lambda state, xs: settle(state, xs, empty_record)),
        (t, origin, records),
    )
    particles = resampling.gather(state.particles, origin.particles)
    return origin._replace(particles=particles), records, exit_step


def check_weights(result: SMCResult) -> None:
    """Raise ``WeightError`` for the first bad weight status of a run (host-side)."""
    init_status = WeightStatus(int(result.init_weight_status))
    if init_status:
        raise WeightError(f"SMC weights invalid at initialisation: {init_status.message}")
    status = np.asarray(result.weight_status)
    bad = np.flatnonzero(status)
    if bad.size:
        step = int(bad[0])
        raise WeightError(f"SMC weights invalid first at step {step}: {WeightStatus(int(status[step])).message}")
