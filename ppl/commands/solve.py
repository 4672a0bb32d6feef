"""`ppl countdown solve` and `ppl arithmetic solve`: run a search method over a JSONL file of problems."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ppl.commands.shipped import PRM_KINDS
from ppl.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    from inference.entropic import SCHEDULES
    from ppl.search import METHODS
    from ppl.tasks import TASKS

    for task in TASKS:
        group = subparsers.add_parser(task, help=f"{task} problems")
        commands = group.add_subparsers(dest="action", required=True)
        solve = commands.add_parser("solve", help=f"solve {task} problems from a JSONL file")
        solve.add_argument("--problems", required=True, help="input JSONL, one problem per line")
        solve.add_argument("--method", required=True, choices=METHODS)
        solve.add_argument("--particles", type=int, default=16, help="budget N: particles, samples or beams")
        solve.add_argument("--out", required=True, help="output JSONL")
        solve.add_argument("--prm", choices=PRM_KINDS, default="learned")
        solve.add_argument("--seed", type=int, default=0)
        solve.add_argument("--form", choices=("bernoulli", "twist", "replace"), default="bernoulli",
                           help="how the particle filter uses the PRM")
        solve.add_argument("--schedule", choices=SCHEDULES, default="ess",
                           help="epf: temperature schedule of the entropic resampling")
        solve.add_argument("--lookahead", action="store_true", help="epf: score a one-step draft before resampling")
        solve.add_argument("--lm-path", help="local HF checkpoint of the proposal LM (default: shipped)")
        solve.add_argument("--prm-path", help="local HF checkpoint of the PRM (default: shipped)")
        solve.set_defaults(run=run, task=task)


def run(args: argparse.Namespace) -> int:
    from ppl.commands.shipped import load_models
    from ppl.search import SearchSpec
    from ppl.solver import Solver
    from ppl.tasks import TASKS

    if args.particles < 1:
        raise InputError(f"--particles must be at least 1, got {args.particles}")
    task = TASKS[args.task]
    problems = task.read(args.problems)
    out = Path(args.out)
    if out.parent and not out.parent.exists():
        raise InputError(f"output directory {out.parent} does not exist")
    spec = SearchSpec(args.method, args.particles, form=args.form, schedule=args.schedule, lookahead=args.lookahead)
    solver = Solver(task, *load_models(task, args.prm, args.lm_path, args.prm_path))
    began = time.perf_counter()

    def progress(done: int, total: int) -> None:
        print(f"\r{args.task} {args.method} N={args.particles}: {done}/{total} problems, "
              f"{time.perf_counter() - began:.0f}s", end="", file=sys.stderr, flush=True)

    records = solver.solve(problems, spec, seed=args.seed, progress=progress)
    print(file=sys.stderr)
    with out.open("w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    accuracy = sum(r["correct"] for r in records) / len(records)
    print(f"{args.task} {args.method} N={args.particles}: accuracy {accuracy:.3f} on {len(records)} problems, "
          f"{sum(r['tokens'] for r in records)} tokens -> {out}")
    return 0
