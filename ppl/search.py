"""Inference-time search methods, all one reasoning program run by the kernels of `inference`.

Every method samples steps with the same jitted code (`ppl.reasoning`) and
differs only in how particles are selected between steps and how the final
answer is picked (`inference.answers`):

| method      | between steps                               | final answer (rule, PRM aggregation) |
|-------------|---------------------------------------------|--------------------------------------|
| `greedy`    | one particle, temperature 0                 | its answer                           |
| `bon`       | N independent samples                       | best trace by final PRM score        |
| `wbon`      | N independent samples                       | answer with the largest summed final score |
| `majority`  | N independent samples                       | most frequent answer                 |
| `wmajority` | N independent samples                       | answer with the largest summed product of step scores |
| `beam`      | keep the N/4 best by PRM, expand each 4x    | best trace by final PRM score        |
| `pf`        | particle filter: PRM as likelihood, resampling | answer with the largest SMC posterior mass |
| `epf`       | entropic PF: tempered resampling early (schedule, look-ahead optional) | as `pf`       |
| `pg`        | particle Gibbs: K sweeps of P particles, K * P <= N | most frequent answer among the K draws |

Budget is N, the number of particles (samples, beams); `pg` splits it as
P = min(N, max(2, 2^floor(floor(log2 N) / 2))) particles per sweep and K = N // P sweeps
(16 -> 4 x 4, 64 -> 8 x 8), the first sweep unconditional. `epf` with look-ahead drafts one
extra step per particle per step, which its token count does not include.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from inference.entropic import Entropic
from inference.pmcmc import ParticleGibbs
from inference.sharding import Islands
from inference.smc import SMC, SMCResult
from models.sampling import SamplingParams, StopTable
from ppl import reasoning
from ppl.program import StateSpaceProgram

METHODS = ("greedy", "bon", "wbon", "majority", "wmajority", "beam", "pf", "epf", "pg")
CACHES = ("contiguous", "paged")
# method -> (answer rule, PRM aggregation of the trace's step rewards)
SELECTION = {
    "greedy": ("best", "last"),
    "bon": ("best", "last"),
    "wbon": ("weighted", "last"),
    "majority": ("majority", "last"),
    "wmajority": ("weighted", "prod"),
    "beam": ("best", "last"),
    "pf": ("posterior", "last"),
    "epf": ("posterior", "last"),
    "pg": ("majority", "last"),
}
BEAM_EXPANSION = 4


@dataclasses.dataclass(frozen=True)
class SearchSpec:
    """A method at a budget, and the PRM likelihood the particle filter uses."""

    method: str
    num_particles: int
    form: str = "bernoulli"
    beta: float = 1.0
    resampling: str = "systematic"
    ess_threshold: float = 0.5
    schedule: str = "ess"  # epf only: the temperature schedule of `inference.EntropicPF`
    lookahead: bool = False  # epf only
    mesh: Mesh | None = None  # shard the particles over this mesh (its "particles" axis; not pg)
    islands: int = 0  # pf only: island resampling with this many islands (`inference.sharding`)
    cache: str = "contiguous"  # "paged": KV caches in pages shared by the particles (`reasoning.Paging`)
    cache_pages: int | None = None  # paged: pages per pool (None: room for every particle's whole trace)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.num_particles < 1:
            raise ValueError(f"the budget must be at least 1 particle, got {self.num_particles}")
        if self.mesh is not None and self.method == "pg":
            raise ValueError("pg runs its sweeps on one device; drop the mesh or choose another method")
        if self.islands and self.method != "pf":
            raise ValueError(f"islands apply to pf only, not {self.method!r}")
        if self.cache not in CACHES:
            raise ValueError(f"unknown cache {self.cache!r}; choose one of {', '.join(CACHES)}")
        if self.cache_pages is not None and (self.cache != "paged" or self.cache_pages < 2):
            raise ValueError(f"cache_pages is for paged caches, at least 2 pages; got {self.cache_pages}")

    @property
    def particles(self) -> int:
        return 1 if self.method == "greedy" else self.num_particles

    @property
    def per_sweep(self) -> int:
        """pg's particles per sweep (see the module)."""
        n = self.particles
        return min(n, max(2, 1 << ((n.bit_length() - 1) // 2)))

    @property
    def held_traces(self) -> int:
        """Traces a run holds at once, each in KV caches of its own at worst: pg's sweep and its reference."""
        return self.per_sweep + 1 if self.method == "pg" else self.particles

    @property
    def is_filter(self) -> bool:
        """Whether the method is a particle filter (pf, epf), resampling when the weights' ESS falls."""
        return self.method in ("pf", "epf")

    def sampling(self, params: SamplingParams) -> SamplingParams:
        return dataclasses.replace(params, temperature=0.0) if self.method == "greedy" else params

    def engine(self, program: StateSpaceProgram) -> Callable[..., SearchResult]:
        """The pure function ``run(rng_key, *args) -> SearchResult`` of this method on ``program``."""
        n = self.particles
        if self.method == "pg":
            return functools.partial(_chain, ParticleGibbs(program, self.per_sweep), max(1, n // self.per_sweep))
        if self.method == "epf":
            strategy = Entropic(self.schedule, lookahead=self.lookahead, scheme=self.resampling)
            smc = SMC(program, n, strategy, self.ess_threshold, True, self.mesh)
        elif self.method == "pf":
            strategy = Islands(self.islands, scheme=self.resampling) if self.islands else self.resampling
            smc = SMC(program, n, strategy, self.ess_threshold, True, self.mesh)
        elif self.method == "beam":
            smc = SMC(program, n, top_k_scheme(BEAM_EXPANSION), 1.0, True, self.mesh)
        else:
            smc = SMC(program, n, "systematic", 0.0, True, self.mesh)  # independent samples
        return lambda rng_key, *args: SearchResult.of_smc(smc.run_unchecked(rng_key, *args))


class SearchResult(NamedTuple):
    """What every method's run returns (a pytree; per-problem rows when vmapped).

    ``particles`` are the final traces (leading axis N), ``log_weights`` their normalised weights,
    ``deterministic`` the programs' deterministic sites (``"step.length"``: tokens per step),
    ``weight_status`` per step (``inference.WeightStatus`` codes). ``ancestors`` [T, N] and
    ``resampled`` [T] are the filter's genealogy; a particle-MCMC chain has none (T = 0).
    ``pool``: the run's ``reasoning.Pools`` when its caches are paged (None otherwise).
    """

    particles: Any
    log_weights: jax.Array
    deterministic: dict
    weight_status: jax.Array
    ancestors: jax.Array
    resampled: jax.Array
    pool: Any = None

    @classmethod
    def of_smc(cls, result: SMCResult) -> SearchResult:
        return cls(
            result.particles, result.log_weights, result.deterministic, result.weight_status,
            result.ancestors, result.resampled, result.pool,
        )


def _chain(kernel: ParticleGibbs, num_iterations: int, rng_key: jax.Array, *args) -> SearchResult:
    """A particle-Gibbs chain of ``num_iterations`` sweeps, its references as the particle set."""
    chain = kernel.run_chain(rng_key, num_iterations, *args)
    k = chain.log_weights.shape[0]
    return SearchResult(
        chain.particles, chain.log_weights, chain.deterministic, jnp.zeros((0,), jnp.int32),
        jnp.zeros((0, k), jnp.int32), jnp.zeros((0,), bool), chain.pool,
    )


def top_k_scheme(expansion: int):
    """Beam 'resampling': the N/expansion highest-weight particles, each copied `expansion` times."""

    def scheme(key: jax.Array, log_weights: jax.Array, num_samples: int) -> jax.Array:
        keep = max(num_samples // expansion, 1)
        best = jnp.argsort(-log_weights)[:keep]
        return jnp.tile(best, math.ceil(num_samples / keep))[:num_samples].astype(jnp.int32)

    return scheme


def reasoning_program(
    params: SamplingParams,
    stops: StopTable,
    max_steps: int,
    form: str = "bernoulli",
    beta: float = 1.0,
    is_final: Callable[[jax.Array], jax.Array] | None = None,
    share_prompt: bool = True,
    max_trace_tokens: int | None = None,
    hidden_at_end: jax.Array | None = None,
    paging: reasoning.Paging | None = None,
) -> StateSpaceProgram:
    """prompt -> steps -> answer: the LM writes a step, the PRM judges it, until done.

    Program arguments: `(lm_state, judge, lm, prm)` — the prefilled prompt, the
    PRM's initial state (its prompt cache, or a verifier's task context), and the
    two models. With `share_prompt` (default) the prompt's caches are shared by all
    particles and stored once; otherwise each particle copies them (the caches
    passed in must then have room for the steps).
    `is_final(step_tokens [1, T]) -> [1] bool` marks a final step; a trace also ends at
    the step where it reaches `max_trace_tokens`, cut there (the caches hold that budget, not
    `max_steps` steps at their cap). `hidden_at_end`: see `reasoning.observe_prm`.
    `paging`: page the caches (`reasoning.Paging`, for these `max_steps`, step cap and budget; the
    prompt is then shared whatever `share_prompt` says).
    """
    if paging is not None and (paging.max_steps, paging.max_tokens, paging.budget) != (
            max_steps, params.max_tokens, max_trace_tokens):
        raise ValueError(f"paging is for {paging.max_steps} steps of {paging.max_tokens} tokens and a budget of "
                         f"{paging.budget}, the program has {max_steps}, {params.max_tokens} and {max_trace_tokens}")

    def init(lm_state, judge, lm, prm, pool=None):
        if pool is not None:
            return paging.empty_trace(pool, lm_state, judge)
        return reasoning.start(lm_state, judge, max_steps, params.max_tokens, share_prompt, max_trace_tokens)

    def step(trace, t, lm_state, judge, lm, prm, pool=None):
        prompts = (lm_state, judge) if share_prompt or pool is not None else (None, None)
        trace = reasoning.write_step("step", lm, trace, params, stops, prompt=prompts[0], budget=max_trace_tokens,
                                     pool=pool)
        if is_final is not None:
            trace = trace._replace(done=trace.done | is_final(trace.last_step[0]))
        return reasoning.observe_prm(
            "prm", prm, trace, form=form, beta=beta, prompt=prompts[1], hidden_at_end=hidden_at_end, pool=pool
        )

    # the primitives leave a done trace be
    return StateSpaceProgram(init, step, max_steps, keeps_done=True, pool=paging)
