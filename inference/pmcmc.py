"""Particle MCMC over a ``StateSpaceProgram``, as NumPyro ``MCMCKernel``s.

A sweep is one SMC run (``smc_step`` in a ``lax.scan``) that records every particle's per-step
``Slot`` (state, log-weight increment, log-likelihood, latent site values), then draws an index
k from the final weights and traces its ancestry back: the trajectory is a ``Reference``.

* ``ParticleGibbs`` (Andrieu, Doucet & Holenstein 2010): conditional SMC. The reference
  occupies slot 0; the program never sees it. Resampling is multinomial every step with slot
  0's ancestor forced to 0, and after propagation slot 0 is overwritten with the reference's
  recorded state and increment at that step. The sample of an iteration is the new reference.
  With ``ancestor_sampling`` (Lindsten, Jordan & Schön 2014), slot 0's ancestor is drawn
  instead with probability ∝ W_{t-1}^i p_t(x_t^ref | x_{t-1}^i), where log p_t is the summed
  log-density of step t's sample sites (latent and observed) when the step runs from particle
  i's state with the reference's latent site values substituted; slot 0 is then that replay
  (state and increment) from its new ancestor. This is exact under a Markov assumption: the
  step's state is a function of the previous state and the step's sample-site values (replay
  reproduces it; no randomness outside sample sites, no ``done`` freezing), and the densities
  of later steps depend on the history only through the state the replay rebuilds (true for
  HMMs, linear-Gaussian models, bigram token models). LM traces (``ppl.reasoning.write_step``)
  violate it: the site value is the LM's sample but the state's KV cache is not rebuilt by
  substitution (that would need teacher forcing), so ``init`` replays the first reference and
  raises ``ValueError`` when replay does not reproduce it.
* ``PIMH``: each iteration runs a fresh (adaptive) SMC and accepts its trajectory with
  probability min(1, Z_new / Z_current), Z the SMC's evidence estimate.
* ``ParallelTemperingPG`` (Puri et al. 2025, Algorithm 3): one particle-Gibbs chain per
  temperature beta (``program_factory(beta)``'s likelihood is L^beta), then swaps of adjacent
  chains' references accepted with probability
  min(1, exp((beta_c - beta_{c+1}) (log L(x_{c+1}) - log L(x_c)))), where log L of a trajectory
  is its summed observed/factor log-density divided by the beta it was recorded at.

* ``InteractingParticleGibbs`` (iPMCMC, Rainforth et al. 2016): several references per chain.
  Each iteration runs M sweeps in parallel, P of them conditional on the P references and M - P
  unconditional; then each reference slot j in turn picks which sweep it follows, among its own
  and the sweeps no other slot holds, with probability ∝ that sweep's evidence estimate Z_m;
  each slot's new reference is a trajectory drawn from its sweep's final weights. With P = M = 1
  it is particle Gibbs. (Keeping several references inside ONE conditional SMC with forced
  ancestors is not an invariant kernel; iPMCMC gives each reference its own sweep.)

Each kernel's state has ``rng_key`` and a ``sample`` property: the reference's latent site
values, init sites by name and step sites by name with a leading axis T (0 at the steps after
``done``); for
``InteractingParticleGibbs`` every site has a leading axis P (one value per reference).
"""

from __future__ import annotations

import abc
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro import handlers
from numpyro.infer.mcmc import MCMCKernel
from numpyro.util import is_prng_key

from inference import resampling
from inference.resampling import Resampler, adaptive_resampler
from inference.smc import SMCState, _done_flags, _steps_until_done, init_state, smc_step
from ppl.program import StateSpaceProgram, Swarm, done_flag, particles_of, site_log_prob

Array = jax.Array

__all__ = [
    "PIMH",
    "ChainResult",
    "InteractingParticleGibbs",
    "ParallelTemperingPG",
    "ParticleGibbs",
    "Reference",
    "Slot",
    "Sweep",
]

_LOGLIK, _LOGJOINT, _SITE = "_pmcmc.loglik", "_pmcmc.logjoint", "_pmcmc.site."


class Slot(NamedTuple):
    """One particle at one step (or init): its state, log-weight increment (init: initial
    log-weight), summed observed/factor log-density, and latent site values."""

    state: Any
    log_weight: Array
    log_likelihood: Array
    sites: dict


