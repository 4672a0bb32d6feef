"""LM and PRM primitives for reasoning programs: one particle's trace, step by step.

A reasoning trace is the state of a `StateSpaceProgram`. `write_step` is a
NumPyro sample site whose value is the next step written by a `models` LM
(the KV cache travels in the state, nothing is recomputed); `observe_prm`
is the PRM's verdict on it, as a likelihood in one of three named forms:

* `bernoulli`: observe o_t = 1 with P(o_t = 1) = r_t, tempered by `beta`
  (target ∝ p_LM · Π r_t^beta; Puri et al. 2025);
* `twist`: factor (r_t / r_{t-1})^beta, so the target is ∝ p_LM · r_T^beta
  (twisted SMC: intermediate targets use the PRM as a look-ahead value);
* `replace`: factor (r_t / (1 - r_t))^beta, so the target is
  ∝ p_LM · Π (r_t / (1 - r_t))^beta whatever the resampling schedule; run with
  `ess_threshold=1.0` and every resampling draws from softmax(beta · logit(r_t))
  with the previous weights discarded, its_hub's convention (kept for parity
  with published numbers).

Everything inside a particle keeps a leading batch axis of 1, so the same
`models` functions serve one particle, a vmapped swarm, or a plain batch.

The prompt is prefilled once, outside the particles. With
`start(..., share_prompt=True)` a particle's caches hold only its own steps and
every particle reads the prompt's keys and values from the one shared copy, which
`write_step` and `observe_prm` then take as `prompt=`:

    def init(lm_state, judge, lm, prm):
        return reasoning.start(lm_state, judge, max_steps, max_tokens, share_prompt=True)

    def step(trace, t, lm_state, judge, lm, prm):
        trace = reasoning.write_step("step", lm, trace, params, stops, prompt=lm_state)
        return reasoning.observe_prm("prm", prm, trace, form="bernoulli", prompt=judge)

With paged caches (`Paging`, the `ppl.program.Pool` of a program) every step lives in
pools of pages shared by the particles, and a trace holds page tables: a step is sampled
(and scored) into a small buffer that the pool's `commit` moves to fresh pages after the
step, so resampling copies tables, and children of one parent share its pages. The
prompt is shared as above (read once for all rows, not through every row's table), and
the primitives take the run's pools as `pool=` besides `prompt=`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from models import paging
from models.llama import KVCache
from models.paging import PagedContext, PagePool, PageTable
from models.sampling import (
    NO_TOKEN,
    STOP_CAP,
    STOP_EOS,
    STOP_STRING,
    LMState,
    SamplingParams,
    StopTable,
    prefill,
    sample_step,
)
from ppl.errors import PPLError

FORMS = ("bernoulli", "twist", "replace")


class Trace(NamedTuple):
    """One particle's partial reasoning trace (every array has a leading batch axis of 1)."""

    lm: LMState  # the proposal LM's cache and next-token logits
    judge: Any  # the PRM's own state: its KV cache, or a verifier's task context
    steps: jax.Array  # [1, max_steps, max_tokens] tokens of each written step, NO_TOKEN padded
    step_lengths: jax.Array  # [1, max_steps]
    num_steps: jax.Array  # [1] steps written so far
    rewards: jax.Array  # [1, max_steps] PRM reward of each step
    log_reward: jax.Array  # [1] log r of the latest step (twist's denominator)
    done: jax.Array  # [1] the trace has finished (EOS, final-answer marker, step cap, token budget)
    truncated: jax.Array  # [1, max_steps] the step was cut at its token cap (the step's, or the budget's rest)
    written: jax.Array  # [1] the latest `write_step` wrote a step (the trace was not done yet): the PRM judges it
    # () when the caches hold the steps only and the prompt is shared, None when they copy it:
    # a leafless marker, so it is static under jit/vmap and the pairing with `prompt=` is checkable.
    shared_prompt: tuple | None = None
    # Paged traces: the page tables of the LM's and a model PRM's tokens (`lm`/`judge` are then
    # empty between steps, and hold the step's buffer until the pool's commit).
    pages: Pages | None = None

    @property
    def last_step(self) -> tuple[jax.Array, jax.Array]:
        """Tokens [1, max_tokens] and mask of the latest step."""
        index = jnp.maximum(self.num_steps - 1, 0)
        tokens = jnp.take_along_axis(self.steps, index[:, None, None], axis=1)[:, 0]
        return tokens, tokens != NO_TOKEN


