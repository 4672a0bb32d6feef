"""Batched, cached sampling of one reasoning step, and teacher-forced scoring.

Everything here is a pure function of (model, arrays) meant to be traced
inside a larger jitted program: `sample_step` is a single `lax.while_loop`
over tokens, so an SMC step over N particles is one XLA loop, not N Python
loops. A row carries its KV cache and the logits of its next token
(`LMState`); sampling a step appends the sampled tokens to both.

Stop strings (a delimiter such as "\\n\\n", an answer marker) are matched on
bytes, not on token ids, so they are found even when a tokenizer splits
them across two tokens: each row keeps the last `K - 1` bytes it produced
and each new token's bytes are appended before matching.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from models.llama import KVCache, Llama, prefix_parts
from models.paging import PagedContext

NO_TOKEN = -1  # fills token buffers past a row's length


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How a step is sampled. Static: a change recompiles. temperature 0 means greedy."""

    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k truncation
    top_p: float = 1.0  # 1.0: no nucleus truncation
    max_tokens: int = 32  # token cap of one step


class StopTable(NamedTuple):
    """Arrays describing when a step ends: EOS ids and byte-level stop strings."""

    eos_ids: jax.Array  # [E] int32
    token_bytes: jax.Array  # [V, Lmax] int32, -1 padded: the bytes each token id decodes to
    token_len: jax.Array  # [V] int32
    stop_bytes: jax.Array  # [S, K] int32, -2 padded (never equal to a byte or to -1)
    stop_len: jax.Array  # [S] int32


class LMState(NamedTuple):
    """A row's decoding state: its KV cache and the logits of the token that comes next."""

    cache: KVCache
    next_logits: jax.Array  # [B, V] float32


class StepResult(NamedTuple):
    tokens: jax.Array  # [B, max_tokens] int32, NO_TOKEN past `length`
    length: jax.Array  # [B] int32
    logp_sample: jax.Array  # [B, max_tokens] log-prob under the sampling distribution (0 past length)
    logp_model: jax.Array  # [B, max_tokens] log-prob under the unmodified model (0 past length)
    stop: jax.Array  # [B] int32: STOP_CAP, STOP_EOS, or STOP_STRING + index of the stop string
    state: LMState


STOP_CAP, STOP_EOS, STOP_STRING = 0, 1, 2


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet: the printable character standing for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


def _bytes_of_tokens(tokenizer: Any) -> list[bytes]:
    """The raw bytes each token id stands for (byte-level BPE or SentencePiece vocabularies).

    Special tokens (EOS, padding, ...) stand for no bytes: they are not text.
    """
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    byte_level = backend is not None and "ByteLevel" in type(backend.decoder).__name__
    alphabet = _byte_level_alphabet()
    special = set(tokenizer.all_special_tokens)
    out = []
    for piece in pieces:
        piece = piece or ""
        if piece in special:
            out.append(b"")
        elif byte_level:
            out.append(bytes(alphabet.get(ch, ord("?")) for ch in piece))
        elif piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
            out.append(bytes([int(piece[3:5], 16)]))
        else:
            out.append(piece.replace("\u2581", " ").encode())
    return out


def stop_table(
    tokenizer: Any, stop_strings: tuple[str, ...] = (), eos_ids: tuple[int, ...] | None = None
) -> StopTable:
    """Build the stop arrays for `tokenizer`; `eos_ids` defaults to the tokenizer's EOS."""
    if eos_ids is None:
        eos_ids = () if tokenizer.eos_token_id is None else (tokenizer.eos_token_id,)
    return stop_table_from_bytes(_bytes_of_tokens(tokenizer), stop_strings, eos_ids)


def stop_table_from_bytes(
    token_bytes: list[bytes], stop_strings: tuple[str, ...] = (), eos_ids: tuple[int, ...] = ()
) -> StopTable:
    """Stop arrays from an explicit vocabulary: `token_bytes[i]` is what token i decodes to."""
    lmax = max(1, max(len(b) for b in token_bytes))
    table = np.full((len(token_bytes), lmax), -1, np.int32)
    for i, b in enumerate(token_bytes):
        table[i, : len(b)] = list(b)
    encoded = [s.encode() for s in stop_strings]
    if any(len(s) == 0 for s in encoded):
        raise ValueError("stop strings must be non-empty")
    width = max([1] + [len(s) for s in encoded])
    stops = np.full((len(encoded), width), -2, np.int32)
    for i, s in enumerate(encoded):
        stops[i, : len(s)] = list(s)
    return StopTable(
        eos_ids=jnp.asarray(eos_ids, jnp.int32).reshape(-1),
        token_bytes=jnp.asarray(table),
        token_len=jnp.asarray([len(b) for b in token_bytes], jnp.int32),
        stop_bytes=jnp.asarray(stops),
        stop_len=jnp.asarray([len(s) for s in encoded], jnp.int32),
    )