class Reference(NamedTuple):
    """A trajectory: its init ``Slot`` and its per-step ``Slot`` (leading axis T); for a program with a
    ``ppl.program.Pool``, the pool its states live in (e.g. a paged trace's pages), None otherwise."""

    init: Slot
    steps: Slot
    pool: Any = None

    @property
    def log_likelihood(self) -> Array:
        return self.init.log_likelihood + jnp.sum(self.steps.log_likelihood)

    @property
    def sample(self) -> dict:
        """Latent site values: init sites, then step sites [T, ...]."""
        clash = set(self.init.sites) & set(self.steps.sites)
        if clash:
            raise ValueError(f"init and step share sample-site names {sorted(clash)}; rename them")
        return {**self.init.sites, **self.steps.sites}

    def retemper(self, ratio: Array) -> Reference:
        """The same trajectory recorded at beta * ratio: likelihood terms scale by ratio, and each
        log-weight moves by (ratio - 1) * log-likelihood (the likelihood is linear in beta)."""

        def scale(slot: Slot) -> Slot:
            impossible = jnp.isneginf(slot.log_likelihood)  # stays impossible at every beta > 0 (not NaN)
            shift = jnp.where(impossible, 0.0, (ratio - 1) * slot.log_likelihood)
            return slot._replace(
                log_weight=jnp.where(impossible, -jnp.inf, slot.log_weight + shift),
                log_likelihood=ratio * slot.log_likelihood,
            )

        return self._replace(init=scale(self.init), steps=scale(self.steps))


class ChainResult(NamedTuple):
    """A chain's draws as a weighted particle set for answer aggregation: ``particles`` are the
    final states of the K references (leading axis K), ``log_weights`` uniform, ``deterministic``
    the deterministic sites of every sweep [K, T, N, ...] (e.g. token counts), ``pool`` the program's
    pool after the last sweep (None without one; only the last reference's state is still in it)."""

    particles: Any
    log_weights: Array
    deterministic: dict
    pool: Any = None


def _recording(fn, is_step: bool):
    """``fn`` that also emits, as deterministic sites, its summed observed/factor log-density,
    its summed log-density over all sample sites, and its latent site values (0 when done)."""

    def wrapped(*args, **kwargs):  # kwargs: a program's ``pool=``
        with handlers.trace() as tr:
            value = fn(*args, **kwargs)
        sites = [s for s in tr.values() if s["type"] == "sample"]
        loglik = sum((site_log_prob(s) for s in sites if s["is_observed"]), jnp.zeros(()))
        logjoint = sum((site_log_prob(s) for s in sites), jnp.zeros(()))
        done = done_flag(args[0]) if is_step else None
        if done is not None:
            loglik, logjoint = jnp.where(done, 0.0, loglik), jnp.where(done, 0.0, logjoint)
        numpyro.deterministic(_LOGLIK, loglik)
        numpyro.deterministic(_LOGJOINT, logjoint)
        for s in sites:
            if not s["is_observed"]:
                site = s["value"] if done is None else jnp.where(done, jnp.zeros_like(s["value"]), s["value"])
                numpyro.deterministic(_SITE + s["name"], site)
        return value

    return wrapped


def _split_dets(dets: dict) -> tuple[Array, Array, dict, dict]:
    """(loglik, logjoint, latent sites, the user's own deterministic sites)."""
    sites = {k[len(_SITE):]: v for k, v in dets.items() if k.startswith(_SITE)}
    user = {k: v for k, v in dets.items() if not k.startswith("_pmcmc.")}
    return dets[_LOGLIK], dets[_LOGJOINT], sites, user


def _put(batch: Any, one: Any, index: int = 0) -> Any:
    return jax.tree.map(lambda b, o: b.at[index].set(o), batch, one)


def _take(tree: Any, index: Array) -> Any:
    return jax.tree.map(lambda x: x[index], tree)


