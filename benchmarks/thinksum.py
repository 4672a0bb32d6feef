"""ThinkSum against asking directly: odd-one-out among 4 arithmetic expressions, the shipped LM.

Problems: `ppl.thinksum_oddoneout.make_problems(seed, n)` from
`arithmetic.generate(seed, 2000)` with a held-out seed (training draws from
`SeedSequence(0)` streams and evaluation uses `ppl.tasks.EVAL_SEED`, 1000; 2000 is
neither). Direct: one greedy trace per expression. Majority: the most
frequent of S sampled answers per expression, same rule. ThinkSum: the same
S samples through the NumPyro odd-one-out model. Writes JSON, prints a table.

    python benchmarks/thinksum.py [--lm models/shipped/lm] [--problems 100] [--samples 8] [--seed 2000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import jax

import models
from ppl import thinksum_oddoneout as odd
from ppl.tasks import EVAL_SEED


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm", default="models/shipped/lm")
    parser.add_argument("--problems", type=int, default=100)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=2000)
    parser.add_argument("--chunk", type=int, default=10, help="problems per batched Think call")
    parser.add_argument("--out", default="benchmarks/results/thinksum.json")
    args = parser.parse_args()
    if args.seed in (0, EVAL_SEED):
        parser.error(f"seeds 0 (training) and {EVAL_SEED} (EVAL_SEED) are not held out for this benchmark")

    lm, tokenizer = models.load(args.lm)
    problems = odd.make_problems(args.seed, args.problems)
    start = time.perf_counter()
    result = odd.evaluate(lm, tokenizer, problems, args.samples, args.seed, args.chunk)
    wall = time.perf_counter() - start
    s = result["summary"]
    result["config"] = {
        "lm": args.lm,
        "lm_sha256": hashlib.sha256((Path(args.lm) / "model.safetensors").read_bytes()).hexdigest()[:16],
        "problems": args.problems,
        "samples": args.samples,
        "seed": args.seed,
        "chunk": args.chunk,
        "wall_s": wall,
        "backend": jax.default_backend(),
        "command": f"python benchmarks/thinksum.py --lm {args.lm} --problems {args.problems} "
        f"--samples {args.samples} --seed {args.seed}",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))

    print(f"odd one out of 4 arithmetic expressions: {args.problems} problems, seed {args.seed}, S = {args.samples}")
    print(f"{'method':<34} {'accuracy':>8}")
    print(f"{'direct (greedy, 1 query each)':<34} {s['direct']:>8.1%}")
    print(f"{'majority of S samples':<34} {s['majority']:>8.1%}")
    print(f"{'ThinkSum (S samples + NumPyro)':<34} {s['thinksum']:>8.1%}")
    print(f"ThinkSum mean posterior confidence {s['thinksum_mean_confidence']:.3f}")
    print(f"per-expression value accuracy: greedy {s['greedy_value_accuracy']:.1%}, "
          f"sampled {s['sample_value_accuracy']:.1%}")
    print(f"wall {wall:.1f} s (compilation included), {jax.default_backend()}; JSON: {args.out}")


if __name__ == "__main__":
    main()
