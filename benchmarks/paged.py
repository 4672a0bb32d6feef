"""Paged vs contiguous particle caches: KV memory alive, bytes moved per resampling, wall time, same particles.

Two workloads, each run both ways in one process, same key:

* long traces: a tiny random-weight LM and token PRM (2 layers, 64-wide), pf over `--steps` steps of
  up to `--step-tokens` tokens at N = `--particles`. Per step (the documented step-by-step loop,
  `inference.smc.init`/`step`, jitted): the pages the particles' tables refer to, so "KV alive" is the
  peak over steps of distinct pages x page bytes (contiguous: every particle holds its whole budget).
  "moved" is what one resampling gathers: the particles' state, KV caches included (contiguous) or
  page tables and token records (paged), against the contiguous KV caches. Wall time: `SMC.run`,
  compiled first, the best of runs taken in turns (contiguous, paged, contiguous, ...): at least
  `--repeats`, and as many as fill about 20 s per cache; "in turns" is the median over turns of the paged
  run's time over the contiguous run's of the same turn, the ratio least moved by the machine's slow spells.
* particle Gibbs on the long traces: a chain of `--pg-sweeps` sweeps of P particles (`--pg`), whose
  sweeps record every step's particles: the compiled chain's memory by XLA's accounting (arguments,
  outputs and temporaries) and wall time (best of runs in turns), and whether the references agree.
* Countdown: the shipped LM and learned PRM through the `Solver`, pf at each N, `--problems` held-out
  problems, at each of `--countdown-rows` particle rows per run (the Solver's default, 1024, then more):
  seconds per problem (compile excluded; best of `--repeats` runs in turns, and the median ratio in turns)
  and whether every answer and token count agree.

    python benchmarks/paged.py [--particles 16,64,256] [--steps 40] [--step-tokens 16] [--page-size 8]
        [--pg 4,16] [--pg-sweeps 4] [--countdown 16,64] [--problems 32]
        [--countdown-rows 1024,2048] [--out benchmarks/results/paged.json]

Float rounding: paged attention sums the same terms in another order, so a draw that lands within
rounding of a token boundary can differ; "agree to step" is the first step of the step-by-step runs
(same keys both ways) whose ancestors or written tokens differ (the number of steps when none does).
"""

from __future__ import annotations

import argparse
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np
from report import write_json

from inference import SMC, ParticleGibbs, smc
from models import paging
from models.llama import Config, random_init
from models.prm import PRM
from models.sampling import SamplingParams, stop_table_from_bytes
from ppl import reasoning
from ppl.batching import PARTICLE_ROWS
from ppl.search import reasoning_program
from ppl.solver import peak_bytes

VOCAB = 64
CONFIG = Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                head_dim=16, max_position_embeddings=4096)
PROMPT = jnp.arange(1, 33, dtype=jnp.int32)[None]  # 32 prompt tokens
TIMED_SECONDS = 20.0  # long traces: each cache's runs are timed until they add up to this (and --repeats)


def nbytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def long_trace_models(step_tokens: int) -> tuple:
    """(sampling params, stop table, program arguments) of the long-trace workload."""
    lm = random_init(CONFIG, seed=1, scale=0.3)
    prm = PRM(random_init(CONFIG, seed=2, scale=0.3), "token", step_tag_id=0, good_id=1, bad_id=2)
    # token 0 is "\n", the step delimiter: about one token in 64, so most steps run to their cap
    stops = stop_table_from_bytes([b"\n"] + [bytes([33 + i]) for i in range(VOCAB - 1)], stop_strings=("\n",))
    params = SamplingParams(temperature=1.0, max_tokens=step_tokens)
    lm_state, judge = reasoning.prefill_prompt(lm, prm, PROMPT, PROMPT.shape[1])
    return params, stops, (lm_state, judge, lm, prm)


