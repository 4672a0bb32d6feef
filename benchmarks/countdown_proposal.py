"""What limits Countdown `pf`: how much the proposal and the PRM know about solvability.

With the exact verifier as PRM, `pf` can only keep what the LM proposes: a problem
is lost when none of the N particles' steps keeps the target reachable. This
benchmark measures, on the held-out problems (`countdown.generate(1000, n)`):

1. the LM's steps (temperature 1, `--samples` traces per problem): the
   share of each outcome (malformed, operand not in the pool, wrong arithmetic,
   legal dead end, still solvable) at each step, and the solvable share among its
   legal steps next to a uniformly random legal step's;
2. exact-oracle `pf` with the LM (the real engine) and, simulated exactly
   as the engine runs it (weights 0/1, systematic resampling when fewer than half
   survive), with idealised proposals: the LM's error rate at each step and
   otherwise, with probability q, a uniformly random solvable step, else a uniformly
   random legal one. q = 0 lands near the LM's own figure (its legal steps are nearly
   uniform in this respect); the table shows what q the 95%-at-16 target needs.
   Beside it, the engine with a verifier that is exact on every step except the
   first, which it judges by legality alone: what a PRM that cannot judge a first
   step's solvability leaves of `pf`'s edge over `wbon` at 4x the budget;
3. the learned PRM's AUC at each step of uniformly random legal traces (`--prm-problems`
   of them, each step written with the pool it leaves, as the LM writes it), among the
   traces still solvable before that step: whether it tells a step that keeps the
   target reachable from a dead end.

    python benchmarks/countdown_proposal.py [--problems 200] [--samples 16] [--lm DIR]
                                            [--out benchmarks/results/countdown_proposal.json]

`--lm` measures another LM checkpoint (a candidate from `python -m ppl.train`) in place of
the shipped one; the PRM judged in 3. stays the shipped one.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
from report import write_json

from ppl.commands.shipped import SHIPPED, load_models
from ppl.search import SearchSpec
from ppl.solver import Solver
from ppl.tasks import EVAL_SEED, TASKS, Verifier, countdown
from ppl.tasks.countdown import CountdownVerifier
from ppl.train import Drawn, prm_probabilities, roc_auc, scored, text_steps

OUTCOMES = ("malformed", "absent operand", "wrong arithmetic", "dead end", "solvable")
ERRORS = OUTCOMES[:3]
MIXTURES = (0.0, 0.05, 0.1, 0.2)
STEPS = countdown.NUM_NUMBERS - 1


def outcome(pool: countdown.Pool, text: str, target: int) -> tuple[str, countdown.Pool | None]:
    """What a written step is, from `pool`, and the pool after it (None unless legal)."""
    step = countdown.parse_step(text)
    if step is None:
        return "malformed", None
    if Counter((step.a, step.b)) - Counter(pool):
        return "absent operand", None
    after = countdown.apply_step(pool, step)
    if after is None:
        return "wrong arithmetic", None
    return ("solvable" if countdown.solvable(after, target) else "dead end"), after


class FirstStepLegalOnly(CountdownVerifier):
    """The exact verifier, except that a first step scores 1 when it is legal, reachable target or not."""

    def score_step(self, judge, tokens, mask):
        reward, (after, target) = super().score_step(judge, tokens, mask)
        first = jnp.sum(judge[0] >= 0, axis=-1) == countdown.NUM_NUMBERS
        legal = jnp.any(after >= 0, axis=-1)  # a malformed or illegal step empties the pool
        return jnp.where(first, legal.astype(reward.dtype), reward), (after, target)


def lm_outcomes(solver: Solver, problems: list[countdown.Problem], samples: int) -> list[Counter]:
    """Outcome counts at each step of the LM's traces, counting a step only while the trace is solvable."""
    counts = [Counter() for _ in range(STEPS)]
    for chunk, result, _ in solver.runs(problems, SearchSpec("majority", samples)):
        for row, index in enumerate(chunk):
            problem = problems[index]
            for texts in solver.particle_texts(result, row):
                pool = tuple(sorted(problem.numbers))
                for t in range(STEPS):
                    kind, pool = outcome(pool, texts[t], problem.target) if t < len(texts) else ("malformed", None)
                    counts[t][kind] += 1
                    if kind != "solvable":
                        break
    return counts


