"""Exact, jittable step checkers for Countdown and arithmetic (a verifier PRM on device).

The task modules wrap them as their `Verifier`s (`countdown.TASK.verifier`, `arithmetic.TASK.verifier`).

A step arrives as token ids (`[T]` int32, -1 padded) together with a token-bytes
table (`StopTable.token_bytes`, `[V, Lmax]` int32, -1 padded). Everything here
is fixed-shape array code with no host callbacks and no Python loops over data,
so it runs inside the one jitted inference program and `jax.vmap`s over
particles.

Parsing matches `countdown.parse_step` (a step, then optionally one space and
the pool it leaves in parentheses, up to `POOL_SLOTS` numbers) and arithmetic's
`answer N` rule on ASCII text: surrounding ASCII whitespace is stripped, numbers are decimal
without signs or leading zeros. Non-ASCII bytes make a step malformed (Python's
`\\d` and `str.strip` would also accept Unicode digits and spaces). A number of
more than 9 digits is well formed but is read as -1, which matches nothing.
Special tokens keep their literal text in `StopTable.token_bytes` (b"<eos>"),
so a step that ends at EOS without a newline is malformed; to read it as text
without the EOS, clear that row once: `token_bytes.at[eos_ids].set(-1)`.

Integers are int32 (x64 off). Countdown arithmetic whose result would exceed
2**31 - 1 is treated as illegal and written numbers of 10 digits match
nothing, so the checkers agree with the Python rules whenever every number
stays below 10**9 (the shipped distribution stays below 25**4); arithmetic
expressions with a number of 10**9 or more are refused by `arithmetic.encode_expression`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

INT_MAX = np.iinfo(np.int32).max
NUMBER_DIGITS = 9  # longest number read exactly; longer ones read as -1
EMPTY = -1  # a used (or absent) pool slot; also the value of an unreadable number
_DEAD = -2  # an enumeration branch that broke a rule: poisons every later step
POOL_SLOTS = 4  # most numbers a written Countdown pool may hold

_WHITESPACE = np.asarray([ord(c) for c in " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"], np.int32)  # ASCII of str.strip
_OPS = np.asarray([ord(c) for c in "+-*/"], np.int32)  # op codes 0..3 in this order
_ANSWER = np.asarray(list(b"answer "), np.int32)
_POW10 = np.asarray([10**k for k in range(NUMBER_DIGITS)], np.int32)


class ParsedStep(NamedTuple):
    """A parsed step line; scalars (int32 unless said). a/op/b/c and answer mean something only under their flag."""

    well_formed: jax.Array  # bool: the line is `a op b = c`
    a: jax.Array
    op: jax.Array  # 0..3 for + - * /
    b: jax.Array
    c: jax.Array
    is_answer: jax.Array  # bool: the line is `answer N`
    answer: jax.Array
    has_pool: jax.Array  # bool: the step writes the pool it leaves, `a op b = c (x y ...)`
    pool: jax.Array  # [POOL_SLOTS] the written pool, EMPTY-padded; _DEAD for a number of > 9 digits


class EncodedExpression(NamedTuple):
    """An arithmetic expression as padded post-order operations (host numpy, int32).

    Operation i computes `operand[a_ref[i]] op[i] operand[b_ref[i]] = result[i]`,
    where `operand = concat(values, leaves)`: a ref below `max_ops` is an earlier
    operation's result, `max_ops + k` is leaf k. Padding is -1.
    """

    a_ref: np.ndarray  # [M]
    op: np.ndarray  # [M]
    b_ref: np.ndarray  # [M]
    result: np.ndarray  # [M] exact result of each operation
    leaves: np.ndarray  # [M + 1]
    num_ops: np.ndarray  # [] number of real operations
    value: np.ndarray  # [] value of the whole expression


def step_bytes(tokens: jax.Array, token_bytes: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The bytes a step's tokens decode to, left-packed into `[T * Lmax]` (-1 padded), and their count."""
    rows = jnp.where(tokens[:, None] >= 0, token_bytes[jnp.maximum(tokens, 0)], -1)
    flat = rows.reshape(-1)
    keep = flat >= 0
    size = flat.shape[0]
    slot = jnp.where(keep, jnp.cumsum(keep) - 1, size)
    return jnp.full((size,), -1, jnp.int32).at[slot].set(flat, mode="drop"), jnp.sum(keep, dtype=jnp.int32)


