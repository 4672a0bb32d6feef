"""The engine at real sizes, on tiny models: early exit (once every particle is done the engine stops
propagating, and the run is the one that steps through every step: same key, same particles, ancestors
and weights) and token budgets (caches sized by the budget; a trace is the unbudgeted one, cut)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_reasoning import VOCAB, TablePRM

import ppl
from inference import SMC, pmcmc, smc
from inference.entropic import Entropic
from inference.sharding import Islands
from models.llama import Config, random_init
from models.sampling import NO_TOKEN, STOP_CAP, SamplingParams, prefill, sample_step, stop_table_from_bytes
from ppl import reasoning
from ppl.search import reasoning_program, top_k_scheme

STEPS, N = 12, 8
PROMPT = jnp.array([[0, 1]])
PARAMS = SamplingParams(temperature=1.0, max_tokens=1)
STOPS = stop_table_from_bytes([bytes([65 + i]) for i in range(VOCAB)], eos_ids=(VOCAB - 2, VOCAB - 1))


def program_and_args(seen: set):
    """One token per step until EOS (about every other step), so every particle is done well before
    step STEPS; `seen` collects the steps the program really ran."""
    config = Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_layers=1,
                    num_heads=2, num_kv_heads=1, head_dim=8)
    lm = random_init(config, seed=1, scale=0.3)
    prm = TablePRM(jnp.asarray(np.random.default_rng(0).uniform(0.05, 1.0, (VOCAB, VOCAB)), jnp.float32))

    def init(lm_state, prm, lm):
        return reasoning.start(lm_state, PROMPT[:, -1], STEPS, PARAMS.max_tokens, share_prompt=True)

    def step(trace, t, lm_state, prm, lm):
        jax.debug.callback(lambda t: seen.add(int(t)), t)
        trace = reasoning.write_step("step", lm, trace, PARAMS, STOPS, prompt=lm_state)
        return reasoning.observe_prm("prm", prm, trace)

    lm_state, _ = reasoning.prefill_prompt(lm, prm, PROMPT, PROMPT.shape[1])
    return ppl.StateSpaceProgram(init, step, STEPS), (lm_state, prm, lm)


STRATEGIES = {
    "adaptive": ("systematic", 0.5),
    "entropic-lookahead": (Entropic("ess", preserve_target=True, lookahead=True), 0.5),
    "beam": (top_k_scheme(4), 1.0),
    "islands": (Islands(2, exchange_every=3), 0.7),
}


@pytest.mark.parametrize("name", STRATEGIES)
def test_early_exit_gives_the_run_of_every_step(name):
    strategy, threshold = STRATEGIES[name]
    seen: set = set()
    program, args = program_and_args(seen)
    key = jax.random.key(3)
    result = jax.jit(SMC(program, N, strategy, threshold).run_unchecked)(key, *args)
    jax.effects_barrier()
    ran = max(seen) + 1
    assert np.asarray(result.particles.done).all() and ran < STEPS  # it did stop early

    def every_step(key):  # the documented step-by-step functions, through every step
        init_key, scan_key = jax.random.split(key)
        state, _ = smc.init(program, init_key, N, *args)

        def one(state, xs):
            return smc.step(program, state, xs[1], xs[0], *args, resampling=strategy, ess_threshold=threshold)

        return jax.lax.scan(one, state, (jnp.arange(STEPS), jax.random.split(scan_key, STEPS)))

    state, info = jax.jit(every_step)(key)
    np.testing.assert_array_equal(result.particles.steps, state.particles.steps)
    np.testing.assert_array_equal(result.ancestors, info.ancestors)
    np.testing.assert_array_equal(result.resampled, info.resampled)
    np.testing.assert_allclose(result.log_weights, state.log_weights, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(result.log_evidence, state.log_evidence, rtol=1e-6)
    np.testing.assert_allclose(result.ess, info.ess, rtol=1e-5)
    if name == "beam":  # beam resamples every step: the settled steps do too
        assert info.resampled[ran:].all()


def test_particle_gibbs_exits_early_with_the_same_chain(monkeypatch):
    """Conditional SMC sweeps stop propagating once every particle (the reference's included) is done; the
    references drawn (states, increments, likelihoods, site values at every step), the evidence and the chain
    are those of sweeps that run every step (the engine's scan, forced by hiding the done flags)."""
    seen: set = set()
    program, args = program_and_args(seen)
    sweep = pmcmc.Sweep(program, N)
    key = jax.random.key(5)

    def chain(key):
        first, z_first, _ = sweep.run(key, None, *args)
        second, z_second, _ = sweep.run(jax.random.fold_in(key, 1), first, *args)
        return first, second, jnp.stack([z_first, z_second])

    early = jax.jit(chain)(key)
    jax.effects_barrier()
    assert max(seen) + 1 < STEPS and np.asarray(early[1].steps.state.done[-1]).all()
    monkeypatch.setattr(pmcmc, "_done_flags", lambda particles: None)
    full = jax.jit(chain)(key)
    for got, want in zip(jax.tree.leaves(early), jax.tree.leaves(full), strict=True):
        np.testing.assert_allclose(np.asarray(got, float), np.asarray(want, float), rtol=1e-6, atol=1e-6)
    sites = np.asarray(early[1].steps.sites["step"])
    assert (sites[max(seen) + 1 :] == 0).all()  # the steps after done hold 0, as documented


def test_sample_step_stops_each_row_at_its_limit():
    config = Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_layers=1,
                    num_heads=2, num_kv_heads=1, head_dim=8)
    lm = random_init(config, seed=2, scale=0.3)
    state = prefill(lm, jnp.repeat(PROMPT, 3, axis=0), None, PROMPT.shape[1] + 5)
    params, no_stops = SamplingParams(max_tokens=5), stop_table_from_bytes([bytes([65 + i]) for i in range(VOCAB)])
    key = jax.random.key(0)
    free = sample_step(lm, key, state, params, no_stops)
    capped = sample_step(lm, key, state, params, no_stops, limit=jnp.array([3, 0, 9]))
    np.testing.assert_array_equal(capped.length, [3, 0, 5])
    np.testing.assert_array_equal(capped.stop, [STOP_CAP] * 3)
    np.testing.assert_array_equal(capped.tokens[0, :3], free.tokens[0, :3])
    assert (capped.tokens[0, 3:] == NO_TOKEN).all() and (capped.tokens[1] == NO_TOKEN).all()
    np.testing.assert_array_equal(capped.tokens[2], free.tokens[2])
    for new, old in zip(jax.tree.leaves(capped.state), jax.tree.leaves(state), strict=True):  # row 1 wrote nothing
        np.testing.assert_array_equal(np.asarray(new)[1], np.asarray(old)[1])


def test_token_budget_sizes_the_caches_and_cuts_the_last_step():
    """Steps of up to 3 tokens ending at 'B'; a budget of 7 tokens: the LM cache holds 7 slots (not
    6 steps x 3), every trace is the unbudgeted trace cut at 7 tokens, and a cut step is truncated."""
    params = SamplingParams(temperature=1.0, max_tokens=3)
    stops = stop_table_from_bytes([bytes([65 + i]) for i in range(VOCAB)], stop_strings=("B",))
    config = Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_layers=1,
                    num_heads=2, num_kv_heads=1, head_dim=8)
    lm = random_init(config, seed=1, scale=0.3)
    prm = TablePRM(jnp.asarray(np.random.default_rng(0).uniform(0.05, 1.0, (VOCAB, VOCAB)), jnp.float32))
    lm_state, _ = reasoning.prefill_prompt(lm, prm, PROMPT, PROMPT.shape[1])
    steps, budget = 6, 7

    def run(budget):
        program = reasoning_program(params, stops, steps, max_trace_tokens=budget)
        return SMC(program, 16, ess_threshold=0.0).run(jax.random.key(4), lm_state, PROMPT[:, -1], lm, prm)

    cut, free = run(budget), run(None)
    assert cut.particles.lm.cache.positions.shape[-1] == budget  # [N, 1, slots]
    lengths, free_lengths = np.asarray(cut.particles.step_lengths[:, 0]), np.asarray(free.particles.step_lengths[:, 0])
    assert (lengths.sum(1) <= budget).all() and (free_lengths.sum(1) > budget).any()
    for i in range(16):
        tokens = np.asarray(cut.particles.steps[i, 0])
        written = np.concatenate([tokens[s, : lengths[i, s]] for s in range(steps)])
        free_tokens = np.asarray(free.particles.steps[i, 0])
        free_written = np.concatenate([free_tokens[s, : free_lengths[i, s]] for s in range(steps)])
        np.testing.assert_array_equal(written, free_written[:budget])
        ends_at_stop = np.array([lengths[i, s] > 0 and tokens[s, lengths[i, s] - 1] == 1 for s in range(steps)])
        np.testing.assert_array_equal(cut.particles.truncated[i, 0], (lengths[i] > 0) & ~ends_at_stop)
    assert np.asarray(cut.particles.done).all()


