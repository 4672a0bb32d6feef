"""State-space programs: NumPyro code for ONE particle, run step by step under effect handlers.

A program is ``init(*args) -> state`` and ``step(state, t, *args) -> state``. Running one step
seeds, traces and (optionally) substitutes values from a proposal program, then reads the
incremental importance weight off the trace (docs/programs.md, "The weight rule"):

    increment = sum over latent sample sites of  log p(v) - log q(v)
              + sum of observed-site and factor log-densities.

``q`` is the proposal program's log-density at the site when a proposal is given; otherwise the
program's own sampler, so the term is 0, unless the site declares the log-density of the sampler
that really produced its value in ``infer={"proposal_log_prob": logq}`` (e.g. an LM sampled with
temperature, recorded as ``dist.Delta(tokens, log_density=logp)``).
"""

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from numpyro import handlers

Array = jax.Array
State = Any

__all__ = ["Pool", "StateSpaceProgram", "StepOutput", "Swarm", "done_flag", "log_weight", "particles_of",
           "run_traced", "site_log_prob"]


class StepOutput(NamedTuple):
    """One particle's step: new state, incremental log-weight, values of deterministic sites."""

    state: State
    log_weight: Array
    deterministic: dict[str, Array]


def site_log_prob(site: dict) -> Array:
    """Summed, scaled log-density of a traced sample site at its value (as NumPyro computes it)."""
    if site["intermediates"]:
        lp = site["fn"].log_prob(site["value"], site["intermediates"])
    else:
        lp = site["fn"].log_prob(site["value"])
    if site["scale"] is not None:
        lp = site["scale"] * lp
    return jnp.sum(lp)


def _sampler_log_prob(site: dict) -> Array:
    """Log-density of whatever produced a latent site's value: declared, else the site's own."""
    declared = (site.get("infer") or {}).get("proposal_log_prob")
    return site_log_prob(site) if declared is None else jnp.sum(declared)


def log_weight(model_trace: dict, proposal_trace: dict | None = None) -> Array:
    """Incremental log-weight of one step from the model's trace and the proposal's (if any).

    Proposal sites the model lacks are not counted: a proposal with auxiliary latents would
    need their marginal, which this rule does not compute.
    """
    proposal_trace = proposal_trace or {}
    total = jnp.zeros((), jnp.float32)
    for name, site in model_trace.items():
        if site["type"] != "sample":
            continue
        if site["is_observed"]:
            total = total + site_log_prob(site)
            continue
        q_site = proposal_trace.get(name)
        if q_site is not None and q_site["type"] == "sample" and not q_site["is_observed"]:
            total = total + site_log_prob(site) - _sampler_log_prob(q_site)
        elif (site.get("infer") or {}).get("proposal_log_prob") is not None:
            total = total + site_log_prob(site) - _sampler_log_prob(site)
    return total


def _latent_values(tr: dict) -> dict[str, Array]:
    return {
        name: site["value"]
        for name, site in tr.items()
        if site["type"] == "sample" and not site["is_observed"]
    }


def run_traced(
    fn: Callable, proposal_fn: Callable | None, rng_key: Array, *args
) -> tuple[Any, Array, dict[str, Array]]:
    """Run ``fn(*args)`` once under seed/substitute/trace/block; return (value, log_weight, dets).

    With ``proposal_fn``, it runs first on its own key and its latent values are substituted
    into ``fn``. ``block`` keeps the sites from leaking to any handler around the caller
    (e.g. an outer NumPyro ``MCMC`` using a particle kernel).
    """
    model_key, proposal_key = jax.random.split(rng_key)
    proposal_trace = None
    with handlers.block():
        if proposal_fn is not None:
            proposal_trace = handlers.trace(handlers.seed(proposal_fn, proposal_key)).get_trace(*args)
            fn = handlers.substitute(fn, data=_latent_values(proposal_trace))
        tracer = handlers.trace(handlers.seed(fn, model_key))
        value = tracer(*args)
    model_trace = tracer.trace
    dets = {n: s["value"] for n, s in model_trace.items() if s["type"] == "deterministic"}
    return value, log_weight(model_trace, proposal_trace), dets


def done_flag(state: State) -> Array | None:
    """The particle's ``done`` flag: ``state["done"]`` or ``state.done``; None if it has none.

    A flag with a batch axis of 1 (as in ``ppl.reasoning.Trace``) is reduced to a scalar.
    """
    flag = state.get("done") if isinstance(state, Mapping) else getattr(state, "done", None)
    return None if flag is None else jnp.all(jnp.asarray(flag, bool))


class Pool(Protocol):
    """State shared by every particle of a run, not resampled with them (e.g. pages of KV cache).

    ``init(num_particles, *args)`` builds it before the particles; ``init`` and ``step`` get it as
    the keyword ``pool=``; after each step ``commit(pool, particles, keep)`` (the whole batch, leading
    axis N) moves what the step left in the particles into it, keeping whatever the committed particles
    ``keep`` (leading axis; None: none) hold in it (particle Gibbs' reference, no particle of the sweep);
    ``check(pool)`` raises, host-side, when the run's results cannot be trusted (e.g. the pool ran out of room).
    """

    def init(self, num_particles: int, *args) -> Any: ...

    def commit(self, pool: Any, particles: Any, keep: Any = None) -> tuple[Any, Any]: ...

    def check(self, pool: Any) -> None: ...


