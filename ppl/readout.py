"""Reading a search run's particles: step texts, PRM scores, and the answer record of a problem.

A run's result (`ppl.search.SearchResult`, on the host, one row per problem) holds every
particle's trace as token ids; this module turns a row into what the user sees: the chosen
trace's steps, the answer posterior's best class and its mass, the tokens spent.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import jax.numpy as jnp
import numpy as np

from inference.answers import answer_posterior, votes
from inference.smc import WeightStatus
from models.sampling import NO_TOKEN
from ppl.search import SELECTION, SearchResult
from ppl.tasks import Task

AGGREGATIONS = ("last", "min", "prod")
TOP_CLASSES = 5  # answer classes listed in an output line


def aggregate(rewards: Any, valid: Any, how: str = "last") -> Any:
    """Combine per-step rewards [..., S] (valid where `valid`) into one score per trace:
    the last valid step's reward, the minimum, or the product."""
    if how not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {how!r}")
    if how == "last":
        index = jnp.maximum(jnp.sum(valid, axis=-1) - 1, 0)
        return jnp.take_along_axis(rewards, index[..., None], axis=-1)[..., 0]
    if how == "min":
        return jnp.min(jnp.where(valid, rewards, 1.0), axis=-1)
    return jnp.exp(jnp.sum(jnp.where(valid, jnp.log(jnp.clip(rewards, 1e-30, 1.0)), 0.0), axis=-1))


def token_pieces(token_bytes: np.ndarray) -> list[bytes]:
    """Each token id's bytes: the rows of the stop table's byte table ([V, L], -1 padded) as `bytes`,
    built once so that reading a trace is a join, not a loop over every byte."""
    kept = token_bytes >= 0
    flat = token_bytes[kept].astype(np.uint8).tobytes()
    ends = np.cumsum(kept.sum(axis=1)).tolist()
    return [flat[start:end] for start, end in zip([0, *ends[:-1]], ends, strict=True)]


def decode_steps(pieces: list[bytes], steps: np.ndarray, lengths: np.ndarray, count: int) -> list[str]:
    """Text of a trace's first `count` steps (token ids [S, T] read through `token_pieces`), each
    stripped of surrounding whitespace (the delimiter); empty steps are dropped."""
    texts = []
    for s in range(count):
        raw = b"".join(pieces[t] for t in steps[s][: lengths[s]].tolist() if t != NO_TOKEN)
        texts.append(raw.decode("utf-8", errors="replace").strip())
    return [t for t in texts if t]


def particle_texts(pieces: list[bytes], result: SearchResult, row: int) -> list[list[str]]:
    """Every particle's steps, as text, for problem `row` of a result (`pieces`: `token_pieces`)."""
    trace = result.particles
    steps, lengths, counts = trace.steps[row, :, 0], trace.step_lengths[row, :, 0], trace.num_steps[row, :, 0]
    return [decode_steps(pieces, steps[i], lengths[i], int(counts[i])) for i in range(steps.shape[0])]


def trace_scores(result: SearchResult, row: int, how: str) -> np.ndarray:
    """Every particle's PRM step rewards for problem `row` of a result, aggregated by `how`."""
    trace = result.particles
    valid = np.arange(trace.steps.shape[3])[None, :] < trace.num_steps[row, :, 0][:, None]  # [N, max_steps]
    return np.asarray(aggregate(trace.rewards[row, :, 0], valid, how))


def collapsed(result: SearchResult, row: int) -> bool:
    """Every particle reached zero weight at some step: the engine revived them uniformly, so the
    final weights no longer mean anything and the answer gets no confidence."""
    return bool(np.any(np.asarray(result.weight_status)[row] == WeightStatus.ALL_ZERO))


def answer_record(
    task: Task,
    problem: Any,
    pieces: list[bytes],
    result: SearchResult,
    row: int,
    method: str,
    aggregation: str | None = None,
) -> dict:
    """The output line of `problem` (row `row` of `result`) read out by `method`'s selection rule:
    the problem's fields plus `steps`, `answer`, `confidence`, `classes` (the top answer classes and
    their posterior mass), `correct` (unless the problem has no gold), `tokens`, `method`,
    `truncated` (the chosen trace's last step was cut at its token cap or at the trace's budget) and,
    for a filter's run, `resampled`: the steps at which its particles were resampled (0 for independent
    samples and for a filter whose weights never fell below its ESS threshold; a particle-MCMC chain
    keeps no genealogy and has no such field).
    `aggregation` overrides the method's PRM aggregation (`last`, `min`, `prod`)."""
    rule, how = SELECTION[method]
    texts = particle_texts(pieces, result, row)
    answers = [task.answer(problem, t) for t in texts]
    if task.classes is not None:
        answers = task.classes(answers)
    scores = trace_scores(result, row, aggregation or how)
    posterior = answer_posterior(answers, votes(rule, scores, result.log_weights[row], len(texts)))
    chosen = posterior.chosen_trace if posterior.chosen_trace is not None else int(np.argmax(scores))
    collapsed_ = collapsed(result, row)
    record = task.record(problem)
    record.update(
        steps=texts[chosen],
        answer=_jsonable(posterior.best),
        confidence=0.0 if collapsed_ else posterior.confidence,
        classes=[] if collapsed_ else [
            {"answer": _jsonable(a), "mass": round(float(p), 6)}
            for a, p in zip(posterior.answers[:TOP_CLASSES], posterior.probs, strict=False)
        ],
    )
    correct = task.correct(problem, texts[chosen])
    if correct is not None:
        record["correct"] = bool(correct)
    trace = result.particles
    last = max(int(trace.num_steps[row, chosen, 0]) - 1, 0)
    record.update(tokens=int(np.sum(result.deterministic["step.length"][row])), method=method,
                  truncated=bool(trace.truncated[row, chosen, 0, last]))
    if result.resampled.shape[-1]:
        record["resampled"] = int(np.sum(result.resampled[row]))
    return record


def _jsonable(answer: Hashable | None) -> Any:
    return list(answer) if isinstance(answer, tuple) else answer
