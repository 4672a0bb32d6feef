"""ThinkSum (Ozturkler et al. 2022): many LM queries over a set (Think), then probabilistic aggregation (Sum).

Think: one jitted call queries the LM about every element of a set. The
shared prefix (the instruction) is prefilled once, on a batch of one, and its
KV cache is copied to every element's row; only each element's own tokens are
then run, and from those rows the LM either samples completions
(`think_samples`) or scores candidate continuations by teacher forcing
(`think_scores`).

Sum: NumPyro models that combine the per-element likelihood tables outside
the LM. Discrete latents (which element, which answer, which value) are
marginalised by explicit enumeration: the model builds the log joint for
every latent value with broadcasting and factors its `logsumexp`, so
`numpyro.infer.util.log_density` of the model is the exact log marginal; the
`*_posterior` helpers normalise the same table (Bayes' rule) into exact
posteriors of each latent.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpyro
from jax.scipy.special import logsumexp

from models.llama import Llama
from models.sampling import (
    NO_TOKEN,
    STOP_EOS,
    LMState,
    SamplingParams,
    StopTable,
    force_tokens,
    prefill,
    sample_step,
)

# ---------------------------------------------------------------------------------------------- Think


def repeat_rows(state: LMState, n: int) -> LMState:
    """Each row of `state` repeated `n` times in place (row r becomes rows r*n .. r*n+n-1)."""
    return jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), state)


def element_states(
    lm: Llama, prefix: jax.Array, elements: jax.Array, element_mask: jax.Array, capacity: int
) -> LMState:
    """Prefill `prefix` [P] once, copy its cache to K rows and run each element's tokens [K, Le] after it.

    Elements are right-padded (`element_mask` True on the valid tokens); an
    element with no valid token leaves its row at the bare prefix, which is how
    the unconditional query p(. | no element) of calibration is asked.
    """
    shared = prefill(lm, prefix[None], None, capacity)
    _, state = force_tokens(lm, repeat_rows(shared, elements.shape[0]), elements, element_mask)
    return state


class ThinkSamples(NamedTuple):
    """Completions sampled for every (element, sample) pair; the host decodes and parses them."""

    tokens: jax.Array  # [K, S, max_steps, max_tokens] int32, NO_TOKEN past each step's length
    length: jax.Array  # [K, S, max_steps] tokens per step (0 after the row finished)
    logp: jax.Array  # [K, S] log p_LM of the whole completion
    finished: jax.Array  # [K, S] the completion ended with EOS within max_steps


@functools.partial(jax.jit, static_argnames=("num_samples", "params", "max_steps"))
def think_samples(
    lm: Llama,
    key: jax.Array,
    prefix: jax.Array,
    elements: jax.Array,
    element_mask: jax.Array,
    num_samples: int,
    params: SamplingParams,
    stops: StopTable,
    max_steps: int,
) -> ThinkSamples:
    """Sample `num_samples` completions of `prefix + element` for each of the K elements, in one program.

    A completion is up to `max_steps` steps of `sample_step` (each ends at a
    stop string of `stops`, EOS or `params.max_tokens`); a row stops at EOS.
    The K element rows are built from one prefill of the prefix, then each is
    copied `num_samples` times, so neither prefix nor element is recomputed.
    """
    num_elements, element_len = elements.shape
    capacity = prefix.shape[0] + element_len + max_steps * params.max_tokens
    state = repeat_rows(element_states(lm, prefix, elements, element_mask, capacity), num_samples)
    rows = num_elements * num_samples

    def step(carry, step_key):
        state, done = carry
        out = sample_step(lm, step_key, state, params, stops, active=~done)
        done = done | (out.stop == STOP_EOS)
        return (out.state, done), (out.tokens, out.length, jnp.sum(out.logp_model, axis=1))

    keys = jax.random.split(key, max_steps)
    (_, done), (tokens, length, logp) = jax.lax.scan(step, (state, jnp.zeros((rows,), bool)), keys)
    shape = (num_elements, num_samples, max_steps)
    return ThinkSamples(
        tokens=jnp.moveaxis(tokens, 0, 1).reshape(*shape, params.max_tokens),
        length=jnp.moveaxis(length, 0, 1).reshape(shape),
        logp=jnp.sum(logp, axis=0).reshape(shape[:2]),
        finished=done.reshape(shape[:2]),
    )


@jax.jit
def think_scores(
    lm: Llama,
    prefix: jax.Array,
    elements: jax.Array,
    element_mask: jax.Array,
    candidates: jax.Array,
    candidate_mask: jax.Array,
) -> jax.Array:
    """log p(candidate | prefix + element) [K, C] for every element [K, Le] and candidate [C, Lc].

    Teacher forcing from the shared prefix cache: the K element rows are built
    once and copied C times; all K*C candidates are forced in one forward.
    Both token arrays are right-padded with their masks.
    """
    num_elements, num_candidates = elements.shape[0], candidates.shape[0]
    capacity = prefix.shape[0] + elements.shape[1] + candidates.shape[1]
    state = repeat_rows(element_states(lm, prefix, elements, element_mask, capacity), num_candidates)
    tiled, tiled_mask = jnp.tile(candidates, (num_elements, 1)), jnp.tile(candidate_mask, (num_elements, 1))
    logp, _ = force_tokens(lm, state, tiled, tiled_mask.astype(bool))
    return jnp.sum(logp, axis=1).reshape(num_elements, num_candidates)


def split_shared_prefix(token_lists: Sequence[Sequence[int]]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(prefix [P], elements [K, Le], mask [K, Le]) from full prompts: their longest common token prefix.

    Splitting the token lists, not the texts, keeps every prompt tokenized
    exactly as a whole (BPE merges may cross a text boundary). At least one
    token of each prompt stays in its element, so every row has its own next logits.
    """
    shortest = min(len(t) for t in token_lists)
    common = 0
    while common < shortest - 1 and len({t[common] for t in token_lists}) == 1:
        common += 1
    rests = [list(t[common:]) for t in token_lists]
    width = max(len(r) for r in rests)
    elements = jnp.asarray([r + [0] * (width - len(r)) for r in rests], jnp.int32)
    mask = jnp.asarray([[True] * len(r) + [False] * (width - len(r)) for r in rests])
    return jnp.asarray(token_lists[0][:common], jnp.int32), elements, mask


