"""`ppl solve` on free text: chat prompts, the PRM in its own format (goldens from PyTorch), inputs and errors.

The checkpoints are tiny random-weight chat models built by `tests/fixtures/make_chat_checkpoints.py`:
`qwen2_chat` + `qwen2_prm` (Qwen2.5-Math-PRM layout) and `llama_chat` + `shepherd_prm` (Math-Shepherd).
"""

import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

import models
from models.loading import checkpoint_dtype, generation_defaults
from models.prm import load_prm
from models.sampling import stop_table
from ppl import batching, prompting
from ppl.cli import main
from ppl.errors import InputError
from ppl.reasoning import strip_end
from ppl.tasks.math import answer_classes, math_task, parse_line

CHECKPOINTS = Path(__file__).parent / "fixtures" / "checkpoints"
SYSTEM = prompting.QWEN_MATH_SYSTEM
# The fixture script's questions and steps, whose PRM rewards PyTorch computed.
QUESTIONS = ["What is $3 + 4 \\times 2$?", "Janet has 12 apples and gives away 5. How many are left?"]
STEPS = [
    ["We multiply first: $4 \\times 2 = 8$.", "Then $3 + 8 = 11$.", "The answer is $\\boxed{11}$."],
    ["She starts with 12 apples.", "She gives away 5, so 12 - 5 = 7.", "#### 7"],
]


def checkpoint(name):
    return str(CHECKPOINTS / name)


@pytest.mark.parametrize(("lm_name", "prm_name"), [("qwen2_chat", "qwen2_prm"), ("llama_chat", "shepherd_prm")])
def test_prm_reads_the_lm_steps_in_its_own_format_as_transformers_does(lm_name, prm_name):
    """Each step as the LM writes it (text, then the blank-line delimiter) is shown to the PRM without the
    delimiter, after the PRM's own prompt: the rewards are PyTorch's on the whole formatted text."""
    _, lm_tok = models.load(checkpoint(lm_name))
    prm, tok = load_prm(checkpoint(prm_name))
    prompting.check_same_vocabulary(lm_tok, tok)
    stops = stop_table(lm_tok, ("\n\n",))
    hidden = jnp.asarray(prompting.hidden_at_end(np.asarray(stops.token_bytes), (lm_tok.eos_token_id,)))
    score = jax.jit(lambda p, c, t, m: p.score_step(c, t, m))
    start = jax.jit(lambda p, t, m: p.start(t, m, t.shape[-1] + 96))
    expected = load_file(CHECKPOINTS / prm_name / "golden.safetensors")["rewards"]
    for question, steps, want in zip(QUESTIONS, STEPS, expected, strict=True):
        tokens, mask = batching.encode_prompts(tok, [prompting.prm_prompt(tok, SYSTEM)(question)])
        cache = start(prm, jnp.asarray(tokens[0]), jnp.asarray(mask[0]))
        got = []
        for step in steps:  # padded to one width (the padding at the end), so `score` compiles once
            ids = lm_tok.encode(step + "\n\n", add_special_tokens=False)
            ids, mask = jnp.asarray([ids + [0] * (32 - len(ids))]), jnp.arange(32)[None] < len(ids)
            reward, cache = score(prm, cache, ids, strip_end(ids, mask, hidden))
            got.append(float(reward[0]))
        np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.parametrize("name", ["qwen2_chat", "llama_chat"])
def test_chat_prompt_is_the_template_with_one_bos_and_logits_match_transformers(name):
    lm, tok = models.load(checkpoint(name))
    golden = load_file(CHECKPOINTS / name / "golden.safetensors")
    tokens, mask = batching.encode_prompts(tok, [prompting.chat_prompt(tok, SYSTEM)(QUESTIONS[0])])
    ids = tokens[0, 0][mask[0, 0]]
    np.testing.assert_array_equal(ids, golden["prompt_ids"][0])
    if tok.bos_token_id is not None:  # the template writes the BOS; the tokenizer would add a second one
        assert list(ids[:2]).count(tok.bos_token_id) == 1
    logits = lm(jnp.asarray(golden["prompt_ids"]))
    np.testing.assert_allclose(np.asarray(logits), golden["prompt_logits"], atol=1e-4)


def test_generation_defaults_give_every_eos_and_the_sampling_settings():
    _, tok = models.load(checkpoint("qwen2_chat"))
    defaults = generation_defaults(checkpoint("qwen2_chat"), tok)
    assert defaults.eos_ids == tuple(tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]))
    assert (defaults.temperature, defaults.top_p, defaults.top_k) == (0.7, 0.8, 20)
    assert checkpoint_dtype(checkpoint("qwen2_chat")) == jnp.float32
    _, tok = models.load(checkpoint("qwen2"))  # a generation_config.json without sampling settings
    assert generation_defaults(checkpoint("qwen2"), tok) == (tuple([tok.eos_token_id]), 1.0, 1.0, 0)


