"""Cached decoding, step sampling and scoring on tiny random models."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from models.llama import Config, random_init
from models.sampling import (
    NO_TOKEN,
    STOP_CAP,
    STOP_EOS,
    STOP_STRING,
    SamplingParams,
    draw,
    force_tokens,
    match_stops,
    prefill,
    sample_step,
    sampling_log_probs,
    score,
    stop_table_from_bytes,
)

# A vocabulary where the delimiter "\n\n" can arrive whole, or split over two tokens.
VOCAB = [b"a", b"b", b"\n", b"a\n", b"\nb", b"\n\n", b"=", b"ANS", b"<eos>", b"c"]
EOS = 8


forward = jax.jit(lambda lm, ids, mask=None: lm(ids, mask))
extend = jax.jit(lambda lm, tokens, cache: lm.extend(tokens, cache))


def tiny_lm(seed=0, **flags):
    config = Config(
        vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_layers=2,
        num_heads=4, num_kv_heads=2, head_dim=8, **flags,
    )
    return random_init(config, seed)


@pytest.mark.parametrize("flags", [{}, {"qk_norm": True, "attention_bias": True}, {"sliding_window": 3}])
def test_cached_decoding_equals_uncached_forward(flags):
    lm = tiny_lm(**flags)
    ids = jax.random.randint(jax.random.key(1), (3, 9), 0, len(VOCAB))
    full = forward(lm, ids)
    cache = lm.init_cache(3, 12)
    chunks = []
    for start, stop in [(0, 4), (4, 5), (5, 6), (6, 9)]:
        logits, cache = extend(lm, ids[:, start:stop], cache)
        chunks.append(logits)
    np.testing.assert_allclose(jnp.concatenate(chunks, axis=1), full, atol=1e-5)


def test_left_and_right_padding_match_unpadded_rows():
    lm = tiny_lm()
    ids = jax.random.randint(jax.random.key(2), (2, 8), 0, len(VOCAB))
    left = jnp.array([[0, 0, 0, 1, 1, 1, 1, 1], [1] * 8], bool)
    right = jnp.array([[1, 1, 1, 1, 1, 0, 0, 0], [1] * 8], bool)
    np.testing.assert_allclose(forward(lm, ids, left)[0, 3:], forward(lm, ids[:1, 3:])[0], atol=1e-5)
    np.testing.assert_allclose(forward(lm, ids, right)[0, :5], forward(lm, ids[:1, :5])[0], atol=1e-5)
    # Prefill of padded prompts leaves each row's next-token logits equal to the unpadded ones.
    for mask in (left, right):
        state = jax.jit(prefill, static_argnums=3)(lm, ids, mask, 16)
        row0 = ids[0][np.asarray(mask[0])]
        np.testing.assert_allclose(state.next_logits[0], forward(lm, row0[None])[0, -1], atol=1e-5)


def decode(tokens):
    return b"".join(VOCAB[t] for t in tokens if t != NO_TOKEN)


def test_match_stops_finds_split_delimiter_once():
    stops = stop_table_from_bytes(VOCAB, ("\n\n", "ANS"))
    history = jnp.full((1, 2), -1, jnp.int32)
    found = []
    for token in [0, 3, 4, 0, 2, 2]:  # "a" "a\n" "\nb" "a" "\n" "\n"
        history, index = match_stops(history, jnp.array([token]), stops)
        found.append(int(index[0]))
    assert found == [-1, -1, 0, -1, -1, 0]


def test_sample_step_stops_exactly_at_first_delimiter_and_freezes_finished_rows():
    lm = tiny_lm(seed=3)
    stops = stop_table_from_bytes(VOCAB, ("\n\n", "ANS"), (EOS,))
    batch = 64
    prompt = jnp.zeros((batch, 3), jnp.int32)
    state = jax.jit(prefill, static_argnums=(2, 3))(lm, prompt, None, 3 + 2 * 12)
    active = jnp.arange(batch) % 4 != 0
    params = SamplingParams(temperature=1.5, max_tokens=12)
    result = jax.jit(sample_step, static_argnums=(3,))(lm, jax.random.key(0), state, params, stops, active)
    tokens, length, stop = np.asarray(result.tokens), np.asarray(result.length), np.asarray(result.stop)
    split_seen = False
    for row in range(batch):
        seq = [t for t in tokens[row] if t != NO_TOKEN]
        assert len(seq) == length[row]
        if not active[row]:
            assert length[row] == 0
            continue
        text, before = decode(seq), decode(seq[:-1])
        if stop[row] == STOP_EOS:
            assert seq[-1] == EOS
        elif stop[row] >= STOP_STRING:
            needle = [b"\n\n", b"ANS"][stop[row] - STOP_STRING]
            assert needle in text and b"\n\n" not in before and b"ANS" not in before
            split_seen |= needle == b"\n\n" and VOCAB[seq[-1]] in (b"\n", b"\nb")
        else:
            assert stop[row] == STOP_CAP and length[row] == params.max_tokens
            assert b"\n\n" not in text and b"ANS" not in text and EOS not in seq
    assert split_seen, "the seed should produce at least one delimiter split over two tokens"
    frozen = ~np.asarray(active)
    old, new = state, result.state
    for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new), strict=True):  # rows first in every leaf
        np.testing.assert_array_equal(np.asarray(a)[frozen], np.asarray(b)[frozen])
    # Log-probs: the model's are those of the cached forward, exactly what teacher forcing gives.
    logp, forced = jax.jit(force_tokens)(lm, state, result.tokens, result.tokens != NO_TOKEN)
    np.testing.assert_allclose(logp, result.logp_model, atol=1e-5)
    np.testing.assert_allclose(forced.next_logits, result.state.next_logits, atol=1e-4)


def test_sampling_distribution_truncation():
    logits = jnp.log(jnp.array([[0.5, 0.25, 0.15, 0.1]]))
    top_k = jnp.exp(sampling_log_probs(logits, SamplingParams(top_k=2)))
    np.testing.assert_allclose(top_k, [[2 / 3, 1 / 3, 0, 0]], atol=1e-6)
    top_p = jnp.exp(sampling_log_probs(logits, SamplingParams(top_p=0.7)))
    np.testing.assert_allclose(top_p, [[2 / 3, 1 / 3, 0, 0]], atol=1e-6)
    hot = jnp.exp(sampling_log_probs(logits, SamplingParams(temperature=2.0)))
    expected = np.sqrt([0.5, 0.25, 0.15, 0.1])
    np.testing.assert_allclose(hot[0], expected / expected.sum(), atol=1e-6)


def test_draw_follows_probabilities_and_never_draws_a_cut_token():
    probs = np.array([0.1, 0.0, 0.45, 0.3, 0.0, 0.15])
    logp = jnp.log(jnp.asarray(np.tile(probs, (4, 1)), jnp.float32))
    keys = jax.random.split(jax.random.key(0), (20_000, 4))
    tokens = np.asarray(jax.jit(jax.vmap(draw, in_axes=(0, None)))(keys, logp)).ravel()
    freq = np.bincount(tokens, minlength=len(probs)) / tokens.size
    assert freq[1] == 0 and freq[4] == 0
    np.testing.assert_allclose(freq, probs, atol=4 * np.sqrt(0.25 / tokens.size))


def equations(jaxpr):
    """Every equation of a jaxpr, nested sub-jaxprs (jit, custom rules, loop bodies) included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from equations(sub)