def decode_samples(tokenizer: Any, samples: ThinkSamples) -> list[list[str]]:
    """The text of each completion [K][S] (special tokens such as EOS dropped)."""
    tokens = jax.device_get(samples.tokens)
    return [
        [tokenizer.decode([int(t) for t in row.reshape(-1) if t != NO_TOKEN], skip_special_tokens=True) for row in el]
        for el in tokens
    ]


# ------------------------------------------------------------------------------------------------ Sum


class ExactPosterior(NamedTuple):
    """Exact results of an enumerated model."""

    log_marginal: jax.Array  # logsumexp of the joint table: the model's log density
    marginals: dict[str, jax.Array]  # posterior of each latent, by name


def exact_posterior(log_joint: jax.Array, names: Sequence[str]) -> ExactPosterior:
    """Bayes' rule on an enumeration table: one axis per latent, named by `names`."""
    if log_joint.ndim != len(names):
        raise ValueError(f"table has {log_joint.ndim} axes but {len(names)} latent names")
    log_z = logsumexp(log_joint)
    posterior = jnp.exp(log_joint - log_z)
    axes = range(log_joint.ndim)
    marginals = {name: jnp.sum(posterior, axis=tuple(a for a in axes if a != i)) for i, name in enumerate(names)}
    return ExactPosterior(log_z, marginals)


def calibrate(log_lik: jax.Array, log_unconditional: jax.Array | None) -> jax.Array:
    """ThinkSum's calibration: p_k(a) / p(a | no element), in logs; unchanged when None."""
    return log_lik if log_unconditional is None else log_lik - log_unconditional


def _log_prior(log_prior: jax.Array | None, size: int) -> jax.Array:
    return jnp.full((size,), -jnp.log(size)) if log_prior is None else jax.nn.log_softmax(log_prior)


def mixture_log_joint(
    log_lik: jax.Array,
    log_prior: jax.Array | None = None,
    answer: int | jax.Array | None = None,
    log_unconditional: jax.Array | None = None,
) -> jax.Array:
    """log pi_k + log p_k(a): [K, A] over (element, answer), or [K] at an observed `answer`.

    `log_lik` [K, A] is log p_k(a), the likelihood of answer a under element k;
    `log_prior` (logits, normalised here; uniform if None) is the prior over k.
    """
    table = _log_prior(log_prior, log_lik.shape[0])[:, None] + calibrate(log_lik, log_unconditional)
    return table if answer is None else table[:, answer]


