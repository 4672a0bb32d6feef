"""Entropic particle filter vs the particle filter, and particle Gibbs, on held-out Countdown.

`pf`, `epf` with each temperature schedule (`ess`, `entropy`, `base`) with and without
look-ahead, and `pg` (K sweeps of P particles, K * P = N: equal total budget), at budgets
N = 2, 4, 8, 16, on the held-out problems of `ppl demo` (seed `EVAL_SEED`, never seen in
training), with the shipped LM and the learned PRM by default. Every configuration runs
the same problems with the same seed. Reported per cell: accuracy, tokens per problem
(look-ahead drafts, one extra step per particle at each resampling step, are not
counted), seconds per problem. The paper's claim to check: `epf` >= `pf` at N <= 8.

    python benchmarks/entropic.py [--problems 200] [--budgets 2,4,8,16] [--prm learned|oracle]
                                  [--task countdown] [--form bernoulli] [--threshold 0.5]
                                  [--out benchmarks/results/entropic.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
from report import write_json

from inference.entropic import SCHEDULES
from ppl.commands.demo import summarise
from ppl.commands.shipped import load_models
from ppl.search import SearchSpec
from ppl.solver import Solver
from ppl.tasks import EVAL_SEED, TASKS


def configurations(n: int, form: str, threshold: float) -> list[tuple[str, SearchSpec]]:
    """(label, spec) of every method compared at budget `n`."""
    common = dict(form=form, ess_threshold=threshold)
    configs = [("pf", SearchSpec("pf", n, **common))]
    for schedule in SCHEDULES:
        for lookahead in (False, True):
            label = f"epf-{schedule}" + ("+look" if lookahead else "")
            configs.append((label, SearchSpec("epf", n, schedule=schedule, lookahead=lookahead, **common)))
    if n >= 4:  # pg needs at least 2 particles per sweep and 2 sweeps
        configs.append(("pg", SearchSpec("pg", n, form=form)))
    return configs


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--budgets", default="2,4,8,16")
    parser.add_argument("--prm", choices=("learned", "oracle"), default="learned")
    parser.add_argument("--task", choices=tuple(TASKS), default="countdown")
    parser.add_argument("--form", choices=("bernoulli", "twist", "replace"), default="bernoulli",
                        help="PRM likelihood (replace + --threshold 1 is Puri et al.'s / its_hub's filter)")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="ESS/N below which pf resamples and epf anneals (1: resample every step)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/entropic.json")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    task = TASKS[args.task]
    problems = task.generate(EVAL_SEED, args.problems)
    solver = Solver(task, *load_models(task, args.prm))
    budgets = [int(b) for b in args.budgets.split(",")]
    rows = []
    for n in budgets:
        for label, spec in configurations(n, args.form, args.threshold):
            print(f"[{time.perf_counter() - began:6.0f}s] {label} N={n}", file=sys.stderr, flush=True)
            stats = summarise(solver.solve(problems, spec, seed=args.seed))
            stats.pop("pairs")
            rows.append({"method": label, "budget": n, **stats})
    result = {
        "benchmark": "entropic", "task": args.task, "prm": args.prm, "form": args.form,
        "threshold": args.threshold, "problems": args.problems,
        "eval_seed": EVAL_SEED, "seed": args.seed, "rows": rows, "compile_s": solver.compile_seconds,
        "total_s": time.perf_counter() - began, "load_avg_end": os.getloadavg(), "jax": jax.__version__,
    }
    labels = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["method"], r["budget"]): r for r in rows}
    print(f"\n{args.task}, {args.prm} PRM ({args.form}, threshold {args.threshold}), {args.problems} held-out "
          "problems: accuracy (tokens/problem)")
    print(f"{'method':<18}" + "".join(f"{'N=' + str(n):>16}" for n in budgets))
    for label in labels:
        line = f"{label:<18}"
        for n in budgets:
            r = cell.get((label, n))
            line += f"{r['accuracy']:>9.3f} ({r['tokens']:>4.0f})" if r else f"{'-':>16}"
        print(line)
    print(f"wrote {write_json(args.out, result)} ({result['total_s']:.0f}s)")
    return result


if __name__ == "__main__":
    main()