class Sweep:
    """(Conditional) SMC sweeps of a program that return a trajectory drawn from the final weights.

    ``run(key, reference, *args) -> (Reference, log_evidence, user deterministic [T, N, ...])``;
    ``reference=None`` is an unconditional run with ``resampler``.

    A program with a ``ppl.program.Pool`` (paged KV caches) records each step's particles as they
    stand outside the pool (page tables, not keys and values). A sweep's pool holds room for N + 1
    particles: a conditional sweep continues in its reference's pool and keeps the reference's
    pages taken (``keep``) while its particles write theirs; slot 0, set to the reference's state at
    each step, reads the reference's pages, a prefix of its final state's, since a particle's
    descendants extend its page table.
    """

    def __init__(
        self,
        program: StateSpaceProgram,
        num_particles: int,
        ancestor_sampling: bool = False,
        resampler: Resampler | None = None,
    ):
        if program.pool is not None and ancestor_sampling:
            raise ValueError("ancestor sampling replays particles' states, which a program's pool does not "
                             "follow: run it without one (e.g. cache='contiguous')")
        self.program = program
        self.num_particles = int(num_particles)
        self.ancestor_sampling = ancestor_sampling
        self.resampler = resampler or adaptive_resampler("multinomial", 1.0)
        self.recorded = StateSpaceProgram(
            _recording(program.init, False),
            _recording(program.step, True),
            program.num_steps,
            proposal=(program.proposal_init, program.proposal_step),
            keeps_done=program.keeps_done,
            pool=program.pool,
        )
        # One trace of the step for every sweep of a chain, unconditional or conditional (same shapes).
        self._propagate_batch = jax.jit(self._propagate_batch)

    def _initialize(self, keys: Array, args: tuple, pool: Any) -> Slot:
        out = jax.vmap(lambda k: self.recorded.initialize_traced(k, *args, pool=pool))(keys)
        loglik, _, sites, _ = _split_dets(out.deterministic)
        return Slot(out.state, out.log_weight, loglik, sites)

    def _propagate_batch(self, keys: Array, particles: Any, t: Array, args: tuple, keep: Any) -> tuple[Slot, dict]:
        """The step's particles (with a pool: a ``Swarm``, its pool keeping ``keep``'s pages) as a ``Slot``."""
        out = self.recorded.propagate_batch(keys, particles, t, *args, keep=keep)
        loglik, _, sites, user = _split_dets(out.deterministic)
        return Slot(out.state, out.log_weight, loglik, sites), user

    def replay(self, key: Array, state: Any, t: Array, sites: dict, args: tuple) -> tuple[Slot, Array]:
        """Step t from ``state`` with the latent ``sites`` substituted: its ``Slot`` and the
        step's joint log-density (latent and observed sites)."""
        proposal = self.program.proposal_step
        substituted = StateSpaceProgram(
            self.program.init,
            handlers.substitute(self.recorded.step, data=sites),
            self.program.num_steps,
            proposal=(None, None if proposal is None else handlers.substitute(proposal, data=sites)),
        )
        out = substituted.propagate_traced(key, state, t, *args)
        loglik, logjoint, replayed, _ = _split_dets(out.deterministic)
        return Slot(out.state, out.log_weight, loglik, replayed), logjoint

    def _conditional_resampler(self, reference: Reference, particles: Any, t: Array, args: tuple) -> Resampler:
        """Multinomial resampling with slot 0's ancestor forced to 0, or ancestor-sampled."""

        def resample(key: Array, log_weights: Array) -> tuple[Array, Array, Array]:
            n = log_weights.shape[0]
            key, replay_key, pick_key = jax.random.split(key, 3)
            ancestors = resampling.multinomial(key, log_weights, n)
            parent = jnp.int32(0)
            if self.ancestor_sampling:
                sites = _take(reference.steps.sites, t)
                _, logjoint = jax.vmap(lambda k, s: self.replay(k, s, t, sites, args))(
                    jax.random.split(replay_key, n), particles
                )
                parent = resampling.multinomial(pick_key, log_weights + logjoint, 1)[0]
            return ancestors.at[0].set(parent), jnp.full_like(log_weights, -jnp.log(n)), jnp.array(True)

        return resample

    def run(self, key: Array, reference: Reference | None, *args) -> tuple[Reference, Array, dict]:
        if self.program.pool is not None and reference is not None and reference.pool is None:
            raise ValueError("this program keeps its states in a pool: a reference must carry the pool it lives "
                             "in (Reference.pool), as the references of its own sweeps do")
        n, num_steps = self.num_particles, self.program.num_steps
        init_key, scan_key, pick_key = jax.random.split(key, 3)
        pool, keep = None, None
        if self.program.pool is not None:
            pool = self.program.pool.init(n + 1, *args) if reference is None else reference.pool
            keep = None if reference is None else jax.tree.map(lambda x: x[-1:], reference.steps.state)
        init = self._initialize(jax.random.split(init_key, n), args, pool)
        if reference is not None:
            init = _put(init, reference.init)
        carry, _ = init_state(init.state if pool is None else Swarm(init.state, pool), init.log_weight)

        def propagate(keys: Array, particles: Any, t: Array) -> tuple[Any, Array, Any]:
            slots, user = self._propagate_batch(keys, particles, t, args, keep)
            swarm, slots = slots.state, slots._replace(state=particles_of(slots.state))
            if reference is not None:
                if self.ancestor_sampling:
                    mine, _ = self.replay(keys[0], _take(particles, 0), t, _take(reference.steps.sites, t), args)
                else:
                    mine = _take(reference.steps, t)
                slots = _put(slots, mine)
            state = slots.state if pool is None else Swarm(slots.state, swarm.pool)
            return state, slots.log_weight, (slots, user)

        def body(carry: SMCState, xs: tuple[Array, Array]):
            resampler = self.resampler
            if reference is not None:
                resampler = self._conditional_resampler(reference, carry.particles, xs[0], args)
            return smc_step(carry, xs, propagate=propagate, resampler=resampler)

        xs = (jnp.arange(num_steps, dtype=jnp.int32), jax.random.split(scan_key, num_steps))
        early_exit = not self.ancestor_sampling and _done_flags(carry.particles) is not None
        if early_exit:
            carry, info, exit_step = _steps_until_done(body, self._settler(reference, args), carry, xs)
        else:
            carry, info = jax.lax.scan(body, carry, xs)
        slots, user = info.record
        final = particles_of(carry.particles)
        chosen = resampling.multinomial(pick_key, carry.log_weights, 1)[0]

        def back(index: Array, t: Array) -> tuple[Array, Array]:
            return info.ancestors[t][index], index

        origin, path = jax.lax.scan(back, chosen, jnp.arange(num_steps), reverse=True)
        steps = jax.tree.map(lambda x: x[jnp.arange(num_steps), path], slots)
        if early_exit:  # the steps not run left no states: a done trajectory's state is its final one
            settled = jnp.arange(num_steps) >= exit_step
            steps = steps._replace(state=jax.tree.map(
                lambda x, last: jnp.where(settled.reshape(-1, *[1] * (x.ndim - 1)), last[None], x),
                steps.state, _take(final, chosen),
            ))
        pool = None if pool is None else carry.particles.pool
        return Reference(_take(init, origin), steps, pool), carry.log_evidence, user

    def _settler(self, reference: Reference | None, args: tuple):
        """The step once every particle (the reference's included) is done: its increments, likelihoods
        and site values are 0 and its state the same, so it only resamples, on an index array (see
        ``inference.smc``). Not for ancestor sampling, whose resampler replays the particles' states."""

        def settle(state: SMCState, xs: tuple[Array, Array], record: Any) -> tuple[SMCState, Any]:
            def frozen(keys: Array, origin: Array, t: Array) -> tuple[Array, Array, Any]:
                return origin, jnp.zeros(origin.shape, state.log_weights.dtype), record

            resampler = self.resampler
            if reference is not None:
                resampler = self._conditional_resampler(reference, None, xs[0], args)
            return smc_step(state, xs, propagate=frozen, resampler=resampler)

        return settle

    def check_replay(self, reference: Reference, args: tuple) -> None:
        """Raise ``ValueError`` if replaying the reference's site values does not rebuild its
        states and increments (ancestor sampling's requirement); skipped under tracing."""
        if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(reference)):
            return
        previous = jax.tree.map(
            lambda i, s: jnp.concatenate([i[None], s[:-1]]), reference.init.state, reference.steps.state
        )
        steps = jnp.arange(self.program.num_steps, dtype=jnp.int32)
        keys = jax.random.split(jax.random.PRNGKey(0), self.program.num_steps)
        replayed, _ = jax.vmap(lambda k, s, t, x: self.replay(k, s, t, x, args))(
            keys, previous, steps, reference.steps.sites
        )
        pairs = zip(
            jax.tree.leaves((replayed.state, replayed.log_weight)),
            jax.tree.leaves((reference.steps.state, reference.steps.log_weight)),
            strict=True,
        )
        if not all(np.allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5) for a, b in pairs):
            raise ValueError(
                "ancestor sampling needs a program whose step is rebuilt by substituting its sample-site "
                "values (a Markov state-space model); replaying this program's reference gave other states "
                "or weights (an LM step needs teacher forcing for that). Use ancestor_sampling=False."
            )


