"""Weak scaling of sharded SMC: global vs island resampling over 1..8 devices.

Countdown `pf` (shipped LM, learned PRM, resampling every step) with a fixed number of particles
per device, on meshes of 1, 2, 4 and 8 devices. Per cell: seconds per problem (compile
excluded) and the bytes a device receives per resampling, read off the compiled resampling
step (`inference.sharding.collective_bytes`: result sizes of its collectives, so an
all-gather counts the device's own share too) on the run's own particle state (tokens, LM and
PRM caches). Island runs use one island per device (`inference.Islands`) and its default global
exchange every 4 steps, which Countdown's 3 steps never reach; the bytes an exchange step moves
are reported beside those of a local step. "routed" is global resampling with
`SMC(resampling=inference.Routed(C))`, C = particles per device // 4: the bytes of its
all-to-all, and the fraction of this run's resampling steps (the global run's own ancestors)
that fit in C, i.e. need no fallback to the all-gather. It is not timed: the solver vmaps over
problems, where the fallback runs too.

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
from inference.resampling import adaptive_resampler  # noqa: E402
from inference.sharding import (  # noqa: E402
    ParticlePlacement,
    collective_bytes,
    island_gather,
    island_resampler,
    route_plan,
    routed_gather,
)
from ppl.commands.shipped import load_models  # noqa: E402
from ppl.reasoning import prefill_prompt  # noqa: E402
from ppl.search import SearchSpec, reasoning_program  # noqa: E402
from ppl.solver import Solver  # noqa: E402
from ppl.tasks import EVAL_SEED, TASKS  # noqa: E402


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


def resampling_bytes(particles, mesh: Mesh, islands: int, exchange: bool, route: int = 0) -> int:
    """Bytes one device receives in one resampling step (resample every step) on this mesh; with
    `route`, those of the routed gather's all-to-all alone (its fallback is the global gather)."""
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
        gather = routed_gather(placement, route) if route else resampling.gather
        return placement.constrain(gather(state, ancestors))

    moved = collective_bytes(jax.jit(step).lower(jax.random.key(0), state, log_weights).compile().as_text())
    return moved.get("all-to-all", 0) if route else sum(moved.values())


def routable_fraction(solver: Solver, problems, spec: SearchSpec, devices: int, capacity: int) -> float:
    """Fraction of the run's resampling steps whose ancestors fit the routed gather's capacity."""
    fits = []
    for chunk, result, _ in solver.runs(problems, spec):
        for row in range(len(chunk)):
            for t in np.flatnonzero(result.resampled[row]):
                fits.append(bool(route_plan(jnp.asarray(result.ancestors[row, t]), devices, capacity)[1]))
    return float(np.mean(fits))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-device", type=int, default=8, help="particles per device")
    parser.add_argument("--devices", default="1,2,4,8")
    parser.add_argument("--problems", type=int, default=4)
    parser.add_argument("--out", default="benchmarks/results/scaling.json")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    task = TASKS["countdown"]
    solver = Solver(task, *load_models(task))
    problems = task.generate(EVAL_SEED, args.problems)
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
        capacity = max(1, args.per_device // 4)
        rows.append({
            "mode": "routed", "devices": d, "particles": n, "capacity": capacity,
            "bytes_per_resampling": resampling_bytes(state, mesh, 0, exchange=False, route=capacity),
            "fits_fraction": routable_fraction(solver, problems, SearchSpec("pf", n, ess_threshold=1.0, mesh=mesh),
                                               d, capacity),
        })
    result = {
        "benchmark": "scaling", "per_device": args.per_device, "problems": args.problems,
        "simulated_devices": "xla_force_host_platform_device_count" in
        os.environ.get("XLA_FLAGS", ""), "cpu_cores": os.cpu_count(), "rows": rows,
        "compile_s": solver.compile_seconds, "total_s": time.perf_counter() - began, "jax": jax.__version__,
    }
    print(f"\nCountdown pf, {args.per_device} particles per device, resampling every step "
          f"(one particle's state: {rows[0]['particle_state_bytes']} bytes)")
    print(f"{'mode':<8}{'devices':>8}{'N':>5}{'s/problem':>11}{'KiB/resample':>14}{'KiB/exchange':>14}"
          f"{'fits':>7}")
    for r in rows:
        exchange = r.get("bytes_per_exchange")
        seconds = r.get("seconds_per_problem")
        print(f"{r['mode']:<8}{r['devices']:>8}{r['particles']:>5}"
              + (f"{seconds:>11.3f}" if seconds is not None else f"{'-':>11}")
              + f"{r['bytes_per_resampling'] / 1024:>14.1f}"
              + (f"{exchange / 1024:>14.1f}" if exchange is not None else f"{'-':>14}")
              + (f"{r['fits_fraction']:>7.2f}" if "fits_fraction" in r else f"{'-':>7}"))
    print(f"wrote {write_json(args.out, result)} ({result['total_s']:.0f}s)")
    return result


if __name__ == "__main__":
    main()
