"""`ppl judges aggregate` and `ppl judges rank`: the judge models from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from ppl.errors import InputError

DEFAULTS = dict(seed=0, num_samples=500, num_warmup=500, num_chains=4)


def register(subparsers) -> None:
    """Add the `judges` command group with `aggregate` and `rank`."""
    judges = subparsers.add_parser("judges", help="aggregate crowd/LLM-judge labels and rank candidates")
    sub = judges.add_subparsers(dest="judges_command", required=True)

    agg = sub.add_parser("aggregate", help="posterior of each task's true label (task, worker, label rows)")
    agg.add_argument("input", help="TSV with columns task, worker, label (header optional)")
    agg.add_argument("--out", required=True, help="TSV written with columns task, label, prob")
    agg.add_argument("--workers-out", help="TSV of worker reliabilities (default: OUT with _workers suffix)")
    agg.add_argument("--model", default="dawid-skene", choices=("dawid-skene", "one-coin", "majority"))
    agg.add_argument("--prior", default="hierarchical", choices=("hierarchical", "flat"),
                     help="dawid-skene: worker confusions pooled towards a learned population confusion "
                          "(default), or independent Dirichlet rows per worker")
    agg.add_argument("--all-labels", action="store_true",
                     help="write every (task, label) posterior probability, not just each task's mode")
    _common(agg)
    agg.set_defaults(run=run_aggregate)

    rk = sub.add_parser("rank", help="rank candidates (item, candidate, judge, score rows or pairwise)")
    rk.add_argument("input", help="TSV: item, candidate, judge, score [, self] or item, left, right, judge, winner")
    rk.add_argument("--out", required=True, help="TSV: candidate, quality_mean, ci_low, ci_high, rank, p_rank1")
    rk.add_argument("--model", default="simplex", choices=("simplex", "bradley-terry"))
    rk.add_argument("--monotone", action="store_true", help="simplex: monotone (ordered-logistic) judge confusion")
    rk.add_argument("--item-effects", action="store_true", help="simplex: item random effects on the true score")
    rk.add_argument("--self", dest="self_map", action="append", default=[], metavar="JUDGE=CANDIDATE",
                    help="simplex: JUDGE is the model behind CANDIDATE (self-preference term); repeatable")
    _common(rk)
    rk.set_defaults(run=run_rank)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plot", metavar="PNG", help="write a figure (forest plot / confusion heatmaps) to PNG")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--num-samples", type=_positive, default=DEFAULTS["num_samples"], help="draws per chain")
    p.add_argument("--chains", type=_positive, default=DEFAULTS["num_chains"],
                   help="NUTS chains (vectorized); R-hat and ESS in the output need two or more")
    p.add_argument("--num-warmup", type=_positive, default=DEFAULTS["num_warmup"])
    p.add_argument("--svi", action="store_true", help="variational inference (optax Adam) instead of NUTS")
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _write(frame: pd.DataFrame, path: str | Path) -> None:
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise InputError(f"{path}: output directory {path.parent} does not exist")
    frame.to_csv(path, sep="\t", index=False, float_format="%.6g")


def _sampling(args) -> dict:
    return dict(seed=args.seed, num_samples=args.num_samples, num_warmup=args.num_warmup, num_chains=args.chains,
                svi=args.svi,
                progress_bar=not args.quiet)


def run_aggregate(args) -> int:
    from ppl.judges import aggregate, read_table
    from ppl.judges.data import LABEL_COLUMNS

    df = read_table(args.input, LABEL_COLUMNS)
    priors = {"prior": args.prior} if args.model == "dawid-skene" else {}
    result = aggregate(df, model=args.model, **_sampling(args), **priors)
    workers_out = args.workers_out or str(Path(args.out).with_name(Path(args.out).stem + "_workers.tsv"))
    _write(result.to_frame(all_labels=args.all_labels), args.out)
    _write(result.workers_frame(), workers_out)
    if args.plot:
        from ppl.judges import plots

        if result.confusion is not None and args.model == "dawid-skene":
            counts = result.workers_frame()["n_labels"].to_numpy()
            plots.confusion_heatmaps(result.confusion, result.labels.workers, result.labels.classes, args.plot,
                                     title="worker confusion (posterior mean), most active workers", weights=counts)
        else:
            w = result.workers_frame().rename(columns={"worker": "candidate", "accuracy_mean": "quality_mean"})
            w["p_rank1"] = float("nan")
            plots.forest(w.head(40), args.plot, title=f"worker accuracy ({args.model})", xlabel="accuracy")
    return 0


def run_rank(args) -> int:
    from ppl.judges import is_pairwise, rank, read_table

    df = read_table(args.input, None)
    self_map = {}
    for entry in args.self_map:
        judge, sep, cand = entry.partition("=")
        if not sep or not judge or not cand:
            raise InputError(f"--self expects JUDGE=CANDIDATE, got {entry!r}")
        self_map[_typed(df, "judge", judge)] = _typed(df, "candidate", cand)
    options = {}
    if args.model == "simplex":
        options = dict(monotone=args.monotone, item_effects=args.item_effects)
    elif args.monotone or args.item_effects or self_map:
        raise InputError("--monotone, --item-effects and --self apply to the simplex model only")
    result = rank(df, model=args.model, self_map=self_map or None, **_sampling(args), **options)
    frame = result.to_frame()
    _write(frame, args.out)
    if args.plot:
        from ppl.judges import plots

        plots.forest(frame, args.plot, title=f"candidates ({args.model})", xlabel=result.quality_scale)
        if "confusion" in result.extra and not is_pairwise(df):
            plots.confusion_heatmaps(result.extra["confusion"], result.extra["judges"], result.extra["levels"],
                                     plots.sibling(args.plot, "judges"), title="judge confusion (posterior mean)")
    return 0


def _typed(df: pd.DataFrame, column: str, text: str):
    """Match a command-line name to the column's type (judges/candidates may be numbers)."""
    if column in df.columns and pd.api.types.is_numeric_dtype(df[column]):
        try:
            return int(text)
        except ValueError:
            return text
    return text
