"""The result of ranking candidates: posterior draws of each candidate's quality.

Everything users read (mean, 90% interval, rank, P(rank = 1)) is computed from
the draws, so any model that yields draws of a per-candidate quality shares
this summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ppl.judges.infer import Fit, interval, to_inference_data


def rank_probabilities(draws: np.ndarray) -> np.ndarray:
    """P(rank = r) per candidate, shape (candidates, candidates); rank 1 = best (highest quality)."""
    S, C = draws.shape
    ranks = (-draws).argsort(axis=1).argsort(axis=1)  # 0 = best
    out = np.zeros((C, C))
    np.add.at(out, (np.tile(np.arange(C), S), ranks.ravel()), 1.0)
    return out / S


@dataclass
class RankResult:
    """Posterior quality draws, shape (draws, candidates), and the fit that produced them."""

    model: str
    candidates: pd.Index
    quality_draws: np.ndarray
    fit: Fit | None = None
    quality_scale: str = ""
    extra: dict = field(default_factory=dict)  # model-specific posterior summaries (e.g. judge confusion)

    def to_frame(self, mass: float = 0.9) -> pd.DataFrame:
        """`candidate, quality_mean, ci_low, ci_high, rank, p_rank1, r_hat, ess`, best candidate first
        (R-hat and effective sample size of each quality; NaN without NUTS)."""
        mean = self.quality_draws.mean(0)
        lo, hi = interval(self.quality_draws, mass)
        order = np.argsort(-mean, kind="stable")
        rank = np.empty(len(mean), dtype=int)
        rank[order] = np.arange(1, len(mean) + 1)
        p1 = rank_probabilities(self.quality_draws)[:, 0]
        rhat, ess = (self.fit or Fit({}, "none")).diagnostics(self.quality_draws)
        frame = pd.DataFrame({"candidate": self.candidates, "quality_mean": mean, "ci_low": lo, "ci_high": hi,
                              "rank": rank, "p_rank1": p1, "r_hat": rhat, "ess": ess})
        return frame.sort_values("rank", kind="stable").reset_index(drop=True)

    def rank_probabilities(self) -> pd.DataFrame:
        """Posterior P(rank = r) for every candidate (rows) and rank r = 1..C (columns)."""
        p = rank_probabilities(self.quality_draws)
        return pd.DataFrame(p, index=self.candidates, columns=pd.RangeIndex(1, p.shape[1] + 1, name="rank"))

    def to_inference_data(self):
        """ArviZ InferenceData: the model's parameters plus `quality` over candidates."""
        samples = dict(self.fit.samples) if self.fit is not None else {}
        samples["quality"] = self.quality_draws
        coords = {"candidate": np.asarray(self.candidates.astype(str))}
        coords.update(self.extra.get("coords", {}))
        dims = {"quality": ["candidate"]}
        dims.update(self.extra.get("dims", {}))
        fit_ = self.fit or Fit({}, "none")
        return to_inference_data(fit_, samples, coords, dims)
