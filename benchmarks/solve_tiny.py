"""Compile and run times of `ppl solve` on the tiny chat checkpoints of the tests, at real step settings.

Runs the CLI itself (in this process, so compile time is measured apart from run time by the solver)
for each method on MATH-style problems with `qwen2_chat` + `qwen2_prm` (tests/fixtures), at
`--max-steps 40 --max-step-tokens 256` by default, one problem per run (the CLI's default `--batch-rows`).
The weights are random, so traces run until their caps or a random EOS: the figure is the engine's cost at
these shapes, not accuracy. The persistent compilation cache is turned off so that compile times are honest.

`--max-steps 8,64 --max-tokens 256` runs each method at each step cap under one token budget, side by side:
the traces end at the budget (or EOS) long before 64 steps, so with caches sized by the budget and the run
exiting when every particle is done, 64 steps should cost what 8 do (`ratio`: run time / the first cap's).

    python benchmarks/solve_tiny.py [--methods pf,wbon,greedy] [--particles 16] [--problems 4]
        [--max-steps 40[,64...]] [--max-step-tokens 256] [--max-tokens T] [--out benchmarks/results/solve_tiny.json]

`particles` in the JSON is the --particles flag (greedy runs one particle whatever it says).

`--widths 1.5B` writes random-weight checkpoints of the same architectures and tokenizers at real widths
(Qwen2.5-1.5B's, for the LM and the classifier PRM alike) and runs those instead: the GPU check of "The engine at
real sizes" (`ppl solve` pf, N = 16, 64 problems) is

    python benchmarks/solve_tiny.py --widths 1.5B --dtype bfloat16 --methods pf --problems 64 \
        --max-tokens 4096 --out benchmarks/results/solve_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import tempfile
import time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import jax
from report import write_json

CHECKPOINTS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "checkpoints"
WIDTHS = {"1.5B": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                   "num_attention_heads": 12, "num_key_value_heads": 2, "max_position_embeddings": 32768}}
QUESTIONS = ["What is $3 + 4 \\times 2$?", "Solve $x + 2 = 7$.", "What is $\\frac{1}{2} + \\frac{1}{4}$?",
             "Janet has 12 apples and gives away 5. How many are left?"]


def widened(name: str, widths: dict, out: Path) -> Path:
    """The fixture checkpoint `name` (its tokenizer, template and architecture) at `widths`, random weights."""
    import numpy as np
    from safetensors.numpy import save_file

    from models.llama import random_init
    from models.loading import config_from_hf, read_hf_config
    from models.saving import hf_tensors

    shutil.copytree(CHECKPOINTS / name, out)
    (out / "golden.safetensors").unlink(missing_ok=True)
    config = json.loads((out / "config.json").read_text()) | widths
    config.pop("layer_types", None)  # one per layer: transformers fills it in for the new depth
    (out / "config.json").write_text(json.dumps(config, indent=2))
    ours = config_from_hf(read_hf_config(out))
    tensors = hf_tensors(random_init(ours, seed=0))
    if "ProcessRewardModel" in " ".join(config.get("architectures", [])):  # a backbone and a 2-way head
        tensors.pop("lm_head.weight", None)
        rng = np.random.default_rng(1)
        hidden = ours.hidden_size
        for layer, shape in (("score.0", (hidden, hidden)), ("score.2", (2, hidden))):
            tensors[f"{layer}.weight"] = rng.normal(0, 0.02, shape).astype(np.float32)
            tensors[f"{layer}.bias"] = np.zeros(shape[0], np.float32)
    save_file(tensors, str(out / "model.safetensors"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="pf,wbon,greedy")
    parser.add_argument("--particles", type=int, default=16)
    parser.add_argument("--problems", type=int, default=4)
    parser.add_argument("--max-steps", default="40", help="step caps, comma-separated")
    parser.add_argument("--max-step-tokens", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, help="the trace's token budget (default: none)")
    parser.add_argument("--widths", choices=["tiny", *WIDTHS], default="tiny", help="the checkpoints' widths")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", default="benchmarks/results/solve_tiny.json")
    args = parser.parse_args()
    os.environ["PPL_CACHE_DIR"] = tempfile.mkdtemp()  # an empty compilation cache: compile times are real

    from ppl.cli import main as ppl

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        lm, prm = CHECKPOINTS / "qwen2_chat", CHECKPOINTS / "qwen2_prm"
        if args.widths != "tiny":
            lm, prm = (widened(name, WIDTHS[args.widths], Path(tmp) / name) for name in ("qwen2_chat", "qwen2_prm"))
        problems = Path(tmp) / "in.jsonl"
        problems.write_text("".join(json.dumps({"problem": QUESTIONS[i % len(QUESTIONS)], "answer": "7"}) + "\n"
                                    for i in range(args.problems)))
        budget = [] if args.max_tokens is None else ["--max-tokens", str(args.max_tokens)]
        for method in args.methods.split(","):
            first = None
            for max_steps in [int(x) for x in args.max_steps.split(",")]:
                out, stdout = Path(tmp) / f"{method}.jsonl", StringIO()
                began = time.perf_counter()
                with redirect_stdout(stdout):
                    code = ppl(["solve", "--lm", str(lm), "--prm", str(prm), "--dtype", args.dtype,
                                "--problems", str(problems),
                                "--method", method, "--particles", str(args.particles), "--max-steps", str(max_steps),
                                "--max-step-tokens", str(args.max_step_tokens), *budget, "--out", str(out), "--quiet"])
                wall = time.perf_counter() - began
                assert code == 0, f"ppl solve {method} failed"
                compile_s = float(re.search(r"compile ([\d.]+)s\)", stdout.getvalue()).group(1))
                records = [json.loads(x) for x in out.read_text().splitlines()]
                run_s = sum(r["seconds"] for r in records)
                first = first or run_s
                rows.append({"method": method, "max_steps": max_steps, "particles": args.particles,
                             "problems": args.problems, "compile_s": compile_s, "run_s": run_s,
                             "ratio": run_s / first, "wall_s": wall, "tokens": sum(r["tokens"] for r in records),
                             "mean_steps": sum(len(r["steps"]) for r in records) / len(records)})
    print(f"ppl solve, {args.widths} qwen2_chat + qwen2_prm ({args.dtype}), --max-step-tokens {args.max_step_tokens} "
          f"--max-tokens {args.max_tokens}, {args.problems} problems, one per run")
    print(f"{'method':8} {'steps':>5} {'N':>4} {'compile s':>10} {'run s':>8} {'ratio':>6} {'wall s':>8} {'tokens':>8} "
          f"{'steps':>6}")
    for r in rows:
        print(f"{r['method']:8} {r['max_steps']:5d} {r['particles']:4d} {r['compile_s']:10.1f} {r['run_s']:8.1f} "
              f"{r['ratio']:6.2f} {r['wall_s']:8.1f} {r['tokens']:8d} {r['mean_steps']:6.1f}")
    write_json(args.out, {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "widths": args.widths,
                          "dtype": args.dtype, "backend": jax.default_backend(), "max_steps": args.max_steps,
                          "max_step_tokens": args.max_step_tokens, "max_tokens": args.max_tokens, "rows": rows})


if __name__ == "__main__":
    main()
