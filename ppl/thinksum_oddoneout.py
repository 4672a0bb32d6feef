"""ThinkSum's worked example on arithmetic: which of K expressions has a different value?

A problem is K arithmetic expressions from the shipped task distribution, all
but one sharing a value. Two ways to answer with the same LM:

* direct: one greedy trace per expression; the expression whose value is
  shared by the fewest others is the odd one (ties broken at random);
* ThinkSum: Think = S sampled traces per expression, all expressions and
  samples in one batched call from one shared-prefix prefill, giving each
  expression a smoothed value distribution q_j; Sum = the NumPyro model
  `ppl.thinksum.odd_one_out` over the latent odd index k and common value v
  (enumerated over the values seen), answering argmax_k p(k | q).

A third, `majority`, applies the direct rule to each expression's most
frequent sampled value: the same samples as ThinkSum without the probabilistic Sum.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from models.sampling import SamplingParams, stop_table
from ppl import thinksum
from ppl.tasks import arithmetic

ELEMENT_BUCKET = 32  # element tokens are padded to a multiple of this: one compile per bucket
MAX_STEPS = 6  # 4 operation lines + the answer line + EOS
STEP_TOKENS = 12  # the arithmetic task's token cap of one line


@dataclasses.dataclass(frozen=True)
class OddOneOut:
    """An odd-one-out problem: K arithmetic expressions, all but one of the same value."""

    expressions: tuple[str, ...]
    odd: int  # index of the expression whose value differs


def make_problems(seed: int, n: int, size: int = 4, pool: int = 2000) -> list[OddOneOut]:
    """`n` problems from `arithmetic.generate(seed, pool)`: size-1 expressions share a value, one differs.

    No expression is used twice. Raises if the pool has too few shared values.
    """
    rng = np.random.default_rng(seed)
    by_value: dict[int, list[str]] = defaultdict(list)
    for expr in arithmetic.generate(seed, pool):
        by_value[arithmetic.evaluate(expr)].append(expr)
    problems = []
    for _ in range(n):
        shared = [v for v, exprs in by_value.items() if len(exprs) >= size - 1]
        if not shared:
            raise ValueError(f"pool of {pool} expressions has too few shared values for {n} problems")
        value = shared[rng.integers(len(shared))]
        others = [v for v, exprs in by_value.items() if v != value and exprs]
        odd_value = others[rng.integers(len(others))]
        group = [by_value[value].pop(rng.integers(len(by_value[value]))) for _ in range(size - 1)]
        odd_expr = by_value[odd_value].pop(rng.integers(len(by_value[odd_value])))
        odd = int(rng.integers(size))
        problems.append(OddOneOut(tuple(group[:odd] + [odd_expr] + group[odd:]), odd))
    return problems


def think_values(
    lm: Any, tokenizer: Any, expressions: Sequence[str], num_samples: int, temperature: float, key: jax.Array
) -> list[list[int | None]]:
    """The `answer N` value of each of `num_samples` traces per expression (None: no answer line).

    All expressions go in one `think_samples` call: the shared prompt start
    ("<bos>arithmetic") is prefilled once.
    """
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prompts = [bos + tokenizer.encode(arithmetic.prompt(e), add_special_tokens=False) for e in expressions]
    prefix, elements, mask = thinksum.split_shared_prefix(prompts)
    width = -(-elements.shape[1] // ELEMENT_BUCKET) * ELEMENT_BUCKET
    pad = ((0, 0), (0, width - elements.shape[1]))
    params = SamplingParams(temperature=temperature, max_tokens=STEP_TOKENS)
    stops = stop_table(tokenizer, ("\n",))
    samples = thinksum.think_samples(
        lm, key, prefix, jnp.pad(elements, pad), jnp.pad(mask, pad), num_samples, params, stops, MAX_STEPS
    )
    texts = thinksum.decode_samples(tokenizer, samples)
    return [[arithmetic.answer_from_trace(t) for t in row] for row in texts]


def value_probs(values: Sequence[Sequence[int | None]], alpha: float = 0.5) -> tuple[np.ndarray, list[int]]:
    """Smoothed q_j(v) [K, V] over the values seen in any expression's samples, and those values.

    Add-`alpha` counts over the V seen values plus one 'other' bucket (unseen
    values and samples with no answer), so every q_j(v) lies strictly inside (0, 1).
    """
    candidates = sorted({v for row in values for v in row if v is not None})
    counts = np.array([[row.count(v) for v in candidates] for row in values], float)
    totals = np.array([len(row) for row in values], float)[:, None]
    return (counts + alpha) / (totals + alpha * (len(candidates) + 1)), candidates


def thinksum_pick(values: Sequence[Sequence[int | None]], alpha: float = 0.5) -> tuple[int, float]:
    """(odd index, its posterior probability) under the enumerated NumPyro odd-one-out model."""
    q, candidates = value_probs(values, alpha)
    if not candidates:  # no answer anywhere: the posterior is the uniform prior
        return 0, 1.0 / len(values)
    odd = thinksum.odd_one_out_posterior(jnp.asarray(q)).marginals["odd"]
    return int(jnp.argmax(odd)), float(jnp.max(odd))


def direct_pick(values: Sequence[int | None], rng: np.random.Generator) -> int:
    """The expression whose value the fewest others share (no answer: a value of its own), ties at random."""
    keys = [v if v is not None else ("none", i) for i, v in enumerate(values)]
    counts = Counter(keys)
    fewest = min(counts[k] for k in keys)
    tied = [i for i, k in enumerate(keys) if counts[k] == fewest]
    return tied[rng.integers(len(tied))]


def majority_value(row: Sequence[int | None]) -> int | None:
    """The most frequent answer of a row of samples (first seen wins ties), None if no answer."""
    answered = [v for v in row if v is not None]
    return Counter(answered).most_common(1)[0][0] if answered else None


def evaluate(
    lm: Any, tokenizer: Any, problems: Sequence[OddOneOut], num_samples: int, seed: int, chunk: int = 10
) -> dict[str, Any]:
    """Accuracy of direct, majority and ThinkSum on `problems`, `chunk` problems per batched call."""
    rng = np.random.default_rng(seed)
    key = jax.random.key(seed)
    greedy, sampled = [], []
    for start in range(0, len(problems), chunk):
        exprs = [e for p in problems[start : start + chunk] for e in p.expressions]
        key, k_greedy, k_sample = jax.random.split(key, 3)
        greedy += [row[0] for row in think_values(lm, tokenizer, exprs, 1, 0.0, k_greedy)]
        sampled += think_values(lm, tokenizer, exprs, num_samples, 1.0, k_sample)
    size = len(problems[0].expressions)
    rows = []
    for i, p in enumerate(problems):
        g, s = greedy[i * size : (i + 1) * size], sampled[i * size : (i + 1) * size]
        pick, confidence = thinksum_pick(s)
        truth = [arithmetic.evaluate(e) for e in p.expressions]
        rows.append(
            {
                "expressions": list(p.expressions),
                "odd": p.odd,
                "direct": direct_pick(g, rng),
                "majority": direct_pick([majority_value(r) for r in s], rng),
                "thinksum": pick,
                "thinksum_confidence": confidence,
                "greedy_values_correct": sum(v == t for v, t in zip(g, truth, strict=True)),
                "sample_values_correct": sum(v == t for r, t in zip(s, truth, strict=True) for v in r),
            }
        )
    n = len(rows)
    summary = {m: sum(r[m] == r["odd"] for r in rows) / n for m in ("direct", "majority", "thinksum")}
    summary["thinksum_mean_confidence"] = sum(r["thinksum_confidence"] for r in rows) / n
    summary["greedy_value_accuracy"] = sum(r["greedy_values_correct"] for r in rows) / (n * size)
    summary["sample_value_accuracy"] = sum(r["sample_values_correct"] for r in rows) / (n * size * num_samples)
    return {"summary": summary, "problems": rows}