def timed_in_turns(runs: dict, repeats: int, least_seconds: float = TIMED_SECONDS) -> dict:
    """Seconds of each run (`runs[name]()` returns them), taken in turns so that a slow spell of the machine
    falls on all; repeated until each has had `repeats` runs and about `least_seconds` (the best of 5
    half-second runs still wandered by a tenth). Returns each run's best, and the median over turns of the
    paged run's seconds over the contiguous run's of the same turn (a slow spell moves both of a turn)."""
    seconds: dict = {name: [] for name in runs}
    while min(len(t) for t in seconds.values()) < repeats or min(sum(t) for t in seconds.values()) < least_seconds:
        for name, run in runs.items():
            seconds[name].append(run())
    turns = np.asarray(seconds["paged"]) / np.asarray(seconds["contiguous"])
    return {name: min(times) for name, times in seconds.items()} | {
        "timed_runs": len(seconds["paged"]), "median_ratio_in_turns": float(np.median(turns))}


def wall_seconds(compiled, args: tuple):
    """A run of `compiled(key, *args)` that returns its wall seconds."""

    def run() -> float:
        began = time.perf_counter()
        jax.block_until_ready(compiled(jax.random.key(0), *args))
        return time.perf_counter() - began

    return run


def long_traces(particles: int, steps: int, step_tokens: int, page_size: int, repeats: int) -> dict:
    params, stops, args = long_trace_models(step_tokens)
    row: dict = {"particles": particles, "steps": steps, "step_tokens": step_tokens, "page_size": page_size}
    runs, written, compiled = {}, {}, {}
    for cache in ("contiguous", "paged"):
        pager = reasoning.Paging(steps, step_tokens, None, page_size) if cache == "paged" else None
        program = reasoning_program(params, stops, steps, paging=pager)
        compiled[cache] = jax.jit(SMC(program, particles, "systematic", 0.5).run_unchecked)
        runs[cache] = jax.block_until_ready(compiled[cache](jax.random.key(0), *args))

        state, _ = smc.init(program, jax.random.key(1), particles, *args)
        step = jax.jit(lambda state, key, t, program=program: smc.step(program, state, key, t, *args))
        moved = nbytes(state.particles.particles if cache == "paged" else state.particles)
        alive, written[cache] = [], []
        for t, key in enumerate(jax.random.split(jax.random.key(2), steps)):
            state, info = step(state, key, t)
            traces = state.particles.particles if cache == "paged" else state.particles
            written[cache].append((np.asarray(info.ancestors), np.asarray(traces.steps[:, :, t])))
            if cache == "paged":
                swarm = state.particles
                tables = (swarm.particles.pages.lm.pages, swarm.particles.pages.judge.pages)
                pools = (swarm.pool.lm, swarm.pool.judge)
                page_bytes = lambda pool: nbytes(jax.tree.map(lambda x: x[0], (pool.k, pool.v)))
                alive.append(sum(int(np.sum(np.asarray(paging.references(pool, table))[1:] > 0)) * page_bytes(pool)
                                 for pool, table in zip(pools, tables, strict=True)))
        if cache == "paged":
            row["kv_alive_peak_bytes"] = max(alive)
            row["kv_pool_bytes"] = nbytes((state.particles.pool.lm.k, state.particles.pool.lm.v,
                                           state.particles.pool.judge.k, state.particles.pool.judge.v))
            row["paged_moved_bytes"] = moved
            row["paged_tokens_written"] = int(np.sum(runs[cache].particles.step_lengths))
        else:
            particles_ = state.particles
            row["contiguous_kv_bytes"] = nbytes((particles_.lm.cache.k, particles_.lm.cache.v,
                                                 particles_.judge.k, particles_.judge.v))
            row["contiguous_moved_bytes"] = moved
    best = timed_in_turns({cache: wall_seconds(run, args) for cache, run in compiled.items()}, repeats)
    row |= {"contiguous_seconds": best["contiguous"], "paged_seconds": best["paged"], "timed_runs": best["timed_runs"],
            "median_ratio_in_turns": best["median_ratio_in_turns"]}
    a, b = runs["contiguous"], runs["paged"]
    row["same_steps"] = bool(np.array_equal(a.particles.steps, b.particles.steps))
    row["same_ancestors"] = bool(np.array_equal(a.ancestors, b.ancestors))
    differs = [not (np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]))
               for x, y in zip(written["contiguous"], written["paged"], strict=True)]
    row["agree_to_step"] = differs.index(True) if any(differs) else steps
    row["max_log_weight_difference"] = float(np.max(np.abs(np.asarray(a.log_weights) - np.asarray(b.log_weights))))
    row["resampling_steps"] = int(np.sum(a.resampled))
    row["kv_alive_fraction"] = row["kv_alive_peak_bytes"] / row["contiguous_kv_bytes"]
    row["moved_fraction_of_kv"] = row["paged_moved_bytes"] / row["contiguous_kv_bytes"]
    row["kv_moved_fraction"] = nbytes(b.particles.pages) / row["contiguous_kv_bytes"]
    row["slowdown"] = row["paged_seconds"] / row["contiguous_seconds"]
    return row


