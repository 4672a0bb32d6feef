"""Arithmetic: evaluate a nested integer expression one operation per line.

Distribution (`generate`), all draws from one numpy Generator:

1. the number of operations k is uniform in {3, 4};
2. `tree(k)`: for k = 0 a leaf uniform in 2..30; otherwise the left subtree
   gets j operations, j uniform in 0..k-1, the right one k-1-j; then the
   operation is drawn uniform in + - * /; then the left subtree, then the
   right one, recursively;
3. the whole draw (k, shape, ops, leaves) is repeated until every
   intermediate result is an integer in 0..999 (division exact). The
   rejection is on the whole draw, so 4-operation expressions end up rarer
   than 3-operation ones (about 36% against 64%).

Text: no spaces, every operation parenthesised except the outermost, e.g.
`(((17+25)*3)-40)/2`. The parser (recursive descent, never `eval`) also
reads the usual precedence and left associativity, so `2+3*4` is accepted and
written back as `2+(3*4)`.

The trace evaluates one operation per line in post-order (left subtree, right
subtree, node: innermost first, left to right), then an answer line; "\\n" ends
every line and the tokenizer's EOS follows the answer line:

    prompt:  "arithmetic (((17+25)*3)-40)/2\\n"
    trace:   "17+25=42\\n42*3=126\\n126-40=86\\n86/2=43\\nanswer 43\\n"   then <eos>

Step correctness (PRM labels): line i is correct iff all earlier lines are and
it is the i-th pending operation of the post-order with its operands (the
expression's numbers, earlier lines' results substituted) in order, in either
order for + and *, and the exact result; after the last operation the correct
line is `answer <value>`; anything after that is wrong.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from os import PathLike
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from models.sampling import SamplingParams
from ppl.errors import InputError
from ppl.tasks import jax_verifiers
from ppl.tasks.countdown import Step, miswrite, parse_step
from ppl.tasks.jsonl import read_jsonl
from ppl.tasks.task import Task, Training, Verifier

NUM_OPS = (3, 4)
LEAF_RANGE = (2, 30)
RESULT_MAX = 999
OPS = "+-*/"
MAX_DEPTH = 100  # parenthesis nesting accepted by the parser
MAX_DIGITS = 9  # longest number accepted by the parser

_ANSWER = re.compile(r"answer (0|[1-9]\d*)")


class BinOp(NamedTuple):
    """An operation node of an expression tree."""

    op: str
    left: Node
    right: Node


Node = int | BinOp


def parse(text: str) -> Node:
    """The expression tree of `text` (spaces ignored); InputError when malformed."""
    tokens = re.findall(r"[0-9]+|\S", text)
    pos = 0

    def take() -> str | None:
        nonlocal pos
        pos += 1
        return tokens[pos - 1] if pos <= len(tokens) else None

    def binary(ops: str, operand: Callable[[int], Node], depth: int) -> Node:
        node = operand(depth)
        while pos < len(tokens) and tokens[pos] in ops:
            node = BinOp(take(), node, operand(depth))
        return node

    def expr(depth: int) -> Node:
        return binary("+-", term, depth)

    def term(depth: int) -> Node:
        return binary("*/", factor, depth)

    def factor(depth: int) -> Node:
        token = take()
        if token is None:
            raise InputError("unexpected end of expression")
        if token == "(":
            if depth >= MAX_DEPTH:
                raise InputError(f"parentheses nested deeper than {MAX_DEPTH}")
            node = expr(depth + 1)
            if take() != ")":
                raise InputError("missing ')'")
            return node
        if token[0] in "0123456789":
            if len(token) > MAX_DIGITS:
                raise InputError(f"number longer than {MAX_DIGITS} digits")
            return int(token)
        raise InputError(f"unexpected {token!r}")

    node = expr(0)
    if pos < len(tokens):
        raise InputError(f"unexpected {tokens[pos]!r}")
    return node


def to_text(node: Node, outermost: bool = True) -> str:
    """The canonical text: no spaces, every operation but the outermost in parentheses."""
    if isinstance(node, int):
        return str(node)
    text = f"{to_text(node.left, False)}{node.op}{to_text(node.right, False)}"
    return text if outermost else f"({text})"


def combine(a: int, op: str, b: int) -> int | None:
    """`a op b` if it is a non-negative integer (division exact), else None."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b if a >= b else None
    if op == "*":
        return a * b
    if op == "/":
        return a // b if b != 0 and a % b == 0 else None
    raise ValueError(f"unknown operation {op!r}")


def _trace(node: Node, slip_at: int = -1, slip: Callable[[Step], Step] | None = None) -> list[Step] | None:
    """The post-order steps, step `slip_at` rewritten by `slip` and its written result carried on.

    None when some operation (after the slip) has no non-negative integer result.
    """
    steps: list[Step] = []

    def walk(node: Node) -> int | None:
        if isinstance(node, int):
            return node
        a, b = walk(node.left), walk(node.right)
        if a is None or b is None:
            return None
        c = combine(a, node.op, b)
        if c is None:
            return None
        step = Step(a, node.op, b, c)
        if len(steps) == slip_at:
            step = slip(step)
        steps.append(step)
        return step.c

    return None if walk(node) is None else steps