def test_vocabulary_mismatch_is_refused():
    _, qwen = models.load(checkpoint("qwen2_chat"))
    _, llama = load_prm(checkpoint("shepherd_prm"))
    with pytest.raises(InputError, match="different vocabularies"):
        prompting.check_same_vocabulary(qwen, llama)


@pytest.mark.parametrize(
    ("line", "question", "gold", "fields"),
    [
        ('{"problem": "p", "answer": "\\\\frac{1}{2}", "unique_id": "a"}', "p", "\\frac{1}{2}",
         {"problem": "p", "unique_id": "a", "gold": "\\frac{1}{2}"}),
        ('{"question": "q", "answer": "so 1,000 + 200\\n#### 1,200"}', "q", "1200",
         {"question": "q", "gold": "so 1,000 + 200\n#### 1,200"}),
        ('{"problem": "p", "answer": 42, "id": 3}', "p", "42", {"problem": "p", "id": 3, "gold": 42}),
        ('{"prompt": "hello"}', "hello", None, {"prompt": "hello"}),
    ],
)
def test_input_formats(line, question, gold, fields):
    problem = parse_line(line)
    assert (problem.question, problem.gold, problem.fields) == (question, gold, fields)


def test_named_fields_and_bad_lines():
    problem = parse_line('{"q": "x?", "sol": "3"}', question_field="q", answer_field="sol")
    assert (problem.question, problem.gold) == ("x?", "3")
    for line, message in [
        ('{"text": "x"}', "problem"),
        ('{"problem": 3}', "non-empty string"),
        ('{"problem": "x", "answer": [1]}', "string or a number"),
        ("[1, 2]", "JSON object"),
        ("{", "not valid JSON"),
    ]:
        with pytest.raises(InputError, match=message):
            parse_line(line)


def test_answers_vote_by_equivalence_and_correct_follows_math_verify():
    assert answer_classes(["\\frac{1}{2}", "0.5", "3", None, "1/2", "\\text{blue}"]) == [
        "\\frac{1}{2}", "\\frac{1}{2}", "3", None, "\\frac{1}{2}", "\\text{blue}"
    ]
    task = math_task(lambda q: q, max_steps=4, params=None)
    graded, plain = parse_line('{"problem": "p", "answer": "5"}'), parse_line('{"prompt": "p"}')
    assert task.answer(graded, ["so x = 5", "The answer is $\\boxed{x = 5}$"]) == "x = 5"
    assert task.correct(graded, ["The answer is $\\boxed{x = 5}$"]) is True
    assert task.correct(graded, ["#### -5"]) is False
    assert task.correct(plain, ["\\boxed{5}"]) is None


def run_solve(tmp_path, lines, *flags, lm="qwen2_chat", prm="qwen2_prm"):
    problems = tmp_path / "in.jsonl"
    problems.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "out.jsonl"
    prm_flag = prm if prm == "none" else checkpoint(prm)
    code = main(["solve", "--lm", checkpoint(lm), "--prm", prm_flag, "--problems", str(problems),
                 "--out", str(out), "--max-steps", "3", "--max-step-tokens", "8", *flags])
    return code, [json.loads(x) for x in out.read_text().splitlines()] if code == 0 else []


MATH = [{"problem": QUESTIONS[0], "answer": "11", "unique_id": "t/1"}, {"problem": "Solve $x+2=7$.", "answer": "5"}]
GSM8K = [{"question": QUESTIONS[1], "answer": "12 - 5 = 7\n#### 7"}]
MIXED = [{"problem": "AIME-style", "answer": 7}, {"prompt": "Say hi."}]


def test_solve_end_to_end_qwen_pair_particle_filter(tmp_path, capsys):
    code, records = run_solve(tmp_path, MATH, "--method", "pf", "--particles", "4")
    assert code == 0, capsys.readouterr().err
    assert [r["unique_id"] for r in records[:1]] == ["t/1"] and [r["gold"] for r in records] == ["11", "5"]
    for r in records:
        assert set(r) >= {"steps", "answer", "confidence", "classes", "correct", "tokens", "method", "particles"}
        assert r["method"] == "pf" and r["particles"] == 4 and 0 < r["tokens"] <= 4 * 3 * 8
        assert sum(c["mass"] for c in r["classes"]) <= 1 + 1e-6
    assert "accuracy" in capsys.readouterr().out


def test_solve_end_to_end_llama_shepherd_fixed_size_steps(tmp_path, capsys):
    code, records = run_solve(tmp_path, GSM8K, "--method", "wbon", "--particles", "2", "--tokens-per-step", "4",
                              "--prm-aggregate", "min", lm="llama_chat", prm="shepherd_prm")
    assert code == 0, capsys.readouterr().err
    assert records[0]["gold"] == GSM8K[0]["answer"] and isinstance(records[0]["correct"], bool)
    assert records[0]["tokens"] <= 2 * 3 * 4