def particle_gibbs(per_sweep: int, sweeps: int, steps: int, step_tokens: int, page_size: int, repeats: int) -> dict:
    params, stops, args = long_trace_models(step_tokens)
    row: dict = {"per_sweep": per_sweep, "sweeps": sweeps, "steps": steps, "step_tokens": step_tokens}
    compiled, chains = {}, {}
    for cache in ("contiguous", "paged"):
        pager = reasoning.Paging(steps, step_tokens, None, page_size) if cache == "paged" else None
        kernel = ParticleGibbs(reasoning_program(params, stops, steps, paging=pager), per_sweep)
        chain = jax.jit(lambda key, *args, kernel=kernel: kernel.run_chain(key, sweeps, *args))
        compiled[cache] = chain.lower(jax.random.key(0), *args).compile()
        row[f"{cache}_bytes"] = peak_bytes(compiled[cache])
        chains[cache] = jax.block_until_ready(compiled[cache](jax.random.key(0), *args))
    best = timed_in_turns({cache: wall_seconds(run, args) for cache, run in compiled.items()}, repeats)
    row |= {"contiguous_seconds": best["contiguous"], "paged_seconds": best["paged"], "timed_runs": best["timed_runs"],
            "median_ratio_in_turns": best["median_ratio_in_turns"]}
    a, b = chains["contiguous"], chains["paged"]
    row["same_references"] = bool(np.array_equal(a.particles.steps, b.particles.steps))
    row["reference_steps"] = np.asarray(a.particles.num_steps).ravel().tolist()
    row["memory_ratio"] = row["paged_bytes"] / row["contiguous_bytes"]
    row["slowdown"] = row["paged_seconds"] / row["contiguous_seconds"]
    return row


def solver_run(solver, items: list, spec, records: dict, cache: str):
    """A run of `solver` on `items` that returns its seconds per problem (the solver's timing: compile
    excluded) and leaves its records in `records[cache]`; run k takes seed k."""
    seeds = itertools.count()

    def run() -> float:
        records[cache] = solver.solve(items, spec, seed=next(seeds))
        return records[cache][0]["seconds"]

    return run


