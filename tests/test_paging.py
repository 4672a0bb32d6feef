"""Paged particle caches: the pool, its page tables and commits, and runs that match the contiguous cache's
(same key: same steps, ancestors and answers; weights to float rounding) while resampling moves page tables."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppl
from inference import SMC, ParticleGibbs
from inference.entropic import Entropic
from models import paging
from models.llama import Config, KVCache, random_init
from models.prm import PRM
from models.sampling import SamplingParams, stop_table_from_bytes
from ppl import reasoning
from ppl.search import reasoning_program, top_k_scheme

VOCAB = 12
CONFIG = Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                head_dim=8)
STOPS = stop_table_from_bytes([bytes([65 + i]) for i in range(VOCAB)], stop_strings=("B",), eos_ids=(VOCAB - 1,))
PARAMS = SamplingParams(temperature=1.0, max_tokens=5)
PROMPT = jnp.array([[0, 4, 5, 6, 7, 8, 9, 4, 5]])
STEPS, BUDGET, N = 6, 20, 16


def models():
    lm = random_init(CONFIG, seed=1, scale=0.5)
    prm = PRM(random_init(CONFIG, seed=2, scale=0.5), "token", step_tag_id=1, good_id=2, bad_id=3)
    return lm, prm


def test_a_paged_context_reads_like_one_contiguous_cache():
    """A prompt and two chunks: written to one cache, or each chunk to a buffer read through a page table after
    the earlier ones were committed to pages, the logits agree; two rows may share the prompt's pages."""
    lm, _ = models()
    chunks = [jnp.array([[3, 2, 6]]), jnp.array([[7, 7, 2, 5, 1]])]

    @jax.jit
    def both():
        _, cache = lm.extend(PROMPT, lm.init_cache(1, 20))
        expected = []
        for chunk in chunks:
            logits, cache = lm.extend(chunk, cache)
            expected.append(logits)
        _, prompt_cache = lm.extend(PROMPT, lm.init_cache(1, PROMPT.shape[1]))
        pool, table = paging.pool_of_prompt(prompt_cache, pages=12, page_size=4)
        table = paging.PageTable(jnp.pad(table.pages, ((0, 0), (0, 4))), table.count)
        got = []
        for chunk in chunks:
            context = paging.PagedContext(pool, table.pages, table.count)
            logits, buffer = lm.extend(chunk, lm.init_cache(1, 5), prefix=context, read_filled=True)
            got.append(logits)
            pool, table = paging.commit(pool, table, buffer)
        return expected, got, pool, table

    expected, got, pool, table = both()
    for want, have in zip(expected, got, strict=True):
        np.testing.assert_allclose(have, want, atol=1e-5)
    assert not bool(pool.exhausted)
    # Both chunks went to fresh pages: 3 prompt pages, then 1 and 2.
    np.testing.assert_array_equal(table.count, [6])


def test_commit_reuses_the_pages_no_table_refers_to():
    """Pages are free when no table refers to them (the tables' histogram is the reference count); rows that
    need more than is free mark the pool exhausted."""
    pool = paging.PagePool.zeros(6, 2, 1, 1, 2, jnp.float32)
    table = paging.PageTable(jnp.zeros((2, 4), jnp.int32), jnp.zeros((2,), jnp.int32))
    buffer = lambda lengths: KVCache(jnp.ones((2, 1, 1, 4, 2)), jnp.ones((2, 1, 1, 2, 4)),
                                            jnp.where(jnp.arange(4) < jnp.asarray(lengths)[:, None], 7, -1),
                                            jnp.asarray(lengths, jnp.int32))
    pool, table = paging.commit(pool, table, buffer([3, 1]))  # 2 pages and 1
    np.testing.assert_array_equal(table.pages[:, :2], [[1, 2], [3, 0]])
    np.testing.assert_array_equal(paging.references(pool, table.pages)[1:], [1, 1, 1, 0, 0])
    # Resampling: both rows now descend from row 0; row 1's page 3 is free again and taken first.
    table = jax.tree.map(lambda x: x[jnp.array([0, 0])], table)
    pool, table = paging.commit(pool, table, buffer([2, 2]))
    np.testing.assert_array_equal(table.pages[:, :3], [[1, 2, 3], [1, 2, 4]])
    np.testing.assert_array_equal(pool.positions[3], [7, 7])
    assert not bool(pool.exhausted)
    _, full = paging.commit(pool, table, buffer([4, 4]))  # 4 pages wanted, 1 free
    assert bool(_.exhausted)


