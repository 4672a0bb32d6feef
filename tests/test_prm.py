"""PRMs of the three conventions against transformers' PyTorch outputs, scored whole and incrementally."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from models.prm import load_prm
from ppl.readout import aggregate

CHECKPOINTS = Path(__file__).parent / "fixtures" / "checkpoints"


def golden(name):
    return load_file(CHECKPOINTS / name / "golden.safetensors")


@pytest.mark.parametrize("step_chunk", [None, 3])
@pytest.mark.parametrize("name", ["prm_token", "prm_classifier"])
def test_step_rewards_match_transformers_whole_and_incremental(name, step_chunk):
    prm, _ = load_prm(CHECKPOINTS / name)
    prm.step_chunk = step_chunk  # 3: every step is read a few tokens at a time
    g = golden(name)
    ids = jnp.asarray(g["prm_input_ids"])
    positions = g["prm_step_positions"]
    assert prm.step_tag_id == int(g["prm_step_tag_id"][0])
    whole = jax.jit(lambda p, x: p.rewards(x))(prm, ids)
    np.testing.assert_allclose(np.asarray(whole)[0, positions], g["prm_step_probs"], atol=1e-5)

    # Incrementally: a prompt, then each step without its tag (score_step appends it), with the
    # prompt in the cache, or shared as a read-only prefix (the particles' layout).
    row = np.asarray(ids[0])
    prompt_end = 4
    starts = [prompt_end] + [int(p) + 1 for p in positions[:-1]]

    def read_steps(cache, prefix, written_tag=False):  # written_tag: the step ends with the tag already
        score = jax.jit(lambda p, c, t, m, pre: p.score_step(c, t, m, prefix=pre))
        got = []
        for start, tag in zip(starts, positions, strict=True):
            end = tag + written_tag
            step = np.zeros((1, 24), np.int32)
            step[0, : end - start] = row[start:end]
            mask = np.arange(24)[None] < end - start
            reward, cache = score(prm, cache, jnp.asarray(step), jnp.asarray(mask), prefix)
            got.append(float(reward[0]))
        return got

    prompt = jnp.asarray(row[None, :prompt_end])
    copied = jax.jit(lambda p, t: p.start(t, None, 64))(prm, prompt)
    np.testing.assert_allclose(read_steps(copied, None), g["prm_step_probs"], atol=1e-5)
    np.testing.assert_allclose(read_steps(copied, None, written_tag=True), g["prm_step_probs"], atol=1e-5)
    prefix = jax.jit(lambda p, t: p.start(t, None, prompt_end))(prm, prompt)
    np.testing.assert_allclose(read_steps(prefix.empty(64), prefix), g["prm_step_probs"], atol=1e-5)


def test_chunked_step_reading_under_vmap_matches_whole_steps():
    """Particles (vmapped) whose steps differ in length: reading 3 tokens at a time, as many chunks as the longest
    step needs, gives every particle the reward and cache of reading its step whole."""
    prm, _ = load_prm(CHECKPOINTS / "prm_token")
    row = np.asarray(golden("prm_token")["prm_input_ids"][0])
    start = jax.jit(lambda p, t: p.start(t, None, 32))(prm, jnp.asarray(row[None, :4]))
    lengths = np.array([7, 2, 0, 4])
    steps = np.where(np.arange(9)[None] < lengths[:, None], row[4:13][None], 0)[:, None].astype(np.int32)
    masks = (np.arange(9)[None] < lengths[:, None])[:, None]
    score = jax.jit(jax.vmap(lambda p, c, t, m: p.score_step(c, t, m), in_axes=(None, None, 0, 0)))
    whole_reward, whole_cache = score(prm, start, jnp.asarray(steps), jnp.asarray(masks))
    prm.step_chunk = 3
    reward, cache = score(prm, start, jnp.asarray(steps), jnp.asarray(masks))
    np.testing.assert_allclose(reward[lengths > 0], whole_reward[lengths > 0], atol=1e-6)
    for got, want in zip(jax.tree.leaves(cache), jax.tree.leaves(whole_cache), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("name", ["prm_classifier", "prm_value"])
def test_head_outputs_match_transformers(name):
    prm, _ = load_prm(CHECKPOINTS / name)
    g = golden(name)
    rewards = jax.jit(lambda p, x: p.rewards(x))(prm, jnp.asarray(g["input_ids"]))
    logits = g["score_logits"]
    expected = jax.nn.softmax(logits, -1)[..., 1] if prm.kind == "classifier" else jax.nn.sigmoid(logits[..., 0])
    np.testing.assert_allclose(rewards, expected, atol=1e-5)
    assert prm.kind == ("classifier" if name == "prm_classifier" else "value")


def test_aggregations():
    rewards = jnp.array([[0.9, 0.5, 0.8, 0.1]])
    valid = jnp.array([[True, True, True, False]])
    assert float(aggregate(rewards, valid, "last")[0]) == pytest.approx(0.8)
    assert float(aggregate(rewards, valid, "min")[0]) == pytest.approx(0.5)
    assert float(aggregate(rewards, valid, "prod")[0]) == pytest.approx(0.9 * 0.5 * 0.8)
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(rewards, valid, "mean")