class Pages(NamedTuple):
    """A paged trace's page tables (leading batch axis of 1, like the trace's arrays)."""

    lm: PageTable
    judge: PageTable | None  # None for a judge that is not a model PRM


class Pools(NamedTuple):
    """A paged run's shared state: the LM's and a model PRM's page pools."""

    lm: PagePool
    judge: PagePool | None

    @property
    def exhausted(self) -> jax.Array:
        """Whether a commit ran out of pages (the run's results are then not to be read)."""
        return self.lm.exhausted if self.judge is None else self.lm.exhausted | self.judge.exhausted


class PoolExhausted(PPLError):
    """A paged run needed more pages than its pool holds: its results are lost, not wrong."""


@dataclasses.dataclass(frozen=True)
class Paging:
    """Paged KV caches for a reasoning program: its `ppl.program.Pool`.

    Every step starts on a fresh page, so a trace of `max_steps` steps and `budget` tokens (or every
    step at its `max_tokens` cap) needs at most `budget / page_size + max_steps` pages (the prompt is
    not paged: it is shared as `start(..., share_prompt=True)` shares it). `pages` sizes each pool (the
    LM's, and a model PRM's); the default, `None`, gives every particle room for a whole trace of its
    own, so the pool can never run out; a smaller pool holds only
    the distinct pages alive (descendants of one particle share its pages) and a run that outgrows it
    raises `PoolExhausted` (`check`), never returns a wrong result.
    """

    max_steps: int
    max_tokens: int
    budget: int | None = None
    page_size: int = 8
    pages: int | None = None

    def step_pages(self, extra_per_step: int) -> int:
        """Table entries a trace's steps may take (each step `max_tokens + extra_per_step` tokens at most)."""
        per_step = paging.pages_for(self.max_tokens + extra_per_step, self.page_size)
        cap = self.max_steps * per_step
        if self.budget is None:
            return cap
        return min(cap, paging.pages_for(self.budget + extra_per_step * self.max_steps, self.page_size)
                   + self.max_steps)

    def default_pages(self, num_particles: int) -> int:
        """Pages per pool that give `num_particles` room for whole traces of their own (the PRM's pool, which
        also holds step tags, takes the larger of the two counts)."""
        return 1 + num_particles * self.step_pages(1)

    def init(self, num_particles: int, lm_state: LMState, judge: Any, lm: Any, prm: Any) -> Pools:
        def pool(cache: KVCache, extra_per_step: int) -> PagePool:
            *_, kv_heads, _, head_dim = cache.v[0].shape  # values [.., K, S, D]
            pages = self.pages or 1 + num_particles * self.step_pages(extra_per_step)
            return PagePool.zeros(pages, self.page_size, len(cache.k), kv_heads, head_dim, cache.k[0].dtype)

        judge_pool = pool(judge, 1) if isinstance(judge, KVCache) else None  # a PRM adds its step tag
        return Pools(pool(lm_state.cache, 0), judge_pool)

    def empty_trace(self, pools: Pools, lm_state: LMState, judge: Any) -> Trace:
        """An empty paged trace after the shared prompt: empty page tables with room for the steps."""

        def table(extra_per_step: int) -> PageTable:
            batch = lm_state.next_logits.shape[0]
            return PageTable(jnp.zeros((batch, self.step_pages(extra_per_step)), jnp.int32),
                             jnp.zeros((batch,), jnp.int32))

        trace = start(LMState(lm_state.cache.empty(0), lm_state.next_logits),
                      judge.empty(0) if isinstance(judge, KVCache) else judge, self.max_steps, self.max_tokens)
        return trace._replace(shared_prompt=(), pages=Pages(table(0), None if pools.judge is None else table(1)))

    def commit(self, pools: Pools, traces: Trace, keep: Trace | None = None) -> tuple[Pools, Trace]:
        """Move every trace's step buffers (leading axis N, then the batch axis of 1) to fresh pages; the pages
        of the committed traces `keep` (leading axis, e.g. particle Gibbs' reference) stay taken."""

        def flat(tree):
            return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), tree)

        def commit_one(pool: PagePool, table: PageTable, buffer: KVCache, kept: PageTable | None
                       ) -> tuple[PagePool, PageTable, KVCache]:
            pool, new_table = paging.commit(pool, flat(table), flat(buffer), None if kept is None else kept.pages)
            new_table = jax.tree.map(lambda new, old: new.reshape(old.shape), new_table, table)
            empty = KVCache(tuple(k[..., :0] for k in buffer.k), tuple(v[..., :0, :] for v in buffer.v),
                            buffer.positions[..., :0], jnp.zeros_like(buffer.length))
            return pool, new_table, empty

        kept = Pages(None, None) if keep is None else keep.pages
        lm_pool, lm_table, lm_cache = commit_one(pools.lm, traces.pages.lm, traces.lm.cache, kept.lm)
        traces = traces._replace(lm=traces.lm._replace(cache=lm_cache))
        judge_pool, judge_table = pools.judge, traces.pages.judge
        if pools.judge is not None:
            judge_pool, judge_table, judge_cache = commit_one(pools.judge, judge_table, traces.judge, kept.judge)
            traces = traces._replace(judge=judge_cache)
        pools = pools._replace(lm=lm_pool, judge=judge_pool)
        return pools, traces._replace(pages=Pages(lm_table, judge_table))

    def check(self, pools: Pools) -> None:
        if np.any(np.asarray(pools.exhausted)):
            raise PoolExhausted(self.exhausted_message())

    def exhausted_message(self) -> str:
        size = "its default size" if self.pages is None else f"{self.pages} pages"
        return (f"the paged KV cache ran out of pages ({size}, {self.page_size} tokens each, per pool): give it "
                "more (pages=None sizes it for particles that share nothing) or use contiguous caches")


