"""Process reward models (PRMs): a score in (0, 1) for each reasoning step.

Three Hugging Face conventions, one interface:

* `token`: a causal LM judges the step at a step-tag token; reward = P(good) among
  the two tokens {good, bad} (Math-Shepherd: tag "ки", good "+", bad "-"; our
  shipped PRM: the step's own "\\n" is the tag).
* `classifier`: a 2-way head at the step separator, reward = softmax[..., 1]
  (Qwen2.5-Math-PRM: `score` = Linear, ReLU, Linear; separator "<extra_0>").
* `value`: a linear head, reward = sigmoid (token-classification with one label).

A PRM scores incrementally: it keeps its own KV cache per particle (resampled
with the particle) and reads only the new step, appending the step tag when the
convention asks for one. (A task's exact verifier has the same `score_step` interface;
see `ppl.tasks.Verifier`.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from models.llama import KVCache, Llama, most
from models.loading import (
    LM_PREFIX,
    CheckpointError,
    UnsupportedModelError,
    assign_weights,
    config_from_hf,
    iter_tensors,
    load_tokenizer,
    read_hf_config,
    resolve_checkpoint,
)

STEP_CHUNK = 64  # about how many tokens of a step a PRM reads at a time, per row (`PRM.read`)


class ReLU(nnx.Module):
    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(x)


class PRM(nnx.Module):
    """A backbone plus a reward read-out at the step tag of each step."""

    def __init__(
        self,
        backbone: Llama,
        kind: str,
        step_tag_id: int | None,
        good_id: int | None = None,
        bad_id: int | None = None,
        score: nnx.Module | None = None,
        step_chunk: int | None = STEP_CHUNK,
    ):
        if kind not in ("token", "classifier", "value"):
            raise ValueError(f"unknown PRM kind {kind!r}")
        self.model = backbone
        self.kind = kind
        self.step_tag_id = step_tag_id
        self.good_id, self.bad_id = good_id, bad_id
        self.step_chunk = step_chunk
        if score is not None:
            self.score = score

    def rewards_from_hidden(self, hidden: jax.Array) -> jax.Array:
        """Reward in (0, 1) for each final-norm hidden state [..., C]."""
        if self.kind == "token":
            logits = self.model.logits(hidden)
            pair = jnp.stack([logits[..., self.good_id], logits[..., self.bad_id]], axis=-1)
            return jax.nn.softmax(pair, axis=-1)[..., 0]
        out = hidden
        for layer in self.score if self.kind == "classifier" else [self.score]:
            out = layer(out)
        out = out.astype(jnp.float32)
        if self.kind == "classifier":
            return jax.nn.softmax(out, axis=-1)[..., 1]
        return jax.nn.sigmoid(out[..., 0])

    def rewards(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """Uncached: the reward read-out at every position [B, T] (meaningful at step tags)."""
        batch, length = input_ids.shape
        mask = None if attention_mask is None else attention_mask.astype(bool)
        hidden, _ = self.model.hidden_states(input_ids, self.model.init_cache(batch, length), mask)
        return self.rewards_from_hidden(hidden)

    def start(self, tokens: jax.Array, mask: jax.Array | None, capacity: int) -> KVCache:
        """Prefill the prompt into a fresh PRM cache of `capacity` slots."""
        _, cache = self.model.hidden_states(tokens, self.model.init_cache(tokens.shape[0], capacity), mask)
        return cache

    def score_step(
        self,
        cache: KVCache,
        tokens: jax.Array,
        mask: jax.Array,
        keep_tag: bool = True,
        prefix: KVCache | None = None,
    ) -> tuple[jax.Array, KVCache]:
        """Read one new step [B, T] (valid where `mask`, padding at the end) -> (reward [B], cache).

        The step tag (if the convention has one) is appended after the step's tokens, unless the step
        already ends with it (a tag that is the step delimiter, "\n" for the shipped PRM, which the LM
        writes itself); with `keep_tag=False` it is scored but not kept in the context (the "model"
        aggregation: the trace is judged as if it were one step). Rows whose mask is
        all False keep their cache unchanged (their reward is meaningless). `prefix`:
        the prompt's cache shared by the rows (`cache` then holds only their steps).
        """
        batch = tokens.shape[0]
        count = jnp.sum(mask, axis=1)
        if self.step_tag_id is not None:
            final_token = jnp.take_along_axis(tokens, jnp.maximum(count - 1, 0)[:, None], axis=1)[:, 0]
            append = (count > 0) & (final_token != self.step_tag_id)
            tokens = jnp.concatenate([tokens, jnp.zeros((batch, 1), tokens.dtype)], axis=1)
            mask = jnp.concatenate([mask, jnp.zeros((batch, 1), bool)], axis=1)
            tag_at = (jnp.arange(tokens.shape[1])[None, :] == count[:, None]) & append[:, None]
            tokens = jnp.where(tag_at, self.step_tag_id, tokens)
            if not keep_tag:
                _, kept = self.read(cache, tokens, mask, prefix)
                tag_hidden, _ = self.read(cache, tokens, mask | tag_at, prefix)
                return self.rewards_from_hidden(tag_hidden), kept
            mask = mask | tag_at
        hidden, cache = self.read(cache, tokens, mask, prefix)
        return self.rewards_from_hidden(hidden), cache

    def read(
        self, cache: KVCache, tokens: jax.Array, mask: jax.Array, prefix: KVCache | None = None
    ) -> tuple[jax.Array, KVCache]:
        """Append `tokens` [B, T] (valid where `mask`, padding at the end) -> (final hidden state at each row's
        last valid token [B, C], cache).

        The T tokens are read in `T // step_chunk` equal chunks (so a step at its cap plus its tag, 257 tokens,
        is 4 chunks of 65, not 5), and only as many as the longest row needs (under `vmap`, the longest vmapped
        row): a step of a real PRM is as long as a prompt, and reading all of it at once for every particle
        would hold the model's activations for all of their tokens.
        """
        last = jnp.maximum(jnp.sum(mask, axis=1) - 1, 0)
        chunks = 1 if self.step_chunk is None else max(1, tokens.shape[1] // self.step_chunk)
        if chunks == 1:
            hidden, cache = self.model.hidden_states(tokens, cache, mask, prefix, read_filled=True)
            return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0], cache
        size = -(-tokens.shape[1] // chunks)
        pad = chunks * size - tokens.shape[1]
        tokens, mask = (jnp.pad(x, ((0, 0), (0, pad))) for x in (tokens, mask))
        needed = most(last // size + 1)

        def read_chunk(carry):
            i, cache, out = carry
            part, part_mask = (jax.lax.dynamic_slice_in_dim(x, i * size, size, axis=1) for x in (tokens, mask))
            hidden, cache = self.model.hidden_states(part, cache, part_mask, prefix, read_filled=True)
            at = last - i * size
            here = jnp.take_along_axis(hidden, jnp.clip(at, 0, size - 1)[:, None, None], axis=1)[:, 0]
            return i + 1, cache, jnp.where(((at >= 0) & (at < size))[:, None], here, out)

        dtype = jnp.result_type(self.model.norm.weight[...], self.model.embed_tokens.embedding[...])  # norm output
        out = jnp.zeros((tokens.shape[0], self.model.config.hidden_size), dtype)
        _, cache, out = jax.lax.while_loop(lambda carry: carry[0] < needed, read_chunk, (0, cache, out))
        return out, cache


def _token_id(tokenizer: Any, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise CheckpointError(f"PRM token {text!r} must be a single token, the tokenizer gives {ids}")
    return ids[0]


def load_prm(
    path: str | os.PathLike,
    dtype: Any = jnp.float32,
    *,
    step_tag: str | None = None,
    good_token: str | None = None,
    bad_token: str | None = None,
) -> tuple[PRM, Any]:
    """Load a PRM checkpoint directory (or a Hugging Face id in the local cache): `(prm, tokenizer)`.

    The convention is read from config.json: keys `prm_type`/`step_tag`/`good_token`/
    `bad_token` (our shipped PRMs), `architectures` naming a `ProcessRewardModel`
    (classifier head; tag defaults to "<extra_0>") or `TokenClassification` (value
    head), else a causal LM in the Math-Shepherd convention (tag "ки", "+", "-").
    Keyword arguments override the tags and tokens.
    """
    dtype = jnp.dtype(dtype)
    path = resolve_checkpoint(path)
    hf = read_hf_config(path)
    raw = json.loads((Path(path) / "config.json").read_text())
    architectures = " ".join(raw.get("architectures") or [])
    kind = raw.get("prm_type") or (
        "classifier" if "ProcessRewardModel" in architectures
        else "value" if "TokenClassification" in architectures
        else "token"
    )
    config = config_from_hf(hf)
    tokenizer = load_tokenizer(path)
    tensors = dict(iter_tensors(path))
    defaults = {"token": "ки", "classifier": "<extra_0>", "value": None}
    tag_text = step_tag if step_tag is not None else raw.get("step_tag", defaults.get(kind))
    tag_id = None if tag_text in (None, "") else _token_id(tokenizer, tag_text)
    if kind == "token":
        backbone = nnx.eval_shape(lambda: Llama(config, dtype=dtype, rngs=nnx.Rngs(0)))
        assign_weights(backbone, tensors, LM_PREFIX, dtype)
        good = _token_id(tokenizer, good_token or raw.get("good_token", "+"))
        bad = _token_id(tokenizer, bad_token or raw.get("bad_token", "-"))
        return PRM(backbone, kind, tag_id, good, bad), tokenizer
    if kind not in ("classifier", "value"):
        raise UnsupportedModelError(f"unknown prm_type {kind!r} in {path}/config.json")
    score = _head(kind, config.hidden_size, tensors, dtype)
    backbone = nnx.eval_shape(lambda: Llama(config, dtype=dtype, rngs=nnx.Rngs(0), lm_head=False))
    assign_weights(backbone, tensors, LM_PREFIX, dtype)
    prefix = {"0": "score.", "2": "score."} if kind == "classifier" else {"kernel": "score", "bias": "score"}
    assign_weights(score, tensors, prefix, dtype)
    return PRM(backbone, kind, tag_id, score=score), tokenizer


def _head(kind: str, hidden: int, tensors: dict, dtype: Any) -> nnx.Module:
    """An uninitialised head shaped like the checkpoint's `score.*` tensors."""
    bias = lambda name: name in tensors
    if kind == "classifier":
        for name in ("score.0.weight", "score.2.weight"):
            if name not in tensors:
                raise CheckpointError(f"checkpoint is missing tensor {name!r}")
        mid, out = tensors["score.0.weight"].shape[0], tensors["score.2.weight"].shape[0]
        return nnx.eval_shape(lambda: nnx.List([
            nnx.Linear(hidden, mid, use_bias=bias("score.0.bias"), dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)),
            ReLU(),
            nnx.Linear(mid, out, use_bias=bias("score.2.bias"), dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)),
        ]))
    if "score.weight" not in tensors:
        raise CheckpointError("checkpoint is missing tensor 'score.weight'")
    return nnx.eval_shape(
        lambda: nnx.Linear(hidden, 1, use_bias=bias("score.bias"), dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0))
    )