def test_solve_without_prm_majority_on_aime_and_plain_prompts(tmp_path, capsys):
    code, records = run_solve(tmp_path, MIXED, "--method", "majority", "--particles", "2", "--no-chat-template",
                              prm="none")
    assert code == 0, capsys.readouterr().err
    assert "correct" in records[0] and "correct" not in records[1]


@pytest.mark.parametrize(
    ("flags", "prm", "message"),
    [
        (["--method", "pf"], "none", "needs a PRM"),
        (["--method", "pf"], "shepherd_prm", "different vocabularies"),
        (["--method", "greedy", "--max-steps", "40", "--max-step-tokens", "512"], "qwen2_prm", "context is 16384"),
        (["--method", "greedy", "--step-delimiter", ""], "qwen2_prm", "must not be empty"),
        (["--method", "greedy", "--particles", "0"], "qwen2_prm", "at least 1"),
    ],
)
def test_solve_bad_arguments_are_one_line_errors(tmp_path, capsys, flags, prm, message):
    problems = tmp_path / "in.jsonl"
    problems.write_text(json.dumps(MATH[0]) + "\n")
    code = main(["solve", "--lm", checkpoint("qwen2_chat"), "--prm", prm if prm == "none" else checkpoint(prm),
                 "--problems", str(problems), "--out", str(tmp_path / "o.jsonl"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1] and err[-1].startswith("ppl solve: error:")


def test_solve_names_the_bad_line(tmp_path, capsys):
    problems = tmp_path / "in.jsonl"
    problems.write_text(json.dumps(MATH[0]) + "\n" + '{"text": "no question"}\n')
    code = main(["solve", "--lm", checkpoint("qwen2_chat"), "--prm", "none", "--problems", str(problems),
                 "--method", "greedy", "--out", str(tmp_path / "o.jsonl")])
    assert code == 2 and "line 2" in capsys.readouterr().err


def test_a_hugging_face_id_loads_from_the_local_cache_only(tmp_path, monkeypatch):
    import shutil

    import huggingface_hub.constants

    snapshot = tmp_path / "hub" / "models--acme--tiny-chat" / "snapshots" / "0123abcd"
    shutil.copytree(CHECKPOINTS / "qwen2_chat", snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    lm, tok = models.load("acme/tiny-chat")
    assert lm.config.vocab_size == len(tok) == 384
    with pytest.raises(models.CheckpointError, match="local Hugging Face cache"):
        models.load("acme/not-downloaded")


def test_memory_plans_the_problems_per_run_from_the_compiled_program(tmp_path, capsys):
    """`--memory` doubles the problems per run while XLA's accounting of the compiled run fits: all three
    problems at once (padded to 4) with room to spare, one at a time between the 1- and 2-problem needs, and a
    one-line error below what one problem needs."""
    three = [*MATH, {"problem": "What is 2+2?", "answer": "4"}]
    code, records = run_solve(tmp_path, three, "--method", "pf", "--particles", "2", "--memory", "64")
    assert code == 0 and len(records) == 3
    plan = re.findall(r"memory plan: (\d+) problem\(s\) per run need (\d+) bytes", capsys.readouterr().err)
    needs = {int(k): int(v) / 2**30 for k, v in plan}
    assert sorted(needs) == [1, 2, 4] and needs[1] < needs[2] < needs[4]
    between = f"{(needs[1] + needs[2]) / 2:.9f}"
    code, records = run_solve(tmp_path, three, "--method", "pf", "--particles", "2", "--memory", between)
    assert code == 0 and len(records) == 3
    assert sorted(map(int, re.findall(r"memory plan: (\d+) problem", capsys.readouterr().err))) == [1, 2]
    code, _ = run_solve(tmp_path, three, "--method", "pf", "--particles", "2", "--memory", f"{needs[1] / 2:.9f}")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("ppl solve: error: one problem at 2 particles needs")


def test_solve_in_bfloat16_end_to_end(tmp_path, capsys):
    """bf16 weights and caches, float32 logits (accumulated in float32, not rounded to bf16 first)."""
    lm, _ = models.load(checkpoint("qwen2_chat"), "bfloat16")
    logits, cache = lm.extend(jnp.asarray([[1, 2, 3]]), lm.init_cache(1, 4))
    assert cache.k[0].dtype == jnp.bfloat16 and logits.dtype == jnp.float32
    assert np.unique(np.asarray(logits)).size > np.unique(np.asarray(logits.astype(jnp.bfloat16))).size
    code, records = run_solve(tmp_path, MATH, "--method", "pf", "--particles", "2", "--dtype", "bfloat16")
    assert code == 0, capsys.readouterr().err
    assert len(records) == 2 and all(0 < r["tokens"] <= 2 * 3 * 8 for r in records)
