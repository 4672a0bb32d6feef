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
from inference.pmcmc import Reference
from models import paging
from models.llama import Config, KVCache, random_init, shard_weights
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
    """A prompt and two chunks: written to one cache, or each chunk to a buffer that reads the shared prompt's
    cache, then the earlier chunks through a page table after they were committed to pages: the logits agree."""
    lm, _ = models()
    chunks = [jnp.array([[3, 2, 6]]), jnp.array([[7, 7, 2, 5, 1]])]

    @jax.jit
    def both():
        _, cache = lm.extend(PROMPT, lm.init_cache(1, 20))
        expected = []
        for chunk in chunks:
            logits, cache = lm.extend(chunk, cache)
            expected.append(logits)
        _, prompt = lm.extend(PROMPT, lm.init_cache(1, PROMPT.shape[1]))
        pool = paging.PagePool.zeros(12, 4, CONFIG.num_layers, CONFIG.num_kv_heads, CONFIG.head_dim, jnp.float32)
        table = paging.PageTable(jnp.zeros((1, 4), jnp.int32), jnp.zeros((1,), jnp.int32))
        got = []
        for chunk in chunks:
            context = (prompt, paging.PagedContext(pool, table.pages, table.count))
            logits, buffer = lm.extend(chunk, lm.init_cache(1, 5), prefix=context, read_filled=True)
            got.append(logits)
            pool, table = paging.commit(pool, table, buffer)
        return expected, got, pool, table

    expected, got, pool, table = both()
    for want, have in zip(expected, got, strict=True):
        np.testing.assert_allclose(have, want, atol=1e-5)
    assert not bool(pool.exhausted)
    np.testing.assert_array_equal(table.pages, [[1, 2, 3, 0]])  # fresh pages: 1 for 3 tokens, 2 for 5


