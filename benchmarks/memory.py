"""Peak memory of a 64-particle Countdown pf run: prompt KV copied per particle vs stored once.

The whole run (prefill of the prompt, then SMC over the reasoning program with the shipped LM
and learned PRM) is compiled for each layout, and XLA's own accounting of the compiled program
(`compiled.memory_analysis()`: arguments + outputs + temporaries - aliased) gives its peak
device memory. "copied" is `reasoning_program(share_prompt=False)`, every particle holding a
copy of the prompt's LM and PRM caches (the layout before); "shared" is the default, one copy
read by all. Countdown's own prompt (padded to 32 tokens) and a long few-shot-sized prompt.

    python benchmarks/memory.py [--particles 64] [--prompts 32,512] [--out benchmarks/results/memory.json]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from report import write_json

from ppl.commands.shipped import load_models
from ppl.reasoning import prefill_prompt
from ppl.search import SearchSpec, reasoning_program
from ppl.solver import Solver
from ppl.solver import peak_bytes as compiled_peak_bytes
from ppl.tasks import TASKS


def peak_bytes(solver: Solver, particles: int, prompt_length: int, share_prompt: bool) -> dict:
    """XLA's memory accounting of one compiled pf run, and one particle's state size."""
    task = solver.task
    program = reasoning_program(task.params, solver.stops, task.max_steps, share_prompt=share_prompt)
    pf = SearchSpec("pf", particles).engine(program)
    room = 0 if share_prompt else task.max_steps * (task.params.max_tokens + 1)

    def run(key, prompt, lm, prm):
        lm_state, judge = prefill_prompt(lm, prm, prompt, prompt_length + room)
        return pf(key, lm_state, judge, lm, prm)

    args = (jax.random.key(0), jnp.ones((1, prompt_length), jnp.int32), solver.lm, solver.prm)
    compiled = jax.jit(run).lower(*args).compile()
    particles_out = jax.eval_shape(run, *args).particles
    return {
        "peak_bytes": compiled_peak_bytes(compiled),
        "temp_bytes": compiled.memory_analysis().temp_size_in_bytes,
        "particle_state_bytes": sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(particles_out)) // particles,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=64)
    parser.add_argument("--prompts", default="32,512", help="prompt lengths in tokens")
    parser.add_argument("--out", default="benchmarks/results/memory.json")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    task = TASKS["countdown"]
    solver = Solver(task, *load_models(task))
    rows = []
    for length in [int(x) for x in args.prompts.split(",")]:
        for layout, share in (("copied", False), ("shared", True)):
            stats = peak_bytes(solver, args.particles, length, share)
            rows.append({"prompt_tokens": length, "layout": layout, **stats})
    result = {"benchmark": "memory", "particles": args.particles, "rows": rows,
              "total_s": time.perf_counter() - began, "jax": jax.__version__, "backend": jax.default_backend()}
    print(f"\nCountdown pf, {args.particles} particles, shipped LM + learned PRM (XLA memory analysis)")
    print(f"{'prompt':>7}{'layout':>8}{'peak MiB':>10}{'KiB/particle':>14}{'peak ratio':>12}")
    for r in rows:
        copied = next(x for x in rows if x["prompt_tokens"] == r["prompt_tokens"] and x["layout"] == "copied")
        print(f"{r['prompt_tokens']:>7}{r['layout']:>8}{r['peak_bytes'] / 2**20:>10.2f}"
              f"{r['particle_state_bytes'] / 1024:>14.1f}{r['peak_bytes'] / copied['peak_bytes']:>12.2f}")
    print(f"wrote {write_json(args.out, result)} ({result['total_s']:.0f}s)")
    return result


if __name__ == "__main__":
    main()
