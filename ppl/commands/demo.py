"""`ppl demo`: every search method at several budgets on held-out problems of the shipped tasks.

Prints a table (accuracy, tokens and seconds per problem; for a filter, the steps at which it resampled),
writes a JSON of all figures, a PNG of accuracy against budget (log x, a line per method,
as in Puri et al. 2025's figure 1, with 95% bootstrap intervals over problems)
and pf's reliability diagram per budget.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ppl.commands.shipped import PRM_KINDS
from ppl.errors import InputError

SAMPLING_FAMILY = ("bon", "wbon", "majority", "wmajority")  # share one run per budget
SELECTING = ("beam", "pf", "epf", "pg")  # select particles between steps: a run each, but at N = 1 (one sample:
# nothing to select) they share the sampling family's run, each read out by its own rule


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser("demo", help="all methods at budgets 1..16 (sampling to 64) on held-out problems; "
                                 "table, JSON, PNG")
    demo.add_argument("--problems", type=int, default=100, help="held-out problems per task (default 100)")
    demo.add_argument("--full", action="store_true", help="400 problems per task (slower, tighter intervals)")
    demo.add_argument("--budgets", default="1,4,16", help="comma-separated particle budgets of every method")
    demo.add_argument("--baseline-budgets", default="64",
                      help="further budgets of the sampling baselines only (bon, wbon, majority, wmajority; "
                      "comma-separated, '' for none): the papers set pf at N against best-of-N at 4N")
    demo.add_argument("--tasks", default="countdown,arithmetic", help="comma-separated tasks")
    demo.add_argument("--prm", choices=PRM_KINDS, default="learned")
    demo.add_argument("--out", default="demo_out", help="directory for demo.json and demo.png")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="no progress bar or compile messages on stderr")
    demo.set_defaults(run=run)


def _parse_list(text: str, kind: type, name: str, empty: bool = False) -> list:
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--{name} must be a comma-separated list, got {text!r}") from None
    if not values and not empty:
        raise InputError(f"--{name} is empty")
    return values


def expected_calibration_error(confidence: list[float], correct: list[bool], bins: int = 10) -> float:
    """ECE: the bin-size-weighted gap between mean confidence and accuracy over equal-width bins."""
    import numpy as np

    confidence, correct = np.asarray(confidence, float), np.asarray(correct, float)
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    gap = sum(abs(confidence[index == b].mean() - correct[index == b].mean()) * np.sum(index == b)
              for b in range(bins) if np.any(index == b))
    return float(gap / len(confidence))


def bootstrap_interval(correct: list[bool], level: float = 0.95, draws: int = 2000, seed: int = 0) -> list[float]:
    """Percentile bootstrap interval of the accuracy, resampling problems (a fixed seed: reproducible)."""
    outcomes = np.asarray(correct, float)
    resampled = np.random.default_rng(seed).choice(outcomes, (draws, len(outcomes))).mean(axis=1)
    return [float(q) for q in np.quantile(resampled, [(1 - level) / 2, (1 + level) / 2])]


def summarise(records: list[dict]) -> dict:
    n = len(records)
    confidence = [r["confidence"] for r in records]
    correct = [r["correct"] for r in records]
    return {
        "accuracy": sum(correct) / n,
        "accuracy_95": bootstrap_interval(correct),
        "tokens": sum(r["tokens"] for r in records) / n,
        "seconds": sum(r["seconds"] for r in records) / n,
        "confidence": sum(confidence) / n,
        "ece": expected_calibration_error(confidence, correct),
        "resampled": sum(r["resampled"] for r in records) / n if "resampled" in records[0] else None,
        "pairs": [[c, bool(k)] for c, k in zip(confidence, correct, strict=True)],
    }


def demo_runs(budgets: list[int], baseline_budgets: list[int]) -> list[tuple[Any, tuple[str, ...], int]]:
    """(spec, methods read out of its run, budget) of every run: greedy; at each of `budgets` the sampling
    family's run and one per selecting method (at N = 1 the family's run serves them all); at each of
    `baseline_budgets` the family's run only."""
    from ppl.search import SearchSpec

    runs = [(SearchSpec("greedy", 1), ("greedy",), 1)]
    for n in budgets:
        if n == 1:
            runs.append((SearchSpec("bon", n), SAMPLING_FAMILY + SELECTING, n))
            continue
        runs.append((SearchSpec("bon", n), SAMPLING_FAMILY, n))
        runs += [(SearchSpec(method, n), (method,), n) for method in SELECTING]
    runs += [(SearchSpec("bon", n), SAMPLING_FAMILY, n) for n in baseline_budgets if n not in budgets]
    return runs