def test_commit_reuses_the_pages_no_table_refers_to():
    """Pages are free when no table refers to them (the tables' histogram is the reference count); rows that
    need more than is free mark the pool exhausted."""
    pool = paging.PagePool.zeros(6, 2, 1, 1, 2, jnp.float32)
    table = paging.PageTable(jnp.zeros((2, 4), jnp.int32), jnp.zeros((2,), jnp.int32))
    buffer = lambda lengths: KVCache((jnp.ones((2, 1, 2, 4)),), (jnp.ones((2, 1, 4, 2)),),
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


def run(strategy, threshold, paged, judge="prm", pages=None, seed=3, step_chunk=None, mesh=None):
    lm, prm = models()
    if mesh is not None and "model" in mesh.axis_names:
        lm, prm = shard_weights(lm, mesh), shard_weights(prm, mesh)
    prm.step_chunk = step_chunk
    lm_state, judge_state = reasoning.prefill_prompt(lm, prm, PROMPT, PROMPT.shape[1])
    if judge != "prm":  # a verifier-like judge: no cache, nothing to page
        prm, judge_state = _Parity(), jnp.zeros((1,), jnp.int32)
    pager = reasoning.Paging(STEPS, PARAMS.max_tokens, BUDGET, page_size=4, pages=pages) if paged else None
    program = reasoning_program(PARAMS, STOPS, STEPS, max_trace_tokens=BUDGET, paging=pager)
    return SMC(program, N, strategy, threshold, mesh=mesh).run(jax.random.key(seed), lm_state, judge_state, lm, prm)


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


def test_paged_caches_with_a_prm_reading_its_steps_in_chunks():
    """`ppl solve`'s default for real models: paged caches and a PRM that reads each step in chunks (here 3
    chunks of 2 tokens) run the particles of the contiguous caches read whole."""
    whole, chunked = run("systematic", 0.7, False), run("systematic", 0.7, True, step_chunk=2)
    np.testing.assert_array_equal(whole.particles.steps, chunked.particles.steps)
    np.testing.assert_array_equal(whole.ancestors, chunked.ancestors)
    np.testing.assert_allclose(whole.particles.rewards, chunked.particles.rewards, atol=1e-5)
    np.testing.assert_allclose(whole.log_weights, chunked.log_weights, atol=1e-4)
    assert np.asarray(chunked.resampled).any()


def test_paged_lm_with_a_judge_without_cache():
    contiguous, paged = run("systematic", 0.7, False, judge="parity"), run("systematic", 0.7, True, judge="parity")
    np.testing.assert_array_equal(contiguous.particles.steps, paged.particles.steps)
    np.testing.assert_allclose(contiguous.log_weights, paged.log_weights, atol=1e-4)
    assert paged.pool.judge is None


def test_paged_caches_run_the_contiguous_particles_of_the_enumeration_test(form="bernoulli"):
    """`test_reasoning`'s model, whose posterior over sequences is enumerated: 200 vmapped runs of 16 particles
    give the same particles, weights and evidence paged as contiguous, for the same keys, and their weighted
    particles approach the enumerated posterior."""
    import test_reasoning as enumerated

    vocab, steps, params, prompt = enumerated.VOCAB, enumerated.STEPS, enumerated.PARAMS, enumerated.PROMPT
    config = Config(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                    num_kv_heads=1, head_dim=8)
    lm = random_init(config, seed=1, scale=0.6)
    prm = enumerated.TablePRM(jnp.asarray(np.random.default_rng(0).uniform(0.05, 1.0, (vocab, vocab)), jnp.float32))
    lm_state, _ = reasoning.prefill_prompt(lm, prm, prompt, prompt.shape[1])
    keys = jax.random.split(jax.random.key(0), 200)
    runs = {}
    for cache in ("contiguous", "paged"):
        pager = reasoning.Paging(steps, params.max_tokens, None, page_size=1) if cache == "paged" else None
        program = reasoning_program(params, enumerated.STOPS, steps, form, paging=pager)
        smc = SMC(program, 16, "systematic", 1.0)  # resampling at every step
        run_all = jax.vmap(lambda key, smc=smc: smc.run_unchecked(key, lm_state, prompt[:, -1], lm, prm))
        runs[cache] = jax.jit(run_all)(keys)
    contiguous, paged = runs["contiguous"], runs["paged"]
    np.testing.assert_array_equal(contiguous.particles.steps, paged.particles.steps)
    np.testing.assert_array_equal(contiguous.ancestors, paged.ancestors)
    np.testing.assert_allclose(contiguous.log_weights, paged.log_weights, atol=1e-5)
    np.testing.assert_allclose(contiguous.log_evidence, paged.log_evidence, atol=1e-5)
    assert np.asarray(paged.resampled).any() and not np.asarray(paged.pool.exhausted).any()
    seqs, exact, _ = enumerated.exact_posterior(lm, prm.table, form)
    index = {tuple(seq): i for i, seq in enumerate(seqs.tolist())}
    weights = np.asarray(jax.nn.softmax(paged.log_weights, axis=-1)) / len(keys)
    mass = np.zeros(len(seqs))
    for tokens, weight in zip(np.asarray(paged.particles.steps[:, :, 0, :, 0]).reshape(-1, steps), weights.reshape(-1),
                              strict=True):
        mass[index[tuple(tokens.tolist())]] += weight
    assert 0.5 * np.abs(mass - exact).sum() < 0.1


def test_resampled_particles_share_pages_and_carry_no_keys():
    """Between steps a paged particle holds page tables and token records, no keys or values; descendants of
    one particle refer to its pages, so the pages alive are fewer than N copies of every trace."""
    paged, contiguous = run("systematic", 1.0, True), run("systematic", 1.0, False)
    kv = lambda result: sum(x.nbytes for cache in (result.particles.lm.cache, result.particles.judge)
                            for x in jax.tree.leaves((cache.k, cache.v)))
    assert kv(contiguous) > 0 and kv(paged) == 0
    tables = paged.particles.pages.lm.pages.reshape(N, -1)
    alive = np.unique(np.asarray(tables)[np.asarray(tables) > 0])
    per_particle = np.asarray(paged.particles.pages.lm.count).sum()
    assert len(alive) < per_particle  # descendants of one particle share its pages


def test_an_exhausted_pool_is_an_error_not_a_result():
    with pytest.raises(reasoning.PoolExhausted, match="ran out of pages"):
        run("systematic", 0.7, True, pages=8)


def particle_gibbs(paged, pages=None, seed=0):
    """A chain of 4 sweeps of 8 particles (seed 0: references of 5, 1, 1 and 1 steps)."""
    lm, prm = models()
    lm_state, judge_state = reasoning.prefill_prompt(lm, prm, PROMPT, PROMPT.shape[1])
    pager = reasoning.Paging(STEPS, PARAMS.max_tokens, BUDGET, page_size=4, pages=pages) if paged else None
    kernel = ParticleGibbs(reasoning_program(PARAMS, STOPS, STEPS, max_trace_tokens=BUDGET, paging=pager), 8)
    return jax.jit(lambda key, *args: kernel.run_chain(key, 4, *args))(jax.random.key(seed), lm_state,
                                                                       judge_state, lm, prm)


def test_paged_particle_gibbs_runs_the_contiguous_chain():
    """Same key, same references, in the default pool and in 30 pages. A conditional sweep's particles that
    descend from the reference read its pages from the sweep before: 30 pages hold the 8 particles and the
    reference only if the reference's pages stay taken (without that, this chain's steps differ)."""
    contiguous = particle_gibbs(False)
    assert np.asarray(contiguous.particles.num_steps).max() > 1
    for pages in (None, 30):
        paged = particle_gibbs(True, pages)
        np.testing.assert_array_equal(contiguous.particles.steps, paged.particles.steps)
        np.testing.assert_allclose(contiguous.particles.rewards, paged.particles.rewards, atol=1e-5)
        assert not bool(paged.pool.exhausted)
    assert bool(particle_gibbs(True, 20).pool.exhausted)  # too few pages: flagged, so a solver raises


def test_paged_programs_refuse_ancestor_sampling_and_poolless_references_and_must_keep_done_particles():
    pager = reasoning.Paging(STEPS, PARAMS.max_tokens, BUDGET)
    program = reasoning_program(PARAMS, STOPS, STEPS, max_trace_tokens=BUDGET, paging=pager)
    with pytest.raises(ValueError, match="contiguous"):
        ParticleGibbs(program, 4, ancestor_sampling=True)
    with pytest.raises(ValueError, match="Reference.pool"):  # e.g. init_params from a contiguous run
        ParticleGibbs(program, 4).sweep.run(jax.random.key(0), Reference(init=None, steps=None))
    with pytest.raises(ValueError, match="keeps_done"):
        ppl.StateSpaceProgram(program.init, program.step, STEPS, pool=pager)


@pytest.mark.parametrize(("task_name", "method"), [("countdown", "pf"), ("arithmetic", "pf"), ("countdown", "pg")])
def test_paged_solver_gives_the_contiguous_answers(task_name, method):
    """The shipped pair on held-out problems: `SearchSpec(cache="paged")` writes the same traces and answers."""
    from ppl.commands.shipped import load_models
    from ppl.search import SearchSpec
    from ppl.solver import Solver
    from ppl.tasks import TASKS

    task = TASKS[task_name]
    problems = task.generate(task.eval_seed, 3)
    solver = Solver(task, *load_models(task, "learned"), batch_rows=4 * len(problems))
    contiguous, paged = (solver.solve(problems, SearchSpec(method, 4, cache=cache), seed=1)
                         for cache in ("contiguous", "paged"))
    for a, b in zip(contiguous, paged, strict=True):
        assert (a["steps"], a["answer"], a["tokens"]) == (b["steps"], b["answer"], b["tokens"])
        assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-4)