def test_vmapped_step_runs_all_particles_as_one_batch_and_equals_each_alone():
    """Under vmap the particle axis is folded into rows (one loop, no per-token select of the cache)."""
    lm = tiny_lm(seed=5)
    stops = stop_table_from_bytes(VOCAB, ("\n\n",), (EOS,))
    params = SamplingParams(temperature=1.0, max_tokens=6)
    state = jax.jit(prefill, static_argnums=(2, 3))(lm, jnp.array([[1, 2, 0]]), None, 3 + 6)
    keys = jax.random.split(jax.random.key(1), 5)
    active = jnp.array([[True], [False], [True], [True], [True]])

    def one(key, act):
        return sample_step(lm, key, state, params, stops, act)

    swarm = jax.jit(jax.vmap(one))(keys, active)
    for p in range(5):
        alone = jax.jit(one)(keys[p], active[p])
        np.testing.assert_array_equal(alone.tokens, swarm.tokens[p])
        np.testing.assert_allclose(alone.logp_model, swarm.logp_model[p], atol=1e-5)
        for a, b in zip(alone.state.cache.k, swarm.state.cache.k, strict=True):
            np.testing.assert_allclose(a, b[p], atol=1e-5)
    for a, b in zip(swarm.state.cache.k, state.cache.k, strict=True):
        np.testing.assert_array_equal(a[1], b)  # the inactive particle is frozen
    loops = [e for e in equations(jax.make_jaxpr(jax.vmap(one))(keys, active).jaxpr) if e.primitive.name == "while"]
    cache_shape = (5, 2, 9, 8)  # a layer's keys [particles * rows, kv heads, capacity, head dim]
    assert len(loops) == 1 and cache_shape in [v.aval.shape for v in loops[0].invars]


def test_greedy_step_is_argmax_chain():
    lm = tiny_lm(seed=4)
    stops = stop_table_from_bytes(VOCAB)
    prompt = jnp.array([[1, 2, 0]])
    state = jax.jit(prefill, static_argnums=(2, 3))(lm, prompt, None, 12)
    greedy = SamplingParams(0.0, max_tokens=6)
    result = jax.jit(sample_step, static_argnums=3)(lm, jax.random.key(0), state, greedy, stops)
    seq = prompt
    for _ in range(6):
        seq = jnp.concatenate([seq, jnp.argmax(forward(lm, seq)[:, -1], -1)[:, None]], axis=1)
    np.testing.assert_array_equal(result.tokens, seq[:, 3:])
    assert np.all(np.asarray(result.logp_sample) == 0.0)


def test_score_equals_sum_of_stepwise_log_probs():
    lm = tiny_lm(seed=5)
    context = jnp.array([[0, 0, 1, 2], [3, 4, 5, 6]])
    context_mask = jnp.array([[0, 0, 1, 1], [1, 1, 1, 1]], bool)
    continuation = jnp.array([[7, 1, 0], [2, 9, 9]])
    continuation_mask = jnp.array([[1, 1, 0], [1, 1, 1]], bool)
    got = jax.jit(score)(lm, context, context_mask, continuation, continuation_mask)
    for row in range(2):
        seq = list(np.asarray(context[row])[np.asarray(context_mask[row])])
        total = 0.0
        for tok in np.asarray(continuation[row])[np.asarray(continuation_mask[row])]:
            total += float(jax.nn.log_softmax(forward(lm, jnp.array([seq]))[0, -1])[tok])
            seq.append(int(tok))
        assert abs(float(got[row]) - total) < 1e-4