def run(strategy, threshold, paged, judge="prm", pages=None, seed=3):
    lm, prm = models()
    lm_state, judge_state = reasoning.prefill_prompt(lm, prm, PROMPT, PROMPT.shape[1])
    if judge != "prm":  # a verifier-like judge: no cache, nothing to page
        prm, judge_state = _Parity(), jnp.zeros((1,), jnp.int32)
    pager = reasoning.Paging(STEPS, PARAMS.max_tokens, BUDGET, page_size=4, pages=pages) if paged else None
    program = reasoning_program(PARAMS, STOPS, STEPS, max_trace_tokens=BUDGET, paging=pager)
    return SMC(program, N, strategy, threshold).run(jax.random.key(seed), lm_state, judge_state, lm, prm)


class _Parity(NamedTuple):
    """A judge without a cache: reward .9 after an even token count, .3 after an odd one."""

    def score_step(self, judge, tokens, mask):
        return jnp.where(jnp.sum(mask, axis=1) % 2 == 0, 0.9, 0.3), judge


STRATEGIES = {
    "pf": ("systematic", 0.7),
    "epf-lookahead": (Entropic("ess", preserve_target=True, lookahead=True), 1.0),
    "beam": (top_k_scheme(4), 1.0),
}


@pytest.mark.parametrize("name", STRATEGIES)
def test_paged_caches_run_the_contiguous_particles(name):
    """Same key, same steps, ancestors and rewards; weights and evidence to float rounding (attention sums its
    keys in another order); the pool never ran out, and resampling happened."""
    contiguous, paged = (run(*STRATEGIES[name], paged) for paged in (False, True))
    np.testing.assert_array_equal(contiguous.particles.steps, paged.particles.steps)
    np.testing.assert_array_equal(contiguous.ancestors, paged.ancestors)
    np.testing.assert_allclose(contiguous.particles.rewards, paged.particles.rewards, atol=1e-5)
    np.testing.assert_allclose(contiguous.log_weights, paged.log_weights, atol=1e-4)
    np.testing.assert_allclose(contiguous.log_evidence, paged.log_evidence, atol=1e-4)
    assert np.asarray(paged.resampled).any()
    assert not bool(paged.pool.exhausted)


def test_paged_lm_with_a_judge_without_cache():
    contiguous, paged = run("systematic", 0.7, False, judge="parity"), run("systematic", 0.7, True, judge="parity")
    np.testing.assert_array_equal(contiguous.particles.steps, paged.particles.steps)
    np.testing.assert_allclose(contiguous.log_weights, paged.log_weights, atol=1e-4)
    assert paged.pool.judge is None


def test_resampled_particles_share_pages_and_carry_no_keys():
    """Between steps a paged particle holds page tables and token records, no keys or values; descendants of
    one particle refer to its pages, so the pages alive are fewer than N copies of every trace."""
    paged, contiguous = run("systematic", 1.0, True), run("systematic", 1.0, False)
    assert paged.particles.lm.cache.k.size == 0 and paged.particles.judge.k.size == 0
    kv = lambda result: sum(cache.k.nbytes + cache.v.nbytes for cache in (result.particles.lm.cache,
                                                                           result.particles.judge))
    assert kv(contiguous) > 0 and kv(paged) == 0
    tables = paged.particles.pages.lm.pages.reshape(N, -1)
    alive = np.unique(np.asarray(tables)[np.asarray(tables) > 0])
    per_particle = np.asarray(paged.particles.pages.lm.count).sum()
    assert len(alive) < per_particle  # shared pages (every particle shares at least the prompt's)


def test_an_exhausted_pool_is_an_error_not_a_result():
    with pytest.raises(reasoning.PoolExhausted, match="ran out of pages"):
        run("systematic", 0.7, True, pages=8)


def test_particle_mcmc_refuses_a_paged_program():
    pager = reasoning.Paging(STEPS, PARAMS.max_tokens, BUDGET)
    program = reasoning_program(PARAMS, STOPS, STEPS, max_trace_tokens=BUDGET, paging=pager)
    with pytest.raises(ValueError, match="contiguous"):
        ParticleGibbs(program, 4)
    with pytest.raises(ValueError, match="keeps_done"):
        ppl.StateSpaceProgram(program.init, program.step, STEPS, pool=pager)