def uniform_solvable_share(problem: countdown.Problem) -> float:
    """The share of legal first steps that keep the target reachable."""
    pool = tuple(sorted(problem.numbers))
    return float(
        np.mean(
            [countdown.solvable(countdown.apply_step(pool, s), problem.target) for s in countdown.valid_steps(pool)]
        )
    )


def simulated_pf(problem: countdown.Problem, n: int, q: float, errors: list[float], rng: np.random.Generator) -> bool:
    """Exact-oracle `pf` with n particles and the idealised proposal (see the module docstring)."""
    pools = [tuple(sorted(problem.numbers))] * n
    alive = np.ones(n, bool)
    for t in range(STEPS):
        for i in range(n):
            if not alive[i] or rng.random() < errors[t]:
                alive[i] = False
                continue
            legal = countdown.valid_steps(pools[i])
            good = [s for s in legal if countdown.solvable(countdown.apply_step(pools[i], s), problem.target)]
            choices = good if rng.random() < q else legal
            pools[i] = countdown.apply_step(pools[i], choices[int(rng.integers(len(choices)))])
            alive[i] = countdown.solvable(pools[i], problem.target)
        survivors = np.flatnonzero(alive)
        if survivors.size == 0:
            return False
        if survivors.size < n / 2 and t < STEPS - 1:  # ESS of equal weights on the survivors
            positions = (rng.random() + np.arange(n)) * survivors.size / n  # systematic resampling
            pools = [pools[survivors[int(p)]] for p in positions]
            alive = np.ones(n, bool)
    return True