def _tree(expr: str | Node) -> Node:
    return parse(expr) if isinstance(expr, str) else expr


def _checked_steps(expr: str | Node) -> list[Step]:
    steps = _trace(_tree(expr))
    if steps is None:
        raise InputError("an intermediate result is not a non-negative integer (division must be exact)")
    return steps


def evaluate(expr: str | Node) -> int:
    """The exact value; InputError if malformed or an intermediate is not a non-negative integer."""
    tree = _tree(expr)
    steps = _checked_steps(tree)
    return steps[-1].c if steps else tree


def solution_steps(expr: str | Node) -> list[str]:
    """The correct operation lines, in post-order (no answer line)."""
    return [s.text for s in _checked_steps(expr)]


def prompt(expr: str | Node) -> str:
    """The prompt text: `arithmetic <canonical expression>` and a newline."""
    return f"arithmetic {to_text(_tree(expr))}\n"


def format_solution(expr: str | Node) -> str:
    """The trace text: the operation lines, then `answer <value>`, each ended by a newline."""
    return "".join(f"{s}\n" for s in solution_steps(expr)) + f"answer {evaluate(expr)}\n"


def answer_from_trace(text: str) -> int | None:
    """The integer of the first `answer N` line of a trace, or None if there is none."""
    for line in text.split("\n"):
        m = _ANSWER.fullmatch(line.strip())
        if m:
            return int(m[1])
    return None


def _matches(text: str, expected: Step) -> bool:
    step = parse_step(text)
    if step is None or step.pool is not None or step.op != expected.op or step.c != expected.c:
        return False
    return (step.a, step.b) == (expected.a, expected.b) or (
        step.op in "+*" and (step.b, step.a) == (expected.a, expected.b)
    )


def step_labels(expr: str | Node, lines: Sequence[str]) -> list[int]:
    """PRM labels of a trace's lines (operations, then the answer line); see the module docstring."""
    expected = _checked_steps(expr)
    value = evaluate(expr)
    labels = []
    done = 0  # lines correct so far; len(expected) + 1 once the answer is written
    for line in lines:
        if done < len(expected) and done == len(labels) and _matches(line, expected[done]):
            ok = True
        else:
            m = _ANSWER.fullmatch(line.strip())
            ok = done == len(expected) == len(labels) and m is not None and int(m[1]) == value
        done += ok
        labels.append(int(ok))
    return labels


def verify_steps(expr: str | Node, steps: Sequence[str]) -> bool:
    """Exact check: every operation line correct, optionally followed by a correct answer line."""
    n = len(_checked_steps(expr))
    return len(steps) in (n, n + 1) and all(step_labels(expr, steps))


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return np.random.default_rng(rng)


def _random_tree(rng: np.random.Generator, num_ops: int) -> Node:
    if num_ops == 0:
        return int(rng.integers(LEAF_RANGE[0], LEAF_RANGE[1] + 1))
    left = int(rng.integers(num_ops))
    op = OPS[int(rng.integers(len(OPS)))]
    return BinOp(op, _random_tree(rng, left), _random_tree(rng, num_ops - 1 - left))


def generate(rng: np.random.Generator | int | None, n: int) -> list[str]:
    """`n` canonical expressions from the distribution in the module docstring."""
    rng = _rng(rng)
    exprs: list[str] = []
    while len(exprs) < n:
        tree = _random_tree(rng, int(rng.choice(NUM_OPS)))
        steps = _trace(tree)
        if steps is not None and all(s.c <= RESULT_MAX for s in steps):
            exprs.append(to_text(tree))
    return exprs


def _slip(step: Step, rng: np.random.Generator) -> Step:
    """One realistic slip: a wrong result, swapped operands of - or /, or a miscopied operand."""
    kind = rng.choice(["result", "order", "operand"], p=[0.6, 0.2, 0.2])
    if kind == "order" and step.op in "-/" and step.a != step.b:
        return step._replace(a=step.b, b=step.a)
    if kind == "operand":
        a = miswrite(step.a, rng)
        c = combine(a, step.op, step.b)
        if c is not None:
            return Step(a, step.op, step.b, c)
    return step._replace(c=miswrite(step.c, rng))


