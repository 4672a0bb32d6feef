"""The jittable checkers agree exactly with the Python task rules, under jit and vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.sampling import stop_table
from ppl.errors import InputError
from ppl.tasks import arithmetic, countdown
from ppl.tasks import jax_verifiers as jv
from ppl.train import build_tokenizer

T = 40  # token slots per step
MAX_OPS = 8


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def table(tok):
    """`StopTable.token_bytes` of the shipped tokenizer."""
    return stop_table(tok).token_bytes


def encode_lines(tok, lines, steps=None):
    """Token ids `[len(lines) or steps, T]` of the lines, each ended by "\\n", -1 padded."""
    out = np.full((steps or len(lines), T), -1, np.int32)
    for i, line in enumerate(lines):
        ids = tok.encode(line + "\n")
        assert len(ids) <= T
        out[i, : len(ids)] = ids
    return out


def encode_raw(tok, texts):
    out = np.full((len(texts), T), -1, np.int32)
    for i, text in enumerate(texts):
        ids = tok.encode(text)
        assert len(ids) <= T
        out[i, : len(ids)] = ids
    return out


def padded_pool(pool, rng=None):
    """`pool` in 4 slots, -1 for the empty ones (at random positions if `rng`)."""
    slots = np.full(4, -1, np.int32)
    where = rng.permutation(4)[: len(pool)] if rng is not None else np.arange(len(pool))
    slots[where] = pool
    return slots


# ---------------------------------------------------------------- parsing

JUNK = [
    "", "\n", "7*3=21", " 7*3=21 ", "\t7*3=21\r", "\x0b7*3=21\x1c", "07*3=21", "7*03=21", "7*3=021",
    "0+0=0", "0-0=0", "7 * 3 = 21", "7*3=21=21", "7*3", "*3=21", "7*=21", "7*3=", "=21", "-7*3=21",
    "7*-3=21", "7x3=21", "7*3=21.", "7*3=21\n8", "7**3=21", "7*3==21", "(7*3)=21", "answer 21", "answer 021",
    "answer 0", "answer  21", "answer21", "Answer 21", "answer 21 ", " answer 21\n", "answer -3", "answer 2 1",
    "answer", "answer ", "7*3=21 answer", "answer 21\n7*3=21", "123456789*1=123456789", "1234567890+1=1234567891",
    "answer 1234567890", "<eos>", "7*3=21<eos>", "ANSWER 3", "é",
    "7*3=21 (12 21 25)", " 7*3=21 (25 12 21)\n", "7*3=21 (21)", "7*3=21 (1 2 3 4)", "7*3=21 (1 2 3 4 5)",
    "7*3=21(12 21 25)", "7*3=21  (12 21)", "7*3=21 (12  21)", "7*3=21 ( 12)", "7*3=21 (12 )", "7*3=21 ()",
    "7*3=21 (012 21)", "7*3=21 (0 21)", "7*3=21 (12 21", "7*3=21 12 21)", "7*3=21 (12) (3)", "7*3=21 (1+2)",
    "7*3=21 (1234567890)", "7*3=21 (12 21)x", "answer 21 (21)", "(12 21)", "7*3 (21)=21", "7*3=21 (12\n21)",
]  # fmt: skip
TEXT_JUNK = [j for j in JUNK if "<eos>" not in j]  # lines whose text is all there is (EOS stands for no bytes)
# Python's `\d` and `str.strip` accept these (no-break space, Arabic-Indic 3, ideographic space); bytes do not.
UNICODE = ["\u00a07*3=21", "1\u0663+4=17", "7*3=21\u3000"]


def expected_parse(text):
    """(well_formed, a, op, b, c, is_answer, answer, has_pool, pool) by the Python rules; numbers of > 9 digits
    read -1 (-2 in a pool)."""
    fit = lambda v, unreadable=-1: v if v < 10**jv.NUMBER_DIGITS else unreadable
    step = countdown.parse_step(text)
    answer = arithmetic._ANSWER.fullmatch(text.strip())
    fields = (False, 0, 0, 0, 0)
    if step is not None:
        fields = (True, fit(step.a), "+-*/".index(step.op), fit(step.b), fit(step.c))
    written = step is not None and step.pool is not None
    pool = [fit(v, -2) for v in step.pool] if written else []
    pool = [*pool, *[-1] * (jv.POOL_SLOTS - len(pool))] if len(pool) <= jv.POOL_SLOTS else None
    return (*fields, answer is not None, fit(int(answer[1])) if answer else 0, written, pool)


def fuzz_lines(rng, n):
    """Random strings over the step alphabet, and near-miss steps and answer lines."""
    alphabet = list("0123456789+-*/= \n\t") + ["answer "]
    out = ["".join(rng.choice(alphabet, size=rng.integers(1, 10))) for _ in range(n)]
    for _ in range(n):
        a, b, c = (str(int(x)) for x in rng.integers(0, 10 ** rng.integers(1, 5, size=3)))
        pads = [rng.choice(["", " ", "\t", "0", "\n"], p=[0.84, 0.04, 0.04, 0.04, 0.04]) for _ in range(7)]
        op = rng.choice(list("+-*/"))
        out.append(f"{pads[0]}{pads[1]}{a}{pads[2]}{op}{pads[3]}{b}{pads[4]}={pads[5]}{c}{pads[6]}")
        out.append(f"{pads[0]}answer {pads[1]}{a}{pads[6]}")
        pool = " ".join(str(int(x)) for x in rng.integers(0, 10 ** rng.integers(1, 4, size=rng.integers(1, 6))))
        out.append(f"{a}{op}{b}={c}{pads[6]}({pads[1]}{pool}{pads[2]}){pads[0]}")
    return out


def test_parser_matches_python_rules(tok, table):
    assert all(countdown.parse_step(t) is not None for t in UNICODE)
    texts = JUNK + UNICODE + fuzz_lines(np.random.default_rng(0), 150)
    parse = jax.jit(jax.vmap(jv.parse_step_tokens, in_axes=(0, None)))
    got = parse(jnp.asarray(encode_raw(tok, texts)), table)
    for i, text in enumerate(texts):
        visible = text.replace("<eos>", "")  # special tokens stand for no bytes: EOS ends a step, it is not text
        want = expected_parse(visible) if visible.isascii() else (False, 0, 0, 0, 0, False, 0, False, [])
        well, a, op, b, c, is_answer, answer, has_pool = (x[i].item() for x in got[:-1])
        if want[7] and want[8] is None:  # more numbers than a pool holds: Python reads them, the checker refuses
            want = (False, *want[1:7], False, [])
        assert (well, is_answer, has_pool) == (want[0], want[5], want[7]), text
        if well:
            assert (a, op, b, c) == want[1:5], text
        if has_pool:
            assert got.pool[i].tolist() == want[8], text
        if is_answer:
            assert answer == want[6], text
    wellformed = sum(expected_parse(t)[0] for t in texts)
    assert 20 < wellformed < len(texts) - 20  # the fuzz exercises both sides


def test_step_bytes_packs_tokens(tok, table):
    ids = np.full(T, -1, np.int32)
    ids[[0, 3, 4]] = tok.encode("12")[0], tok.encode("+")[0], tok.encode("\n")[0]
    buf, length = jax.jit(jv.step_bytes)(jnp.asarray(ids), table)
    assert int(length) == 3 and bytes(np.asarray(buf[:3]).tolist()) == b"1+\n" and np.all(np.asarray(buf[3:]) == -1)


# ---------------------------------------------------------------- Countdown


def test_solvable_matches_python():
    rng = np.random.default_rng(1)
    cases = []
    for _ in range(400):
        size = int(rng.integers(0, 5))
        cases.append([int(x) for x in rng.integers(1, rng.choice([8, 26, 60]), size)])
    # int32 overflow: 65537**2 wraps to 131073, 46341**2 to a negative number, 50000**3 to 1957549312
    cases += [[65537, 65537], [46341, 46341, 2], [50000, 50000, 50000, 1], [65537, 65537, 3, 7]]
    pools, targets, want = [], [], []
    for pool in cases:
        finals = [f for f in sorted(countdown._finals(tuple(sorted(pool)))) if f <= jv.INT_MAX] if pool else [0]
        for target in (int(rng.choice(finals)), int(rng.integers(-2, 150)), 131073, 1957549312):
            pools.append(padded_pool(pool, rng))
            targets.append(target)
            want.append(countdown.solvable(pool, target))
    got = jax.jit(jax.vmap(jv.countdown_solvable))(jnp.asarray(np.stack(pools)), jnp.asarray(targets))
    assert np.asarray(got).tolist() == want
    assert 300 < sum(want) < len(want) - 300


def random_legal_trace(problem, rng):
    """Three random legal steps, operands in random order (so some become illegal `-` and `/`)."""
    pool, steps = list(problem.numbers), []
    for _ in range(3):
        step = countdown.valid_steps(pool)[int(rng.integers(len(countdown.valid_steps(pool))))]
        pool = list(countdown.apply_step(pool, step))
        if rng.random() < 0.3:
            step = step._replace(a=step.b, b=step.a)
        steps.append(step.text)
    return steps


@pytest.fixture(scope="module")
def countdown_traces():
    rng = np.random.default_rng(2)
    cases = []
    for problem in countdown.generate(rng, 50):
        traces = [countdown.solutions(problem)[0], random_legal_trace(problem, rng)]
        traces += [countdown.corrupted_trace(problem, rng) for _ in range(3)]
        traces.append([*countdown.solutions(problem)[0], "1+1=2"])  # a step after the last one
        traces.append([rng.choice(TEXT_JUNK), *countdown.solutions(problem)[0][1:]])
        first, *rest = countdown.solutions(problem)[0]
        step = countdown.parse_step(first)
        wrong_pool = [*step.pool[:-1], step.pool[-1] + 1]
        traces.append([f"{step.text} ({' '.join(map(str, wrong_pool))})", *rest])  # right step, wrong pool
        traces.append([f"{step.text} ({' '.join(map(str, step.pool[::-1]))})", *rest])  # any order is fine
        cases += [(problem, t) for t in traces]
    return cases


def python_countdown(problem, steps):
    """Labels, done flags and pools by the Python rules."""
    labels = countdown.step_labels(problem, steps)
    pool, dones, pools = tuple(problem.numbers), [], []
    for text in steps:
        pool = None if pool is None else countdown.apply_step(pool, text)
        dones.append(pool is None or len(pool) == 1)
        pools.append(pool)
    return labels, dones, pools


@jax.jit
def run_countdown(pools, targets, steps, table):
    """Scan the checker over each trace's steps; vmap over traces."""

    def one(pool, target, trace):
        def body(pool, tokens):
            reward, pool, done = jv.countdown_step_reward(pool, target, tokens, table)
            return pool, (reward, done, pool)

        return jax.lax.scan(body, pool, trace)[1]

    return jax.vmap(one)(pools, targets, steps)


