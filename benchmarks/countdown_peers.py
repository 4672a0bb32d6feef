"""Countdown search vs peers: same shipped checkpoint, same held-out problems, same CPU, one run.

(a) best-of-N. Theirs: transformers' PyTorch `generate` (do_sample, temperature
    1, no top-k/top-p, N sequences per problem in one batch, up to
    3 * 12 + 1 new tokens, EOS = `<eos>`), each trace cut at the task's step
    cap (3 steps) and scored by the shipped PRM loaded as a PyTorch
    `AutoModelForCausalLM` (Math-Shepherd token convention: P("+") among
    {"+", "-"} at the trace's last "\\n", input `<bos>` + prompt + steps, one
    batched forward per problem); the trace with the best final-step reward is
    picked and checked with `countdown.verify`. Ours: `Solver(TASKS["countdown"],
    ...).solve(problems, SearchSpec("bon", N))`.
(b) particle filter. Theirs: llamppl (`Model` whose `async def step` samples
    one step token by token from an `LMContext` on a `CachedCausalLM` wrapping
    the shipped LM, then scores log P("+") of the PyTorch PRM on
    `<bos>` + prompt + steps, i.e. observes "the step is good" with probability
    r: the `bernoulli` form), run by `smc_standard` (systematic resampling,
    ESS threshold 0.5). Ours: `SearchSpec("pf", N, form="bernoulli")`, same
    resampling and threshold. Both pick the answer with the largest posterior
    mass (`inference.answers`, the same code for every system here).

Timings: wall seconds per problem. Ours excludes compilation (reported
separately, `compile_s`) and batches many problems per call (the Solver's
default, `PARTICLE_ROWS // N` problems per call); the "1 problem/call" rows
run ours one problem at a time, the same granularity as the peers. PyTorch
runs with the faster of 1 and `os.cpu_count()` threads, timed on a warm-up
generate (`--torch-threads`); JAX uses its default (all cores). The peers get
an untimed warm-up call first. Systems alternate per budget so background load
hits them alike. llamppl runs on the first `--pf-problems` problems only (it is
slow); the speedup lines give ours' accuracy on that same subset.

    python benchmarks/countdown_peers.py [--problems 20] [--bon 16 64] [--pf 16] [--pf-problems 8]
        [--models models/shipped] [--out benchmarks/results/countdown_peers.json]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np

from inference.answers import answer_posterior, votes
from ppl.tasks import EVAL_SEED, TASKS, countdown

TASK = TASKS["countdown"]
MAX_STEPS = TASK.max_steps
STEP_TOKENS = TASK.params.max_tokens  # per-step token cap of ours (the "\n" included)
MAX_NEW = MAX_STEPS * STEP_TOKENS + 1  # + <eos>
TARGET_BON, TARGET_PF = 3.0, 20.0


# ------------------------------------------------------------------ PyTorch side


class TorchPRM:
    """The shipped PRM in PyTorch: P("+") among {"+", "-"} at the last position of each sequence."""

    def __init__(self, path: Path, tokenizer):
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        config = json.loads((path / "config.json").read_text())
        self.good, self.bad = (
            tokenizer.convert_tokens_to_ids(config.get(k, d)) for k, d in (("good_token", "+"), ("bad_token", "-"))
        )
        self.seconds = 0.0  # time spent in PRM forwards (for the record)

    def __call__(self, seqs: list[list[int]]) -> np.ndarray:
        torch = self.torch
        began = time.perf_counter()
        width = max(len(s) for s in seqs)
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):  # right padding: causal, so real positions are unaffected
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask).logits
        last = torch.tensor([len(s) - 1 for s in seqs])
        pair = logits[torch.arange(len(seqs)), last][:, [self.good, self.bad]]
        reward = torch.softmax(pair.float(), dim=-1)[:, 0].numpy().astype(np.float64)
        self.seconds += time.perf_counter() - began
        return reward


def split_steps(ids: list[int], newline: int, eos: int) -> list[list[int]]:
    """Generated ids -> at most MAX_STEPS steps (each with its "\\n" where it has one), stopping at <eos>."""
    steps, current = [], []
    for t in ids:
        if t == eos:
            break
        current.append(t)
        if t == newline:
            steps.append(current)
            current = []
            if len(steps) == MAX_STEPS:
                return steps
    if current:
        steps.append(current)  # cut by the token budget
    return steps[:MAX_STEPS]


def prm_input(prompt_ids: list[int], steps: list[list[int]], newline: int) -> list[int]:
    """`<bos>` + prompt + steps, each step ended by "\\n" (the PRM's step tag)."""
    out = list(prompt_ids)
    for s in steps:
        out += s if s[-1] == newline else [*s, newline]
    return out


def step_texts(tokenizer, steps: list[list[int]]) -> list[str]:
    texts = [tokenizer.decode(s, skip_special_tokens=True).strip() for s in steps]
    return [t for t in texts if t]


def pick(problem, traces: list[list[str]], vote: np.ndarray, fallback: np.ndarray) -> tuple[bool, object]:
    """Same selection as ours (`ppl.readout.answer_record`): answer posterior under `vote`, its representative
    trace."""
    answers = [TASK.answer(problem, t) for t in traces]
    posterior = answer_posterior(answers, vote)
    chosen = posterior.chosen_trace if posterior.chosen_trace is not None else int(np.argmax(fallback))
    return bool(countdown.verify(problem, traces[chosen])), posterior.best


def hf_bon(problems, n: int, hf_lm, tokenizer, prm: TorchPRM, seed: int) -> list[dict]:
    import torch
    from transformers import GenerationConfig

    torch.manual_seed(seed)
    newline = tokenizer.convert_tokens_to_ids(tokenizer.tokenize("\n"))[0]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    config = GenerationConfig(
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=MAX_NEW,
        eos_token_id=eos, pad_token_id=pad, bos_token_id=tokenizer.bos_token_id,
    )
    records = []
    for problem in problems:
        began = time.perf_counter()
        prompt_ids = [tokenizer.bos_token_id, *tokenizer.encode(countdown.prompt(problem), add_special_tokens=False)]
        ids = torch.tensor([prompt_ids] * n)
        with torch.inference_mode():
            out = hf_lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
        generated = out[:, len(prompt_ids):].tolist()
        steps = [split_steps(g, newline, eos) for g in generated]
        scores = np.zeros(n)
        scored = [i for i in range(n) if steps[i]]
        if scored:
            scores[scored] = prm([prm_input(prompt_ids, steps[i], newline) for i in scored])
        traces = [step_texts(tokenizer, s) for s in steps]
        correct, _ = pick(problem, traces, votes("best", scores), scores)
        seconds = time.perf_counter() - began
        tokens = sum(next((k + 1 for k, t in enumerate(g) if t == eos), len(g)) for g in generated)
        records.append({"correct": correct, "seconds": seconds, "tokens": tokens,
                        "tokens_computed": n * len(generated[0])})
    return records


def llamppl_pf(problems, n: int, hf_lm, tokenizer, prm: TorchPRM, seed: int) -> list[dict]:
    from genlm.backend.llm import AsyncTransformer
    from llamppl import CachedCausalLM, LMContext, Model, smc_standard

    np.random.seed(seed)  # llamppl samples tokens and resamples with NumPy's global generator
    # the peer at its best on CPU: one LM batch per token across all particles, no batching delay
    lm = CachedCausalLM(AsyncTransformer(hf_lm, tokenizer, batch_size=n, timeout=0.0))
    newline = tokenizer.convert_tokens_to_ids(tokenizer.tokenize("\n"))[0]
    eos = tokenizer.eos_token_id

    class CountdownPF(Model):
        """One particle: each `step` writes one reasoning step, then the PRM's verdict is observed."""

        def __init__(self, prompt: str, counter: list[int]):
            super().__init__()
            self.context = LMContext(lm, tokenizer.bos_token + prompt)
            self.prompt_ids = list(self.context.tokens)
            self.steps: list[list[int]] = []
            self.counter = counter  # shared: tokens sampled by all particles

        def immutable_properties(self):
            return {"prompt_ids", "counter"}

        async def step(self):
            ids, ended = [], False
            for _ in range(STEP_TOKENS):
                token = (await self.sample(self.context.next_token())).token_id
                self.counter[0] += 1
                if token == eos:
                    ended = True
                    break
                ids.append(token)
                if token == newline:
                    break
            if ids:
                self.steps.append(ids)
                reward = prm([prm_input(self.prompt_ids, self.steps, newline)])[0]
                self.score(math.log(max(reward, 1e-300)))  # observe "good" ~ Bernoulli(reward)
            if ended or not ids or len(self.steps) >= MAX_STEPS:
                self.finish()

    records = []
    for problem in problems:
        lm.clear_cache()
        counter = [0]
        began = time.perf_counter()
        model = CountdownPF(countdown.prompt(problem), counter)
        particles = asyncio.run(smc_standard(model, n, ess_threshold=0.5, resampling_method="systematic"))
        traces = [step_texts(tokenizer, p.steps) for p in particles]
        weights = np.array([p.weight for p in particles])
        correct, _ = pick(problem, traces, votes("posterior", log_weights=weights), weights)
        seconds = time.perf_counter() - began
        records.append({"correct": correct, "seconds": seconds, "tokens": counter[0]})
    return records


def pick_threads(path: Path, repeats: int = 2) -> int:
    """The faster torch thread count (1 or all cores) on a warm-up generate: on a loaded machine
    OpenMP with more threads than free cores can be an order of magnitude slower, so give the peer its best."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    config = GenerationConfig(do_sample=True, max_new_tokens=MAX_NEW, top_k=0, top_p=1.0, eos_token_id=None,
                              pad_token_id=0)
    ids = torch.ones((16, 16), dtype=torch.long)
    best = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        times = []
        for _ in range(repeats + 1):
            began = time.perf_counter()
            with torch.inference_mode():
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
            times.append(time.perf_counter() - began)
        best[threads] = min(times[1:])
    timings = ", ".join(f"{t} thread(s) {s:.2f}s" for t, s in best.items())
    print(f"torch warm-up generate (16 x {MAX_NEW} tokens): {timings}", flush=True)
    return min(best, key=best.get)


# ------------------------------------------------------------------ ours


def ours(solver, problems, spec, seed: int, one_at_a_time: bool = False) -> tuple[list[dict], float]:
    """Records and the compile seconds this call added."""
    before = solver.compile_seconds
    if one_at_a_time:
        records = [r for i, p in enumerate(problems) for r in solver.solve([p], spec, seed=seed + i)]
    else:
        records = solver.solve(problems, spec, seed=seed)
    return records, solver.compile_seconds - before


def summary(system: str, method: str, n: int, records: list[dict], compile_s: float | None = None, **extra) -> dict:
    seconds = [r["seconds"] for r in records]
    return {
        "system": system, "method": method, "particles": n, "problems": len(records),
        "accuracy": float(np.mean([r["correct"] for r in records])),
        "correct": int(sum(r["correct"] for r in records)),
        "seconds_per_problem": float(np.sum(seconds) / len(records)),
        "median_seconds": float(np.median(seconds)),
        "tokens_per_problem": float(np.mean([r["tokens"] for r in records])),
        "compile_s": compile_s, "correct_list": [bool(r["correct"]) for r in records], **extra,
    }


def logits_check(lm, hf_lm, tokenizer, problem) -> float:
    """Max |logit difference| of ours vs the PyTorch LM on one prompt: the two hold the same weights."""
    import jax.numpy as jnp
    import torch

    text = countdown.prompt(problem) + "7*3=21 (12 21 25)\n"
    ids = [tokenizer.bos_token_id, *tokenizer.encode(text, add_special_tokens=False)]
    x = jnp.asarray([ids], jnp.int32)
    hidden, _ = lm.hidden_states(x, lm.init_cache(1, len(ids)), None)
    mine = np.asarray(lm.logits(hidden))[0]
    with torch.inference_mode():
        theirs = hf_lm(input_ids=torch.tensor([ids])).logits[0].numpy()
    return float(np.max(np.abs(mine - theirs)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=20, help=f"countdown.generate({EVAL_SEED}, n)")
    parser.add_argument("--bon", type=int, nargs="*", default=[16, 64], help="best-of-N budgets")
    parser.add_argument("--pf", type=int, nargs="*", default=[16], help="particle-filter budgets")
    parser.add_argument("--single", type=int, nargs="*", default=[],
                        help="budgets at which ours also runs one problem per call (one more compile each)")
    parser.add_argument("--pf-problems", type=int, default=8, help="problems for the llamppl rows (the first k)")
    parser.add_argument("--torch-threads", default="auto",
                        help="'auto': the faster of 1 and os.cpu_count() threads, timed on a warm-up generate")
    parser.add_argument("--models", default="models/shipped", help="DIR with lm/ and prm/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/countdown_peers.json")
    args = parser.parse_args(argv)
    root = Path(args.models)

    import jax
    import torch
    from transformers import AutoModelForCausalLM

    from ppl.commands.shipped import load_models
    from ppl.search import SearchSpec
    from ppl.solver import Solver

    threads = pick_threads(root / "lm") if args.torch_threads == "auto" else int(args.torch_threads)
    torch.set_num_threads(threads)
    problems = countdown.generate(EVAL_SEED, args.problems)
    pf_problems = problems[: args.pf_problems]
    lm, tokenizer, prm = load_models(TASK, "learned", str(root / "lm"), str(root / "prm"))
    solver = Solver(TASK, lm, tokenizer, prm)
    hf_lm = AutoModelForCausalLM.from_pretrained(root / "lm", dtype=torch.float32).eval()
    torch_prm = TorchPRM(root / "prm", tokenizer)
    max_logit_diff = logits_check(lm, hf_lm, tokenizer, problems[0])
    print(f"{len(problems)} problems (countdown.generate({EVAL_SEED}, {len(problems)})); "
          f"torch threads {threads}; jax {jax.default_backend()}; max |logit diff| ours vs torch {max_logit_diff:.2e}",
          flush=True)

    # warm-ups (untimed): first calls of torch generate / forward and of llamppl's machinery
    hf_bon(problems[:1], 4, hf_lm, tokenizer, torch_prm, args.seed)
    llamppl_pf(problems[:1], 4, hf_lm, tokenizer, torch_prm, args.seed)
    rows = []

    def add(row):
        rows.append(row)
        compile_text = "" if row["compile_s"] is None else f", compile {row['compile_s']:.1f}s"
        print(f"  {row['system']:<28} {row['method']:>3} N={row['particles']:<3} acc {row['accuracy']:.3f} "
              f"{row['seconds_per_problem']:.3f} s/problem{compile_text}", flush=True)

    started = time.perf_counter()
    for n in args.bon:
        spec = SearchSpec("bon", n)
        records, compile_s = ours(solver, problems, spec, args.seed)
        add(summary("ours (batched problems)", "bon", n, records, compile_s))
        if n in args.single:
            records, compile_s = ours(solver, problems, spec, args.seed, one_at_a_time=True)
            add(summary("ours (1 problem/call)", "bon", n, records, compile_s))
        torch_prm.seconds = 0.0
        records = hf_bon(problems, n, hf_lm, tokenizer, torch_prm, args.seed)
        add(summary("transformers generate + PRM", "bon", n, records, None,
                    prm_seconds_per_problem=torch_prm.seconds / len(problems),
                    tokens_computed_per_problem=float(np.mean([r["tokens_computed"] for r in records]))))
    for n in args.pf:
        spec = SearchSpec("pf", n, form="bernoulli")
        records, compile_s = ours(solver, problems, spec, args.seed)
        add(summary("ours (batched problems)", "pf", n, records, compile_s))
        if n in args.single:
            records, compile_s = ours(solver, problems, spec, args.seed, one_at_a_time=True)
            add(summary("ours (1 problem/call)", "pf", n, records, compile_s))
        torch_prm.seconds = 0.0
        records = llamppl_pf(pf_problems, n, hf_lm, tokenizer, torch_prm, args.seed)
        add(summary("llamppl smc_standard + PRM", "pf", n, records, None,
                    prm_seconds_per_problem=torch_prm.seconds / len(pf_problems)))
    total = time.perf_counter() - started

    speedups = []
    for row in rows:
        if row["system"].startswith("ours"):
            continue
        for mine in (r for r in rows if r["system"].startswith("ours") and r["method"] == row["method"]
                     and r["particles"] == row["particles"]):
            target = TARGET_BON if row["method"] == "bon" else TARGET_PF
            ratio = row["seconds_per_problem"] / mine["seconds_per_problem"]
            speedups.append({
                "method": row["method"], "particles": row["particles"], "ours": mine["system"], "peer": row["system"],
                "problems": row["problems"],
                "speedup": ratio, "target": target, "meets_target": ratio >= target,
                "accuracy_ours": mine["accuracy"], "accuracy_peer": row["accuracy"],
                "accuracy_ours_same_problems": float(np.mean(mine["correct_list"][: row["problems"]])),
            })

    header = (f"{'system':<28} {'method':>6} {'N':>4} {'problems':>8} {'acc':>6} {'s/problem':>10} "
              f"{'tokens':>8} {'compile s':>9}")
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        compile_text = "" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
        print(f"{r['system']:<28} {r['method']:>6} {r['particles']:>4} {r['problems']:>8} {r['accuracy']:>6.3f} "
              f"{r['seconds_per_problem']:>10.4f} {r['tokens_per_problem']:>8.0f} {compile_text:>9}")
    print()
    for s in speedups:
        print(f"{s['method']} N={s['particles']}: {s['ours']} is {s['speedup']:.1f}x faster than {s['peer']} "
              f"(target {s['target']:.0f}x: {'met' if s['meets_target'] else 'NOT met'}; "
              f"accuracy on the same {s['problems']} problems {s['accuracy_ours_same_problems']:.3f} vs "
              f"{s['accuracy_peer']:.3f})")

    from importlib.metadata import version

    out = {
        "benchmark": "countdown_peers",
        "problems": f"countdown.generate({EVAL_SEED}, {len(problems)})",
        "llamppl_problems": len(pf_problems),
        "models": str(root),
        "checkpoint_sha256": {
            part: hashlib.sha256((root / part / "model.safetensors").read_bytes()).hexdigest() for part in ("lm", "prm")
        },
        "seed": args.seed,
        "max_new_tokens_hf": MAX_NEW,
        "step_token_cap": STEP_TOKENS,
        "max_logit_diff_ours_vs_torch": max_logit_diff,
        "rows": rows,
        "speedups": speedups,
        "total_seconds": total,
        "environment": {
            "cpu_count": os.cpu_count(), "torch_threads": threads, "platform": platform.platform(),
            "python": platform.python_version(), "jax": jax.__version__, "torch": torch.__version__,
            "transformers": version("transformers"), "llamppl": version("llamppl"),
            "genlm-backend": version("genlm-backend"),
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out} ({total:.0f}s)")


if __name__ == "__main__":
    main()