def run(args: argparse.Namespace) -> int:
    from ppl.commands.shipped import load_models
    from ppl.progress import bar
    from ppl.solver import Solver
    from ppl.tasks import TASKS

    budgets = _parse_list(args.budgets, int, "budgets")
    baseline_budgets = _parse_list(args.baseline_budgets, int, "baseline-budgets", empty=True)
    tasks = _parse_list(args.tasks, str, "tasks")
    if any(b < 1 for b in budgets + baseline_budgets):
        raise InputError("--budgets and --baseline-budgets must be positive")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise InputError(f"unknown task {unknown[0]!r}; choose from {', '.join(TASKS)}")
    count = 400 if args.full else args.problems
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, compile_seconds = [], {}
    began = time.perf_counter()
    runs = demo_runs(budgets, baseline_budgets)
    with bar(len(tasks) * len(runs), "ppl demo", args.quiet, unit="run") as progress:
        for task in tasks:
            problems = TASKS[task].generate(TASKS[task].eval_seed, count)
            solver = Solver(TASKS[task], *load_models(TASKS[task], args.prm))
            for i, (spec, methods, n) in enumerate(runs):
                progress.set_postfix_str(f"{task} {'/'.join(methods)} N={n}")
                if i + 1 < len(runs):  # compiles while this one runs
                    solver.prefetch(problems, runs[i + 1][0], seed=args.seed)
                results = solver.solve_many(problems, spec, methods, seed=args.seed)
                for method in methods:
                    rows.append({"task": task, "method": method, "budget": n, **summarise(results[method])})
                progress.update()
            compile_seconds[task] = solver.compile_seconds
    figures = {
        "problems_per_task": count, "eval_seed": {task: TASKS[task].eval_seed for task in tasks}, "prm": args.prm,
        "rows": rows, "seconds_total": time.perf_counter() - began, "compile_seconds": compile_seconds,
    }
    (out_dir / "demo.json").write_text(json.dumps(figures, indent=2))
    print(table(rows))
    accuracy_figure(rows, count).savefig(out_dir / "demo.png", dpi=120)
    reliability_figure(rows).savefig(out_dir / "reliability.png", dpi=120)
    print(f"wrote {out_dir / 'demo.json'}, {out_dir / 'demo.png'} and {out_dir / 'reliability.png'}")
    return 0


def table(rows: list[dict]) -> str:
    lines = [f"{'task':<11}{'method':<11}{'N':>4}{'accuracy':>10}{'95% interval':>15}{'tokens':>9}"
             f"{'sec/problem':>13}{'ECE':>7}{'resampled':>11}"]
    for r in rows:
        low, high = r["accuracy_95"]
        resampled = "-" if r["resampled"] is None else f"{r['resampled']:.2f}"
        lines.append(f"{r['task']:<11}{r['method']:<11}{r['budget']:>4}{r['accuracy']:>10.3f}"
                     f"{f'[{low:.2f}, {high:.2f}]':>15}{r['tokens']:>9.0f}{r['seconds']:>13.3f}{r['ece']:>7.3f}"
                     f"{resampled:>11}")
    return "\n".join(lines)


MARKERS = "osD^vP*Xh"
STYLES = ("-", "--", "-.", ":")


def accuracy_figure(rows: list[dict], count: int, axes: Any = None) -> Figure:
    """Accuracy against budget, one panel per task (on `axes` if given), each method with its own marker
    and line style, its points nudged sideways, so that none hides another; 95% bootstrap intervals as error
    bars; greedy as a dashed level with its interval as a band."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    if axes is None:
        fig = Figure(figsize=(6 * len(tasks), 4.5), layout="constrained")
        axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    axes = np.ravel(axes)
    for ax, task in zip(axes, tasks, strict=True):
        methods = list(dict.fromkeys(r["method"] for r in rows if r["task"] == task))
        searched = [m for m in methods if m != "greedy"]
        for method in methods:
            pts = sorted((r["budget"], r["accuracy"], *r["accuracy_95"]) for r in rows
                         if r["task"] == task and r["method"] == method)
            budget, accuracy, low, high = (np.array(column) for column in zip(*pts, strict=True))
            if method == "greedy":
                ax.axhline(accuracy[0], color="gray", linestyle="--", label="greedy")
                ax.axhspan(low[0], high[0], color="gray", alpha=0.12)
                continue
            index = searched.index(method)
            nudge = 2.0 ** (0.12 * (index - (len(searched) - 1) / 2))  # side by side on the log axis
            ax.errorbar(budget * nudge, accuracy, yerr=[accuracy - low, high - accuracy], capsize=2, lw=1.2,
                        marker=MARKERS[index % len(MARKERS)], linestyle=STYLES[index % len(STYLES)], label=method)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("budget N (particles / samples)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{task} ({count} held-out problems)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return axes[0].figure


def reliability_figure(rows: list[dict], bins: int = 10, axes: Any = None) -> Figure:
    """Reliability diagrams of pf's answer confidence: one panel per task and budget (rows x columns of
    `axes` if given), each bar labelled with its number of problems, each panel with its own ECE."""
    panels = [(r["task"], r["budget"], np.array(r["pairs"], float)) for r in rows if r["method"] == "pf"]
    tasks = list(dict.fromkeys(task for task, _, _ in panels))
    budgets = sorted({budget for _, budget, _ in panels})
    if axes is None:
        fig = Figure(figsize=(3.2 * len(budgets), 3.2 * len(tasks)), layout="constrained")
        axes = fig.subplots(len(tasks), len(budgets), squeeze=False)
    axes = np.asarray(axes).reshape(len(tasks), len(budgets))
    for task, budget, pairs in panels:
        ax = axes[tasks.index(task), budgets.index(budget)]
        index = np.minimum((pairs[:, 0] * bins).astype(int), bins - 1)
        used = [b for b in range(bins) if np.any(index == b)]
        centers = [(b + 0.5) / bins for b in used]
        accuracy = [pairs[index == b, 1].mean() for b in used]
        bars = ax.bar(centers, accuracy, width=1 / bins, edgecolor="k", alpha=0.7)
        ax.bar_label(bars, labels=[str(int(np.sum(index == b))) for b in used], fontsize=6)
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ece = expected_calibration_error(list(pairs[:, 0]), list(pairs[:, 1].astype(bool)), bins)
        ax.set(xlim=(0, 1), ylim=(0, 1.1), title=f"{task} pf N={budget}: ECE {ece:.3f}")
        ax.set_xlabel("confidence (posterior mass)", fontsize=8)
        ax.set_ylabel("accuracy (bar label: problems)", fontsize=8)
    return axes.flat[0].figure