def test_countdown_rewards_match_step_labels(tok, table, countdown_traces):
    steps = np.stack([encode_lines(tok, t, steps=4) for _, t in countdown_traces])
    pools = np.stack([padded_pool(p.numbers) for p, _ in countdown_traces])
    targets = np.asarray([p.target for p, _ in countdown_traces], np.int32)
    rewards, dones, new_pools = (np.asarray(x) for x in run_countdown(pools, targets, steps, table))
    mixed = 0
    for i, (problem, trace) in enumerate(countdown_traces):
        labels, want_done, want_pools = python_countdown(problem, trace)
        n = len(trace)
        assert rewards[i, :n].tolist() == labels, trace
        assert dones[i, :n].tolist() == want_done, trace
        for pool, want in zip(new_pools[i, :n], want_pools, strict=True):
            assert (sorted(pool[pool >= 0].tolist()) if want is not None else []) == list(want or []), trace
        mixed += 0 < sum(labels) < n
    assert mixed > 50  # many traces with both kinds of step


def test_countdown_single_steps_under_vmap(tok, table):
    """The SMC shape: particles propose different steps from a pool, checked in one jitted vmap."""
    shared = (3, 7, 12, 25)
    texts = [s.text for s in countdown.valid_steps(shared)]
    texts += ["3*7=21", "7-12=-5", "12/7=1", "7*7=49", "25/5=5", "3+7=11", "answer 34", "3 7"]
    texts += ["7*3=21 (12 21 25)", "7*3=21 (21 25 12)", "7*3=21 (12 21 26)", "7*3=21 (12 21)", "7*3=21 (3 7 12 25)"]
    cases = [(countdown.Problem(shared, 34), t) for t in texts]
    cases += [(countdown.Problem((5, 5, 2, 1), 20), "5+5=10"), (countdown.Problem((5, 6, 2, 1), 20), "5+5=10")]
    pools = np.stack([padded_pool(p.numbers) for p, _ in cases])
    targets = np.asarray([p.target for p, _ in cases], np.int32)
    check = jax.jit(jax.vmap(jv.countdown_step_reward, in_axes=(0, 0, 0, None)))
    rewards, new_pools, done = (
        np.asarray(x) for x in check(pools, targets, encode_lines(tok, [t for _, t in cases]), table)
    )
    assert rewards.tolist() == [countdown.step_labels(p, [t])[0] for p, t in cases]
    assert done.tolist() == [countdown.apply_step(p.numbers, t) is None for p, t in cases]
    assert rewards[-2:].tolist() == [1, 0] and np.all(new_pools[-1] == -1)  # 5+5 needs two fives
    assert 0 < rewards.sum() < len(cases)