def prm_step_auc(problems: list[countdown.Problem], rng: np.random.Generator) -> list[dict]:
    """The shipped PRM's AUC at each step of uniformly random legal traces still solvable before it."""
    from models import load
    from ppl.train import build_tokenizer

    tokenizer = build_tokenizer()
    prm, _ = load(SHIPPED / "prm")
    examples = []
    for problem in problems:
        pool, lines = tuple(sorted(problem.numbers)), []
        for _ in range(STEPS):
            legal = countdown.valid_steps(pool)
            step = legal[int(rng.integers(len(legal)))]
            pool = countdown.apply_step(pool, step)
            lines.append(countdown.with_pool(step, pool))  # the trace format the PRM was trained on
        examples.append(scored(tokenizer, Drawn(TASKS["countdown"], problem), text_steps(tokenizer, lines), "uniform"))
    probs = prm_probabilities(prm, tokenizer, examples)
    out = []
    for t in range(STEPS):
        rows = [i for i, e in enumerate(examples) if t == 0 or e.labels[t - 1]]
        score = np.array([probs[i, examples[i].tags[t]] for i in rows])
        label = np.array([examples[i].labels[t] for i in rows])
        out.append({"auc": roc_auc(score, label), "traces": len(rows), "solvable": int(label.sum())})
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--samples", type=int, default=16, help="LM traces per problem")
    parser.add_argument("--particles", default="16,32", help="pf budgets")
    parser.add_argument("--lm", default=None, help="an LM checkpoint directory (default: the shipped LM)")
    parser.add_argument("--prm-problems", type=int, default=4000, help="uniform traces the PRM judges")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/countdown_proposal.json")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    budgets = [int(n) for n in args.particles.split(",")]
    problems = countdown.generate(EVAL_SEED, args.problems)
    task = TASKS["countdown"]
    lm, tokenizer, verifier = load_models(task, "oracle", lm_path=args.lm)
    solver = Solver(task, lm, tokenizer, verifier)

    counts = lm_outcomes(solver, problems, args.samples)
    shares = [{k: c[k] / max(sum(c.values()), 1) for k in OUTCOMES} for c in counts]
    errors = [sum(s[k] for k in ERRORS) for s in shares]
    legal_solvable = [s["solvable"] / max(s["solvable"] + s["dead end"], 1e-9) for s in shares]
    uniform_first = float(np.mean([uniform_solvable_share(p) for p in problems]))

    def accuracy(solver: Solver, method: str, n: int) -> float:
        return float(np.mean([r["correct"] for r in solver.solve(problems, SearchSpec(method, n), seed=args.seed)]))

    partial = Solver(task, lm, tokenizer, Verifier(FirstStepLegalOnly, CountdownVerifier.context))
    runs = [*((f"pf@{n}", "pf", n) for n in budgets), ("wbon@64", "wbon", 64)]
    engine = {
        name: {"exact": accuracy(solver, m, n), "first step by legality": accuracy(partial, m, n)}
        for name, m, n in runs
    }
    rng = np.random.default_rng(args.seed)
    simulated = [
        {
            "q": q,
            "errors": "lm" if lm else "none",
            **{
                str(n): float(np.mean([simulated_pf(p, n, q, errors if lm else [0.0] * STEPS, rng) for p in problems]))
                for n in budgets
            },
        }
        for lm in (True, False)
        for q in MIXTURES
    ]
    prm_auc = prm_step_auc(countdown.generate(EVAL_SEED, args.prm_problems), np.random.default_rng(args.seed))
    result = {
        "benchmark": "countdown_proposal",
        "problems": f"countdown.generate({EVAL_SEED}, {args.problems})",
        "samples": args.samples,
        "lm": args.lm or "models/shipped/lm",
        "seed": args.seed,
        "lm_step_outcomes": shares,
        "lm_solvable_among_legal": legal_solvable,
        "uniform_first_step_solvable": uniform_first,
        "verifier_engine": engine,
        "pf_oracle_simulated": simulated,
        "prm_step_auc_uniform_traces": prm_auc,
        "total_s": time.perf_counter() - began,
        "jax": jax.__version__,
    }
    print(
        f"\n{args.lm or 'shipped LM'}, {args.problems} held-out problems x {args.samples} traces: outcome of each step "
        "(counted while the trace is still solvable)"
    )
    print(f"{'step':<6}" + "".join(f"{k:>18}" for k in OUTCOMES) + f"{'solvable | legal':>18}")
    for t, s in enumerate(shares):
        print(f"{t + 1:<6}" + "".join(f"{s[k]:>18.3f}" for k in OUTCOMES) + f"{legal_solvable[t]:>18.3f}")
    print(f"a uniformly random legal first step is solvable {uniform_first:.3f} of the time")
    print(f"\nthe engine with this LM and a verifier PRM\n{'':<10}{'exact':>10}{'first step by legality':>26}")
    for name, row in engine.items():
        print(f"{name:<10}{row['exact']:>10.3f}{row['first step by legality']:>26.3f}")
    print("simulated, idealised proposals (q: share of proposals drawn among the solvable steps)")
    print(f"{'errors':<8}{'q':>6}" + "".join(f"{'N=' + str(n):>10}" for n in budgets))
    for row in simulated:
        print(f"{row['errors']:<8}{row['q']:>6.2f}" + "".join(f"{row[str(n)]:>10.3f}" for n in budgets))
    print(
        f"\nlearned PRM, AUC at each step of {args.prm_problems} uniformly random legal traces still solvable "
        "before it: "
        + ", ".join(
            f"step {t + 1} {a['auc']:.3f} ({a['solvable']} of {a['traces']} solvable)" for t, a in enumerate(prm_auc)
        )
    )
    print(f"wrote {write_json(args.out, result)} ({result['total_s']:.0f}s)")
    return result


if __name__ == "__main__":
    main()
