"""Paged vs contiguous particle caches over a device mesh: bytes sent between devices, memory per device.

The long-trace workload of `benchmarks/paged.py` (a tiny random-weight LM and token PRM, pf over `--steps`
steps of up to `--step-tokens` tokens), its N particles sharded over `--devices` simulated CPU devices (set
before JAX starts). For each cache, the compiled run (`SMC(..., mesh=...)`, resampling every step: threshold
1.0):

* "sent per step": the bytes each device receives in the collectives of the compiled program
  (`inference.sharding.collective_bytes` on its HLO; a loop body counts once, so it is one step's
  collectives plus the run's few outside the loop). Contiguous caches travel with their particles, so a
  resampling gathers whole caches across devices; a paged run replicates its pools, so a step sends each
  particle's new tokens' keys and values to every device once (the pool's commit) and resampling gathers
  page tables.
* memory per device by XLA's accounting (arguments, outputs and temporaries of the compiled run), paged
  with the default pool (room for every particle's whole trace) and with one of `--pool-fraction` of its
  pages (enough for the pages alive: `benchmarks/paged.py`);
* "agree to step": the first step at which the run's resampling chose other ancestors than the one-device
  run's (same key). Sharded, the products run on other shapes and round differently, so over many
  thousands of draws one lands within rounding of a boundary and the runs part from there (contiguous
  caches alike); the tests check equality on short runs.

Simulated devices share this machine's cores, so no wall time is reported.

    python benchmarks/paged_mesh.py [--devices 8] [--particles 64,256] [--steps 40] [--step-tokens 16]
        [--pool-fraction 0.4] [--out benchmarks/results/paged_mesh.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys


def agree_to_step(ancestors, other) -> int:
    """The first step at which two runs' resampling chose other ancestors (the number of steps if none)."""
    differs = [not (a == b).all() for a, b in zip(ancestors, other, strict=True)]
    return differs.index(True) if any(differs) else len(differs)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--particles", default="64,256")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--step-tokens", type=int, default=16)
    parser.add_argument("--page-size", type=int, default=8)
    parser.add_argument("--pool-fraction", type=float, default=0.4,
                        help="paged_tight: the pool's pages as a share of the default (room for every trace)")
    parser.add_argument("--out", default="benchmarks/results/paged_mesh.json")
    args = parser.parse_args(argv)
    if "jax" in sys.modules:
        sys.exit("paged_mesh.py sets the simulated device count, so it must start JAX itself")
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import jax
    import numpy as np
    from jax.sharding import Mesh
    from paged import long_trace_models, nbytes
    from report import write_json

    from inference import SMC
    from inference.sharding import collective_bytes
    from ppl import reasoning
    from ppl.search import reasoning_program
    from ppl.solver import peak_bytes

    mesh = Mesh(np.array(jax.devices()), ("particles",))
    params, stops, program_args = long_trace_models(args.step_tokens)
    rows = []
    for particles in [int(n) for n in args.particles.split(",")]:
        row: dict = {"particles": particles, "devices": args.devices, "steps": args.steps,
                     "step_tokens": args.step_tokens, "page_size": args.page_size}
        full = reasoning.Paging(args.steps, args.step_tokens, None, args.page_size)
        tight = dataclasses.replace(full, pages=int(args.pool_fraction * full.default_pages(particles)))
        for cache, pager in (("contiguous", None), ("paged", full), ("paged_tight", tight)):
            program = reasoning_program(params, stops, args.steps, paging=pager)
            runs = {}
            for where, on in (("one", None), ("mesh", mesh)):
                run = jax.jit(SMC(program, particles, "systematic", 1.0, mesh=on).run_unchecked)
                compiled = run.lower(jax.random.key(0), *program_args).compile()
                runs[where] = jax.device_get(compiled(jax.random.key(0), *program_args))
            sent = collective_bytes(compiled.as_text())
            row[cache] = {
                "pool_pages": None if pager is None else pager.pages or pager.default_pages(particles),
                "pool_exhausted": None if pager is None else bool(np.any(runs["mesh"].pool.exhausted)),
                "sent_bytes": sum(sent.values()), "sent_by_kind": sent,
                "memory_per_device_bytes": peak_bytes(compiled),
                "same_particles_as_one_device": bool(np.array_equal(runs["one"].particles.steps,
                                                                    runs["mesh"].particles.steps)),
                "agree_to_step": agree_to_step(runs["one"].ancestors, runs["mesh"].ancestors),
            }
            if cache == "contiguous":
                final = runs["one"].particles
                row["contiguous_kv_bytes"] = nbytes((final.lm.cache.k, final.lm.cache.v, final.judge.k,
                                                     final.judge.v))
            print(f"N={particles} {cache}: sent {row[cache]['sent_bytes'] / 2**20:.2f} MiB, "
                  f"{row[cache]['memory_per_device_bytes'] / 2**20:.1f} MiB per device", flush=True)
        for cache in ("paged", "paged_tight"):
            row[cache]["sent_ratio"] = row[cache]["sent_bytes"] / row["contiguous"]["sent_bytes"]
            row[cache]["memory_ratio"] = (row[cache]["memory_per_device_bytes"]
                                          / row["contiguous"]["memory_per_device_bytes"])
        rows.append(row)

    print(f"\n{args.devices} devices, pf resampling every step, {args.steps} steps of up to {args.step_tokens} "
          f"tokens; paged_tight: a pool of {args.pool_fraction:.0%} of the default's pages")
    print(f"{'N':>5} {'cache':>12} {'pool pages':>10} {'sent/run':>10} {'x contig.':>9} {'mem/device':>11} "
          f"{'x contig.':>9} {'agree to step':>14} {'exhausted':>9}")
    for r in rows:
        for cache in ("contiguous", "paged", "paged_tight"):
            c = r[cache]
            print(f"{r['particles']:>5} {cache:>12} {c['pool_pages'] or '-':>10} {c['sent_bytes'] / 2**20:>8.2f}Mi "
                  f"{c.get('sent_ratio', 1.0):>9.3f} {c['memory_per_device_bytes'] / 2**20:>9.1f}Mi "
                  f"{c.get('memory_ratio', 1.0):>9.2f} {c['agree_to_step']:>8} of {args.steps:<3} "
                  f"{str(c['pool_exhausted'] or False):>9}")
    result = {"benchmark": "paged_mesh", "rows": rows}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
