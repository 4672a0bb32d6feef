"""Answer posteriors: grouping by answer class and the four voting rules."""

import numpy as np
import pytest

from inference.answers import answer_posterior, votes


def test_majority_weighted_posterior_and_best():
    answers = [3, 5, 3, None, 5, 5]
    scores = np.array([0.9, 0.1, 0.8, 1.0, 0.2, 0.3])
    log_w = np.log(np.array([0.4, 0.05, 0.3, 0.1, 0.05, 0.1]))
    majority = answer_posterior(answers, votes("majority", size=6))
    assert majority.best == 5 and majority.confidence == pytest.approx(3 / 5)
    weighted = answer_posterior(answers, votes("weighted", scores))
    assert weighted.best == 3 and weighted.confidence == pytest.approx(1.7 / 2.3)
    posterior = answer_posterior(answers, votes("posterior", log_weights=log_w))
    assert posterior.best == 3 and posterior.confidence == pytest.approx(0.7 / 0.9)
    assert posterior.chosen_trace == 0  # the class's highest-weight trace represents it
    best = answer_posterior(answers, votes("best", scores))
    assert best.best is None and best.chosen_trace is None  # the top-scoring trace (index 3) has no answer
    best = answer_posterior(answers, votes("best", np.array([0.9, 0.1, 0.8, 0.0, 0.95, 0.3])))
    assert best.best == 5 and best.chosen_trace == 4 and best.confidence == 1.0


def test_probabilities_sum_to_one_and_no_answers_is_empty():
    post = answer_posterior(["a", "b", "a"], np.array([1.0, 2.0, 3.0]))
    assert post.answers == ["a", "b"] and np.isclose(post.probs.sum(), 1.0)
    empty = answer_posterior([None, None], np.ones(2))
    assert empty.best is None and empty.confidence == 0.0
    with pytest.raises(ValueError, match="rule"):
        votes("mode", np.ones(2))
