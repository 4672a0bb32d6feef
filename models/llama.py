"""A Llama-family decoder in Flax NNX: Llama 2/3, Mistral, Qwen2/2.5 and Qwen3.

The families differ only by `Config` flags: QKV bias (Qwen2), q/k RMSNorm
(Qwen3), llama3 RoPE scaling, a sliding window (Mistral), tied embeddings.
Module and parameter names mirror Hugging Face's, so loading a checkpoint
is a rename-free copy (`models.loading`).

Decoding uses a static-size KV cache whose slots remember the RoPE position
of the token they hold (-1 for an empty slot). Attention masks follow from
those positions alone, so rows of different lengths, left or right padding,
and particles that stopped early all share one code path: `extend` writes a
chunk's valid tokens compactly after each row's last slot and attends to
everything valid at an earlier or equal position.

Decoding (`read_filled=True`) attends over the smallest power-of-two prefix of the
slots that holds every filled one, so a token's attention costs what the trace has
written, not what the cache could hold. A chunk of several tokens over a long cache
(a PRM scoring a step, a long prompt) attends `KEY_BLOCK` slots at a time with an
online softmax, so its scores never exist for the whole cache at once.

`shard_weights` splits the weights over a device mesh's `model` axis Megatron-style
(attention heads and the MLP's hidden units); JAX's partitioner inserts the
all-reduces after `o_proj` and `down_proj`.

A read-only `prefix` cache (a prompt prefilled once) can be shared by many
rows: with P prefix rows and B = P * G rows, row b also attends to prefix row
b // G. Particles thus keep only their own tokens in their caches, and the
prompt's keys and values are stored once. A prefix is anything with `KVCache`'s
`rows`, `capacity`, `layer(i)` and `next_position()`: `models.paging.PagedContext`
is one, each row's earlier tokens read through its page table from a shared pool.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MASK_VALUE = -1e30  # finite, so a query with nothing to attend to gives no NaN
KEY_BLOCK = 256  # a chunk (T > 1) over more slots than this attends block by block, with an online softmax


@dataclasses.dataclass(frozen=True)
class Config:
    """Architecture hyper-parameters; every family is a set of these flags."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # llama3 scaling as (factor, low_freq_factor, high_freq_factor, original_max_positions)
    rope_llama3: tuple[float, float, float, int] | None = None
    attention_bias: bool = False  # Qwen2/2.5: bias on q, k, v projections
    qk_norm: bool = False  # Qwen3: RMSNorm on each head of q and k
    sliding_window: int | None = None  # Mistral
    tie_embeddings: bool = False
    max_position_embeddings: int = 4096


class KVCache(NamedTuple):
    """Static-size cache. `positions[b, s]` is the RoPE position held by slot s (-1: empty).

    One array per layer, keys stored [.., dim, slot] and values [.., slot, dim] per head: in
    both attention products the axis not summed over (a score's slot, an output's dim) is the
    minor one, as XLA:CPU's batched products want (several times slower with the summed axis
    minor: `benchmarks/attention_layouts.py`), and a layer reads its cache in place
    (a stacked [rows, layers, ...] array made XLA copy each layer's slice out before every
    product). Rows come first, so a swarm of particles (each a batch of rows) folds into one
    batch for free.
    """

    k: tuple[jax.Array, ...]  # per layer [batch, kv_heads, head_dim, capacity]
    v: tuple[jax.Array, ...]  # per layer [batch, kv_heads, capacity, head_dim]
    positions: jax.Array  # [batch, capacity] int32
    length: jax.Array  # [batch] int32: slots used, where the next token goes

    @property
    def capacity(self) -> int:
        return self.positions.shape[1]

    @property
    def rows(self) -> int:
        return self.positions.shape[0]

    def layer(self, index: int) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Layer `index`'s keys [B, K, D, S], values [B, K, S, D] and slot positions [B, S]: what a shared
        `prefix` answers (as does `models.paging.PagedContext`, a context read through page tables)."""
        return self.k[index], self.v[index], self.positions

    def next_position(self) -> jax.Array:
        """RoPE position the next token of each row will take."""
        return jnp.max(self.positions, axis=1) + 1

    @staticmethod
    def zeros(layers: int, batch: int, capacity: int, kv_heads: int, head_dim: int, dtype: Any) -> KVCache:
        """An empty cache: every slot unfilled (position -1), every row at length 0."""
        return KVCache(
            k=tuple(jnp.zeros((batch, kv_heads, head_dim, capacity), dtype) for _ in range(layers)),
            v=tuple(jnp.zeros((batch, kv_heads, capacity, head_dim), dtype) for _ in range(layers)),
            positions=jnp.full((batch, capacity), -1, jnp.int32),
            length=jnp.zeros((batch,), jnp.int32),
        )

    def empty(self, capacity: int) -> KVCache:
        """An empty cache of `capacity` slots with this one's layers, rows, heads and dtype."""
        batch, heads, dim, _ = self.k[0].shape
        return KVCache.zeros(len(self.k), batch, capacity, heads, dim, self.k[0].dtype)