def test_paged_ppl_solve_on_a_tiny_qwen_pair(tmp_path, capsys):
    """`ppl solve --cache paged` with a real architecture (Qwen2 LM + classifier PRM, byte-level BPE) writes the
    lines the contiguous cache writes."""
    from test_free_text import MATH, run_solve

    lines = {}
    for cache in ("contiguous", "paged"):
        (tmp_path / cache).mkdir()
        code, lines[cache] = run_solve(tmp_path / cache, MATH, "--method", "pf", "--particles", "4", "--cache", cache)
        assert code == 0, capsys.readouterr().err
    for a, b in zip(lines["contiguous"], lines["paged"], strict=True):
        assert (a["steps"], a["answer"], a["tokens"]) == (b["steps"], b["answer"], b["tokens"])


def test_paged_caches_over_8_devices_run_the_one_device_particles():
    """Particles sharded over a mesh, every particle device holding the whole pool: global and routed
    resampling give the one-device run's steps and ancestors. With the weights split over a `model` axis too,
    both caches are split over it (not whole on every device) and the particles are still the same."""
    from test_sharding import run_on_8_devices

    out = run_on_8_devices(
        """
        import json, jax, numpy as np
        from jax.sharding import Mesh
        from inference import Routed
        from test_paging import run

        def same(one, eight):
            return {"steps": bool(np.array_equal(one.particles.steps, eight.particles.steps)),
                    "ancestors": bool(np.array_equal(one.ancestors, eight.ancestors)),
                    "resampled": int(np.asarray(eight.resampled).sum()),
                    "weights": float(np.abs(np.asarray(one.log_weights) - np.asarray(eight.log_weights)).max())}

        mesh = Mesh(np.array(jax.devices()), ("particles",))
        one = run("systematic", 1.0, True)  # routed resampling is the same resampling, its gather moved another way
        report = {}
        for name, strategy in (("global", "systematic"), ("routed", Routed(2))):
            eight = run(strategy, 1.0, True, mesh=mesh)
            report[name] = same(one, eight) | {"whole": all(
                len(leaf.sharding.device_set) == 8 and leaf.sharding.is_fully_replicated
                for leaf in jax.tree.leaves(eight.pool))}
        split = Mesh(np.array(jax.devices()).reshape(4, 2), ("particles", "model"))
        for paged in (False, True):
            eight = run("systematic", 1.0, paged, mesh=split)
            keys = eight.pool.lm.k[0] if paged else eight.particles.lm.cache.k[0]
            report[f"split, paged={paged}"] = same(one if paged else run("systematic", 1.0, False), eight) | {
                "whole": "model" not in str(keys.sharding.spec)}
        print(json.dumps(report))
        """
    )
    for name, report in out.items():
        assert report["steps"] and report["ancestors"] and report["resampled"] > 0, (name, report)
        assert report["weights"] < 1e-4 and report["whole"] == (not name.startswith("split")), (name, report)


def test_memory_plan_shrinks_a_paged_pool_until_one_problem_fits(tmp_path, capsys):
    """`--memory` just below what one problem needs with room for every trace: the plan halves the page pools
    (betting on shared pages) instead of giving up; the run then answers, or says the pool ran out."""
    import re

    from test_free_text import MATH, run_solve

    flags = ("--method", "pf", "--particles", "4", "--cache", "paged")
    code, _ = run_solve(tmp_path, MATH[:1], *flags, "--memory", "64")
    assert code == 0
    need = int(re.search(r"memory plan: 1 problem\(s\) per run need (\d+) bytes", capsys.readouterr().err)[1])
    code, records = run_solve(tmp_path, MATH[:1], *flags, "--memory", f"{(need - 1) / 2**30:.12f}")
    err = capsys.readouterr().err
    assert re.search(r"memory plan: paged caches of \d+ pages per pool", err)
    assert (code == 0 and len(records) == 1) or (code == 2 and "ran out of pages" in err.strip().splitlines()[-1])