class _ParticleKernel(MCMCKernel):
    """Init/sample for one chain, vmapped when NumPyro hands a batch of keys (vectorized chains)."""

    sample_field = "sample"
    # The kernels sample a StateSpaceProgram, not a NumPyro model; ArviZ's `from_numpyro` reads
    # `sampler.model` and, with None, exports the posterior and sample stats without re-tracing.
    model = None

    def init(self, rng_key, num_warmup, init_params, model_args, model_kwargs):
        if model_kwargs:
            raise ValueError(f"particle MCMC kernels take program arguments positionally, got {sorted(model_kwargs)}")
        args = tuple(model_args)
        init = jax.jit(self._init) if is_prng_key(rng_key) else jax.jit(jax.vmap(self._init, (0, 0, None)))
        state = init(rng_key, init_params, args)
        self._check(state if is_prng_key(rng_key) else _take(state, 0), args)
        return state

    def sample(self, state, model_args, model_kwargs):
        args = tuple(model_args)
        if is_prng_key(state.rng_key):
            return self._sample(state, args)
        return jax.vmap(lambda s: self._sample(s, args))(state)

    def _check(self, state, args: tuple) -> None:
        """Host-side validation of a chain's first state (nothing by default)."""

    @abc.abstractmethod
    def _init(self, rng_key: Array, init_params: Any, args: tuple):
        """One chain's initial state (pure, jittable)."""

    @abc.abstractmethod
    def _sample(self, state, args: tuple):
        """One chain's next state (pure, jittable)."""