def prefix_parts(prefix: Any) -> tuple:
    """A prefix as the contexts it is made of, read in order: None has none; a plain tuple holds several (e.g. a
    shared prompt's cache, then each row's earlier steps through its page table); anything else is one."""
    if prefix is None:
        return ()
    return prefix if type(prefix) is tuple else (prefix,)


class PrefixChoice(NamedTuple):
    """A prefix read as `options[index]` (`index` unbatched, a `lax.switch`): e.g. a paged context read only up
    to the pages its rows have filled (`models.paging.PagedContext.narrowed`; an option None: not read)."""

    index: jax.Array
    options: tuple


@jax.custom_batching.custom_vmap
def most(x: jax.Array) -> jax.Array:
    """max(x), and under `vmap` the max over the vmapped axis too, unbatched: one bound for all."""
    return jnp.max(x)


@most.def_vmap
def _most_vmap(axis_size: int, in_batched: list, x: jax.Array) -> tuple[jax.Array, bool]:
    return most(jnp.max(x, axis=0) if in_batched[0] else x), False


def read_sizes(capacity: int, smallest: int = 64) -> tuple[int, ...]:
    """How many leading cache slots attention may read: powers of two from `smallest`, then `capacity`."""
    sizes = []
    while smallest < capacity:
        sizes.append(smallest)
        smallest *= 2
    return (*sizes, capacity)


