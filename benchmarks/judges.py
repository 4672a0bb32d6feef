"""Judge models against peers: crowd label aggregation and simulation-based calibration of ranking.

1. Crowd data with ground truth (RTE, Web, Dog in data/crowd): our
   Bayesian Dawid-Skene (NUTS; the default hierarchical prior and the flat
   Dirichlet prior), one-coin and majority vote against crowd-kit's
   DawidSkene and MajorityVote (optional `bench` extra): accuracy of the
   posterior-mode label, expected calibration error of its confidence, wall time,
   and an exact McNemar test of ours against crowd-kit's DawidSkene on the same tasks.
2. Simulation-based calibration: judge scores drawn from the simplex model's
   prior (weak judges, one self-preferring judge, 3-5 score levels); coverage
   of 90% intervals and Spearman correlation with the truth for the simplex
   model, simple averaging and plain Bradley-Terry.

    python benchmarks/judges.py [--out benchmarks/results/judges.json] [--reps 30]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binomtest, spearmanr

from ppl.judges import aggregate, rank
from ppl.judges.bradley_terry import plain_bradley_terry
from ppl.judges.data import encode_scores, read_table, scores_to_pairs
from ppl.judges.simplex import simulate

DATA = Path(__file__).resolve().parents[1] / "data" / "crowd"


def ece(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: |accuracy - confidence| averaged over equal-width confidence bins."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.mean() * abs(correct[m].mean() - confidence[m].mean())
    return float(total)


def score_probs(probs: pd.DataFrame, truth: pd.Series) -> dict:
    """Accuracy and ECE of a task x label probability table against the truth (`_correct`: per task)."""
    p = probs.reindex(truth.index)
    label = p.idxmax(axis=1)
    correct = (label.to_numpy() == truth.to_numpy()).astype(float)
    return {"accuracy": float(correct.mean()), "ece": ece(p.max(axis=1).to_numpy(), correct), "_correct": correct}


def paired(ours_correct: np.ndarray, theirs_correct: np.ndarray) -> dict:
    """Exact McNemar test on the same tasks: is either aggregator right more often where they differ?"""
    only_ours = int(np.sum((ours_correct == 1) & (theirs_correct == 0)))
    only_theirs = int(np.sum((ours_correct == 0) & (theirs_correct == 1)))
    p = binomtest(only_ours, only_ours + only_theirs, 0.5).pvalue if only_ours + only_theirs else 1.0
    return {"right_only_ours": only_ours, "right_only_theirs": only_theirs, "mcnemar_p": float(p)}


def ours(df: pd.DataFrame, truth: pd.Series, model: str, **kw) -> dict:
    t0 = time.perf_counter()
    res = aggregate(df, model=model, **kw)
    wall = time.perf_counter() - t0
    lab = res.labels
    probs = pd.DataFrame(res.probs, index=lab.tasks, columns=lab.classes)
    out = score_probs(probs, truth) | {"seconds": wall}
    if res.fit is not None and res.fit.diverging is not None:
        out["divergences"] = int(res.fit.diverging.sum())
    return out


def crowdkit(df: pd.DataFrame, truth: pd.Series, name: str) -> dict | None:
    try:
        from crowdkit.aggregation import DawidSkene, MajorityVote
    except ImportError:
        return None
    algo = DawidSkene(n_iter=100) if name == "DawidSkene" else MajorityVote()
    t0 = time.perf_counter()
    probs = algo.fit_predict_proba(df[["task", "worker", "label"]])
    return score_probs(probs, truth) | {"seconds": time.perf_counter() - t0}


def crowd_benchmark(names: list[str], num_samples: int, num_warmup: int) -> dict:
    results = {}
    for name in names:
        df = read_table(DATA / f"{name}.tsv", ("task", "worker", "label"))
        truth = read_table(DATA / f"{name}_truth.tsv", ("task", "truth")).set_index("task")["truth"]
        kw = dict(num_samples=num_samples, num_warmup=num_warmup)
        row = {
            "ours dawid-skene (NUTS)": ours(df, truth, "dawid-skene", **kw),
            "ours dawid-skene flat prior (NUTS)": ours(df, truth, "dawid-skene", prior="flat", **kw),
            "ours one-coin (NUTS)": ours(df, truth, "one-coin", **kw),
            "ours majority": ours(df, truth, "majority"),
            "crowd-kit DawidSkene": crowdkit(df, truth, "DawidSkene"),
            "crowd-kit MajorityVote": crowdkit(df, truth, "MajorityVote"),
        }
        row = {k: v for k, v in row.items() if v is not None}
        correct = {k: v.pop("_correct") for k, v in row.items()}
        if "crowd-kit DawidSkene" in correct:
            row["_vs_crowdkit"] = paired(correct["ours dawid-skene (NUTS)"], correct["crowd-kit DawidSkene"])
        results[name] = row
        results[name]["_size"] = {"tasks": int(df.task.nunique()), "workers": int(df.worker.nunique()),
                                  "labels": len(df), "classes": int(df.label.nunique())}
        print(f"  {name}: done", flush=True)
    return results


def true_win_rate(pi: np.ndarray) -> np.ndarray:
    """P(c's true level beats a random other candidate's | no tie), averaged over the others."""
    C, K = pi.shape
    cdf = np.cumsum(pi, axis=1)
    out = np.zeros(C)
    for c in range(C):
        rates = []
        for o in range(C):
            if o == c:
                continue
            win = (pi[c, 1:] * cdf[o, :-1]).sum()
            tie = (pi[c] * pi[o]).sum()
            rates.append(win / (1.0 - tie))
        out[c] = np.mean(rates)
    return out


def bt_win_rate(beta: np.ndarray) -> np.ndarray:
    """Mean over the other candidates of sigmoid(beta_c - beta_o), for each row of `beta` (draws, C)."""
    d = beta[:, :, None] - beta[:, None, :]
    p = 1.0 / (1.0 + np.exp(-d))
    C = beta.shape[1]
    return (p.sum(-1) - 0.5) / (C - 1)


def sbc(reps: int, num_samples: int, num_warmup: int, n_items: int) -> dict:
    """Coverage of 90% intervals and Spearman correlation with the truth, three methods."""
    cover = {"simplex": [], "averaging": [], "bradley-terry": []}
    rho = {"simplex": [], "averaging": [], "bradley-terry": []}
    seconds = []
    for r in range(reps):
        K = 3 + r % 3
        df, quality, truth = simulate(1000 + r, n_candidates=6, n_judges=4, n_items=n_items, n_levels=K)
        cands = quality.index
        t0 = time.perf_counter()
        f = rank(df, seed=r, num_samples=num_samples, num_warmup=num_warmup).to_frame().set_index("candidate")
        seconds.append(time.perf_counter() - t0)
        f = f.loc[cands]
        cover["simplex"] += list((f.ci_low <= quality) & (quality <= f.ci_high))
        rho["simplex"].append(spearmanr(f.quality_mean, quality)[0])

        g = df.groupby("candidate")["score"]
        mean, se = g.mean().loc[cands], (g.std() / np.sqrt(g.size())).loc[cands]
        cover["averaging"] += list((mean - 1.645 * se <= quality) & (quality <= mean + 1.645 * se))
        rho["averaging"].append(spearmanr(mean, quality)[0])

        scores = encode_scores(df)
        beta, cov = plain_bradley_terry(scores_to_pairs(scores))
        order = scores.candidates.get_indexer(cands)
        draws = np.random.default_rng(r).multivariate_normal(beta, cov, size=2000, method="eigh")
        win = bt_win_rate(draws)[:, order]
        lo, hi = np.quantile(win, 0.05, axis=0), np.quantile(win, 0.95, axis=0)
        target = true_win_rate(truth["pi"])
        cover["bradley-terry"] += list((lo <= target) & (target <= hi))
        rho["bradley-terry"].append(spearmanr(beta[order], quality)[0])
        print(f"  sbc rep {r + 1}/{reps} (K={K}) {seconds[-1]:.1f}s", flush=True)
    return {
        "reps": reps, "n_candidates": 6, "n_judges": 4, "n_items": n_items, "levels": "3-5",
        "coverage_90": {k: float(np.mean(v)) for k, v in cover.items()},
        "spearman_mean": {k: float(np.nanmean(v)) for k, v in rho.items()},
        "simplex_seconds_mean": float(np.mean(seconds)),
        "targets": {"simplex": "expected true score", "averaging": "expected true score (mean +- 1.645 se)",
                    "bradley-terry": "true win rate vs the others (Laplace interval of the MLE)"},
    }


def table(results: dict) -> str:
    lines = []
    crowd = results.get("crowd", {})
    if crowd:
        lines.append(f"{'data':6} {'method':36} {'accuracy':>9} {'ECE':>7} {'seconds':>8}")
        for name, rows in crowd.items():
            for method, m in rows.items():
                if method.startswith("_"):
                    continue
                lines.append(f"{name:6} {method:36} {m['accuracy']:9.4f} {m['ece']:7.4f} {m['seconds']:8.1f}")
            if "_vs_crowdkit" in rows:
                v = rows["_vs_crowdkit"]
                lines.append(f"{name:6} ours vs crowd-kit Dawid-Skene on the same tasks: right only ours "
                             f"{v['right_only_ours']}, only theirs {v['right_only_theirs']}, exact McNemar p "
                             f"{v['mcnemar_p']:.3f}")
    s = results.get("sbc")
    if s:
        lines.append(f"\nSBC: {s['reps']} replications, {s['n_candidates']} candidates, {s['n_judges']} judges, "
                     f"{s['n_items']} items, {s['levels']} levels")
        lines.append(f"{'method':15} {'coverage90':>10} {'spearman':>9}")
        for k in s["coverage_90"]:
            lines.append(f"{k:15} {s['coverage_90'][k]:10.3f} {s['spearman_mean'][k]:9.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/judges.json")
    p.add_argument("--datasets", default="rte,web,dog")
    p.add_argument("--num-samples", type=int, default=500)
    p.add_argument("--num-warmup", type=int, default=500)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--items", type=int, default=40)
    p.add_argument("--skip-crowd", action="store_true")
    p.add_argument("--skip-sbc", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A skipped section keeps what an earlier run wrote, so the two halves can run separately.
    results: dict = json.loads(out.read_text()) if out.exists() and (args.skip_crowd or args.skip_sbc) else {}
    if not args.skip_crowd:
        results["crowd"] = crowd_benchmark(args.datasets.split(","), args.num_samples, args.num_warmup)
        out.write_text(json.dumps(results, indent=2))
    if not args.skip_sbc:
        results["sbc"] = sbc(args.reps, 400, 400, args.items)
    out.write_text(json.dumps(results, indent=2))
    print(table(results))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
