"""Weak scaling of sharded SMC: global vs island resampling over 1..8 devices.

Countdown `pf` (shipped LM, learned PRM, resampling every step) with a fixed number of particles
per device, on meshes of 1, 2, 4 and 8 devices. Per cell: seconds per problem (compile
excluded) and the bytes a device receives per resampling, read off the compiled resampling
step (`inference.sharding.collective_bytes`: result sizes of its collectives, so an
all-gather counts the device's own share too) on the run's own particle state (tokens, LM and
PRM caches). Island runs use one island per device and `SMC`'s default global exchange every
4 steps, which Countdown's 3 steps never reach; the bytes an exchange step moves are reported
beside those of a local step.

Without accelerators the devices are simulated on the CPU cores
(`--xla_force_host_platform_device_count=8`, set here before JAX starts): the bytes are what
the same program moves on real devices, the seconds are not a speed-up figure (8 simulated
devices share this machine's cores).

    python benchmarks/scaling.py [--per-device 8] [--devices 1,2,4,8] [--problems 4]
                                 [--out benchmarks/results/scaling.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402
from report import write_json  # noqa: E402

from inference import resampling  # noqa: E402
from inference.search import SearchSpec, reasoning_program  # noqa: E402
from inference.sharding import ParticlePlacement, collective_bytes, island_gather, island_resampler  # noqa: E402
from inference.smc import adaptive_resampler  # noqa: E402
from ppl.commands.demo import EVAL_SEED  # noqa: E402
from ppl.commands.shipped import load_models  # noqa: E402
from ppl.reasoning import prefill_prompt  # noqa: E402
from ppl.solver import Solver  # noqa: E402
from ppl.tasks import countdown  # noqa: E402
from ppl.tasks.specs import TASKS  # noqa: E402


def particle_state(solver: Solver, num_particles: int):
    """Shapes of the Countdown reasoning program's particle state for `num_particles` particles."""
    task = solver.task
    program = reasoning_program(task.params, solver.stops, task.max_steps)
    prompt = jnp.zeros((1, 32), jnp.int32)
    capacity = prompt.shape[1] + task.max_steps * (task.params.max_tokens + 1)
    lm_state, judge = prefill_prompt(solver.lm, solver.prm, prompt, capacity)
    keys = jax.random.split(jax.random.key(0), num_particles)
    particles, _ = jax.eval_shape(lambda: program.initialize_batch(keys, lm_state, judge, solver.lm, solver.prm))
    return particles


def resampling_bytes(particles, mesh: Mesh, islands: int, exchange: bool) -> int:
    """Bytes one device receives in one resampling step (resample every step) on this mesh."""
    n = jax.tree.leaves(particles)[0].shape[0]
    placement = ParticlePlacement(mesh, n)
    state = jax.tree.map(lambda s: jax.device_put(jnp.zeros(s.shape, s.dtype), placement.sharded), particles)
    log_weights = jax.nn.log_softmax(jnp.linspace(0.0, 3.0, n))

    every_step = adaptive_resampler("systematic", 1.0)

    def step(key, state, log_weights):
        if islands:
            flag = jnp.asarray(exchange)
            resample = island_resampler(every_step, resampling.systematic, 1.0, islands, flag)
            ancestors, _, _ = resample(key, log_weights)
            return placement.constrain(island_gather(islands, flag)(state, ancestors))
        ancestors, _, _ = every_step(key, log_weights)
        return placement.constrain(resampling.gather(state, ancestors))

    compiled = jax.jit(step).lower(jax.random.key(0), state, log_weights).compile()
    return sum(collective_bytes(compiled.as_text()).values())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-device", type=int, default=8, help="particles per device")
    parser.add_argument("--devices", default="1,2,4,8")
    parser.add_argument("--problems", type=int, default=4)
    parser.add_argument("--out", default="benchmarks/results/scaling.json")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    solver = Solver(TASKS["countdown"], *load_models())
    problems = countdown.generate(EVAL_SEED, args.problems)
    rows = []
    for d in [int(x) for x in args.devices.split(",")]:
        if d > len(jax.devices()):
            sys.exit(f"asked for {d} devices, JAX sees {len(jax.devices())}")
        mesh = Mesh(np.array(jax.devices()[:d]), ("particles",))
        n = args.per_device * d
        state = particle_state(solver, n)
        for mode, islands in (("global", 0), ("island", d)):
            print(f"[{time.perf_counter() - began:6.0f}s] {mode} devices={d} N={n}", file=sys.stderr, flush=True)
            spec = SearchSpec("pf", n, ess_threshold=1.0, mesh=mesh, islands=islands)
            records = solver.solve(problems, spec)
            rows.append({
                "mode": mode, "devices": d, "particles": n,
                "seconds_per_problem": statistics.mean(r["seconds"] for r in records),
                "accuracy": statistics.mean(r["correct"] for r in records),
                "bytes_per_resampling": resampling_bytes(state, mesh, islands, exchange=False),
                "bytes_per_exchange": resampling_bytes(state, mesh, islands, exchange=True) if islands else None,
                "particle_state_bytes": sum(s.size * s.dtype.itemsize for s in jax.tree.leaves(state)) // n,
            })
    result = {
        "benchmark": "scaling", "per_device": args.per_device, "problems": args.problems,
        "simulated_devices": "xla_force_host_platform_device_count" in
        os.environ.get("XLA_FLAGS", ""), "cpu_cores": os.cpu_count(), "rows": rows,
        "compile_s": solver.compile_seconds, "total_s": time.perf_counter() - began, "jax": jax.__version__,
    }
    print(f"\nCountdown pf, {args.per_device} particles per device, resampling every step "
          f"(one particle's state: {rows[0]['particle_state_bytes']} bytes)")
    print(f"{'mode':<8}{'devices':>8}{'N':>5}{'s/problem':>11}{'KiB/resample':>14}{'KiB/exchange':>14}")
    for r in rows:
        exchange = f"{r['bytes_per_exchange'] / 1024:>14.1f}" if r["bytes_per_exchange"] is not None else f"{'-':>14}"
        print(f"{r['mode']:<8}{r['devices']:>8}{r['particles']:>5}{r['seconds_per_problem']:>11.3f}"
              f"{r['bytes_per_resampling'] / 1024:>14.1f}{exchange}")
    print(f"wrote {write_json(args.out, result)} ({result['total_s']:.0f}s)")
    return result


if __name__ == "__main__":
    main()