class PGState(NamedTuple):
    """Particle Gibbs state: the current reference and the key."""

    reference: Reference
    rng_key: Array

    @property
    def sample(self) -> dict:
        return self.reference.sample


class ParticleGibbs(_ParticleKernel):
    """Particle Gibbs (optionally with ancestor sampling) for a ``StateSpaceProgram``; see the module.

    ``numpyro.infer.MCMC(ParticleGibbs(program, 8), num_warmup=100, num_samples=500).run(key, *args)``;
    ``get_samples()`` holds the latent site values of each iteration's reference. The first
    reference comes from an unconditional SMC run (``init_params``, if given, is a ``Reference``).
    """

    def __init__(self, program: StateSpaceProgram, num_particles: int, ancestor_sampling: bool = False):
        self.sweep = Sweep(program, num_particles, ancestor_sampling)

    def _init(self, rng_key: Array, init_params: Reference | None, args: tuple) -> PGState:
        rng_key, init_key = jax.random.split(rng_key)
        reference = init_params if init_params is not None else self.sweep.run(init_key, None, *args)[0]
        return PGState(reference, rng_key)

    def _check(self, state: PGState, args: tuple) -> None:
        if self.sweep.ancestor_sampling:
            self.sweep.check_replay(state.reference, args)

    def _sample(self, state: PGState, args: tuple) -> PGState:
        rng_key, key = jax.random.split(state.rng_key)
        reference, _, _ = self.sweep.run(key, state.reference, *args)
        return PGState(reference, rng_key)

    def run_chain(self, rng_key: Array, num_iterations: int, *args) -> ChainResult:
        """A pure, vmappable chain: one unconditional sweep then ``num_iterations - 1``
        conditional ones; the final state of each iteration's reference, uniformly weighted."""
        init_key, key = jax.random.split(rng_key)
        final = lambda reference: jax.tree.map(lambda x: x[-1], reference.steps.state)  # (not its pool)
        first, _, first_user = self.sweep.run(init_key, None, *args)

        def iterate(reference: Reference, k: Array):
            reference, _, user = self.sweep.run(k, reference, *args)
            return reference, (final(reference), user)

        last, later = jax.lax.scan(iterate, first, jax.random.split(key, num_iterations - 1))
        finals, users = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), (final(first), first_user), later)
        return ChainResult(finals, jnp.full(num_iterations, -jnp.log(num_iterations)), users, last.pool)