def match_stops(history: jax.Array, tokens: jax.Array, stops: StopTable) -> tuple[jax.Array, jax.Array]:
    """Append each row's token bytes to its byte history and look for stop strings.

    `history` [B, K-1] holds the row's last bytes, right-aligned, -1 where none.
    Returns (new history, index of the first matched stop string or -1) — a match
    must end inside the new token, so an old match is never reported twice.
    """
    keep = history.shape[1]
    if stops.stop_bytes.shape[0] == 0:
        return history, jnp.full(tokens.shape, -1, jnp.int32)
    token_bytes = stops.token_bytes[tokens]  # [B, Lmax]
    token_len = stops.token_len[tokens]
    window = jnp.concatenate([history, token_bytes], axis=1)  # [B, W]
    valid_len = keep + token_len  # bytes of `window` that are real
    width, k = window.shape[1], stops.stop_bytes.shape[1]
    padded = jnp.pad(window, ((0, 0), (0, k)), constant_values=-1)
    offsets = jnp.arange(width)
    grams = padded[:, offsets[:, None] + jnp.arange(k)[None, :]]  # [B, W, K]
    used = jnp.arange(k)[None, :] < stops.stop_len[:, None]  # [S, K]
    equal = (grams[:, None] == stops.stop_bytes[None, :, None]) | ~used[None, :, None]  # [B, S, W, K]
    end = offsets[None, :] + stops.stop_len[:, None]  # [S, W]
    inside = (end[None] <= valid_len[:, None, None]) & (end[None] > keep)
    matched = jnp.any(jnp.all(equal, axis=-1) & inside, axis=-1)  # [B, S]
    first = jnp.where(jnp.any(matched, axis=1), jnp.argmax(matched, axis=1), -1)
    tail = valid_len[:, None] - keep + jnp.arange(keep)[None, :]
    return jnp.take_along_axis(window, tail, axis=1), first


def sampling_log_probs(logits: jax.Array, params: SamplingParams) -> jax.Array:
    """Log-probabilities of the sampling distribution: temperature, then top-k, then top-p."""
    x = logits / params.temperature
    if params.top_k > 0:
        kth = jax.lax.top_k(x, params.top_k)[0][..., -1:]
        x = jnp.where(x < kth, -jnp.inf, x)
    if params.top_p < 1.0:
        ordered = jnp.sort(x, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        kept = jnp.where(mass_before < params.top_p, ordered, jnp.inf)
        x = jnp.where(x < jnp.min(kept, axis=-1, keepdims=True), -jnp.inf, x)
    return jax.nn.log_softmax(x, axis=-1)


def prefill(lm: Llama, tokens: jax.Array, mask: jax.Array | None, capacity: int) -> LMState:
    """Run a (padded) batch of prompts into a fresh cache of `capacity` slots."""
    if mask is None:
        mask = jnp.ones(tokens.shape, bool)
    hidden, cache = lm.hidden_states(tokens, lm.init_cache(tokens.shape[0], capacity), mask)
    last = tokens.shape[1] - 1 - jnp.argmax(mask[:, ::-1], axis=1)
    return LMState(cache, lm.logits(jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]))  # last only


def sample_step(
    lm: Llama,
    key: jax.Array,
    state: LMState,
    params: SamplingParams,
    stops: StopTable,
    active: jax.Array | None = None,
    prefix: KVCache | PagedContext | tuple | None = None,
    limit: jax.Array | None = None,
) -> StepResult:
    """Sample one step for every row until EOS, a stop string, or its token cap: `params.max_tokens`,
    or fewer where `limit` [B] (tokens row b may still write, e.g. what is left of a trace's budget)
    is lower; a row stopped by its cap has `stop == STOP_CAP`.

    Rows with `active` False (e.g. finished particles) produce nothing and keep
    their state bit for bit. The token that triggers a stop is part of the step
    and is written to the cache, so the next step continues after it. Row `b`
    draws from its own key, `split(key, B)[b]`. `prefix` is a prompt cache shared
    by the rows (`models.llama`); `state.cache` then holds only their own tokens.

    Under `vmap` (particles each holding a batch of rows) the vmapped axis is
    folded into the row axis and the whole swarm runs as ONE batch in one loop:
    a vmapped `while_loop` would instead stop only when every particle stops
    and `select` its whole carry, KV cache included, on every token.
    """
    batch = state.next_logits.shape[0]
    running = jnp.ones((batch,), bool) if active is None else active.astype(bool)
    limit = jnp.full((batch,), params.max_tokens, jnp.int32) if limit is None else limit.astype(jnp.int32)
    return _row_sampler(params)(lm, jax.random.split(key, batch), state, stops, running & (limit > 0), limit, prefix)