def mixture(
    log_lik: jax.Array,
    log_prior: jax.Array | None = None,
    answer: int | jax.Array | None = None,
    log_unconditional: jax.Array | None = None,
) -> None:
    """NumPyro model: a latent element k ~ prior explains the answer with p_k; p(a) = sum_k pi_k p_k(a).

    With `answer` observed the factor is log p(answer); otherwise the answer is
    a second enumerated latent and the factor is the table's total mass.
    """
    numpyro.factor("mixture", logsumexp(mixture_log_joint(log_lik, log_prior, answer, log_unconditional)))


def mixture_posterior(
    log_lik: jax.Array,
    log_prior: jax.Array | None = None,
    answer: int | jax.Array | None = None,
    log_unconditional: jax.Array | None = None,
) -> ExactPosterior:
    """Posterior over the element ("element") and, if not observed, over answers ("answer")."""
    table = mixture_log_joint(log_lik, log_prior, answer, log_unconditional)
    return exact_posterior(table, ("element",) if answer is not None else ("element", "answer"))


def product_of_experts_log_joint(
    log_lik: jax.Array, weights: jax.Array | None = None, log_unconditional: jax.Array | None = None
) -> jax.Array:
    """sum_k w_k log p_k(a): the unnormalised log p(a) [A] of a (weighted) product of experts."""
    weights = jnp.ones(log_lik.shape[0]) if weights is None else jnp.asarray(weights)
    return jnp.sum(weights[:, None] * calibrate(log_lik, log_unconditional), axis=0)


def product_of_experts(
    log_lik: jax.Array,
    weights: jax.Array | None = None,
    answer: int | jax.Array | None = None,
    log_unconditional: jax.Array | None = None,
) -> None:
    """NumPyro model: p(a) ∝ prod_k p_k(a)^w_k; with `answer` observed the factor is log p(answer).

    Unobserved, the answer is enumerated and the factor is log Z, the
    normaliser of the product (how much the experts agree).
    """
    table = product_of_experts_log_joint(log_lik, weights, log_unconditional)
    log_z = logsumexp(table)
    numpyro.factor("product_of_experts", log_z if answer is None else table[answer] - log_z)


def product_of_experts_posterior(
    log_lik: jax.Array, weights: jax.Array | None = None, log_unconditional: jax.Array | None = None
) -> ExactPosterior:
    """The normalised product over answers ("answer"); `log_marginal` is log Z."""
    return exact_posterior(product_of_experts_log_joint(log_lik, weights, log_unconditional), ("answer",))


def odd_one_out_log_joint(value_probs: jax.Array, log_prior: jax.Array | None = None) -> jax.Array:
    """log p(k, v) [K, V] = log prior(k) + sum_{j != k} log q_j(v) + log(1 - q_k(v)).

    `value_probs` [K, V] is q_j(v), element j's probability of having value v
    (smoothed, so strictly inside (0, 1)); the latent odd index k and common
    value v are enumerated together by broadcasting over [K (odd), K (j), V].
    """
    num = value_probs.shape[0]
    is_odd = jnp.eye(num, dtype=bool)[:, :, None]  # [k, j, 1]
    per_element = jnp.where(is_odd, jnp.log1p(-value_probs)[None], jnp.log(value_probs)[None])
    return _log_prior(log_prior, num)[:, None] + jnp.sum(per_element, axis=1)


def odd_one_out(value_probs: jax.Array, log_prior: jax.Array | None = None) -> None:
    """NumPyro model: all elements but a latent k share a latent value v, element k does not.

    The factor is log sum_{k, v} p(k, v): the probability, under the
    independent per-element value beliefs, that the set has this structure.
    """
    numpyro.factor("odd_one_out", logsumexp(odd_one_out_log_joint(value_probs, log_prior)))


def odd_one_out_posterior(value_probs: jax.Array, log_prior: jax.Array | None = None) -> ExactPosterior:
    """Posterior over the odd index ("odd") and the common value ("value")."""
    return exact_posterior(odd_one_out_log_joint(value_probs, log_prior), ("odd", "value"))
