"""ThinkSum: shared-prefix Think calls against per-element references; Sum models against enumeration by hand."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer.util import log_density

from models.llama import Config, random_init
from models.sampling import NO_TOKEN, SamplingParams, prefill, sample_step, score, stop_table_from_bytes
from ppl import thinksum as ts

VOCAB = [b"a", b"b", b"c", b"\n", b"=", b"1", b"2", b"<eos>"]
EOS = 7


@pytest.fixture(scope="module")
def lm():
    config = Config(
        vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_layers=2,
        num_heads=4, num_kv_heads=2, head_dim=8,
    )
    return random_init(config, seed=3, scale=0.5)


PREFIX = jnp.array([0, 4, 1, 2, 5], jnp.int32)
ELEMENTS = jnp.array([[1, 2, 0], [5, 6, 3], [0, 0, 0], [2, 0, 0]], jnp.int32)
ELEMENT_MASK = jnp.array([[1, 1, 1], [1, 1, 1], [0, 0, 0], [1, 0, 0]], bool)  # row 2: no element


def valid(row, mask):
    return row[np.asarray(mask)]


def full_prompt(k):
    """Prefix + element k as one left-padded row of fixed width (one compile for every k)."""
    tokens = np.concatenate([PREFIX, valid(ELEMENTS[k], ELEMENT_MASK[k])])
    width = PREFIX.shape[0] + ELEMENTS.shape[1]
    padded = np.zeros((1, width), np.int32)
    padded[0, width - len(tokens):] = tokens
    return jnp.asarray(padded), (jnp.arange(width) >= width - len(tokens))[None]


forward = jax.jit(lambda lm, ids, mask: lm(ids, mask))
jit_prefill = jax.jit(prefill, static_argnums=3)
jit_score = jax.jit(score)


def test_element_rows_share_the_single_prefix_prefill(lm):
    capacity = 12
    state = jax.jit(ts.element_states, static_argnums=4)(lm, PREFIX, ELEMENTS, ELEMENT_MASK, capacity)
    alone = jit_prefill(lm, PREFIX[None], None, capacity)
    p = PREFIX.shape[0]
    for row in range(ELEMENTS.shape[0]):  # copies of one prefill: the same bits in every row
        for k, v in zip(state.cache.k, state.cache.v, strict=True):
            np.testing.assert_array_equal(k[row, ..., :p], k[0, ..., :p])
            np.testing.assert_array_equal(v[row, :, :p], v[0, :, :p])
        np.testing.assert_array_equal(state.cache.positions[row, :p], np.arange(p))
    for ours, theirs in zip(state.cache.k, alone.cache.k, strict=True):
        np.testing.assert_allclose(ours[0, ..., :p], theirs[0, ..., :p], rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(state.cache.v, alone.cache.v, strict=True):
        np.testing.assert_allclose(ours[0, :, :p], theirs[0, :, :p], rtol=1e-5, atol=1e-5)
    for row in range(ELEMENTS.shape[0]):
        np.testing.assert_allclose(state.next_logits[row], forward(lm, *full_prompt(row))[0, -1], atol=1e-4)


def test_think_scores_equal_uncached_score_per_pair(lm):
    candidates = jnp.array([[3, 0, 0], [1, 2, 3], [5, 5, 0]], jnp.int32)
    cand_mask = jnp.array([[1, 0, 0], [1, 1, 1], [1, 1, 0]], bool)
    table = ts.think_scores(lm, PREFIX, ELEMENTS, ELEMENT_MASK, candidates, cand_mask)
    assert table.shape == (4, 3)
    for k, c in itertools.product(range(4), range(3)):
        expected = jit_score(lm, *full_prompt(k), candidates[c][None], cand_mask[c][None])[0]
        np.testing.assert_allclose(table[k, c], expected, atol=1e-4)


def test_think_samples_greedy_equal_sampling_each_element_alone(lm):
    stops = stop_table_from_bytes(VOCAB, ("\n",), (EOS,))
    params = SamplingParams(temperature=0.0, max_tokens=4)
    out = ts.think_samples(lm, jax.random.key(0), PREFIX, ELEMENTS, ELEMENT_MASK, 2, params, stops, 3)
    assert out.tokens.shape == (4, 2, 3, 4)
    step = jax.jit(sample_step, static_argnums=3)
    for k in range(4):
        state = jit_prefill(lm, *full_prompt(k), 20)
        done = jnp.zeros((1,), bool)
        for t in range(3):
            ref = step(lm, jax.random.key(t), state, params, stops, ~done)
            for s in range(2):
                np.testing.assert_array_equal(out.tokens[k, s, t], ref.tokens[0])
            state, done = ref.state, done | (ref.stop == 1)
        assert bool(out.finished[k, 0]) == bool(done[0])


def test_think_samples_temperature_one_is_seeded_and_valid(lm):
    stops = stop_table_from_bytes(VOCAB, ("\n",), (EOS,))
    params = SamplingParams(temperature=1.0, max_tokens=4)
    args = (PREFIX, ELEMENTS, ELEMENT_MASK, 5, params, stops, 3)
    a = ts.think_samples(lm, jax.random.key(1), *args)
    b = ts.think_samples(lm, jax.random.key(1), *args)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    written = np.asarray(a.tokens != NO_TOKEN).sum(-1)
    np.testing.assert_array_equal(written, a.length)
    assert np.all(np.isfinite(a.logp)) and np.all(np.asarray(a.logp) <= 0)


def test_split_shared_prefix_keeps_whole_prompt_tokens():
    prefix, elements, mask = ts.split_shared_prefix([[1, 4, 5, 6], [1, 4, 5, 7, 8], [1, 4, 5]])
    assert prefix.tolist() == [1, 4]  # the shortest prompt keeps one token of its own
    assert [valid(e, m).tolist() for e, m in zip(elements, mask, strict=True)] == [[5, 6], [5, 7, 8], [5]]


RNG = np.random.default_rng(0)
LIK = jnp.log(jnp.asarray(RNG.dirichlet(np.ones(5), size=3)))  # p_k(a): 3 elements, 5 answers
PRIOR = jnp.log(jnp.array([0.5, 0.3, 0.2]))
UNCOND = jnp.log(jnp.asarray(RNG.dirichlet(np.ones(5))))


def test_mixture_equals_hand_computed_posterior():
    p, pi = np.exp(LIK), np.exp(PRIOR)
    answer = 2
    post = ts.mixture_posterior(LIK, PRIOR, answer)
    np.testing.assert_allclose(post.marginals["element"], pi * p[:, answer] / (pi @ p[:, answer]), rtol=1e-5)
    np.testing.assert_allclose(post.log_marginal, np.log(pi @ p[:, answer]), rtol=1e-5)
    joint = ts.mixture_posterior(LIK, PRIOR)
    np.testing.assert_allclose(joint.marginals["answer"], pi @ p, rtol=1e-5)
    np.testing.assert_allclose(joint.marginals["element"], pi, rtol=1e-5)
    model_logp, _ = log_density(ts.mixture, (LIK, PRIOR, answer), {}, {})
    np.testing.assert_allclose(model_logp, np.log(pi @ p[:, answer]), rtol=1e-5)


def test_product_of_experts_equals_hand_computed_posterior():
    p, w = np.exp(LIK), np.array([1.0, 0.5, 2.0])
    unnorm = np.prod(p ** w[:, None], axis=0)
    post = ts.product_of_experts_posterior(LIK, w)
    np.testing.assert_allclose(post.marginals["answer"], unnorm / unnorm.sum(), rtol=1e-5)
    model_logp, _ = log_density(ts.product_of_experts, (LIK, w, 3), {}, {})
    np.testing.assert_allclose(model_logp, np.log(unnorm[3] / unnorm.sum()), rtol=1e-5)
    model_logz, _ = log_density(ts.product_of_experts, (LIK, w), {}, {})
    np.testing.assert_allclose(model_logz, np.log(unnorm.sum()), rtol=1e-5)


def test_calibration_divides_by_the_unconditional_likelihood():
    p, u, pi = np.exp(LIK), np.exp(UNCOND), np.exp(PRIOR)
    np.testing.assert_allclose(np.exp(ts.calibrate(LIK, UNCOND)), p / u[None], rtol=1e-5)
    mix = ts.mixture_posterior(LIK, PRIOR, log_unconditional=UNCOND)
    expected = pi @ (p / u[None])
    np.testing.assert_allclose(mix.marginals["answer"], expected / expected.sum(), rtol=1e-5)
    poe = ts.product_of_experts_posterior(LIK, log_unconditional=UNCOND)
    expected = np.prod(p / u[None], axis=0)
    np.testing.assert_allclose(poe.marginals["answer"], expected / expected.sum(), rtol=1e-5)


def test_odd_one_out_enumeration_equals_brute_force():
    q = RNG.uniform(0.02, 0.9, size=(4, 6))
    prior = np.array([0.1, 0.2, 0.3, 0.4])
    brute = np.zeros((4, 6))
    for k in range(4):
        for v in range(6):
            brute[k, v] = prior[k] * np.prod([q[j, v] if j != k else 1 - q[j, v] for j in range(4)])
    table = ts.odd_one_out_log_joint(jnp.asarray(q), jnp.log(jnp.asarray(prior)))
    np.testing.assert_allclose(np.exp(table), brute, rtol=1e-5)
    post = ts.odd_one_out_posterior(jnp.asarray(q), jnp.log(jnp.asarray(prior)))
    np.testing.assert_allclose(post.marginals["odd"], brute.sum(1) / brute.sum(), rtol=1e-5)
    np.testing.assert_allclose(post.marginals["value"], brute.sum(0) / brute.sum(), rtol=1e-5)
    model_logp, _ = log_density(ts.odd_one_out, (jnp.asarray(q), jnp.log(jnp.asarray(prior))), {}, {})
    np.testing.assert_allclose(model_logp, np.log(brute.sum()), rtol=1e-5, atol=1e-6)  # log 1 = 0: rtol alone fails


def test_mixture_enumeration_equals_brute_force():
    brute = np.array([[np.exp(PRIOR[k] + LIK[k, a]) for a in range(5)] for k in range(3)])
    np.testing.assert_allclose(np.exp(ts.mixture_log_joint(LIK, PRIOR)), brute, rtol=1e-5)
    model_logp, _ = log_density(ts.mixture, (LIK, PRIOR), {}, {})
    np.testing.assert_allclose(model_logp, np.log(brute.sum()), rtol=1e-5, atol=1e-6)  # log 1 = 0: rtol alone fails


def test_odd_one_out_problems_and_picks():
    from ppl import thinksum_oddoneout as odd
    from ppl.tasks import arithmetic

    for p in odd.make_problems(2000, 5, pool=300):
        values = [arithmetic.evaluate(e) for e in p.expressions]
        assert values.count(values[p.odd]) == 1 and len(set(values)) == 2
    rng = np.random.default_rng(0)
    assert odd.direct_pick([5, 5, 7, 5], rng) == 2
    assert odd.direct_pick([5, None, 5, 5], rng) == 1
    assert {odd.direct_pick([5, 6, 7, 7], rng) for _ in range(50)} == {0, 1}
    q, candidates = odd.value_probs([[5, 5, None], [5, 6, 6]])
    assert candidates == [5, 6]
    np.testing.assert_allclose(q, [[2.5 / 4.5, 0.5 / 4.5], [1.5 / 4.5, 2.5 / 4.5]])
    assert odd.thinksum_pick([[5] * 8, [5] * 8, [9] * 8, [5] * 8])[0] == 2