@pytest.mark.parametrize("share_prompt", [False, True])
def test_a_done_trace_is_left_bit_for_bit(share_prompt):
    """`write_step` and `observe_prm` leave a done trace as it was, caches included (model PRM and verifier), so
    the reasoning program skips the engine's whole-state select (`keeps_done`)."""
    import numpyro

    from models.prm import PRM
    from ppl.tasks import TASKS

    config = Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_layers=1,
                    num_heads=2, num_kv_heads=1, head_dim=8)
    lm = random_init(config, seed=1, scale=0.3)
    prm = PRM(random_init(config, seed=2, scale=0.3), "token", step_tag_id=1, good_id=2, bad_id=3)
    task = TASKS["arithmetic"]
    verifier = task.verifier.build(jnp.asarray(np.zeros((VOCAB, 1), np.uint8)))
    params = SamplingParams(temperature=1.0, max_tokens=3)
    for judge_model, context in ((prm, None), (verifier, task.verifier.context("(3+4)*5"))):
        room = PROMPT.shape[1] + (0 if share_prompt else 12)
        lm_state, judge = reasoning.prefill_prompt(lm, judge_model, PROMPT, room)
        judge = context if context is not None else judge
        shared = (lm_state, judge if context is None else None) if share_prompt else (None, None)

        def step(trace, key, judge_model=judge_model, shared=shared):
            with numpyro.handlers.seed(rng_seed=key):
                trace = reasoning.write_step("step", lm, trace, params, STOPS, prompt=shared[0])
                return reasoning.observe_prm("prm", judge_model, trace, prompt=shared[1])

        trace = reasoning.start(lm_state, judge, 3, params.max_tokens, share_prompt)
        trace = step(trace, 0)._replace(done=jnp.ones((1,), bool))
        after = step(trace, 1)
        leaves = [jax.tree.leaves(t._replace(written=None)) for t in (trace, after)]
        for old, new in zip(*leaves, strict=True):
            np.testing.assert_array_equal(old, new)
        assert not after.written.any() and trace.written.all()