def draw(row_keys: jax.Array, logp: jax.Array) -> jax.Array:
    """One token per row from log-probs [B, V] by inverting the CDF at one uniform per row.

    Exact up to the float32 rounding of the cumulative sum, and ~30x cheaper on
    CPU than Gumbel-max (`jax.random.categorical`), which draws V uniforms per row.
    Tokens of probability 0 (top-k/top-p cuts) are never drawn: `u < cdf[-1]`.
    """
    cdf = jnp.cumsum(jnp.exp(logp), axis=-1)
    u = jax.vmap(jax.random.uniform)(row_keys) * cdf[:, -1]
    return jnp.sum(cdf <= u[:, None], axis=-1).astype(jnp.int32)


def _fold(x: jax.Array) -> jax.Array:
    """[A, B, ...] -> [A * B, ...]: every leaf of a state, a cache or a page table has its rows first."""
    return x.reshape(-1, *x.shape[2:])


def _unfold(x: jax.Array, size: int) -> jax.Array:
    """The inverse of `_fold`: [A * B, ...] -> [A, B, ...]."""
    return x.reshape(size, -1, *x.shape[1:])


def _fold_paged(context: PagedContext, batched: PagedContext, size: int, rows: Callable) -> PagedContext:
    """A paged context of `size` vmapped elements as one: their page tables become rows; pools of their own
    (one per element) are laid end to end, each table offset to its element's pages. A shared pool stays."""
    pages, count = context.pages, rows(context.count, batched.count)
    if any(jax.tree.leaves(batched.pool)):
        pool = jax.tree.map(lambda x, b: x if b else jnp.broadcast_to(x[None], (size, *x.shape)), context.pool,
                            batched.pool)
        num_pages = pool.positions.shape[1]
        pages = rows(pages, batched.pages).reshape(size, -1, pages.shape[-1])
        pages = (pages + num_pages * jnp.arange(size, dtype=pages.dtype)[:, None, None]).reshape(-1, pages.shape[-1])
        merged = jax.tree.map(_fold, pool._replace(exhausted=None))
        return PagedContext(merged._replace(exhausted=jnp.any(pool.exhausted)), pages, count)
    return PagedContext(context.pool, rows(pages, batched.pages), count)


def _row_sampler(params: SamplingParams):
    """`sample_rows` for `params`, whose batching rule folds the vmapped axis into the rows."""

    @jax.custom_batching.custom_vmap
    def run(lm, row_keys, state, stops, running, limit, prefix):
        return _sample_rows(lm, row_keys, state, params, stops, running, limit, prefix)

    @run.def_vmap
    def fold(size, in_batched, lm, row_keys, state, stops, running, limit, prefix):
        lm_batched, keys_batched, state_batched, stops_batched, running_batched, limit_batched, prefix_batched = (
            in_batched
        )
        if any(jax.tree.leaves((lm_batched, stops_batched))):  # several models: nothing shared to fold
            axes = jax.tree.map(lambda b: 0 if b else None, in_batched)
            out = jax.vmap(run, in_axes=tuple(axes))(lm, row_keys, state, stops, running, limit, prefix)
            return out, jax.tree.map(lambda _: True, out)

        def rows(x, batched):
            return _fold(x if batched else jnp.broadcast_to(x[None], (size, *x.shape)))

        state = jax.tree.map(rows, state, state_batched)

        def fold_part(part, batched):
            if isinstance(part, PagedContext):
                return _fold_paged(part, batched, size, rows)
            if any(jax.tree.leaves(batched)):  # one prefix per vmapped element
                return jax.tree.map(rows, part, batched)
            return part  # an unbatched prefix stays as it is: every folded row shares it, stored once

        parts = tuple(map(fold_part, prefix_parts(prefix), prefix_parts(prefix_batched)))
        prefix = parts if type(prefix) is tuple else (parts[0] if parts else None)
        result = run(lm, rows(row_keys, keys_batched), state, stops, rows(running, running_batched),
                     rows(limit, limit_batched), prefix)
        out = jax.tree.map(lambda x: _unfold(x, size), result)
        return out, jax.tree.map(lambda _: True, out)

    return run


