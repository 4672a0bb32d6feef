"""Exact verifier PRMs for the shipped tasks, with the PRM interface of `ppl.reasoning`.

`score_step(judge, tokens [1, T], mask) -> (reward [1], judge)`, where the judge
state is the task context the checker needs (the Countdown pool and target;
the arithmetic expression and the results written so far). Rewards are 0 or 1.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ppl.tasks import countdown, jax_verifiers


class CountdownOracle(NamedTuple):
    """P(solvable | pool after the step): 1 iff the step is legal and the target stays reachable."""

    token_bytes: jax.Array

    @staticmethod
    def judge(problem: countdown.Problem) -> tuple[jax.Array, jax.Array]:
        return jnp.asarray([problem.numbers], jnp.int32), jnp.asarray([problem.target], jnp.int32)

    def score_step(self, judge, tokens, mask):
        pool, target = judge
        check = jax.vmap(jax_verifiers.countdown_step_reward, in_axes=(0, 0, 0, None))
        reward, pool, _ = check(pool, target, tokens, self.token_bytes)
        return reward, (pool, target)


class ArithmeticOracle(NamedTuple):
    """1 iff the line is the next correct operation (or the correct answer) given the previous lines."""

    token_bytes: jax.Array

    @staticmethod
    def judge(expression: str) -> tuple:
        encoded = jax_verifiers.encode_expression(expression)
        values = jnp.full((1, encoded.a_ref.shape[0]), jax_verifiers.EMPTY, jnp.int32)
        return jax.tree.map(lambda x: jnp.asarray(x)[None], encoded), values, jnp.zeros((1,), jnp.int32)

    def score_step(self, judge, tokens, mask):
        encoded, values, index = judge
        check = jax.vmap(jax_verifiers.arithmetic_step_reward, in_axes=(0, 0, 0, 0, None))
        reward, values, _ = check(encoded, index, values, tokens, self.token_bytes)
        return reward, (encoded, values, index + 1)