class IPGState(NamedTuple):
    """Interacting particle Gibbs state: the P references stacked [P, ...], the number of slots
    that moved to an unconditional sweep in the last iteration, and the key."""

    references: Reference
    switches: Array
    rng_key: Array

    @property
    def sample(self) -> dict:
        return self.references.sample


class InteractingParticleGibbs(_ParticleKernel):
    """iPMCMC (Rainforth et al. 2016): P references, each with its own conditional sweep, among M
    parallel sweeps that trade references by their evidence; see the module.

    ``numpyro.infer.MCMC(InteractingParticleGibbs(program, 8, num_references=2, num_sweeps=4), ...)``;
    ``get_samples()`` has a leading axis P per site after the draw axis.
    """

    def __init__(
        self,
        program: StateSpaceProgram,
        num_particles: int,
        num_references: int = 2,
        num_sweeps: int = 4,
        ancestor_sampling: bool = False,
    ):
        if not 1 <= num_references <= num_sweeps:
            raise ValueError(f"need 1 <= num_references <= num_sweeps, got {num_references} and {num_sweeps}")
        self.sweep = Sweep(program, num_particles, ancestor_sampling)
        self.num_references = num_references
        self.num_sweeps = num_sweeps

    def _init(self, rng_key: Array, init_params: Reference | None, args: tuple) -> IPGState:
        rng_key, init_key = jax.random.split(rng_key)
        if init_params is None:
            keys = jax.random.split(init_key, self.num_references)
            init_params = jax.vmap(lambda k: self.sweep.run(k, None, *args)[0])(keys)
        return IPGState(init_params, jnp.zeros((), jnp.int32), rng_key)

    def _check(self, state: IPGState, args: tuple) -> None:
        if self.sweep.ancestor_sampling:
            self.sweep.check_replay(_take(state.references, 0), args)

    def _sample(self, state: IPGState, args: tuple) -> IPGState:
        p, m = self.num_references, self.num_sweeps
        rng_key, conditional_key, free_key, pick_key = jax.random.split(state.rng_key, 4)
        held, held_z, _ = jax.vmap(lambda k, r: self.sweep.run(k, r, *args))(
            jax.random.split(conditional_key, p), state.references
        )
        drawn, log_z = held, held_z
        if m > p:
            free, free_z, _ = jax.vmap(lambda k: self.sweep.run(k, None, *args))(jax.random.split(free_key, m - p))
            drawn = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), held, free)
            log_z = jnp.concatenate([held_z, free_z])
        chosen = jnp.arange(p)  # sweep followed by each reference slot; sweeps 0..P-1 start held
        for j, key in enumerate(jax.random.split(pick_key, p)):
            taken_by_others = jnp.zeros(m, bool).at[chosen].set(True).at[chosen[j]].set(False)
            chosen = chosen.at[j].set(jax.random.categorical(key, jnp.where(taken_by_others, -jnp.inf, log_z)))
        references = jax.tree.map(lambda x: x[chosen], drawn)
        return IPGState(references, jnp.sum(chosen >= p).astype(jnp.int32), rng_key)


class PIMHState(NamedTuple):
    """PIMH state: the current trajectory, its SMC log-evidence, the last acceptance probability."""

    reference: Reference
    log_evidence: Array
    accept_prob: Array
    rng_key: Array

    @property
    def sample(self) -> dict:
        return self.reference.sample