def _sample_rows(
    lm: Llama,
    row_keys: jax.Array,
    state: LMState,
    params: SamplingParams,
    stops: StopTable,
    running: jax.Array,
    limit: jax.Array,
    prefix: KVCache | PagedContext | tuple | None,
) -> StepResult:
    """`sample_step` with one key per row, the running rows and their caps given: the loop itself."""
    batch = state.next_logits.shape[0]
    max_tokens = params.max_tokens
    history = jnp.full((batch, max(stops.stop_bytes.shape[1] - 1, 0)), -1, jnp.int32)
    zeros = jnp.zeros((batch, max_tokens), jnp.float32)
    carry = dict(
        i=jnp.int32(0),
        tokens=jnp.full((batch, max_tokens), NO_TOKEN, jnp.int32),
        logp_sample=zeros,
        logp_model=zeros,
        length=jnp.zeros((batch,), jnp.int32),
        running=running,
        stop=jnp.full((batch,), STOP_CAP, jnp.int32),
        history=history,
        state=state,
        keys=row_keys,
    )

    def cond(c):
        return (c["i"] < max_tokens) & jnp.any(c["running"])

    def body(c):
        keys, subkeys = jnp.moveaxis(jax.vmap(jax.random.split)(c["keys"]), 1, 0)
        logits = c["state"].next_logits
        model_logp = jax.nn.log_softmax(logits, axis=-1)
        if params.temperature == 0.0:
            token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            sample_logp = jnp.zeros((batch,), jnp.float32)
        else:
            logp = sampling_log_probs(logits, params)
            token = draw(subkeys, logp)
            sample_logp = jnp.take_along_axis(logp, token[:, None], axis=1)[:, 0]
        run = c["running"]
        i = c["i"]
        history, stop_index = match_stops(c["history"], token, stops)
        is_eos = jnp.any(token[:, None] == stops.eos_ids[None, :], axis=1)
        stop = jnp.where(is_eos, STOP_EOS, jnp.where(stop_index >= 0, STOP_STRING + stop_index, STOP_CAP))
        logits_new, cache = lm.extend(token[:, None], c["state"].cache, run[:, None], prefix, read_filled=True)
        next_logits = jnp.where(run[:, None], logits_new[:, 0], logits)
        where = lambda new, old: jnp.where(run, new, old)
        return dict(
            i=i + 1,
            tokens=c["tokens"].at[:, i].set(where(token, NO_TOKEN)),
            logp_sample=c["logp_sample"].at[:, i].set(where(sample_logp, 0.0)),
            logp_model=c["logp_model"].at[:, i].set(where(model_logp[jnp.arange(batch), token], 0.0)),
            length=c["length"] + run,
            running=run & (stop == STOP_CAP) & (c["length"] + 1 < limit),
            stop=where(stop, c["stop"]),
            history=jnp.where(run[:, None], history, c["history"]),
            state=LMState(cache, next_logits),
            keys=keys,
        )

    c = jax.lax.while_loop(cond, body, carry)
    return StepResult(c["tokens"], c["length"], c["logp_sample"], c["logp_model"], c["stop"], c["state"])


def force_tokens(
    lm: Llama, state: LMState, tokens: jax.Array, mask: jax.Array, prefix: KVCache | PagedContext | tuple | None = None
) -> tuple[jax.Array, LMState]:
    """Teacher-force `tokens` [B, T] (valid where `mask`, padding at the end) after `state`.

    Returns the per-token log-probs under the model [B, T] (0 at padding) and the
    state after the valid tokens. One chunked forward: this is how a PRM scores a
    new step from its own cache, and how a fixed (reference) step is replayed.
    """
    logits, cache = lm.extend(tokens, state.cache, mask, prefix)
    previous = jnp.concatenate([state.next_logits[:, None], logits[:, :-1]], axis=1)
    logp = jnp.take_along_axis(jax.nn.log_softmax(previous, axis=-1), jnp.maximum(tokens, 0)[..., None], axis=-1)
    count = jnp.sum(mask, axis=1)
    last = jnp.maximum(count - 1, 0)
    next_logits = jnp.where(
        (count > 0)[:, None], jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0], state.next_logits
    )
    return jnp.where(mask, logp[..., 0], 0.0), LMState(cache, next_logits)


def score(
    lm: Llama, context: jax.Array, context_mask: jax.Array, continuation: jax.Array, continuation_mask: jax.Array
) -> jax.Array:
    """log p(continuation | context) per row, by teacher forcing in one forward pass.

    `context` is left-padded, `continuation` right-padded, so each row's valid
    tokens are contiguous in the concatenation.
    """
    tokens = jnp.concatenate([context, continuation], axis=1)
    mask = jnp.concatenate([context_mask, continuation_mask], axis=1).astype(bool)
    logits = lm(tokens, mask)
    logp = jax.nn.log_softmax(logits[:, context.shape[1] - 1 : -1], axis=-1)
    token_logp = jnp.take_along_axis(logp, jnp.maximum(continuation, 0)[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(continuation_mask, token_logp, 0.0), axis=1)


def generate(
    lm: Llama,
    key: jax.Array,
    tokens: jax.Array,
    mask: jax.Array | None,
    params: SamplingParams,
    stops: StopTable,
) -> StepResult:
    """Prefill a batch of prompts and sample one step (up to `params.max_tokens` tokens)."""
    state = prefill(lm, tokens, mask, tokens.shape[1] + params.max_tokens)
    return sample_step(lm, key, state, params, stops)