def countdown(particles: list[int], problems: int, rows: int, repeats: int) -> list[dict]:
    if not particles:
        return []
    from ppl.commands.shipped import load_models
    from ppl.search import SearchSpec
    from ppl.solver import Solver
    from ppl.tasks import TASKS

    task = TASKS["countdown"]
    items = task.generate(task.eval_seed, problems)
    solver = Solver(task, *load_models(task, "learned"), batch_rows=rows)
    out_rows = []
    for n in particles:
        row: dict = {"particles": n, "problems": problems, "batch_rows": rows}
        out, specs = {}, {cache: SearchSpec("pf", n, cache=cache) for cache in ("contiguous", "paged")}
        for spec in specs.values():
            solver.solve(items, spec)  # compile
        best = timed_in_turns({cache: solver_run(solver, items, spec, out, cache) for cache, spec in specs.items()},
                              repeats, 0.0)
        for cache in specs:
            row[f"{cache}_seconds_per_problem"] = best[cache]
            row[f"{cache}_accuracy"] = float(np.mean([r["correct"] for r in out[cache]]))
        row["timed_runs"], row["median_ratio_in_turns"] = best["timed_runs"], best["median_ratio_in_turns"]
        same = lambda key, out=out: [r[key] for r in out["contiguous"]] == [r[key] for r in out["paged"]]
        row["same_answers"], row["same_tokens"] = same("answer"), same("tokens")
        row["slowdown"] = row["paged_seconds_per_problem"] / row["contiguous_seconds_per_problem"]
        out_rows.append(row)
    return out_rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", default="16,64,256")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--step-tokens", type=int, default=16)
    parser.add_argument("--page-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pg", default="4,16", help="particle-Gibbs particles per sweep ('' to skip)")
    parser.add_argument("--pg-sweeps", type=int, default=4)
    parser.add_argument("--countdown", default="16,64", help="pf budgets on Countdown ('' to skip)")
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--countdown-rows", default=f"{PARTICLE_ROWS},2048",
                        help="particle rows per run (the Solver's batch_rows; its default first)")
    parser.add_argument("--out", default="benchmarks/results/paged.json")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    long_rows = []
    for n in (int(x) for x in args.particles.split(",") if x):
        long_rows.append(long_traces(n, args.steps, args.step_tokens, args.page_size, args.repeats))
        print(long_rows[-1], flush=True)
    pg_rows = []
    for n in (int(x) for x in args.pg.split(",") if x):
        pg_rows.append(particle_gibbs(n, args.pg_sweeps, args.steps, args.step_tokens, args.page_size, args.repeats))
        print(pg_rows[-1], flush=True)
    budgets = [int(x) for x in args.countdown.split(",") if x]
    countdown_rows = [row for rows in args.countdown_rows.split(",") for row in countdown(budgets, args.problems,
                                                                                          int(rows), args.repeats)]
    result = {"long_traces": long_rows, "particle_gibbs": pg_rows, "countdown": countdown_rows,
              "seconds_total": time.perf_counter() - began,
              "device": str(jax.devices()[0].device_kind), "command": "python benchmarks/paged.py "
              + " ".join(argv or __import__("sys").argv[1:])}
    gib = 2**20
    if long_rows:
        print(f"\nlong traces ({args.steps} steps x {args.step_tokens} tokens, page {args.page_size}; MiB)")
        print(f"{'N':>5}{'KV contig':>11}{'KV alive':>10}{'alive %':>9}{'moved %':>9}{'KV moved %':>11}"
              f"{'contig s':>10}{'paged s':>9}{'ratio':>7}{'in turns':>10}{'agree to step':>15}")
    for r in long_rows:
        print(f"{r['particles']:>5}{r['contiguous_kv_bytes'] / gib:>11.1f}{r['kv_alive_peak_bytes'] / gib:>10.1f}"
              f"{100 * r['kv_alive_fraction']:>9.1f}{100 * r['moved_fraction_of_kv']:>9.2f}"
              f"{100 * r['kv_moved_fraction']:>11.3f}{r['contiguous_seconds']:>10.2f}{r['paged_seconds']:>9.2f}"
              f"{r['slowdown']:>7.2f}{r['median_ratio_in_turns']:>10.2f}{r['agree_to_step']:>10} of {r['steps']}")
    if pg_rows:
        print(f"\nparticle Gibbs, {args.pg_sweeps} sweeps of P particles (same traces; compiled memory MiB)")
        print(f"{'P':>5}{'contig MiB':>12}{'paged MiB':>11}{'ratio':>7}{'contig s':>10}{'paged s':>9}{'ratio':>7}"
              f"{'in turns':>10}{'same refs':>11}")
        for r in pg_rows:
            print(f"{r['per_sweep']:>5}{r['contiguous_bytes'] / gib:>12.1f}{r['paged_bytes'] / gib:>11.1f}"
                  f"{r['memory_ratio']:>7.2f}{r['contiguous_seconds']:>10.2f}{r['paged_seconds']:>9.2f}"
                  f"{r['slowdown']:>7.2f}{r['median_ratio_in_turns']:>10.2f}{str(r['same_references']):>11}")
    if countdown_rows:
        print(f"\nCountdown pf, shipped pair ({args.problems} problems; seconds per problem)")
        print(f"{'N':>5}{'rows':>6}{'contiguous':>12}{'paged':>9}{'ratio':>7}{'in turns':>10}{'same answers':>14}"
              f"{'accuracy':>10}")
        for r in countdown_rows:
            print(f"{r['particles']:>5}{r['batch_rows']:>6}{r['contiguous_seconds_per_problem']:>12.4f}"
                  f"{r['paged_seconds_per_problem']:>9.4f}{r['slowdown']:>7.2f}{r['median_ratio_in_turns']:>10.2f}"
                  f"{str(r['same_answers'] and r['same_tokens']):>14}{r['paged_accuracy']:>10.3f}")
    print(f"wrote {write_json(args.out, result)}")
    return result


if __name__ == "__main__":
    main()