def _number(buf: jax.Array, lo: jax.Array, hi: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The decimal number in `buf[lo:hi]` (assumed digits) and whether it is written canonically.

    Canonical: non-empty, no leading zero. More than NUMBER_DIGITS digits reads as -1.
    """
    idx = jnp.arange(buf.shape[0])
    span = (idx >= lo) & (idx < hi)
    power = jnp.asarray(_POW10)[jnp.clip(hi - 1 - idx, 0, NUMBER_DIGITS - 1)]
    value = jnp.sum(jnp.where(span, (buf - ord("0")) * power, 0))
    length = hi - lo
    canonical = (length > 0) & ((length == 1) | (buf[jnp.clip(lo, 0, buf.shape[0] - 1)] != ord("0")))
    return jnp.where(length > NUMBER_DIGITS, EMPTY, value), canonical


def _numbers(buf: jax.Array, lo: jax.Array, hi: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The numbers `[POOL_SLOTS]` (EMPTY-padded) separated by single spaces in `buf[lo:hi]` (assumed digits and
    spaces), and whether they are written canonically: one to POOL_SLOTS numbers, none empty or with a leading
    zero. A number of more than NUMBER_DIGITS digits reads as _DEAD."""
    n = buf.shape[0]
    idx = jnp.arange(n)
    span = (idx >= lo) & (idx < hi)
    space = span & (buf == ord(" "))
    digit = span & ~space
    group = jnp.cumsum(space)  # which number a position belongs to
    next_stop = jax.lax.cummin(jnp.where(space | (idx >= hi), idx, n), reverse=True)
    power = jnp.asarray(_POW10)[jnp.clip(next_stop - 1 - idx, 0, NUMBER_DIGITS - 1)]
    slots = jnp.zeros(POOL_SLOTS, jnp.int32)
    values = slots.at[group].add(jnp.where(digit, (buf - ord("0")) * power, 0), mode="drop")
    lengths = slots.at[group].add(digit.astype(jnp.int32), mode="drop")
    count = jnp.sum(space) + 1
    used = jnp.arange(POOL_SLOTS) < count
    first = digit & ((idx == lo) | jnp.roll(space, 1))
    leading_zero = jnp.any(first & (buf == ord("0")) & (lengths[jnp.minimum(group, POOL_SLOTS - 1)] > 1))
    ok = (count <= POOL_SLOTS) & jnp.all(~used | (lengths > 0)) & ~leading_zero
    values = jnp.where(used, jnp.where(lengths > NUMBER_DIGITS, _DEAD, values), EMPTY)
    return values, ok


def parse_bytes(buf: jax.Array) -> ParsedStep:
    """Parse a left-packed, -1 padded byte buffer `[N]` as `a op b = c` (optionally followed by ` (x y ...)`)
    or `answer N` (ASCII rules)."""
    n = buf.shape[0]
    idx = jnp.arange(n)
    present = buf >= 0
    content = present & ~jnp.isin(buf, _WHITESPACE)
    has_content = jnp.any(content)
    start = jnp.argmax(content)
    end = n - jnp.argmax(content[::-1])
    inside = (idx >= start) & (idx < end)
    digit = (buf >= ord("0")) & (buf <= ord("9"))
    opening = inside & (buf == ord("("))
    has_pool = jnp.any(opening)
    lp = jnp.argmax(opening)
    body_end = jnp.where(has_pool, lp - 1, end)  # the step itself ends before " ("
    body = (idx >= start) & (idx < body_end)
    is_op = body & jnp.isin(buf, _OPS)
    is_eq = body & (buf == ord("="))

    p, q = jnp.argmax(is_op), jnp.argmax(is_eq)
    a, a_ok = _number(buf, start, p)
    b, b_ok = _number(buf, p + 1, q)
    c, c_ok = _number(buf, q + 1, body_end)
    shape_ok = (jnp.sum(is_op) == 1) & (jnp.sum(is_eq) == 1) & (p < q)
    only_step_bytes = ~jnp.any(body & ~(digit | is_op | is_eq))
    pool, numbers_ok = _numbers(buf, lp + 1, end - 1)
    in_parens = (idx > lp) & (idx < end - 1)
    pool_ok = ~has_pool | (
        (buf[jnp.maximum(lp - 1, 0)] == ord(" "))
        & (buf[end - 1] == ord(")"))
        & ~jnp.any(in_parens & ~(digit | (buf == ord(" "))))
        & numbers_ok
    )
    well_formed = has_content & shape_ok & only_step_bytes & a_ok & b_ok & c_ok & pool_ok
    op = jnp.argmax(buf[p] == _OPS).astype(jnp.int32)
    pool = jnp.where(has_pool, pool, EMPTY)

    head = jnp.take(buf, start + jnp.arange(_ANSWER.shape[0]), mode="fill", fill_value=-1)
    tail = start + _ANSWER.shape[0]
    answer, answer_ok = _number(buf, tail, end)
    is_answer = has_content & jnp.all(head == _ANSWER) & answer_ok & ~jnp.any(inside & (idx >= tail) & ~digit)
    return ParsedStep(well_formed, a, op, b, c, is_answer, answer, has_pool & well_formed, pool)


def parse_step_tokens(tokens: jax.Array, token_bytes: jax.Array) -> ParsedStep:
    """Parse a step given as token ids `[T]` (-1 padded) through the token-bytes table `[V, Lmax]`."""
    return parse_bytes(step_bytes(tokens, token_bytes)[0])


# ---------------------------------------------------------------- Countdown


def _combine(a: jax.Array, op: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Countdown's `a op b` (elementwise, non-negative ints) and whether it is legal.

    Legal: a positive integer result, subtraction > 0, exact division, no int32 overflow.
    """
    safe_b = jnp.maximum(b, 1)
    value = jnp.select([op == 0, op == 1, op == 2], [a + b, a - b, a * b], a // safe_b)
    legal = jnp.select(
        [op == 0, op == 1, op == 2],
        [a <= INT_MAX - b, a > b, (b == 0) | (a <= INT_MAX // safe_b)],
        (b > 0) & (a % safe_b == 0),
    )
    return value, legal & (value > 0)


# The six ways to combine a pair (x, y): (first is x?, op code): x+y, x*y, x-y, y-x, x/y, y/x.
_X_FIRST = np.asarray([True, True, True, False, True, False])
_PAIR_OPS = np.asarray([0, 2, 1, 1, 3, 3], np.int32)


def _outcomes(x: jax.Array, y: jax.Array) -> jax.Array:
    """The six results `[..., 6]` of combining pool entries x, y (any shape) in either order.

    An EMPTY entry acts as a no-op partner (the result is the other entry), so a
    pool with empty slots reduces like the smaller pool; a rule break or a
    _DEAD operand gives _DEAD.
    """
    x, y = x[..., None], y[..., None]
    a = jnp.where(_X_FIRST, x, y)
    b = jnp.where(_X_FIRST, y, x)
    value, legal = _combine(jnp.maximum(a, 0), _PAIR_OPS, jnp.maximum(b, 0))
    real = jnp.where(legal, value, _DEAD)
    passed = jnp.where(x == EMPTY, y, jnp.where(y == EMPTY, x, real))
    return jnp.where((x == _DEAD) | (y == _DEAD), _DEAD, passed)


def _finals(pools: jax.Array) -> jax.Array:
    """Every final number of every reduction order of `pools` `[M, P]`, flattened (_DEAD/EMPTY where none)."""
    size = pools.shape[1]
    if size == 1:
        return pools[:, 0]
    pairs = [(i, j) for i in range(size) for j in range(i + 1, size)]
    first, second = (np.asarray(ix) for ix in zip(*pairs, strict=True))
    others = np.asarray([[k for k in range(size) if k not in pair] for pair in pairs], np.int32)
    others = others.reshape(len(pairs), size - 2)
    merged = _outcomes(pools[:, first], pools[:, second])  # [M, pairs, 6]
    rest = jnp.broadcast_to(pools[:, others][:, :, None], (*merged.shape, size - 2))
    children = jnp.concatenate([merged[..., None], rest], axis=-1)  # [M, pairs, 6, size - 1]
    return _finals(children.reshape(-1, size - 1))


def countdown_solvable(pool: jax.Array, target: jax.Array) -> jax.Array:
    """Whether `pool` `[P]` (EMPTY = -1 for used slots) can be reduced to `target`; exact enumeration.

    Agrees with `countdown.solvable` on the present numbers (an empty pool is
    unsolvable). For P = 4 that is 3888 candidate finals, a few KiB of work.
    """
    pool = jnp.asarray(pool, jnp.int32)
    finals = _finals(pool[None])
    return jnp.any((finals > 0) & (finals == target))


def _take(pool: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`pool` with one occurrence of `x` marked EMPTY, and whether `x` was there."""
    hit = (pool == x) & (pool >= 0)
    found = jnp.any(hit)
    return jnp.where(found, pool.at[jnp.argmax(hit)].set(EMPTY), pool), found


def _same_pool(written: jax.Array, pool: jax.Array) -> jax.Array:
    """Whether two EMPTY-padded pools hold the same numbers as multisets."""
    size = max(written.shape[0], pool.shape[0])
    pad = lambda x: jnp.concatenate([x, jnp.full(size - x.shape[0], EMPTY, x.dtype)])
    return jnp.all(jnp.sort(pad(written)) == jnp.sort(pad(pool)))


def countdown_step_reward(
    pool: jax.Array, target: jax.Array, tokens: jax.Array, token_bytes: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Judge one Countdown step exactly as `countdown.step_labels` does.

    `pool` `[P]` int32, EMPTY (-1) for used slots; `tokens` `[T]` int32, -1 padded.
    Returns `(reward, new_pool, done)`: reward 1.0 iff the step is well formed,
    takes its operands from the pool (as a multiset), is legal and exactly right,
    writes the pool it leaves correctly (if it writes one), and the target stays
    reachable from the new pool. `new_pool` puts `c` in
    place of the operands; after a malformed or illegal step it is all EMPTY, so
    later steps score 0 as in `step_labels`. `done` when one number remains or
    the step was malformed or illegal.
    """
    pool = jnp.asarray(pool, jnp.int32)
    step = parse_step_tokens(tokens, token_bytes)
    rest, has_a = _take(pool, step.a)
    rest, has_b = _take(rest, step.b)
    value, legal = _combine(jnp.maximum(step.a, 0), step.op, jnp.maximum(step.b, 0))
    after = rest.at[jnp.argmin(rest >= 0)].set(value)
    ok = step.well_formed & has_a & has_b & legal & (value == step.c) & (~step.has_pool | _same_pool(step.pool, after))
    new_pool = jnp.where(ok, after, EMPTY)
    reward = ok & countdown_solvable(new_pool, target)
    done = ~ok | (jnp.sum(new_pool >= 0) <= 1)
    return reward.astype(jnp.float32), new_pool, done


# ---------------------------------------------------------------- arithmetic


def arithmetic_step_reward(
    encoded: EncodedExpression, step_index: jax.Array, values: jax.Array, tokens: jax.Array, token_bytes: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Judge line `step_index` (0-based) of an arithmetic trace exactly as `arithmetic.step_labels` does.

    `values` `[max_ops]` int32 holds the results the model wrote on its correct
    lines, EMPTY (-1) elsewhere; start from all EMPTY. A line scores 1.0 iff
    every earlier line was correct (their results are all written) and it is
    the next post-order operation with the right operands in order (either order
    for + and *) and the exact result, or, after the last operation, `answer N`
    with the exact value. Returns `(reward, values, done)`: the result of a
    correct operation line is written at `step_index`; `done` unless the line
    was a correct operation line (a wrong line or the answer ends the trace).
    """
    encoded = EncodedExpression(*map(jnp.asarray, encoded))
    step = parse_step_tokens(tokens, token_bytes)
    size = values.shape[0]
    n = encoded.num_ops
    earlier = jnp.arange(size) < jnp.minimum(step_index, n)
    prev_ok = jnp.all(~earlier | (values >= 0))
    k = jnp.clip(step_index, 0, size - 1)
    operand = jnp.concatenate([values, encoded.leaves])
    a = operand[jnp.maximum(encoded.a_ref[k], 0)]
    b = operand[jnp.maximum(encoded.b_ref[k], 0)]
    op = encoded.op[k]
    in_order = (step.a == a) & (step.b == b)
    swapped = ((op == 0) | (op == 2)) & (step.a == b) & (step.b == a)
    op_ok = (
        (step_index >= 0)
        & (step_index < n)
        & prev_ok
        & step.well_formed
        & ~step.has_pool
        & (step.op == op)
        & (step.c == encoded.result[k])
        & (in_order | swapped)
    )
    answer_ok = (step_index == n) & prev_ok & step.is_answer & (step.answer == encoded.value)
    values = jnp.where(op_ok, values.at[k].set(step.c), values)
    return (op_ok | answer_ok).astype(jnp.float32), values, ~op_ok
