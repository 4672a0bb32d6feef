"""Compile and run times of `ppl solve` on the tiny chat checkpoints of the tests, at real step settings.

Runs the CLI itself (in this process, so compile time is measured apart from run time by the solver)
for each method on MATH-style problems with `qwen2_chat` + `qwen2_prm` (tests/fixtures), at
`--max-steps 40 --max-step-tokens 256` by default, one problem per run (the CLI's default `--batch-rows`).
The weights are random, so traces run until their caps or a random EOS: the figure is the engine's cost at
these shapes, not accuracy. The persistent compilation cache is turned off so that compile times are honest.

    python benchmarks/solve_tiny.py [--methods pf,wbon,greedy] [--particles 16] [--problems 4]
        [--max-steps 40] [--max-step-tokens 256] [--out benchmarks/results/solve_tiny.json]

`particles` in the JSON is the --particles flag (greedy runs one particle whatever it says).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import tempfile
import time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

from report import write_json

CHECKPOINTS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "checkpoints"
QUESTIONS = ["What is $3 + 4 \\times 2$?", "Solve $x + 2 = 7$.", "What is $\\frac{1}{2} + \\frac{1}{4}$?",
             "Janet has 12 apples and gives away 5. How many are left?"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="pf,wbon,greedy")
    parser.add_argument("--particles", type=int, default=16)
    parser.add_argument("--problems", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--max-step-tokens", type=int, default=256)
    parser.add_argument("--out", default="benchmarks/results/solve_tiny.json")
    args = parser.parse_args()
    os.environ["PPL_CACHE_DIR"] = tempfile.mkdtemp()  # an empty compilation cache: compile times are real

    from ppl.cli import main as ppl

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        problems = Path(tmp) / "in.jsonl"
        problems.write_text("".join(json.dumps({"problem": QUESTIONS[i % len(QUESTIONS)], "answer": "7"}) + "\n"
                                    for i in range(args.problems)))
        for method in args.methods.split(","):
            out, stdout = Path(tmp) / f"{method}.jsonl", StringIO()
            began = time.perf_counter()
            with redirect_stdout(stdout):
                code = ppl(["solve", "--lm", str(CHECKPOINTS / "qwen2_chat"), "--prm", str(CHECKPOINTS / "qwen2_prm"),
                            "--problems", str(problems), "--method", method, "--particles", str(args.particles),
                            "--max-steps", str(args.max_steps), "--max-step-tokens", str(args.max_step_tokens),
                            "--out", str(out)])
            wall = time.perf_counter() - began
            assert code == 0, f"ppl solve {method} failed"
            compile_s = float(re.search(r"compile ([\d.]+)s\)", stdout.getvalue()).group(1))
            records = [json.loads(x) for x in out.read_text().splitlines()]
            rows.append({"method": method, "particles": args.particles, "problems": args.problems,
                         "compile_s": compile_s, "run_s": sum(r["seconds"] for r in records),
                         "wall_s": wall, "tokens": sum(r["tokens"] for r in records),
                         "mean_steps": sum(len(r["steps"]) for r in records) / len(records)})
    print(f"ppl solve, tiny qwen2_chat + qwen2_prm, --max-steps {args.max_steps} "
          f"--max-step-tokens {args.max_step_tokens}, {args.problems} problems, one per run")
    print(f"{'method':8} {'N':>4} {'compile s':>10} {'run s':>8} {'wall s':>8} {'tokens':>8} {'steps':>6}")
    for r in rows:
        print(f"{r['method']:8} {r['particles']:4d} {r['compile_s']:10.1f} {r['run_s']:8.1f} {r['wall_s']:8.1f} "
              f"{r['tokens']:8d} {r['mean_steps']:6.1f}")
    write_json(args.out, {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "max_steps": args.max_steps,
                          "max_step_tokens": args.max_step_tokens, "rows": rows})


if __name__ == "__main__":
    main()
