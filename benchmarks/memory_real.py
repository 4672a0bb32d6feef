"""Device memory of `ppl solve` pf at real widths, from XLA's accounting of the compiled program.

Qwen2.5-Math-1.5B as the LM and a Qwen2.5-Math-PRM-7B-shaped PRM (the configs below are theirs), weights
abstract (shapes and dtype only: nothing is allocated or downloaded), one problem of a 256-token prompt,
`--max-steps 40 --max-step-tokens 256 --max-tokens 4096` by default. The program is the solver's own
(`ppl.solver.problem_run`: prefill, then SMC over the reasoning program), compiled for this machine's backend;
`compiled.memory_analysis()` splits it into arguments (weights, prompts), outputs, temporaries and aliased
buffers. The floor it is compared with is the weights plus every particle's KV caches at the budget (LM: B
slots, PRM: B + max_steps); "beyond" is what the program needs on top of that floor (the caches themselves are
temporaries of the loop).

Both bf16 and f32: XLA's CPU backend has no bf16 matrix product, so on CPU a bf16 program also holds an f32
copy of every weight it multiplies (the buffer assignment shows a `convert` per weight); GPUs and TPUs multiply
bf16 as it is. The f32 rows have no such copy: they show the program's own memory.

    python benchmarks/memory_real.py [--particles 16,64] [--dtypes bfloat16,float32] [--budget 4096]
        [--step-tokens 256] [--out benchmarks/results/memory_real.json]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from report import write_json

from models.llama import Config, Llama
from models.prm import PRM, ReLU
from models.sampling import SamplingParams, stop_table_from_bytes
from ppl.search import SearchSpec, reasoning_program
from ppl.solver import PRMInput, peak_bytes, problem_run

QWEN_MATH_1_5B = Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12,
                        num_kv_heads=2, head_dim=128, rms_norm_eps=1e-6, rope_theta=10000.0, attention_bias=True,
                        tie_embeddings=True, max_position_embeddings=4096)
QWEN_MATH_PRM_7B = Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28,
                          num_kv_heads=4, head_dim=128, rms_norm_eps=1e-6, rope_theta=10000.0, attention_bias=True,
                          max_position_embeddings=32768)
PROMPT, STEPS = 256, 40


def abstract_models(dtype) -> tuple[Llama, PRM]:
    lm = nnx.eval_shape(lambda: Llama(QWEN_MATH_1_5B, dtype=dtype, rngs=nnx.Rngs(0)))
    hidden = QWEN_MATH_PRM_7B.hidden_size
    backbone = nnx.eval_shape(lambda: Llama(QWEN_MATH_PRM_7B, dtype=dtype, rngs=nnx.Rngs(0), lm_head=False))
    head = nnx.eval_shape(lambda: nnx.List([
        nnx.Linear(hidden, hidden, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)),
        ReLU(),
        nnx.Linear(hidden, 2, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)),
    ]))
    return lm, PRM(backbone, "classifier", step_tag_id=151651, score=head)


def cache_bytes(config: Config, slots: int, itemsize: int) -> int:
    return 2 * config.num_layers * config.num_kv_heads * config.head_dim * slots * itemsize


def compile_only_tpu(topology: str) -> jax.sharding.Sharding:
    """One chip of a TPU `topology` (e.g. "v5p:1x1x1") to compile for on this host: libtpu compiles, nothing runs."""
    from jax.experimental import topologies

    return jax.sharding.SingleDeviceSharding(topologies.get_topology_desc(topology, "tpu").devices[0])


def measure(particles: int, budget: int, step_tokens: int, dtype, device: jax.sharding.Sharding | None = None) -> dict:
    lm, prm = abstract_models(dtype)
    stops = stop_table_from_bytes([b"x"] * QWEN_MATH_PRM_7B.vocab_size, ("\n\n",), (151643, 151645))
    params = SamplingParams(temperature=0.7, top_p=0.8, max_tokens=step_tokens)
    program = reasoning_program(params, stops, STEPS, max_trace_tokens=budget)
    run = problem_run(SearchSpec("pf", particles).engine(program))
    prompt = jax.ShapeDtypeStruct((1, PROMPT), jnp.int32, sharding=device)
    mask = jax.ShapeDtypeStruct((1, PROMPT), jnp.bool_, sharding=device)
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=device)
    if device is not None:  # every weight on the compile-only chip
        lm, prm = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), (lm, prm))
    began = time.perf_counter()
    compiled = jax.jit(run).lower(key, prompt, mask, PRMInput(prompt, mask), lm, prm).compile()
    stats = compiled.memory_analysis()
    itemsize = jnp.dtype(dtype).itemsize
    weights = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state((lm, prm))))
    caches = particles * (cache_bytes(QWEN_MATH_1_5B, budget, itemsize)
                          + cache_bytes(QWEN_MATH_PRM_7B, budget + STEPS, itemsize))
    total = peak_bytes(compiled)
    floor = weights + caches
    return {"particles": particles, "budget": budget, "step_tokens": step_tokens, "dtype": jnp.dtype(dtype).name,
            "total_bytes": total, "temp_bytes": stats.temp_size_in_bytes,
            "argument_bytes": stats.argument_size_in_bytes, "output_bytes": stats.output_size_in_bytes,
            "weight_bytes": weights, "cache_bytes_at_budget": caches,
            "total_over_floor": total / floor, "beyond_floor_share": (total - floor) / total,
            "compile_s": time.perf_counter() - began}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", default="16,64")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--budget", type=int, default=4096)
    parser.add_argument("--step-tokens", type=int, default=256, help="--max-step-tokens")
    parser.add_argument("--tpu", metavar="TOPOLOGY", help="compile for one chip of this TPU topology instead, e.g. "
                        "v5p:1x1x1 (needs libtpu installed; no TPU needed: nothing runs)")
    parser.add_argument("--out", default="benchmarks/results/memory_real.json")
    args = parser.parse_args(argv)
    device = None if args.tpu is None else compile_only_tpu(args.tpu)
    backend = jax.default_backend() if device is None else f"tpu {args.tpu} (compile only)"
    rows = [measure(int(n), args.budget, args.step_tokens, jnp.dtype(d), device)
            for d in args.dtypes.split(",") for n in args.particles.split(",")]
    gib = 2**30
    print(f"pf, Qwen2.5-Math-1.5B + 7B PRM shapes, one {PROMPT}-token prompt, {STEPS} steps x {args.step_tokens}, "
          f"budget {args.budget} ({backend}, XLA memory analysis; GiB)")
    print(f"{'N':>4}{'dtype':>10}{'total':>8}{'weights':>9}{'caches':>8}{'beyond':>8}{'total/floor':>13}"
          f"{'beyond share':>14}")
    for r in rows:
        beyond = r["total_bytes"] - r["weight_bytes"] - r["cache_bytes_at_budget"]
        print(f"{r['particles']:>4}{r['dtype']:>10}{r['total_bytes'] / gib:>8.1f}{r['weight_bytes'] / gib:>9.1f}"
              f"{r['cache_bytes_at_budget'] / gib:>8.1f}{beyond / gib:>8.1f}{r['total_over_floor']:>13.2f}"
              f"{r['beyond_floor_share']:>14.1%}")
    result = {"benchmark": "memory_real", "rows": rows, "jax": jax.__version__, "backend": backend,
              "numpy": np.__version__}
    print(f"wrote {write_json(args.out, result)}")
    return result


if __name__ == "__main__":
    main()
