"""Answer posteriors: from a weighted set of finished traces to a distribution over answers.

Traces are grouped into answer classes by a canonical answer (the caller's
canonicaliser decides what "the same answer" means, e.g. numeric equality);
a trace without an answer (None) joins no class. A rule says how much each
trace votes:

* `majority`: one vote per trace (self-consistency);
* `weighted`: the trace's aggregated PRM score (weighted majority / weighted best-of-N);
* `posterior`: the trace's normalised SMC weight (the particle approximation);
* `best`: all mass to the single highest-scoring trace (best-of-N, beam search).

The chosen answer is the class with the most mass; that mass is the reported
confidence.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import NamedTuple

import numpy as np

RULES = ("majority", "weighted", "posterior", "best")


class AnswerPosterior(NamedTuple):
    answers: list[Hashable]  # answer classes, most probable first
    probs: np.ndarray  # their posterior masses (sum to 1 unless no trace has an answer)
    representative: list[int]  # per class: index of its highest-voting trace

    @property
    def best(self) -> Hashable | None:
        return self.answers[0] if self.answers else None

    @property
    def confidence(self) -> float:
        return float(self.probs[0]) if self.answers else 0.0

    @property
    def chosen_trace(self) -> int | None:
        return self.representative[0] if self.answers else None


def votes(rule: str, scores: np.ndarray | None = None, log_weights: np.ndarray | None = None, size: int = 0):
    """Each trace's vote under `rule` (see the module docstring)."""
    if rule not in RULES:
        raise ValueError(f"answer rule must be one of {RULES}, got {rule!r}")
    if rule == "majority":
        return np.ones(size if scores is None else len(scores))
    if rule == "posterior":
        if log_weights is None:
            raise ValueError("the posterior rule needs log_weights")
        w = np.exp(np.asarray(log_weights, np.float64) - np.max(log_weights))
        return np.nan_to_num(w)
    if scores is None:
        raise ValueError(f"the {rule} rule needs scores")
    scores = np.nan_to_num(np.asarray(scores, np.float64))
    if rule == "weighted":
        return scores
    one_hot = np.zeros(len(scores))
    one_hot[int(np.argmax(scores))] = 1.0
    return one_hot


def answer_posterior(answers: Sequence[Hashable | None], vote: np.ndarray) -> AnswerPosterior:
    """Group traces by answer and normalise their votes into a posterior over answers."""
    mass: dict[Hashable, float] = {}
    top: dict[Hashable, int] = {}
    for i, (answer, v) in enumerate(zip(answers, vote, strict=True)):
        if answer is None:
            continue
        mass[answer] = mass.get(answer, 0.0) + float(v)
        if answer not in top or v > vote[top[answer]]:
            top[answer] = i
    total = sum(mass.values())
    if total <= 0:  # no trace with an answer has any vote
        return AnswerPosterior([], np.zeros(0), [])
    classes = sorted(mass, key=lambda a: (-mass[a], top[a]))
    probs = np.array([mass[a] / total for a in classes])
    return AnswerPosterior(classes, probs, [top[a] for a in classes])