# ---------------------------------------------------------------- arithmetic


def arithmetic_variants(expr, rng):
    """Clean, corrupted and hand-broken traces of `expr`."""
    clean = [*arithmetic.solution_steps(expr), f"answer {arithmetic.evaluate(expr)}"]
    traces = [clean, [*clean, clean[-1]], clean[:-1], [clean[-1], *clean[:-1]]]
    traces += [arithmetic.corrupted_trace(expr, rng) for _ in range(3)]
    swapped = [f"{s.b}{s.op}{s.a}={s.c}" for s in map(countdown.parse_step, clean[:-1])]
    traces.append([*swapped, clean[-1]])  # right for + and *, wrong for - and / (unless a == b)
    traces.append([*clean[:1], rng.choice(TEXT_JUNK), *clean[2:]])
    traces.append([f"{clean[0]} (1)", *clean[1:]])  # a Countdown pool makes any arithmetic line wrong
    return traces


@pytest.fixture(scope="module")
def arithmetic_traces():
    rng = np.random.default_rng(3)
    exprs = arithmetic.generate(rng, 50) + ["2+3*4", "7", "(5-5)*3+0"]
    return [(e, t) for e in exprs for t in arithmetic_variants(e, rng)]


@jax.jit
def run_arithmetic(encoded, steps, table):
    def one(encoded, trace):
        def body(values, xs):
            index, tokens = xs
            reward, values, done = jv.arithmetic_step_reward(encoded, index, values, tokens, table)
            return values, (reward, done)

        start = jnp.full((MAX_OPS,), -1, jnp.int32)
        return jax.lax.scan(body, start, (jnp.arange(trace.shape[0]), trace))

    return jax.vmap(one)(encoded, steps)