def corrupted_trace(expr: str | Node, rng: np.random.Generator | int | None, p_clean: float = 0.2) -> list[str]:
    """A trace (operation lines and answer line) for PRM training; label it with `step_labels`.

    With probability `p_clean` the correct trace; otherwise one line is
    corrupted, a multi-digit product three times as likely as any other line,
    and later lines carry the wrong value on as an LM would (redrawn when the
    carried value makes a later operation invalid; the answer line is
    miscopied when no draw works).
    """
    rng = _rng(rng)
    tree = _tree(expr)
    clean = _checked_steps(tree)
    value = evaluate(tree)
    if rng.random() < p_clean:
        return [s.text for s in clean] + [f"answer {value}"]
    weights = np.array([3.0 if s.op == "*" and s.c >= 10 else 1.0 for s in clean] + [1.0])
    for _ in range(20):
        k = int(rng.choice(len(weights), p=weights / weights.sum()))
        if k == len(clean):
            break
        steps = _trace(tree, k, lambda s: _slip(s, rng))
        if steps is not None:
            lines = [s.text for s in steps] + [f"answer {steps[-1].c}"]
            if not all(step_labels(tree, lines)):
                return lines
    return [s.text for s in clean] + [f"answer {miswrite(value, rng)}"]


def _problem_from_json(line: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise InputError(f"not valid JSON ({err.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get("expression"), str):
        raise InputError('expected an object with a string "expression"')
    tree = parse(record["expression"])
    if isinstance(tree, int):
        raise InputError("the expression has no operation")
    evaluate(tree)
    return to_text(tree)


def read_problems(path: str | PathLike) -> list[str]:
    """Canonical expressions from a JSONL file of `{"expression": "..."}` (blank lines skipped).

    Raises InputError with a one-line message (`line 3: ...` for a bad line).
    """
    return read_jsonl(path, _problem_from_json)


def encode_expression(expr: str | Node, max_ops: int = 8) -> jax_verifiers.EncodedExpression:
    """Host-side: the post-order operations of `expr` as padded int32 arrays for `jax_verifiers.arithmetic_step_reward`.

    Raises InputError for an invalid expression (as `evaluate`) and
    ValueError when it has more than `max_ops` operations or a number >= 10**9.
    """
    tree = parse(expr) if isinstance(expr, str) else expr
    steps = solution_steps(tree)  # validates: exact, non-negative
    if len(steps) > max_ops:
        raise ValueError(f"{len(steps)} operations, more than max_ops={max_ops}")
    rows: list[tuple[int, int, int, int]] = []
    leaves: list[int] = []

    def walk(node: Node) -> tuple[int, int]:
        """(ref, value) of `node`, appending its operations in post-order."""
        if isinstance(node, int):
            leaves.append(node)
            return max_ops + len(leaves) - 1, node
        (a_ref, a), (b_ref, b) = walk(node.left), walk(node.right)
        c = combine(a, node.op, b)
        rows.append((a_ref, OPS.index(node.op), b_ref, c))
        return len(rows) - 1, c

    value = walk(tree)[1]
    if max([value, *leaves, *(r[3] for r in rows)]) >= 10**jax_verifiers.NUMBER_DIGITS:
        raise ValueError(f"a number of the expression has more than {jax_verifiers.NUMBER_DIGITS} digits")
    table = np.full((max_ops, 4), -1, np.int32)
    table[: len(rows)] = np.asarray(rows, np.int32).reshape(-1, 4)
    padded_leaves = np.full(max_ops + 1, -1, np.int32)
    padded_leaves[: len(leaves)] = leaves
    return jax_verifiers.EncodedExpression(
        a_ref=table[:, 0],
        op=table[:, 1],
        b_ref=table[:, 2],
        result=table[:, 3],
        leaves=padded_leaves,
        num_ops=np.int32(len(rows)),
        value=np.int32(value),
    )


class ArithmeticVerifier(NamedTuple):
    """1 iff the line is the next correct operation (or the correct answer) given the previous lines."""

    token_bytes: jax.Array

    @staticmethod
    def context(expression: str) -> tuple:
        encoded = encode_expression(expression)
        values = jnp.full((1, encoded.a_ref.shape[0]), jax_verifiers.EMPTY, jnp.int32)
        return jax.tree.map(lambda x: jnp.asarray(x)[None], encoded), values, jnp.zeros((1,), jnp.int32)

    def score_step(self, judge, tokens, mask):
        encoded, values, index = judge
        check = jax.vmap(jax_verifiers.arithmetic_step_reward, in_axes=(0, 0, 0, 0, None))
        reward, values, _ = check(encoded, index, values, tokens, self.token_bytes)
        return reward, (encoded, values, index + 1)


def _answer(expression: str, steps: list[str]) -> int | None:
    return answer_from_trace("\n".join(steps) + "\n")


TASK = Task(
    name="arithmetic",
    generate=generate,
    read=read_problems,
    prompt=prompt,
    answer=_answer,
    correct=lambda e, steps: _answer(e, steps) == evaluate(e),
    record=lambda e: {"expression": e},
    max_steps=5,
    params=SamplingParams(temperature=1.0, max_tokens=12),
    final_prefix="answer",
    verifier=Verifier(ArithmeticVerifier, ArithmeticVerifier.context),
    training=Training(
        solutions=lambda e: [format_solution(e).splitlines()],
        step_labels=step_labels,
        corrupted=corrupted_trace,
    ),
)
