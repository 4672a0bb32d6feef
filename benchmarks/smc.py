"""Cost of SMC over plain batched sampling with the same LM, particles, steps and tokens.

A reasoning program (`ppl.reasoning.write_step` + `observe_prm`, bernoulli form)
with a trivial table PRM (a lookup: its cost is negligible) is run by
`inference.SMC` with systematic resampling at every step (`ess_threshold=1.0`,
so the gather of the particle pytree, KV cache included, runs every step).
The baseline samples the same number of tokens with no weighting or
resampling: one `lax.scan` over steps of `models.sampling.sample_step` on a
batch of N rows. Neither has stop strings or EOS, so every row writes exactly
`max_tokens` tokens per step in both. Both are jitted; compile time is
excluded; repeats alternate between the two and the best is reported.

    overhead = (t_smc - t_plain) / t_smc          (target <= 10%)

Separately: the per-step cost of a real model PRM (`models.prm.PRM`, token
kind, a backbone the size of the LM) scoring one step of every particle from
its cache (`score_step` on a batch of N), next to the LM's cost of writing
that step.

    python benchmarks/smc.py [--out benchmarks/results/smc.json] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from report import timed, write_json

import ppl
from inference import SMC
from models.llama import Config, num_parameters, random_init
from models.prm import PRM
from models.sampling import SamplingParams, prefill, sample_step, stop_table_from_bytes
from ppl import reasoning
from ppl.thinksum import repeat_rows

CONFIG = Config(vocab_size=512, hidden_size=128, intermediate_size=384, num_layers=4,
                num_heads=4, num_kv_heads=2, head_dim=32)
PROMPT = 16
TARGET = 0.10


class TablePRM(NamedTuple):
    """Reward of a step = table[first token % 8]: a lookup, so the PRM costs nothing."""

    table: jax.Array

    def score_step(self, judge, tokens, mask):
        return self.table[jnp.maximum(tokens[:, 0], 0) % self.table.shape[0]], judge


def make_program(steps: int, params: SamplingParams, stops):
    def init(lm_state, prm, lm):
        return reasoning.start(lm_state, jnp.zeros((1,), jnp.int32), steps, params.max_tokens)

    def step(trace, t, lm_state, prm, lm):
        trace = reasoning.write_step("step", lm, trace, params, stops)
        return reasoning.observe_prm("prm", prm, trace, form="bernoulli")

    return ppl.StateSpaceProgram(init, step, num_steps=steps)


def bench(n: int, steps: int, max_tokens: int, repeats: int, lm, prompt) -> dict:
    params = SamplingParams(temperature=1.0, max_tokens=max_tokens)
    stops = stop_table_from_bytes([bytes([i % 256]) for i in range(CONFIG.vocab_size)])  # no EOS, no stops
    capacity = PROMPT + steps * max_tokens
    prm = TablePRM(jnp.linspace(0.5, 0.95, 8, dtype=jnp.float32))
    lm_state, _ = reasoning.prefill_prompt(lm, prm, prompt, capacity)
    smc = SMC(make_program(steps, params, stops), n, resampling="systematic", ess_threshold=1.0)
    run_smc = jax.jit(smc.run_unchecked)

    @jax.jit
    def run_plain(key, lm_state, lm):
        state = repeat_rows(lm_state, n)

        def body(state, key):
            result = sample_step(lm, key, state, params, stops)
            return result.state, (result.tokens, result.length)

        return jax.lax.scan(body, state, jax.random.split(key, steps))

    # compile + sanity: both write every token
    t0 = time.perf_counter()
    result = run_smc(jax.random.key(0), lm_state, prm, lm)
    jax.block_until_ready(result)
    compile_smc = time.perf_counter() - t0
    assert int(np.asarray(result.particles.step_lengths).sum()) == n * steps * max_tokens
    assert bool(np.all(np.asarray(result.resampled)))
    t0 = time.perf_counter()
    final, (tokens, lengths) = run_plain(jax.random.key(0), lm_state, lm)
    jax.block_until_ready(tokens)
    assert final.cache.length.shape[0] == n and bool(jnp.all(final.cache.length == capacity))
    compile_plain = time.perf_counter() - t0
    assert int(np.asarray(lengths).sum()) == n * steps * max_tokens

    t_smc, t_plain = [], []
    for r in range(repeats):
        t_smc.append(timed(run_smc, jax.random.key(r + 1), lm_state, prm, lm))
        t_plain.append(timed(run_plain, jax.random.key(r + 1), lm_state, lm))
    total = n * steps * max_tokens
    best_smc, best_plain = min(t_smc), min(t_plain)
    return {
        "num_particles": n, "steps": steps, "max_tokens": max_tokens, "tokens": total,
        "compile_smc_s": compile_smc, "compile_plain_s": compile_plain,
        "smc_s": t_smc, "plain_s": t_plain, "smc_best_s": best_smc, "plain_best_s": best_plain,
        "overhead": (best_smc - best_plain) / best_smc,
        "overhead_median": (statistics.median(t_smc) - statistics.median(t_plain)) / statistics.median(t_smc),
        "smc_tok_s": total / best_smc, "plain_tok_s": total / best_plain,
    }


def bench_prm(n: int, max_tokens: int, repeats: int, lm, prompt, steps: int) -> dict:
    """Per-step time of a model PRM scoring one new step of N particles, vs the LM writing it."""
    backbone = random_init(CONFIG, seed=1)
    prm = PRM(backbone, "token", step_tag_id=10, good_id=11, bad_id=12)
    capacity = PROMPT + steps * (max_tokens + 1)
    params = SamplingParams(temperature=1.0, max_tokens=max_tokens)
    stops = stop_table_from_bytes([bytes([i % 256]) for i in range(CONFIG.vocab_size)])
    prompts = jnp.repeat(prompt, n, axis=0)
    cache = jax.jit(lambda p, x: p.start(x, None, capacity))(prm, prompts)
    lm_state = jax.jit(lambda m, x: prefill(m, x, None, capacity))(lm, prompts)
    step_tokens = jax.random.randint(jax.random.key(3), (n, max_tokens), 0, CONFIG.vocab_size)
    mask = jnp.ones((n, max_tokens), bool)
    score = jax.jit(lambda p, c, x, m: p.score_step(c, x, m))
    write = jax.jit(lambda m, k, s: sample_step(m, k, s, params, stops).tokens)
    jax.block_until_ready(score(prm, cache, step_tokens, mask))
    jax.block_until_ready(write(lm, jax.random.key(0), lm_state))
    t_score, t_write = [], []
    for r in range(repeats):
        t_score.append(timed(score, prm, cache, step_tokens, mask))
        t_write.append(timed(write, lm, jax.random.key(r), lm_state))
    return {"num_particles": n, "max_tokens": max_tokens, "prm_params": num_parameters(backbone),
            "prm_score_step_s": min(t_score), "lm_write_step_s": min(t_write),
            "prm_over_lm": min(t_score) / min(t_write)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/smc.json")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--particles", default="16,64")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    lm = random_init(CONFIG, seed=0)
    prompt = jax.random.randint(jax.random.key(7), (1, PROMPT), 0, CONFIG.vocab_size)
    rows, prm_rows = [], []
    for n in [int(x) for x in args.particles.split(",")]:
        row = bench(n, args.steps, args.max_tokens, args.repeats, lm, prompt)
        rows.append(row)
        print(f"  N={n}: smc {row['smc_best_s'] * 1e3:.1f} ms, plain {row['plain_best_s'] * 1e3:.1f} ms, "
              f"overhead {100 * row['overhead']:.1f}%", flush=True)
        prm_rows.append(bench_prm(n, args.max_tokens, args.repeats, lm, prompt, args.steps))
    result = {
        "benchmark": "smc", "config": CONFIG.__dict__ | {"params": num_parameters(lm)}, "prompt": PROMPT,
        "load_avg_start": os.getloadavg(), "jax": jax.__version__,
        "rows": rows, "model_prm": prm_rows, "target_overhead": TARGET,
        "met": all(r["overhead"] <= TARGET for r in rows), "total_s": time.perf_counter() - start,
    }
    print()
    print(f"{'N':>4} {'steps x tok':>11} {'SMC ms':>8} {'plain ms':>9} {'overhead':>9} {'(median)':>9} "
          f"{'SMC tok/s':>10} {'plain tok/s':>11}")
    for r in rows:
        print(f"{r['num_particles']:>4} {r['steps']:>5} x {r['max_tokens']:<3} {r['smc_best_s'] * 1e3:>8.1f} "
              f"{r['plain_best_s'] * 1e3:>9.1f} {100 * r['overhead']:>8.1f}% {100 * r['overhead_median']:>8.1f}% "
              f"{r['smc_tok_s']:>10.0f} {r['plain_tok_s']:>11.0f}")
    print(f"\nmodel PRM ({prm_rows[0]['prm_params']:,} params, token kind), one step of {args.max_tokens} tokens:")
    print(f"{'N':>4} {'PRM score_step ms':>18} {'LM write step ms':>17} {'PRM/LM':>7}")
    for r in prm_rows:
        print(f"{r['num_particles']:>4} {r['prm_score_step_s'] * 1e3:>18.2f} {r['lm_write_step_s'] * 1e3:>17.2f} "
              f"{r['prm_over_lm']:>7.2f}")
    print(f"overhead target <= {100 * TARGET:.0f}%: {'MET' if result['met'] else 'MISSED'}")
    print(f"wrote {write_json(args.out, result)}")
    return result


if __name__ == "__main__":
    main()