def test_keeping_done_traces_gives_the_run_of_the_engines_select():
    """The reasoning program's `keeps_done` (no whole-state select) runs the same particles, bit for bit."""
    program, args = program_and_args(set())
    kept = ppl.StateSpaceProgram(program.init, program.step, program.num_steps, keeps_done=True)
    key = jax.random.key(7)
    selected = jax.jit(SMC(program, N, "systematic", 0.5).run_unchecked)(key, *args)
    own = jax.jit(SMC(kept, N, "systematic", 0.5).run_unchecked)(key, *args)
    for a, b in zip(jax.tree.leaves(selected), jax.tree.leaves(own), strict=True):
        np.testing.assert_array_equal(a, b)


def counting_traces(traced: list):
    """`program_and_args`' program, its step appending to `traced` each time it is traced."""
    program, args = program_and_args(set())
    step = program.step
    return ppl.StateSpaceProgram(program.init, lambda *a: (traced.append(1), step(*a))[1], STEPS), args


@pytest.mark.parametrize("name", ["adaptive", "entropic-lookahead"])
def test_the_step_is_traced_once(name):
    """A real model's step takes seconds to trace, so it is traced once: the early-exit loop's `eval_shape` of
    its per-step records, the loop itself and a look-ahead's draft share one trace of the propagate."""
    traced = []
    program, args = counting_traces(traced)
    strategy, threshold = STRATEGIES[name]
    jax.jit(SMC(program, N, strategy, threshold).run_unchecked).lower(jax.random.key(0), *args)
    assert len(traced) == 1


def test_particle_gibbs_traces_the_step_once():
    """A chain's unconditional and conditional sweeps share one trace of the step."""
    traced = []
    program, args = counting_traces(traced)
    kernel = pmcmc.ParticleGibbs(program, N)
    jax.jit(lambda key: kernel.run_chain(key, 3, *args)).lower(jax.random.key(0))
    assert len(traced) == 1
