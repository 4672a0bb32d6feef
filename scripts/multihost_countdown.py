"""Countdown particle filtering across hosts: the same script on every host, with the particles
sharded over every device of every host (JAX's own sharding; `jax.distributed` connects them).

Each host runs one process. Every process reads the same problems and builds the same mesh over
`jax.devices()` (all devices of all hosts): `--model M` groups them M at a time (neighbours, so on
one host) to split the LM's and PRM's weights over, and the particles go over the groups;
`SMC(..., mesh=...)` shards the particles, and the result is gathered back with
`process_allgather`. Process 0 writes the output.

Launch:
  TPU pod slice (every worker; the coordinator is found automatically):
    gcloud compute tpus tpu-vm ssh NAME --worker=all --command \\
      "cd ppl && python scripts/multihost_countdown.py --problems p.jsonl --particles 256 --out out.jsonl"
  GPU cluster under SLURM (one task per host; the coordinator is found automatically):
    srun --nodes=2 --ntasks-per-node=1 python scripts/multihost_countdown.py --problems p.jsonl --particles 256 ...
  Anywhere else, name the coordinator:
    python scripts/multihost_countdown.py --coordinator HOST0:1234 --num-processes 2 --process-id I ...
  Two processes on one CPU machine (a smoke test of the same code path):
    for i in 0 1; do python scripts/multihost_countdown.py --coordinator localhost:12355 \\
      --num-processes 2 --process-id $i --cpu-devices 4 --problems p.jsonl --particles 16 --out out.jsonl & done; wait
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", required=True, help="JSONL of Countdown problems")
    parser.add_argument("--particles", type=int, default=64, help="total particles, over all devices")
    parser.add_argument("--islands", action="store_true", help="one resampling island per particle group")
    parser.add_argument("--model", type=int, default=1, help="devices each model's weights are split over")
    parser.add_argument("--cache", choices=("contiguous", "paged"), default="contiguous",
                        help="KV caches; paged: each particle group holds the whole page pool")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--coordinator", help="HOST:PORT of process 0 (auto-detected on TPU and SLURM)")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    parser.add_argument("--cpu-devices", type=int, help="run on CPU with this many devices per process")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.cpu_devices:  # before JAX starts
        flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={args.cpu_devices}"
        os.environ["XLA_FLAGS"] = flags.strip()
        os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    import numpy as np
    from jax.sharding import Mesh

    if args.cpu_devices:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)

    from ppl.commands.shipped import load_models
    from ppl.search import SearchSpec
    from ppl.solver import Solver
    from ppl.tasks import TASKS

    devices = jax.devices()
    if len(devices) % args.model:
        sys.exit(f"--model {args.model} must divide the {len(devices)} devices")
    groups = len(devices) // args.model
    if args.particles % groups:
        sys.exit(f"--particles {args.particles} must be a multiple of the {groups} particle groups")
    mesh = Mesh(np.array(devices).reshape(groups, args.model), ("particles", "model"))
    leader = jax.process_index() == 0
    task = TASKS["countdown"]
    problems = task.read(args.problems)
    solver = Solver(task, *load_models(task), mesh=mesh)
    spec = SearchSpec("pf", args.particles, mesh=mesh, islands=groups if args.islands else 0,
                      cache=args.cache)
    began = time.perf_counter()
    records = solver.solve(problems, spec, seed=args.seed)
    if leader:
        with open(args.out, "w") as out:
            out.writelines(json.dumps(r) + "\n" for r in records)
        solved = sum(r["correct"] for r in records)
        print(
            f"{jax.process_count()} processes, {len(devices)} devices (model x{args.model}), {args.particles} "
            "particles: "
            f"{solved}/{len(records)} solved in {time.perf_counter() - began:.1f}s -> {args.out}"
        )


if __name__ == "__main__":
    main()
