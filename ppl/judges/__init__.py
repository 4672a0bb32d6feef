"""Bayesian aggregation of crowd/LLM-judge labels and ranking of candidates.

`aggregate(df)` takes crowd-kit style `task, worker, label` rows (an LLM judge
is a worker) and returns the posterior of every task's true label and every
worker's reliability. `rank(df)` takes `item, candidate, judge, score` rows (or
`item, left, right, judge, winner` pairs, or crowd-kit's `worker, left, right,
label`) and returns each candidate's
posterior quality, 90% interval, rank and P(rank = 1). NUTS by default,
`svi=True` for large data; results export to pandas and ArviZ.
"""

from __future__ import annotations

import pandas as pd

from ppl.errors import InputError
from ppl.judges.bradley_terry import fit_bradley_terry
from ppl.judges.data import (
    PAIR_COLUMNS,
    SCORE_COLUMNS,
    encode_labels,
    encode_pairs,
    encode_scores,
    pairwise_frame,
    read_table,
    scores_to_pairs,
)
from ppl.judges.dawid_skene import AggregateResult, fit_dawid_skene, majority_vote
from ppl.judges.ranking import RankResult
from ppl.judges.simplex import fit_simplex

__all__ = ["aggregate", "rank", "read_table", "AggregateResult", "RankResult", "AGGREGATE_MODELS", "RANK_MODELS"]

AGGREGATE_MODELS = ("dawid-skene", "one-coin", "majority")
RANK_MODELS = ("simplex", "bradley-terry")


def aggregate(df: pd.DataFrame, model: str = "dawid-skene", *, seed: int = 0, num_samples: int = 500,
              num_warmup: int = 500, num_chains: int = 4, svi: bool = False, progress_bar: bool = False,
              **priors) -> AggregateResult:
    """Posterior of each task's true label from `task, worker, label` rows.

    model: "dawid-skene" (full confusion matrix per worker), "one-coin" (one
    accuracy per worker) or "majority" (vote shares, no model). `priors` go to
    the model: `prior` ("hierarchical", the default: worker confusions pooled
    towards a learned population confusion; or "flat": independent Dirichlet
    rows with concentration `prior_diag` on and `prior_off` off the diagonal).
    """
    if model not in AGGREGATE_MODELS:
        raise InputError(f"unknown aggregation model {model!r}; choose one of {', '.join(AGGREGATE_MODELS)}")
    labels = encode_labels(df)
    if model == "majority":
        return majority_vote(labels)
    if model == "one-coin":
        priors = priors | {"prior": "one-coin"}
    return fit_dawid_skene(labels, seed=seed, num_samples=num_samples, num_warmup=num_warmup,
                           num_chains=num_chains, svi=svi, progress_bar=progress_bar, **priors)


def is_pairwise(df: pd.DataFrame) -> bool:
    """Pairwise data has `left, right, winner` columns (crowd-kit's: `left, right, label`) instead of
    `candidate, score`."""
    columns = set(pairwise_frame(df).columns)
    return {"left", "right", "winner"} <= columns and not {"candidate", "score"} <= columns


def rank(df: pd.DataFrame, model: str = "simplex", *, seed: int = 0, num_samples: int = 500,
         num_warmup: int = 500, num_chains: int = 4, svi: bool = False, self_map: dict | None = None,
         progress_bar: bool = False,
         **options) -> RankResult:
    """Posterior quality and rank of each candidate.

    model "simplex" needs scores (`item, candidate, judge, score`, optional 0/1
    `self`); "bradley-terry" (Davidson ties) takes pairs (`item, left, right,
    judge, winner`) or scores, turned into every within-item, within-judge pair.
    `self_map` maps a judge to its own candidate (self-preference term).
    """
    if model not in RANK_MODELS:
        raise InputError(f"unknown ranking model {model!r}; choose one of {', '.join(RANK_MODELS)}")
    common = dict(seed=seed, num_samples=num_samples, num_warmup=num_warmup, num_chains=num_chains, svi=svi,
                  progress_bar=progress_bar)
    if isinstance(df, pd.DataFrame) and is_pairwise(df):
        if model == "simplex":
            raise InputError("the simplex model needs scores (columns " + ", ".join(SCORE_COLUMNS)
                             + "); for pairwise data (" + ", ".join(PAIR_COLUMNS) + ") use model bradley-terry")
        return fit_bradley_terry(encode_pairs(df), **common, **options)
    scores = encode_scores(df, self_map)
    if model == "bradley-terry":
        pairs = scores_to_pairs(scores)
        if len(pairs.left) == 0:
            raise InputError("score data has no item scored for two candidates by the same judge; "
                             "Bradley-Terry needs comparisons")
        return fit_bradley_terry(pairs, **common, **options)
    return fit_simplex(scores, **common, **options)