def rope_inverse_frequencies(config: Config) -> jax.Array:
    """Inverse frequencies of RoPE, with llama3's frequency-dependent scaling if configured."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    if config.rope_llama3 is None:
        return inv_freq
    factor, low_freq_factor, high_freq_factor, original_max = config.rope_llama3
    low_freq_wavelen = original_max / low_freq_factor
    high_freq_wavelen = original_max / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (original_max / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return jnp.where(is_medium, smoothed, scaled)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotate `x` [B, T, H, D] by `positions` [B, T] (Hugging Face's rotate-half layout)."""
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, D/2]
    cos = jnp.concatenate([jnp.cos(angles)] * 2, axis=-1)[:, :, None, :]
    sin = jnp.concatenate([jnp.sin(angles)] * 2, axis=-1)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x * cos + rotated * sin).astype(x.dtype)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, dtype: Any):
        self.weight = nnx.Param(jnp.ones((dim,), dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...] * x32.astype(x.dtype)


def scores_of(q: jax.Array, keys: jax.Array) -> jax.Array:
    """Queries [P, R, T, K, G, D] (R rows read each of P key rows) against keys [P, K, D, S]: [P, R, K, G, T, S],
    float32. One batched product [P, K, M, D] x [P, K, D, S], its operands put in that order first: left to
    einsum's choice of order, XLA:CPU transposed whole caches around the product (up to 2x slower). Where R or
    T is 1 (a row's own cache, decoding) the reorderings are free reshapes."""
    shared, per_row, length, heads, groups, dim = q.shape
    q = q.transpose(0, 3, 1, 4, 2, 5).reshape(shared, heads, -1, dim)  # [P, K, (R G T), D]
    scores = jax.lax.dot_general(q, keys, (((3,), (2,)), ((0, 1), (0, 1))), preferred_element_type=jnp.float32)
    return scores.reshape(shared, heads, per_row, groups, length, -1).transpose(0, 2, 1, 3, 4, 5)


def weighted(weights: jax.Array, values: jax.Array, dtype: Any = None) -> jax.Array:
    """Weights [P, R, K, G, T, S] times values [P, K, S, D]: [P, R, T, K, G, D], ordered as in `scores_of`."""
    shared, per_row, heads, groups, length, slots = weights.shape
    weights = weights.transpose(0, 2, 1, 3, 4, 5).reshape(shared, heads, -1, slots)  # [P, K, (R G T), S]
    out = jax.lax.dot_general(weights, values, (((3,), (2,)), ((0, 1), (0, 1))), preferred_element_type=dtype)
    return out.reshape(shared, heads, per_row, groups, length, -1).transpose(0, 2, 4, 1, 3, 5)


class Attention(nnx.Module):
    def __init__(self, config: Config, dtype: Any, rngs: nnx.Rngs):
        c = config
        linear = lambda i, o, bias: nnx.Linear(i, o, use_bias=bias, dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.q_proj = linear(c.hidden_size, c.num_heads * c.head_dim, c.attention_bias)
        self.k_proj = linear(c.hidden_size, c.num_kv_heads * c.head_dim, c.attention_bias)
        self.v_proj = linear(c.hidden_size, c.num_kv_heads * c.head_dim, c.attention_bias)
        self.o_proj = linear(c.num_heads * c.head_dim, c.hidden_size, False)
        if c.qk_norm:
            self.q_norm = RMSNorm(c.head_dim, c.rms_norm_eps, dtype)
            self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps, dtype)
        self.config = config

    def __call__(self, x, positions, k_cache, v_cache, layer, dest, key_positions, inv_freq, prefix=None, reach=None):
        """Attend from the chunk `x` [B, T, C] to the cache after writing the chunk into it.

        `k_cache`/`v_cache` are this layer's caches (`KVCache`'s layouts), updated in place;
        `layer` is its index in a `prefix`. `dest` [B, T] is each token's cache slot (out of
        range for padding: dropped);
        `key_positions` [B, S] the slots' positions after the write; `prefix` a shared
        read-only `KVCache` attended to first (see the module docstring). `reach`: (index,
        sizes, filled), read only the first `sizes[index]` slots, or for a chunk over more than
        `KEY_BLOCK` slots the blocks up to slot `filled` (they hold every filled one).
        """
        c = self.config
        batch, length, _ = x.shape
        q = self.q_proj(x).reshape(batch, length, c.num_heads, c.head_dim)
        k = self.k_proj(x).reshape(batch, length, c.num_kv_heads, c.head_dim)
        v = self.v_proj(x).reshape(batch, length, c.num_kv_heads, c.head_dim)
        if c.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q, positions, inv_freq)
        k = apply_rope(k, positions, inv_freq)
        # Rows, heads and slot indexed, so the scatter's window is one head's vector: XLA:TPU then writes the
        # cache in its own layout (with heads in the window it transposed the cache around each write).
        rows, heads = jnp.arange(batch)[:, None, None], jnp.arange(c.num_kv_heads)
        k_cache = k_cache.at[rows, heads, :, dest[..., None]].set(k.astype(k_cache.dtype), mode="drop")
        v_cache = v_cache.at[rows, heads, dest[..., None]].set(v.astype(v_cache.dtype), mode="drop")

        def read(prefix):
            if length > 1 and v_cache.shape[2] > KEY_BLOCK:
                filled = v_cache.shape[2] if reach is None else reach[2]
                return self._attend_blocked(q, k_cache, v_cache, layer, filled, key_positions, positions, prefix)
            if reach is None:
                return self._attend(q, k_cache, v_cache, key_positions, positions, layer, prefix)
            index, sizes, _ = reach

            def first(size: int):
                return lambda: self._attend(q, k_cache[..., :size], v_cache[:, :, :size], key_positions[:, :size],
                                            positions, layer, prefix)

            return jax.lax.switch(index, [first(size) for size in sizes])

        if isinstance(prefix, PrefixChoice):
            out = jax.lax.switch(prefix.index, [functools.partial(read, option) for option in prefix.options])
        else:
            out = read(prefix)
        return self.o_proj(out.reshape(batch, length, -1)), k_cache, v_cache

    def _attend(self, q, keys, values, key_positions, positions, layer, prefix):
        """Attention of `q` [B, T, H, D] over `keys`/`values` (and the prefix's): [B, T, K, G, D]."""
        c = self.config
        batch, length = q.shape[:2]
        groups = c.num_heads // c.num_kv_heads
        q = q.reshape(batch, length, c.num_kv_heads, groups, c.head_dim)
        scores = scores_of(q[:, None], keys)[:, 0]
        scores = jnp.where(self._visible(key_positions, positions)[:, None, None], scores, MASK_VALUE)
        parts = prefix_parts(prefix)
        if not parts:
            probs = jax.nn.softmax(scores / math.sqrt(c.head_dim), axis=-1).astype(values.dtype)
            return weighted(probs[:, None], values)[:, 0]

        read = [self._prefix_part(q, part, layer, positions) for part in parts]
        masked = [jnp.where(visible[:, None, None], part_scores, MASK_VALUE) for part_scores, visible, _ in read]
        both = jnp.concatenate([*masked, scores], axis=-1) / math.sqrt(c.head_dim)
        probs = jax.nn.softmax(both, axis=-1).astype(values.dtype)
        out = weighted(probs[:, None, ..., sum(part.capacity for part in parts) :], values)[:, 0]
        offset = 0
        for part, (_, _, weigh) in zip(parts, read, strict=True):
            out = out + weigh(probs[..., offset : offset + part.capacity])
            offset += part.capacity
        return out

    def _prefix_part(self, q, prefix, layer, positions):
        """`q` [B, T, K, G, D] against a shared prefix (row b reads prefix row b // (B / P)): its scores
        [B, K, G, T, Sp] in float32, which of its slots each query sees [B, T, Sp], and `weigh(w, dtype)`, the
        weights' [B, K, G, T, Sp] product with its values [B, T, K, G, D]."""
        batch, length, heads, groups, dim = q.shape
        shared, per_row = prefix.rows, batch // prefix.rows
        keys, values, key_positions = prefix.layer(layer)  # [P, K, D, Sp], [P, K, Sp, D], [P, Sp]
        scores = scores_of(q.reshape(shared, per_row, length, heads, groups, dim), keys)
        visible = self._visible(jnp.repeat(key_positions, per_row, axis=0), positions)

        def weigh(weights, dtype=None):
            weights = weights.reshape(shared, per_row, *weights.shape[1:])
            return weighted(weights, values, dtype).reshape(q.shape)

        return scores.reshape(batch, heads, groups, length, -1), visible, weigh

    def _attend_blocked(self, q, k_cache, v_cache, layer, filled, key_positions, positions, prefix):
        """`_attend` for a chunk over a long cache, flash-style: the prefix, then `KEY_BLOCK` slots at a time
        up to slot `filled`, folded into a running max, normaliser and weighted sum, so no [B, heads, T,
        capacity] scores exist; each block is read from the whole cache in place (no copy of the layer's)."""
        c = self.config
        batch, length = q.shape[:2]
        q = q.reshape(batch, length, c.num_kv_heads, c.num_heads // c.num_kv_heads, c.head_dim)
        values_dtype = v_cache.dtype
        scale = 1 / math.sqrt(c.head_dim)

        def absorb(carry, scores, visible, weigh):
            peak, total, out = carry  # [B, K, G, T, 1], [B, K, G, T, 1], [B, T, K, G, D]
            scores = jnp.where(visible[:, None, None], scores * scale, MASK_VALUE)
            new_peak = jnp.maximum(peak, jnp.max(scores, axis=-1, keepdims=True))
            weights = jnp.where(visible[:, None, None], jnp.exp(scores - new_peak), 0.0)
            decay = jnp.exp(peak - new_peak)
            out = out * jnp.moveaxis(decay, 3, 1) + weigh(weights.astype(values_dtype))
            return new_peak, total * decay + jnp.sum(weights, axis=-1, keepdims=True), out

        heads = (batch, c.num_kv_heads, c.num_heads // c.num_kv_heads, length, 1)
        carry = (jnp.full(heads, MASK_VALUE, jnp.float32), jnp.zeros(heads, jnp.float32),
                 jnp.zeros(q.shape, jnp.float32))
        for part in prefix_parts(prefix):
            scores, visible, weigh = self._prefix_part(q, part, layer, positions)
            carry = absorb(carry, scores, visible, lambda w, weigh=weigh: weigh(w, jnp.float32))

        capacity = v_cache.shape[2]

        def block(i, carry):
            start = jnp.minimum(i * KEY_BLOCK, capacity - KEY_BLOCK)  # the last block overlaps the one before
            fresh = start + jnp.arange(KEY_BLOCK) >= i * KEY_BLOCK  # slots no earlier block counted
            block_keys = jax.lax.dynamic_slice_in_dim(k_cache, start, KEY_BLOCK, axis=3)
            block_values = jax.lax.dynamic_slice_in_dim(v_cache, start, KEY_BLOCK, axis=2)
            visible = self._visible(jax.lax.dynamic_slice_in_dim(key_positions, start, KEY_BLOCK, axis=1), positions)
            scores = scores_of(q[:, None], block_keys)[:, 0]
            return absorb(carry, scores, visible & fresh,
                          lambda w: weighted(w[:, None], block_values, dtype=jnp.float32)[:, 0])

        _, total, out = jax.lax.fori_loop(0, (filled + KEY_BLOCK - 1) // KEY_BLOCK, block, carry)
        total = jnp.moveaxis(jnp.where(total > 0, total, 1.0), 3, 1)  # a query that sees nothing gives zeros
        return (out / total).astype(values_dtype)

    def _visible(self, key_positions: jax.Array, positions: jax.Array) -> jax.Array:
        """[B, T, S]: query t may read slot s (filled, not in its future, inside the window)."""
        visible = (key_positions[:, None, :] >= 0) & (key_positions[:, None, :] <= positions[:, :, None])
        if self.config.sliding_window is not None:
            visible &= key_positions[:, None, :] > positions[:, :, None] - self.config.sliding_window
        return visible


class MLP(nnx.Module):
    def __init__(self, config: Config, dtype: Any, rngs: nnx.Rngs):
        linear = lambda i, o: nnx.Linear(i, o, use_bias=False, dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.gate_proj = linear(config.hidden_size, config.intermediate_size)
        self.up_proj = linear(config.hidden_size, config.intermediate_size)
        self.down_proj = linear(config.intermediate_size, config.hidden_size)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, config: Config, dtype: Any, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.self_attn = Attention(config, dtype, rngs)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.mlp = MLP(config, dtype, rngs)

    def __call__(self, x, positions, k_cache, v_cache, layer, dest, key_positions, inv_freq, prefix=None, reach=None):
        attn, k_cache, v_cache = self.self_attn(
            self.input_layernorm(x), positions, k_cache, v_cache, layer, dest, key_positions, inv_freq, prefix, reach
        )
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), k_cache, v_cache


class Llama(nnx.Module):
    """Decoder-only transformer. `lm(input_ids)` gives logits [B, T, V]."""

    def __init__(
        self, config: Config, *, dtype: Any = jnp.float32, rngs: nnx.Rngs | None = None, lm_head: bool = True
    ):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = config
        self.dtype = dtype
        self.embed_tokens = nnx.Embed(config.vocab_size, config.hidden_size, dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.layers = nnx.List([DecoderLayer(config, dtype, rngs) for _ in range(config.num_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        if lm_head and not config.tie_embeddings:
            self.lm_head = nnx.Linear(
                config.hidden_size, config.vocab_size, use_bias=False, dtype=dtype, param_dtype=dtype, rngs=rngs
            )

    def init_cache(self, batch_size: int, capacity: int) -> KVCache:
        c = self.config
        return KVCache.zeros(c.num_layers, batch_size, capacity, c.num_kv_heads, c.head_dim, self.dtype)

    def hidden_states(
        self,
        tokens: jax.Array,
        cache: KVCache,
        mask: jax.Array | None = None,
        prefix: KVCache | None = None,
        read_filled: bool = False,
    ) -> tuple[jax.Array, KVCache]:
        """Append `tokens` [B, T] (where `mask` is True) to `cache`; final-norm hidden states [B, T, C].

        Valid tokens of a row are stored contiguously after the row's last slot and
        take consecutive positions, whatever the padding pattern of the chunk. With a
        shared `prefix` (P rows, P dividing B) each row continues after its prefix row.
        `read_filled`: attention reads the cache only up to the smallest of `read_sizes`
        that holds every row's filled slots (under `vmap`, every vmapped row's: the branch
        index stays unbatched, so a `lax.switch` picks one branch), so a token costs what
        the trace has written, not the cache's capacity.
        """
        if mask is None:
            mask = jnp.ones(tokens.shape, bool)
        offset = jnp.cumsum(mask, axis=1, dtype=jnp.int32) - 1
        start = cache.next_position()
        parts = prefix_parts(prefix)
        for part in parts:
            shared = part.rows
            if tokens.shape[0] % shared:
                raise ValueError(f"{shared} prefix rows cannot be shared by {tokens.shape[0]} rows")
            start = jnp.maximum(start, jnp.repeat(part.next_position(), tokens.shape[0] // shared))
        positions = jnp.where(mask, start[:, None] + offset, -1)
        dest = jnp.where(mask, cache.length[:, None] + offset, cache.capacity)  # padding: dropped
        rows = jnp.arange(tokens.shape[0])[:, None]
        key_positions = cache.positions.at[rows, dest].set(positions, mode="drop")
        inv_freq = rope_inverse_frequencies(self.config)

        reach = None
        if read_filled:
            sizes = read_sizes(cache.capacity)
            filled = most(cache.length + jnp.sum(mask, axis=1, dtype=jnp.int32))
            reach = (jnp.searchsorted(jnp.asarray(sizes), filled), sizes, filled)
            for i, part in enumerate(parts):  # a paged part reads only the pages its rows filled (None: none)
                if hasattr(part, "narrowed"):
                    choice = part.narrowed()
                    options = tuple((*parts[:i], *([] if option is None else [option]), *parts[i + 1 :])
                                    for option in choice.options)
                    prefix = PrefixChoice(choice.index, options)
        x = self.embed_tokens(jnp.where(mask, tokens, 0))
        k, v = list(cache.k), list(cache.v)
        for i, layer in enumerate(self.layers):
            x, k[i], v[i] = layer(x, positions, k[i], v[i], i, dest, key_positions, inv_freq, prefix, reach)
        cache = KVCache(
            k=tuple(k),
            v=tuple(v),
            positions=key_positions,
            length=cache.length + jnp.sum(mask, axis=1, dtype=jnp.int32),
        )
        return self.norm(x), cache

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Project hidden states to vocabulary logits, accumulated and returned in float32 whatever the
        weights' dtype (a bf16 model's logits are not rounded to bf16 before sampling)."""
        if self.config.tie_embeddings:  # contract the table's rows as they lie: no transposed copy of it
            return jnp.einsum("...c,vc->...v", hidden, self.embed_tokens.embedding[...],
                              preferred_element_type=jnp.float32)
        return jnp.dot(hidden, self.lm_head.kernel[...], preferred_element_type=jnp.float32)

    def extend(
        self,
        tokens: jax.Array,
        cache: KVCache,
        mask: jax.Array | None = None,
        prefix: KVCache | None = None,
        read_filled: bool = False,
    ) -> tuple[jax.Array, KVCache]:
        """Cached forward of a chunk: (logits [B, T, V], updated cache); `read_filled`: see `hidden_states`."""
        hidden, cache = self.hidden_states(tokens, cache, mask, prefix, read_filled)
        return self.logits(hidden), cache

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """Uncached forward: logits [B, T, V]; padding (mask False) may sit anywhere."""
        batch, length = input_ids.shape
        mask = None if attention_mask is None else attention_mask.astype(bool)
        logits, _ = self.extend(input_ids, self.init_cache(batch, length), mask)
        return logits


def random_init(config: Config, seed: int = 0, dtype: Any = jnp.float32, scale: float = 0.02) -> Llama:
    """A model with N(0, scale^2) weights and unit norms, drawn with NumPy.

    Much faster than Flax's initialisers on CPU, whose many small random ops
    each compile: what tests and training runs want.
    """
    model = nnx.eval_shape(lambda: Llama(config, dtype=dtype, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.Param)
    for path, variable in nnx.to_flat_state(state):
        shape = variable.get_value().shape
        value = np.ones(shape) if path[-1] == "weight" else rng.normal(0.0, scale, shape)
        variable.set_value(jnp.asarray(value, dtype))
    nnx.update(model, state)
    return model


# Megatron-style model parallelism: a kernel [in, out] is split by output columns (heads, MLP units), or by
# input rows after them, so each device computes its heads and units and one all-reduce sums the rows' parts.
SPLIT_COLUMNS = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
SPLIT_ROWS = ("o_proj", "down_proj")


def shard_weights(model: nnx.Module, mesh: Mesh, axis: str = "model") -> nnx.Module:
    """`model` (a `Llama`, or a module holding one such as a PRM) with every weight placed on `mesh`:
    attention heads and MLP units split over `axis`, everything else replicated. ValueError when a split
    dimension (heads x head_dim, kv heads x head_dim, intermediate size) does not divide evenly."""
    devices = int(mesh.shape[axis])
    state = nnx.state(model, nnx.Param)
    for path, variable in nnx.to_flat_state(state):
        names = [str(name) for name in path]
        value = variable.get_value()
        spec = PartitionSpec()
        if any(name in SPLIT_COLUMNS for name in names):
            spec = PartitionSpec(*[None] * (value.ndim - 1), axis)  # kernel [in, out] and bias [out]
        elif any(name in SPLIT_ROWS for name in names) and names[-1] == "kernel":
            spec = PartitionSpec(axis, None)
        split = [dim for dim, part in zip(value.shape, spec, strict=False) if part == axis]
        if split and split[0] % devices:
            raise ValueError(f"{'.'.join(names)} has {split[0]} units, not divisible over the {devices} devices "
                             f"of mesh axis {axis!r}")
        variable.set_value(jax.device_put(value, NamedSharding(mesh, spec)))
    nnx.update(model, state)
    return model


def num_parameters(model: nnx.Module) -> int:
    return sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))