class PIMH(_ParticleKernel):
    """Particle independent Metropolis-Hastings: fresh adaptive SMC each iteration, accepted with
    probability min(1, Z_new / Z_current)."""

    def __init__(
        self,
        program: StateSpaceProgram,
        num_particles: int,
        resampling: str = "systematic",
        ess_threshold: float = 0.5,
    ):
        self.sweep = Sweep(program, num_particles, resampler=adaptive_resampler(resampling, ess_threshold))

    def _init(self, rng_key: Array, init_params: Any, args: tuple) -> PIMHState:
        rng_key, key = jax.random.split(rng_key)
        reference, log_z, _ = self.sweep.run(key, None, *args)
        return PIMHState(reference, log_z, jnp.ones(()), rng_key)

    def _sample(self, state: PIMHState, args: tuple) -> PIMHState:
        rng_key, run_key, accept_key = jax.random.split(state.rng_key, 3)
        reference, log_z, _ = self.sweep.run(run_key, None, *args)
        accept_prob = jnp.exp(jnp.minimum(log_z - state.log_evidence, 0.0))
        accept = jax.random.uniform(accept_key) < accept_prob
        chosen = jax.tree.map(
            lambda new, old: jnp.where(accept, new, old), (reference, log_z), (state.reference, state.log_evidence)
        )
        return PIMHState(*chosen, accept_prob, rng_key)


class PTState(NamedTuple):
    """Parallel tempering state: references stacked over chains [C, ...] (chain 0 is beta = 1),
    the cold chain's latent site values, and the swap acceptance probabilities of the last
    iteration [C - 1]."""

    references: Reference
    sample: dict
    swap_prob: Array
    rng_key: Array


class ParallelTemperingPG(_ParticleKernel):
    """Particle Gibbs on tempered targets p(x) L(x)^beta with reference swaps (Puri et al. 2025).

    ``program_factory(beta)`` must scale every observed/factor term by beta and nothing else
    (``ppl.reasoning.observe_prm``'s ``beta`` in its bernoulli/twist forms, or
    ``numpyro.handlers.scale`` around the likelihood only). ``temperatures`` start at 1 (the cold
    chain, whose samples are reported) and lie in (0, 1]. Each iteration runs one PG sweep per
    chain, then tries swaps of chains (0, 1), (1, 2), ... in turn.
    """

    def __init__(self, program_factory, temperatures, num_particles: int, ancestor_sampling: bool = False):
        betas = [float(b) for b in temperatures]
        if not betas or betas[0] != 1.0 or any(not 0.0 < b <= 1.0 for b in betas):
            raise ValueError(f"temperatures must start at 1.0 and lie in (0, 1], got {betas}")
        self.betas = betas
        self.sweeps = [Sweep(program_factory(b), num_particles, ancestor_sampling) for b in betas]

    def _init(self, rng_key: Array, init_params: Any, args: tuple) -> PTState:
        rng_key, *keys = jax.random.split(rng_key, len(self.sweeps) + 1)
        refs = [sweep.run(k, None, *args)[0] for sweep, k in zip(self.sweeps, keys, strict=True)]
        stacked = jax.tree.map(lambda *x: jnp.stack(x), *refs)
        return PTState(stacked, refs[0].sample, jnp.zeros(len(self.betas) - 1), rng_key)

    def _check(self, state: PTState, args: tuple) -> None:
        for c, sweep in enumerate(self.sweeps):
            if sweep.ancestor_sampling:
                sweep.check_replay(_take(state.references, c), args)

    def _sample(self, state: PTState, args: tuple) -> PTState:
        rng_key, swap_key, *keys = jax.random.split(state.rng_key, len(self.sweeps) + 2)
        refs = [
            sweep.run(k, _take(state.references, c), *args)[0]
            for c, (sweep, k) in enumerate(zip(self.sweeps, keys, strict=True))
        ]
        probs = []
        for c, u in enumerate(jax.random.uniform(swap_key, (len(refs) - 1,))):
            hot, cold = self.betas[c + 1], self.betas[c]
            log_lik_cold = refs[c].log_likelihood / cold
            log_lik_hot = refs[c + 1].log_likelihood / hot
            prob = jnp.exp(jnp.minimum((cold - hot) * (log_lik_hot - log_lik_cold), 0.0))
            swapped = (refs[c + 1].retemper(cold / hot), refs[c].retemper(hot / cold))
            refs[c], refs[c + 1] = jax.tree.map(
                functools.partial(jnp.where, u < prob), swapped, (refs[c], refs[c + 1])
            )
            probs.append(prob)
        stacked = jax.tree.map(lambda *x: jnp.stack(x), *refs)
        return PTState(stacked, refs[0].sample, jnp.stack(probs) if probs else jnp.zeros(0), rng_key)