def start(
    lm_state: LMState,
    judge: Any,
    max_steps: int,
    max_tokens: int,
    share_prompt: bool = False,
    budget: int | None = None,
) -> Trace:
    """An empty trace after a prompt (prefilled once, outside the particles).

    By default the trace's caches are copies of the prompt's, with room left for
    the steps. With `share_prompt` they are empty caches sized for the steps alone,
    and every `write_step`/`observe_prm` must get the prompt's state as `prompt=`:
    `max_steps * (max_tokens + 1)` slots (each step and a PRM step tag) or, with a
    token `budget` for the whole trace (which `write_step` must then be given too),
    `budget` slots for the LM and `budget + max_steps` for a PRM.
    """
    batch = lm_state.next_logits.shape[0]
    if share_prompt:
        lm_room = max_steps * (max_tokens + 1) if budget is None else min(budget, max_steps * max_tokens)
        judge_room = max_steps * (max_tokens + 1) if budget is None else lm_room + max_steps
        lm_state = LMState(lm_state.cache.empty(lm_room), lm_state.next_logits)
        judge = judge.empty(judge_room) if isinstance(judge, KVCache) else judge
    return Trace(
        lm=lm_state,
        judge=judge,
        steps=jnp.full((batch, max_steps, max_tokens), NO_TOKEN, jnp.int32),
        step_lengths=jnp.zeros((batch, max_steps), jnp.int32),
        num_steps=jnp.zeros((batch,), jnp.int32),
        rewards=jnp.zeros((batch, max_steps), jnp.float32),
        log_reward=jnp.zeros((batch,), jnp.float32),
        done=jnp.zeros((batch,), bool),
        truncated=jnp.zeros((batch, max_steps), bool),
        written=jnp.zeros((batch,), bool),
        shared_prompt=() if share_prompt else None,
    )


