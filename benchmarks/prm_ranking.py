"""Can the learned PRM rank the LM's own traces? Trace-level AUC across and within problems.

For reweighting (weighted majority, best-of-N, `pf`) to select, a PRM must rank a problem's
correct traces above its wrong ones. Here the shipped LM samples N traces per problem
(`bon`, temperature 1) on dev problems (seed 2000: neither training nor the held-out set),
the PRM scores each (`prod`, `min`, `last` of its step rewards), and the AUC of correct vs
wrong traces is reported twice: pooled over all problems (which also rewards knowing which
problems are hard) and within each problem that has both kinds of trace (what selection needs).

    python benchmarks/prm_ranking.py [--task arithmetic] [--problems 100] [--samples 8] [--models DIR]
                                     [--out benchmarks/results/prm_ranking.json]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from report import write_json

from ppl import readout
from ppl.commands.shipped import load_models
from ppl.search import SearchSpec
from ppl.solver import Solver
from ppl.tasks import TASKS

DEV_SEED = 2000
AGGREGATIONS = ("prod", "min", "last")


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a random positive > a random negative), ties counting half."""
    greater = (positive[:, None] > negative[None, :]).mean()
    return float(greater + 0.5 * (positive[:, None] == negative[None, :]).mean())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=tuple(TASKS), default="arithmetic")
    parser.add_argument("--problems", type=int, default=100)
    parser.add_argument("--samples", type=int, default=8, help="traces per problem")
    parser.add_argument("--models", default=None, help="DIR with lm/ and prm/ (default: the shipped pair)")
    parser.add_argument("--out", default="benchmarks/results/prm_ranking.json")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    task = TASKS[args.task]
    paths = (None, None) if args.models is None else (f"{args.models}/lm", f"{args.models}/prm")
    solver = Solver(task, *load_models(task, "learned", *paths))
    problems = task.generate(DEV_SEED, args.problems)
    correct, scores = [], {how: [] for how in AGGREGATIONS}  # per problem: [samples]
    for chunk, result, _ in solver.runs(problems, SearchSpec("bon", args.samples)):
        for row, index in enumerate(chunk):
            texts = solver.particle_texts(result, row)
            correct.append(np.array([task.correct(problems[index], t) for t in texts]))
            for how in AGGREGATIONS:
                scores[how].append(readout.trace_scores(result, row, how))
    ok = np.concatenate(correct)
    mixed = [i for i, c in enumerate(correct) if c.any() and not c.all()]
    rows = []
    for how in AGGREGATIONS:
        pooled = np.concatenate(scores[how])
        within = [auc(scores[how][i][correct[i]], scores[how][i][~correct[i]]) for i in mixed]
        rows.append({"aggregation": how, "pooled_auc": auc(pooled[ok], pooled[~ok]),
                     "within_problem_auc": float(np.mean(within)) if within else None})
    result = {
        "benchmark": "prm_ranking", "task": args.task, "models": args.models or "models/shipped",
        "problems": args.problems, "samples": args.samples,
        "dev_seed": DEV_SEED, "correct_fraction": float(ok.mean()),
        "any_correct": float(np.mean([c.any() for c in correct])), "mixed_problems": len(mixed),
        "rows": rows, "total_s": time.perf_counter() - began, "jax": jax.__version__,
    }
    print(f"\n{args.task}: {args.problems} dev problems x {args.samples} LM traces; {ok.mean():.1%} of traces "
          f"correct, {result['any_correct']:.1%} of problems have one, {len(mixed)} have both kinds")
    print(f"{'aggregation':<12}{'pooled AUC':>12}{'within-problem AUC':>20}")
    for r in rows:
        within = f"{r['within_problem_auc']:.3f}" if r["within_problem_auc"] is not None else "-"
        print(f"{r['aggregation']:<12}{r['pooled_auc']:>12.3f}{within:>20}")
    print(f"wrote {write_json(args.out, result)} ({result['total_s']:.0f}s)")
    return result


if __name__ == "__main__":
    main()