def test_arithmetic_rewards_match_step_labels(tok, table, arithmetic_traces):
    encodings = [arithmetic.encode_expression(e, MAX_OPS) for e, _ in arithmetic_traces]
    encoded = jax.tree.map(lambda *xs: np.stack(xs), *encodings)
    steps = np.stack([encode_lines(tok, t, steps=7) for _, t in arithmetic_traces])
    values, (rewards, dones) = (jax.tree.map(np.asarray, x) for x in run_arithmetic(encoded, steps, table))
    mixed = 0
    for i, (expr, trace) in enumerate(arithmetic_traces):
        labels = arithmetic.step_labels(expr, trace)
        n_ops = len(arithmetic.solution_steps(expr))
        assert rewards[i, : len(trace)].tolist() == labels, (expr, trace)
        assert dones[i, : len(trace)].tolist() == [not (ok and t < n_ops) for t, ok in enumerate(labels)]
        correct = next((t for t, ok in enumerate(labels) if not ok), len(labels))
        written = [countdown.parse_step(line).c for line in trace[: min(correct, n_ops)]]
        assert values[i].tolist() == written + [-1] * (MAX_OPS - len(written)), (expr, trace)
        mixed += 0 < sum(labels) < len(trace)
    assert mixed > 100


def test_arithmetic_one_expression_many_particles(tok, table):
    """Shared encoding (in_axes None), particles at different lines with their own values, jit and vmap."""
    expr = "(((17+25)*3)-40)/2"
    encoded = arithmetic.encode_expression(expr, MAX_OPS)
    clean = [*arithmetic.solution_steps(expr), "answer 43"]
    lines = [*clean, "25+17=42", "3*42=126", "40-126=86", "answer 42", "42*3=125", "17+25=42"]
    index = [0, 1, 2, 3, 4, 0, 1, 2, 4, 1, 5]
    values = np.full((len(lines), MAX_OPS), -1, np.int32)
    for row, t in enumerate(index):
        values[row, : min(t, 4)] = [42, 126, 86, 43][: min(t, 4)]
    check = jax.jit(jax.vmap(jv.arithmetic_step_reward, in_axes=(None, 0, 0, 0, None)))
    rewards, _, done = check(encoded, jnp.asarray(index), values, jnp.asarray(encode_lines(tok, lines)), table)
    assert np.asarray(rewards).tolist() == [1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    assert np.asarray(done).tolist() == [0, 0, 0, 0, 1, 0, 0, 1, 1, 1, 1]
    # a particle whose earlier line was wrong (its value never written) scores 0 afterwards
    values[1, 0] = -1
    assert float(check(encoded, jnp.asarray(index), values, jnp.asarray(encode_lines(tok, lines)), table)[0][1]) == 0


def test_encode_expression_layout_and_limits():
    enc = arithmetic.encode_expression("(((17+25)*3)-40)/2", 6)
    assert enc.a_ref.tolist() == [6, 0, 1, 2, -1, -1] and enc.b_ref.tolist() == [7, 8, 9, 10, -1, -1]
    assert enc.op.tolist() == [0, 2, 1, 3, -1, -1] and enc.result.tolist() == [42, 126, 86, 43, -1, -1]
    assert enc.leaves.tolist() == [17, 25, 3, 40, 2, -1, -1] and int(enc.num_ops) == 4 and int(enc.value) == 43
    with pytest.raises(ValueError, match="max_ops"):
        arithmetic.encode_expression("1+2+3", 1)
    with pytest.raises(ValueError, match="digits"):
        arithmetic.encode_expression("99999*99999")
    with pytest.raises(InputError):
        arithmetic.encode_expression("3-5")