def _context(trace: Trace, prompt: Any, pool: PagePool | None, table: PageTable | None, where: str) -> Any:
    """What a model reads before the trace's own cache (or buffer): the shared prompt, if any, then for a paged
    trace its earlier steps through its page table in `pool`."""
    _check_prompt(trace, prompt, where)
    if (trace.pages is None) != (pool is None):
        raise ValueError(f"{where}: the trace is {'not ' if trace.pages is None else ''}paged, so pass "
                         + ("no pool=" if trace.pages is None else "pool=<the run's Pools>"))
    return prompt if trace.pages is None else (prompt, PagedContext(pool, table.pages, table.count))


def _check_prompt(trace: Trace, prompt: Any, where: str) -> None:
    """A trace started with `share_prompt=True` needs the shared prompt, and only such a trace."""
    if (trace.shared_prompt is not None) != (prompt is not None):
        started = "with" if trace.shared_prompt is not None else "without"
        raise ValueError(
            f"{where}: the trace was started {started} share_prompt=True, so pass "
            + ("prompt=<the prefilled prompt state>" if trace.shared_prompt is not None else "no prompt=")
        )


def prefill_prompt(lm: Any, prm: Any, tokens: jax.Array, capacity: int) -> tuple[LMState, Any]:
    """Prefill a prompt [1, T] into the LM's and (for model PRMs) the PRM's caches."""
    lm_state = prefill(lm, tokens, None, capacity)
    judge = prm.start(tokens, None, capacity) if hasattr(prm, "start") else None
    return lm_state, judge


def write_step(
    name: str,
    lm: Any,
    trace: Trace,
    params: SamplingParams,
    stops: StopTable,
    final_stops: tuple[int, ...] = (),
    prompt: LMState | None = None,
    budget: int | None = None,
    pool: Pools | None = None,
) -> Trace:
    """Sample site `name`: the LM writes the next step of `trace`.

    The site's value is the step's tokens; its density is the model's log-prob
    and it declares the sampler's (temperature/top-k/top-p) log-prob as
    `proposal_log_prob`, so the SMC weight carries log p - log q. The trace is
    done after EOS, after stop string `i` for `i` in `final_stops`, or once it
    holds `budget` tokens: a step is cut where the budget runs out (and marked
    `truncated`, as is a step cut at `params.max_tokens`). `prompt`: the shared
    prompt state of a trace started with `share_prompt=True`; `pool`: the run's `Pools`
    for a paged trace (the step is written to a buffer that the pool's commit pages). A
    trace already done is left as it was, bit for bit.
    """
    where = f"write_step({name!r})"
    prefix = _context(trace, None if prompt is None else prompt.cache, pool and pool.lm,
                      trace.pages and trace.pages.lm, where)
    state = trace.lm if trace.pages is None else trace.lm._replace(cache=trace.lm.cache.empty(params.max_tokens))
    used = jnp.sum(trace.step_lengths, axis=1)
    result = sample_step(lm, numpyro.prng_key(), state, params, stops, active=~trace.done, prefix=prefix,
                         limit=None if budget is None else budget - used)
    log_p = jnp.sum(result.logp_model, axis=1)
    log_q = jnp.sum(result.logp_sample, axis=1)
    tokens = numpyro.sample(
        name, dist.Delta(result.tokens, log_density=log_p, event_dim=1), infer={"proposal_log_prob": log_q}
    )
    numpyro.deterministic(name + ".length", result.length)  # tokens generated, for budget accounting
    finished = result.stop == STOP_EOS
    for index in final_stops:
        finished |= result.stop == STOP_STRING + index
    live = ~trace.done
    slot = jnp.where(live, trace.num_steps, trace.steps.shape[1])  # a done trace's write is dropped
    rows = jnp.arange(tokens.shape[0])
    done = trace.done | finished | (trace.num_steps + 1 >= trace.steps.shape[1])
    if budget is not None:
        done |= used + result.length >= budget
    truncated = (result.stop == STOP_CAP) & (result.length > 0)
    return trace._replace(
        lm=result.state,  # rows not live keep their state (`sample_step`'s `active`)
        steps=trace.steps.at[rows, slot].set(tokens, mode="drop"),
        step_lengths=trace.step_lengths.at[rows, slot].set(result.length, mode="drop"),
        num_steps=trace.num_steps + live,
        done=done,
        truncated=trace.truncated.at[rows, slot].set(truncated, mode="drop"),
        written=live,
    )


