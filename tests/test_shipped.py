"""The shipped tiny LM and PRM: they load, decode well-formed steps, score steps, and match transformers."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

import models
from models.llama import Config, random_init
from models.prm import load_prm
from models.sampling import SamplingParams, generate, stop_table
from models.saving import save_pretrained
from ppl.tasks import EVAL_SEED, countdown
from ppl.train import build_tokenizer

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "shipped"
LM, PRM = SHIPPED / "lm", SHIPPED / "prm"
needs_shipped = pytest.mark.skipif(
    not all((d / "model.safetensors").is_file() for d in (LM, PRM)),
    reason="models/shipped is not trained yet (python -m ppl.train --out models/shipped --seed 0)",
)


@pytest.fixture(scope="module")
def lm():
    return models.load(LM)


@pytest.fixture(scope="module")
def prm():
    return models.load(PRM)


def _prompt(tok, problem) -> np.ndarray:
    return np.asarray([[tok.bos_token_id] + tok.encode(countdown.prompt(problem))], np.int32)


@needs_shipped
@pytest.mark.parametrize("path", [LM, PRM])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_shipped_loads(path, dtype):
    model, tok = models.load(path, dtype=dtype)
    ids = jnp.asarray([[tok.bos_token_id, *tok.encode("countdown 1 2 3 4 -> 10\n")]])
    logits = model(ids)
    assert logits.shape == (1, ids.shape[1], len(tok))
    assert bool(jnp.all(jnp.isfinite(logits)))
    assert (path / "model.safetensors").stat().st_size < 8 * 2**20


@needs_shipped
def test_tokenizer_round_trip(lm):
    _, tok = lm
    assert len(tok) == len(build_tokenizer())
    trace = "7*3=21 (12 21 25)\n25+21=46 (12 46)\n46-12=34 (34)\n"
    text = countdown.prompt(countdown.Problem((3, 7, 12, 25), 34)) + trace
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode(text) == build_tokenizer().encode(text)


@needs_shipped
def test_greedy_step_is_well_formed(lm):
    model, tok = lm
    problem = countdown.generate(EVAL_SEED, 1)[0]
    stops = stop_table(tok, ("\n",), (tok.eos_token_id,))
    out = generate(model, jax.random.key(0), jnp.asarray(_prompt(tok, problem)), None, SamplingParams(0.0), stops)
    text = tok.decode(np.asarray(out.tokens[0, : int(out.length[0])]))
    assert text.endswith("\n")
    assert countdown.parse_step(text) is not None, text


@needs_shipped
def test_prm_reward_is_the_good_minus_bad_logit_computed_by_hand():
    """The shipped PRM's reward at each step's "\\n" is sigmoid((h_good - h_bad) . hidden), with the
    two rows of the LM head read straight from the safetensors file, whole and step by step."""
    config = json.loads((PRM / "config.json").read_text())
    assert tuple(config[k] for k in ("prm_type", "step_tag", "good_token", "bad_token")) == ("token", "\n", "+", "-")
    prm, tok = load_prm(PRM)
    head = load_file(PRM / "model.safetensors")["lm_head.weight"]
    good, bad = tok.convert_tokens_to_ids(["+", "-"])
    prompt = list(_prompt(tok, countdown.Problem((3, 7, 12, 25), 34))[0])
    steps = [tok.encode(step + "\n") for step in ("7*3=21 (12 21 25)", "25+21=47 (12 47)", "47-12=35 (35)")]
    ids = prompt + [t for step in steps for t in step]
    tags = np.cumsum([len(step) for step in steps]) + len(prompt) - 1
    hidden, _ = prm.model.hidden_states(jnp.asarray([ids]), prm.model.init_cache(1, len(ids)))
    by_hand = 1 / (1 + np.exp(-(np.asarray(hidden[0, tags], np.float64) @ (head[good] - head[bad]).astype(np.float64))))
    np.testing.assert_allclose(np.asarray(prm.rewards(jnp.asarray([ids])))[0, tags], by_hand, rtol=1e-5)
    cache, rewards = prm.start(jnp.asarray([prompt]), None, len(ids)), []
    for step in steps:  # incremental: score_step appends the tag "\n" itself
        reward, cache = prm.score_step(cache, jnp.asarray([step[:-1]]), jnp.ones((1, len(step) - 1), bool))
        rewards.append(float(reward[0]))
    np.testing.assert_allclose(rewards, by_hand, rtol=1e-5)


def test_save_pretrained_round_trip(tmp_path):
    tok = build_tokenizer()
    config = Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8
    )
    model = random_init(config, seed=3)
    save_pretrained(model, tmp_path, tok, {"step_tag": "\n"})
    loaded, loaded_tok = models.load(tmp_path)
    assert loaded.config == config
    assert json.loads((tmp_path / "config.json").read_text())["step_tag"] == "\n"
    ids = jnp.asarray([tok.encode("countdown 1 2 3 4 -> 10\n4*3=12\n")])
    np.testing.assert_array_equal(np.asarray(model(ids)), np.asarray(loaded(ids)))
    assert loaded_tok.encode("12+3=15\n") == tok.encode("12+3=15\n")