class Swarm(NamedTuple):
    """The particles (leading axis N) of a program with a ``Pool``, and the pool: resampling gathers
    ``particles`` only (``inference.resampling.gather``)."""

    particles: Any
    pool: Any


def particles_of(swarm: Any) -> Any:
    """The particles, whether or not they travel with a pool."""
    return swarm.particles if isinstance(swarm, Swarm) else swarm


class StateSpaceProgram:
    """A state-space model for one particle: ``init(*args)`` then ``num_steps`` of ``step``.

    ``proposal`` (optional) is an object with ``init``/``step`` attributes or a pair
    ``(init, step)`` with the model's signatures (either may be None: the model proposes there);
    its latent sample values replace the model's at sites of the same name, as in Pyro's
    SMCFilter guide.

    A particle whose state is ``done`` keeps its state and gets increment 0: ``propagate`` selects
    the old state over the step's new one, leaf by leaf. ``keeps_done=True`` declares that ``step``
    itself leaves a done particle's state as it was, bit for bit (as ``ppl.reasoning``'s primitives
    do), so that select, which holds a second copy of every KV cache, is skipped.

    ``pool`` (a ``Pool``): state shared by the particles; the batch functions then take and return a
    ``Swarm``. A step may leave particles with state of another shape for the pool's ``commit`` to
    take back, so such a program must keep done particles itself (``keeps_done=True``).
    """

    def __init__(
        self,
        init: Callable[..., State],
        step: Callable[..., State],
        num_steps: int,
        proposal: Any = None,
        keeps_done: bool = False,
        pool: Pool | None = None,
    ):
        if pool is not None and not keeps_done:
            raise ValueError("a program with a pool must leave done particles as they are (keeps_done=True)")
        self.init = init
        self.step = step
        self.num_steps = int(num_steps)
        self.keeps_done = keeps_done
        self.pool = pool
        if proposal is None:
            proposal = (None, None)
        elif not isinstance(proposal, tuple | list):
            proposal = (proposal.init, proposal.step)
        self.proposal_init, self.proposal_step = proposal

    def _with_pool(self, fn: Callable | None, pool: Any) -> Callable | None:
        return fn if fn is None or self.pool is None else functools.partial(fn, pool=pool)

    def initialize_traced(self, rng_key: Array, *args, pool: Any = None) -> StepOutput:
        """One particle's initial state, initial log-weight (init's factors, p/q terms) and deterministic sites."""
        init, proposal = self._with_pool(self.init, pool), self._with_pool(self.proposal_init, pool)
        return StepOutput(*run_traced(init, proposal, rng_key, *args))

    def initialize(self, rng_key: Array, *args, pool: Any = None) -> tuple[State, Array]:
        """One particle's initial state and its initial log-weight."""
        out = self.initialize_traced(rng_key, *args, pool=pool)
        return out.state, out.log_weight

    def propagate_traced(self, rng_key: Array, state: State, t: Array, *args, pool: Any = None) -> StepOutput:
        """One particle's step ``t``; a done particle keeps its state and gets increment 0."""
        step, proposal = self._with_pool(self.step, pool), self._with_pool(self.proposal_step, pool)
        new_state, logw, dets = run_traced(step, proposal, rng_key, state, t, *args)
        done = done_flag(state)
        if done is None:
            return StepOutput(new_state, logw, dets)
        if not self.keeps_done:
            new_state = jax.tree.map(lambda old, new: jnp.where(done, old, new), state, new_state)
        return StepOutput(new_state, jnp.where(done, 0.0, logw), dets)

    def propagate(self, rng_key: Array, state: State, t: Array, *args) -> tuple[State, Array]:
        """One particle's step ``t`` -> (new_state, log_weight_increment)."""
        out = self.propagate_traced(rng_key, state, t, *args)
        return out.state, out.log_weight

    def initialize_batch(self, rng_keys: Array, *args) -> tuple[State, Array]:
        """``initialize`` vmapped over keys [N]; ``args`` are shared by all particles. With a pool, the
        particles come as a ``Swarm`` with the pool they were started from."""
        if self.pool is None:
            return jax.vmap(lambda k: self.initialize(k, *args))(rng_keys)
        pool = self.pool.init(rng_keys.shape[0], *args)
        states, logw = jax.vmap(lambda k: self.initialize(k, *args, pool=pool))(rng_keys)
        return Swarm(states, pool), logw

    def propagate_batch(self, rng_keys: Array, states: State, t: Array, *args, keep: Any = None) -> StepOutput:
        """``propagate_traced`` vmapped over keys [N] and states (leading axis N); with a pool, over a
        ``Swarm``'s particles, then the step's writes committed to its pool (``keep``: see ``Pool``)."""
        if self.pool is None:
            return jax.vmap(lambda k, s: self.propagate_traced(k, s, t, *args))(rng_keys, states)
        pool = states.pool
        out = jax.vmap(lambda k, s: self.propagate_traced(k, s, t, *args, pool=pool))(rng_keys, states.particles)
        pool, particles = self.pool.commit(pool, out.state, keep)
        return out._replace(state=Swarm(particles, pool))