def observe_prm(
    name: str,
    prm: Any,
    trace: Trace,
    form: str = "bernoulli",
    beta: float = 1.0,
    prompt: Any = None,
    hidden_at_end: jax.Array | None = None,
    pool: Pools | None = None,
) -> Trace:
    """The PRM's verdict on the latest step, as a likelihood of the given `form`.

    `prm.score_step(judge, tokens, mask) -> (reward, judge)` (a model PRM or a
    verifier). `beta` tempers the likelihood (for `replace` it divides the logit,
    i.e. it is 1/tau). `prompt`: the PRM's shared prompt cache of a trace started
    with `share_prompt=True` (a verifier's context is not a cache and is ignored).
    `hidden_at_end` [V] bool: tokens a model PRM does not see at the end of a step
    (the delimiter's whitespace, EOS), so that it reads the step's text and then its
    own step tag, as in its training format. A trace whose latest `write_step` wrote
    nothing (it was done) is left as it was, bit for bit. `pool`: the run's `Pools` for a
    paged trace.
    """
    if form not in FORMS:
        raise ValueError(f"PRM form must be one of {FORMS}, got {form!r}")
    tokens, mask = trace.last_step
    mask &= trace.written[:, None]  # a model PRM's cache is unchanged by a row with nothing to read
    if isinstance(trace.judge, KVCache):  # a model PRM: its cache follows the trace's prompt sharing or paging
        prefix = _context(trace, prompt, pool and pool.judge, trace.pages and trace.pages.judge,
                          f"observe_prm({name!r})")
        if hidden_at_end is not None:
            mask = strip_end(tokens, mask, hidden_at_end)
        cache = trace.judge if trace.pages is None else trace.judge.empty(tokens.shape[1] + 1)  # and its tag
        reward, judge = prm.score_step(cache, tokens, mask, prefix=prefix)
    else:  # a verifier (or any PRM whose state is not a cache): nothing to share
        reward, judge = prm.score_step(trace.judge, tokens, mask)
        judge = jax.tree.map(lambda old, new: _where_rows(trace.written, new, old), trace.judge, judge)
    log_r = jnp.log(reward)
    if form == "bernoulli":
        # log P(o_t = 1) = log r_t, exactly: NumPyro's Bernoulli clamps r to float eps, which
        # would turn a verifier's "impossible" (r = 0) into "one in eight million".
        numpyro.factor(name, beta * log_r)
    elif form == "twist":
        # r_{t-1} = 0 only on a particle already at weight 0 (or revived when every particle was):
        # count it as 1, so that log 0 - log 0 gives no NaN.
        previous = jnp.where(jnp.isneginf(trace.log_reward), 0.0, trace.log_reward)
        numpyro.factor(name, beta * (log_r - previous))
    else:
        numpyro.factor(name, beta * (log_r - jnp.log1p(-reward)))
    slot = jnp.where(trace.written, trace.num_steps - 1, trace.rewards.shape[1])  # dropped if nothing was written
    rows = jnp.arange(reward.shape[0])
    return trace._replace(judge=judge, rewards=trace.rewards.at[rows, slot].set(reward, mode="drop"),
                          log_reward=jnp.where(trace.written, log_r, trace.log_reward))


def _where_rows(rows: jax.Array, new: jax.Array, old: jax.Array) -> jax.Array:
    """`new` in the rows [B] where `rows` holds, else `old`; a leaf without a row axis is one row."""
    flag = rows.reshape(rows.shape + (1,) * (new.ndim - 1)) if new.ndim else jnp.all(rows)
    return jnp.where(flag, new, old)


def strip_end(tokens: jax.Array, mask: jax.Array, hidden: jax.Array) -> jax.Array:
    """`mask` [B, T] without the trailing run of tokens for which `hidden` [V] is True."""
    shown = mask & ~hidden[jnp.maximum(tokens, 0)]
    end = jnp.max(jnp.where(shown, jnp.arange(tokens.shape[1]) + 1, 0), axis=1)
    return mask & (jnp.arange(tokens.shape[1])[None, :] < end[:, None])
